#!/usr/bin/env python3
"""End-to-end images/s of infer.py's path on ONNX Runtime (CPU here) for a zoo model at several batch sizes.

    python benchmarks/bench_infer_ort.py [--model res2net50_vd_26w_4s] [--batch 1 8] [--images 48]
                                         [--runs 5] [--onnx PATH] [--json out.json]

The model is exported with seeded random weights (``build.py --random-weights`` does the same; speed does
not depend on the weights) unless --onnx names an existing export. The images are --images JPEG files at
typical ImageNet validation sizes, generated from the photographs in tests/data and written to a temporary
folder. Per batch size:
- end-to-end: ``Classifier.classify`` over all files — reading, decoding and preprocessing in 2 threads
  ahead of inference, ONNX Runtime, softmax, top-5 — exactly what ``infer.py`` runs; median of --runs
  passes after a warm-up pass;
- end-to-end with ONNX Runtime's idle threads spin-waiting (its default; the backend turns it off);
- model only: ``backend.run`` on the already preprocessed batches, same images;
the three take turns in each of --runs rounds (medians reported), so they see the same machine load;
- the CLI once: ``python infer.py MODEL DIR -q --batch N`` as a subprocess, wall time including
  interpreter start, imports and session creation.
Each figure is also given per CPU-second (process CPU time over all threads), which a shared machine
disturbs far less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [(500, 375), (375, 500), (500, 333), (500, 500), (640, 480)]


def write_images(directory: Path, n: int) -> list[Path]:
    photos = sorted((ROOT / "tests" / "data").glob("*.jpg"))
    sources = [cv2.imread(str(p)) for p in photos]
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        img = cv2.resize(sources[i % len(sources)], (w, h), interpolation=cv2.INTER_CUBIC)
        p = directory / f"img_{i:04d}.jpg"
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def export(model: str, directory: Path) -> Path:
    from trt_res2net.model import weights, zoo
    from trt_res2net.model.onnx_export import write_onnx

    spec = zoo.get_model(model)
    path = directory / f"{model}.onnx"
    t = time.perf_counter()
    write_onnx(spec, weights.random_weights(spec, seed=0), path)
    print(f"exported {path.name} with random weights in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


def bench_batch(onnx_path: Path, paths: list[Path], batch: int, runs: int) -> dict:
    from trt_res2net.data.preprocess import preprocess_batch
    from trt_res2net.runtime.classifier import Classifier
    from trt_res2net.runtime.onnx_runtime import OnnxRuntimeBackend

    clf = Classifier(onnx_path, batch=batch, threads=2)
    spin = Classifier(onnx_path, batch=batch, threads=2, backend=OnnxRuntimeBackend(onnx_path, spinning=True))
    pre = preprocess_batch(paths)

    def e2e(c):
        results = list(c.classify(paths))
        assert len(results) == len(paths) and all("topk" in r for r in results)

    def model_only():
        for i in range(0, len(paths), batch):
            clf.backend.run(pre[i : i + batch])

    cases = {"e2e": lambda: e2e(clf), "e2e_spinning": lambda: e2e(spin), "model": model_only}
    for c in (clf, spin):
        list(c.classify(paths[: max(batch, 4)]))  # warm-up: first runs allocate ORT buffers
    wall = {k: [] for k in cases}
    cpu = {k: [] for k in cases}
    for r in range(runs):  # the three cases take turns, so each sees the same machine load
        order = list(cases.items())
        for name, fn in order[r % 3 :] + order[: r % 3]:
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(len(paths) / (time.perf_counter() - t))
            cpu[name].append(len(paths) / (time.process_time() - c))
    row = {"batch": batch, "provider": clf.backend.provider}
    for name in cases:
        row[f"{name}_img_s"] = round(statistics.median(wall[name]), 2)
        row[f"{name}_img_per_cpu_s"] = round(statistics.median(cpu[name]), 2)
        row[f"{name}_all"] = [round(x, 2) for x in wall[name]]
    return row


def cli_once(onnx_path: Path, directory: Path, batch: int, n: int) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "infer.py"), str(onnx_path), str(directory), "-q",
                    "--no-progress", "--batch", str(batch)], check=True, capture_output=True, cwd=ROOT)
    return n / (time.perf_counter() - t)


def cpu_seconds_of_children() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="res2net50_vd_26w_4s")
    p.add_argument("--onnx", metavar="PATH", help="use this ONNX instead of exporting --model")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()

    import onnxruntime as ort

    env = {"python": platform.python_version(), "onnxruntime": ort.__version__, "opencv": cv2.__version__,
           "numpy": np.__version__, "cpus": os.cpu_count(), "images": args.images, "runs": args.runs,
           "loadavg_1min_before": round(os.getloadavg()[0], 2)}
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "images").mkdir()
        paths = write_images(d / "images", args.images)
        onnx_path = Path(args.onnx) if args.onnx else export(args.model, d)
        env["model"] = args.model if not args.onnx else str(onnx_path)
        print(f"{'batch':>5s} {'e2e img/s':>10s} {'e2e spinning':>13s} {'model img/s':>12s} {'CLI img/s':>10s}   "
              f"{'e2e img/CPU-s':>14s} {'spinning':>9s} {'model':>7s} {'CLI':>6s}  provider")
        for b in args.batch:
            r = bench_batch(onnx_path, paths, b, args.runs)
            before = cpu_seconds_of_children()
            r["cli_img_s"] = round(cli_once(onnx_path, d / "images", b, len(paths)), 2)
            r["cli_img_per_cpu_s"] = round(len(paths) / (cpu_seconds_of_children() - before), 2)
            rows.append(r)
            print(f"{b:>5d} {r['e2e_img_s']:>10.2f} {r['e2e_spinning_img_s']:>13.2f} {r['model_img_s']:>12.2f} "
                  f"{r['cli_img_s']:>10.2f}   {r['e2e_img_per_cpu_s']:>14.2f} {r['e2e_spinning_img_per_cpu_s']:>9.2f} "
                  f"{r['model_img_per_cpu_s']:>7.2f} {r['cli_img_per_cpu_s']:>6.2f}  {r['provider']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
