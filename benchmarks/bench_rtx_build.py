#!/usr/bin/env python3
"""TensorRT-RTX ahead-of-time engine builds: build time and peak memory per model and precision, on this machine
(no GPU needed), with the ONNX export of the same model timed in the same run as the reference.

    python benchmarks/bench_rtx_build.py [--models NAME ...] [--precisions fp32 fp16 int8] [--runs 3]
                                         [--workdir DIR] [--json PATH]

Per model, once: seeded random weights with BN statistics and a head fitted to generated images
(``reference.fit_bn_statistics`` — realistic activations), the FP32 ONNX, the FP16 ONNX (ModelOpt AutoCast) and
the INT8 Q/DQ ONNX (ModelOpt, ``max`` ranges from 16 generated images: the build does not depend on how good the
ranges are). Then, --runs times each and each in a fresh process (so peaks do not mix):
- export: ``build.py --model NAME --random-weights --onnx-only`` — weights made, exported, checked;
- build: ``engine.build.build_engine`` on the prepared ONNX with ``--engine-family tensorrt-rtx`` (default targets),
  i.e. what ``build.py`` does after the precision step: ONNX inspection, parse, build, atomic write, manifest.
Reported: the library's own build time (``build_serialized_network``, from the manifest), the whole process's
wall time, its peak RSS (``wait4``), and the engine size; medians of --runs. Needs the ``rtx`` and ``quant`` extras.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ["res2net50_vd_26w_4s", "res2net101_vd_26w_4s", "res2net200_vd_26w_4s"]
PRECISIONS = ["fp32", "fp16", "int8"]


def _run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd`` to completion: (wall seconds, the child's own peak RSS in MiB from wait4, stdout)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode()[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out.decode()


# --------------------------------------------------------------------------------------------------------
# Preparation (once per model, not timed for the table)


def prepare(name: str, workdir: Path, precisions: list[str]) -> dict[str, Path]:
    """FP32 ONNX from fitted random weights; FP16 / INT8 ONNX from it with ModelOpt."""
    import cv2
    import numpy as np

    from trt_res2net.data.preprocess import preprocess_bgr
    from trt_res2net.model import reference, weights, zoo
    from trt_res2net.model.onnx_export import write_onnx
    from trt_res2net.runtime.benchmark import synthetic_images

    spec = zoo.get_model(name)
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    paths = {"fp32": d / f"{name}.onnx"}
    images = synthetic_images(16, seed=1)
    if not paths["fp32"].exists():
        batch = np.stack([preprocess_bgr(im) for im in images[:8]])
        state = reference.fit_bn_statistics(spec, weights.random_weights(spec, seed=0), batch)
        write_onnx(spec, state, paths["fp32"], metadata={"weights": "random (seed 0), fitted BN"})
    if "fp16" in precisions:
        paths["fp16"] = d / f"{name}_fp16.onnx"
    if "int8" in precisions:
        paths["int8"] = d / f"{name}_int8.onnx"
        calib = d / "calib"
        if not calib.is_dir():
            calib.mkdir()
            for i, im in enumerate(images):
                cv2.imwrite(str(calib / f"{i:02d}.png"), im)
    for precision in ("fp16", "int8"):
        if precision in paths and not paths[precision].exists():
            extra = ["--calib-dir", str(d / "calib"), "--calib-method", "max"] if precision == "int8" else []
            subprocess.run([sys.executable, "build.py", "--onnx", str(paths["fp32"]), "--precision", precision,
                            "--onnx-only", "--quiet", *extra], check=True, cwd=ROOT, capture_output=True)
            made = paths["fp32"].with_name(f"{name}_{precision}.onnx")
            if made != paths[precision]:
                made.rename(paths[precision])
    return paths


# --------------------------------------------------------------------------------------------------------
# Children


def child_build(onnx_path: str, fp32_path: str, precision: str, engine_path: str) -> dict:
    from trt_res2net.engine.build import build_engine
    from trt_res2net.engine.options import EngineOptions

    options = EngineOptions(family="tensorrt-rtx", engine_path=engine_path, progress=False)
    built = build_engine(onnx_path, precision, options, fp32_onnx_path=fp32_path, model_name=Path(engine_path).stem)
    engine, m = built.path, built.manifest
    return {"build_s": m.build_time_s, "engine_mib": engine.stat().st_size / 2**20}


def measure(name: str, paths: dict[str, Path], precisions: list[str], runs: int, workdir: Path) -> dict:
    from trt_res2net.engine.trt_compat import installed_version

    row = {"model": name, "tensorrt_rtx": str(installed_version("tensorrt-rtx")), "export": {}, "builds": {}}
    export_out = workdir / name / "export.onnx"
    walls, peaks = [], []
    for _ in range(runs):
        wall, peak, _ = _run_measured([sys.executable, "build.py", "--model", name, "--random-weights",
                                       "--onnx-only", "--onnx-out", str(export_out), "--quiet"])
        walls.append(wall)
        peaks.append(peak)
    row["export"] = {"wall_s": statistics.median(walls), "peak_rss_mib": statistics.median(peaks),
                     "wall_s_all": walls}
    for precision in precisions:
        builds, walls, peaks, size = [], [], [], None
        engine = workdir / name / f"{name}_{precision}.rtx.engine"
        for _ in range(runs):
            wall, peak, out = _run_measured([sys.executable, __file__, "--child-build", str(paths[precision]),
                                             str(paths["fp32"]), precision, str(engine)])
            doc = json.loads(out.strip().splitlines()[-1])
            builds.append(doc["build_s"])
            walls.append(wall)
            peaks.append(peak)
            size = doc["engine_mib"]
        row["builds"][precision] = {"build_s": statistics.median(builds), "wall_s": statistics.median(walls),
                                    "peak_rss_mib": statistics.median(peaks), "engine_mib": size,
                                    "build_s_all": builds}
    return row


def format_table(rows: list[dict]) -> str:
    head = ("model", "precision", "build s", "process s", "peak RSS MiB", "engine MiB", "export s (same run)")
    lines = [head]
    for r in rows:
        for precision, b in r["builds"].items():
            lines.append((r["model"], precision, f"{b['build_s']:.2f}", f"{b['wall_s']:.2f}",
                          f"{b['peak_rss_mib']:.0f}", f"{b['engine_mib']:.1f}", f"{r['export']['wall_s']:.2f}"))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(line, widths, strict=True))) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=PRECISIONS)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_rtx_build"),
                   help="where the ONNX files and engines go (default /tmp/bench_rtx_build)")
    p.add_argument("--json", type=Path, metavar="PATH")
    p.add_argument("--child-build", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_build:
        print(json.dumps(child_build(*args.child_build)))
        return 0
    from tqdm import tqdm

    rows = []
    for name in tqdm(args.models, desc="models", unit="model", file=sys.stderr):
        paths = prepare(name, args.workdir, args.precisions)
        rows.append(measure(name, paths, args.precisions, args.runs, args.workdir))
    print(f"TensorRT-RTX {rows[0]['tensorrt_rtx']}, ahead of time, default targets; medians of {args.runs} runs, "
          f"each in a fresh process; {os.cpu_count()} CPUs")
    print(format_table(rows))
    if args.json:
        from trt_res2net.core.files import write_json

        write_json(args.json, {"runs": args.runs, "cpus": os.cpu_count(), "rows": rows})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
