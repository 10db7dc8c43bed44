#!/usr/bin/env python3
"""End-to-end images/s of infer.py's path on ONNX Runtime (CPU here) for a zoo model at several batch sizes.

    python benchmarks/bench_infer_ort.py [--model res2net50_vd_26w_4s] [--batch 1 8] [--images 64]
                                         [--runs 3] [--onnx PATH] [--json out.json]

The model is exported with seeded random weights (``build.py --random-weights`` does the same; speed does
not depend on the weights) unless --onnx names an existing export. The images are --images JPEG files at
typical ImageNet validation sizes, generated from the photographs in tests/data and written to a temporary
folder. Per batch size:
- end-to-end: ``Classifier.classify`` over all files — reading, decoding and preprocessing in 2 threads
  ahead of inference, ONNX Runtime, softmax, top-5 — exactly what ``infer.py`` runs; median of --runs
  passes after a warm-up pass;
- model only: ``backend.run`` on the already preprocessed batches, same images, median of --runs;
- the CLI once: ``python infer.py MODEL DIR -q --batch N`` as a subprocess, wall time including
  interpreter start, imports and session creation.
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
    from trt_res2net import weights, zoo
    from trt_res2net.onnx_export import export_onnx

    spec = zoo.get_model(model)
    path = directory / f"{model}.onnx"
    t = time.perf_counter()
    export_onnx(spec, weights.random_weights(spec, seed=0), path)
    print(f"exported {path.name} with random weights in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


def bench_batch(onnx_path: Path, paths: list[Path], batch: int, runs: int) -> dict:
    from trt_res2net.preprocess import preprocess_batch
    from trt_res2net.runtime import Classifier

    clf = Classifier(onnx_path, batch=batch, threads=2)
    list(clf.classify(paths[: max(batch, 4)]))  # warm-up: first runs allocate ORT buffers
    e2e = []
    for _ in range(runs):
        t = time.perf_counter()
        results = list(clf.classify(paths))
        e2e.append(len(paths) / (time.perf_counter() - t))
        assert len(results) == len(paths) and all("topk" in r for r in results)
    pre = preprocess_batch(paths)
    model_only = []
    for _ in range(runs):
        t = time.perf_counter()
        for i in range(0, len(paths), batch):
            clf.backend.run(pre[i : i + batch])
        model_only.append(len(paths) / (time.perf_counter() - t))
    return {"batch": batch, "e2e_img_s": round(statistics.median(e2e), 2), "e2e_all": [round(x, 2) for x in e2e],
            "model_img_s": round(statistics.median(model_only), 2),
            "model_all": [round(x, 2) for x in model_only], "provider": clf.backend.provider}


def cli_once(onnx_path: Path, directory: Path, batch: int, n: int) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "infer.py"), str(onnx_path), str(directory), "-q",
                    "--no-progress", "--batch", str(batch)], check=True, capture_output=True, cwd=ROOT)
    return n / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="res2net50_vd_26w_4s")
    p.add_argument("--onnx", metavar="PATH", help="use this ONNX instead of exporting --model")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
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
        print(f"{'batch':>5s} {'end-to-end img/s':>17s} {'model-only img/s':>17s} {'e2e/model':>10s} "
              f"{'CLI img/s':>10s}  provider")
        for b in args.batch:
            r = bench_batch(onnx_path, paths, b, args.runs)
            r["cli_img_s"] = round(cli_once(onnx_path, d / "images", b, len(paths)), 2)
            r["e2e_over_model"] = round(r["e2e_img_s"] / r["model_img_s"], 3)
            rows.append(r)
            print(f"{b:>5d} {r['e2e_img_s']:>17.2f} {r['model_img_s']:>17.2f} {r['e2e_over_model']:>10.2f} "
                  f"{r['cli_img_s']:>10.2f}  {r['provider']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
