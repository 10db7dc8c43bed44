#!/usr/bin/env python3
"""Preprocessing throughput: trt_res2net.data.preprocess against a straightforward PaddleClas-style recipe.

    python benchmarks/bench_preprocess.py [--runs 5] [--threads 2] [--images 48] [--json out.json]

Both implementations take the same encoded JPEGs from memory (no disk I/O) and write float32 [3,224,224]
into rows of one batch array, in a pool of --threads threads (the baseline gets the same pool). Two
figures per image set: from encoded bytes (decode + preprocess, what inference pays), and from decoded
BGR arrays (the preprocessing alone). Images/s is the median of --runs timed passes after one warm-up;
the ratio is ours over the baseline's, measured in the same run, passes alternating. Images per CPU-second
(process CPU time over all threads) is printed too: on a shared machine it moves far less than wall time.
Output equality is checked on every image: bit-for-bit against the recipe with scale 1/255 (the training
configs' value, which SPEC records); the largest difference against the deploy config's rounded scale
0.00392157 is reported.

Image sets, generated from the four photographs in tests/data (no dataset download is possible here):
"imagenet" — JPEG q90 at typical ImageNet validation sizes (500×375, 375×500, 500×333, 500×500, 640×480);
"camera" — 2048×1536 and 1536×2048 JPEG q90.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trt_res2net.data.preprocess import SPEC, preprocess, preprocess_bgr  # noqa: E402

SIZES = {
    "imagenet": [(500, 375), (375, 500), (500, 333), (500, 500), (640, 480)],
    "camera": [(2048, 1536), (1536, 2048)],
}


def paddleclas_style(src, scale: float = 1.0 / 255.0) -> np.ndarray:
    """PaddleClas deploy/python/preprocess.py, op by op (DecodeImage → ResizeImage → CropImage →
    NormalizeImage(order='') → ToCHWImage) for an encoded image, or from decode on for an array."""
    if isinstance(src, np.ndarray):
        img = src
    else:
        img = cv2.imdecode(np.frombuffer(src, dtype="uint8"), 1)
    img = img[:, :, ::-1]
    img_h, img_w = img.shape[:2]
    percent = float(SPEC.resize_short) / min(img_w, img_h)
    w, h = int(round(img_w * percent)), int(round(img_h * percent))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    img_h, img_w = img.shape[:2]
    c = SPEC.crop_size
    w_start, h_start = (img_w - c) // 2, (img_h - c) // 2
    img = img[h_start : h_start + c, w_start : w_start + c, :]
    mean = np.array(SPEC.mean).reshape((1, 1, 3)).astype("float32")
    std = np.array(SPEC.std).reshape((1, 1, 3)).astype("float32")
    img = (img.astype("float32") * np.float32(scale) - mean) / std
    return img.transpose((2, 0, 1))


def make_images(kind: str, n: int) -> list[bytes]:
    photos = sorted((ROOT / "tests" / "data").glob("*.jpg"))
    sources = [cv2.imread(str(p)) for p in photos]
    sizes = SIZES[kind]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = cv2.resize(sources[i % len(sources)], (w, h), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(buf.tobytes())
    return out


def run_pass(fn, items, out, pool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the whole process, all threads) for one pass."""
    t, c = time.perf_counter(), time.process_time()
    if pool is None:
        for i, x in enumerate(items):
            fn(i, x, out)
    else:
        list(pool.map(lambda ix: fn(ix[0], ix[1], out), enumerate(items)))
    return time.perf_counter() - t, time.process_time() - c


def ours(i, x, out):
    preprocess(x, out=out[i]) if not isinstance(x, np.ndarray) else preprocess_bgr(x, out=out[i])


def baseline(i, x, out):
    out[i] = paddleclas_style(x)


def measure(items, threads: int, runs: int) -> dict:
    out_a = np.empty((len(items), 3, SPEC.crop_size, SPEC.crop_size), np.float32)
    out_b = np.empty_like(out_a)
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    try:
        rates = {"ours": [], "baseline": []}
        cpu_rates = {"ours": [], "baseline": []}
        for r in range(runs + 1):  # the first pass warms up
            # Alternate the order so neither side always runs on a warmer cache.
            order = [("ours", ours, out_a), ("baseline", baseline, out_b)]
            for name, fn, out in order if r % 2 == 0 else order[::-1]:
                dt, cpu = run_pass(fn, items, out, pool)
                if r:
                    rates[name].append(len(items) / dt)
                    cpu_rates[name].append(len(items) / cpu)
    finally:
        if pool:
            pool.shutdown()
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_rates.items()}
    return {"ours_img_s": round(med["ours"], 1), "baseline_img_s": round(med["baseline"], 1),
            "ratio": round(med["ours"] / med["baseline"], 3),
            "ours_img_per_cpu_s": round(cpu["ours"], 1), "baseline_img_per_cpu_s": round(cpu["baseline"], 1),
            "cpu_ratio": round(cpu["ours"] / cpu["baseline"], 3),
            "ours_all": [round(x, 1) for x in rates["ours"]], "baseline_all": [round(x, 1) for x in rates["baseline"]],
            "identical": bool(np.array_equal(out_a, out_b))}


def per_image_ms(fn, items, runs: int) -> float:
    """Median over ``runs`` passes of the mean milliseconds per item, one thread."""
    fn(items[0])
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        for x in items:
            fn(x)
        times.append((time.perf_counter() - t) / len(items) * 1e3)
    return statistics.median(times)


def breakdown(runs: int) -> dict:
    """Single-thread milliseconds per step, to show where the time goes."""
    encoded = make_images("imagenet", 20)
    decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in encoded]
    camera = cv2.imdecode(np.frombuffer(make_images("camera", 1)[0], np.uint8), cv2.IMREAD_COLOR)
    w, h = SPEC.resized_size(camera.shape[1], camera.shape[0])
    return {
        "imagenet_decode_ms": per_image_ms(lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), 1), encoded, runs),
        "imagenet_ours_after_decode_ms": per_image_ms(preprocess_bgr, decoded, runs),
        "imagenet_baseline_after_decode_ms": per_image_ms(paddleclas_style, decoded, runs),
        "camera_resize_contiguous_ms": per_image_ms(lambda x: cv2.resize(x, (w, h)), [camera], runs * 4),
        "camera_resize_reversed_view_ms": per_image_ms(lambda x: cv2.resize(x[:, :, ::-1], (w, h)), [camera],
                                                       runs * 4),
        "camera_copy_reversed_view_ms": per_image_ms(lambda x: np.ascontiguousarray(x[:, :, ::-1]), [camera],
                                                     runs * 4),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="timed passes per figure (median reported)")
    p.add_argument("--threads", type=int, default=2, help="worker threads for both implementations")
    p.add_argument("--images", type=int, default=48, help="images per set")
    p.add_argument("--sets", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()

    env = {"python": platform.python_version(), "numpy": np.__version__, "opencv": cv2.__version__,
           "cpus": os.cpu_count(), "cv2_threads": cv2.getNumThreads(), "threads": args.threads, "runs": args.runs,
           "loadavg_1min_before": round(os.getloadavg()[0], 2)}
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    rows = []
    print(f"{'set':9s} {'input':8s} {'ours img/s':>11s} {'baseline img/s':>15s} {'ratio':>6s} "
          f"{'ours img/CPU-s':>15s} {'baseline img/CPU-s':>19s} {'ratio':>6s}  identical")
    for kind in args.sets:
        encoded = make_images(kind, args.images)
        decoded = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR) for b in encoded]
        worst_deploy = max(float(np.abs(preprocess(b) - paddleclas_style(b, 0.00392157)).max()) for b in encoded)
        for label, items in (("encoded", encoded), ("decoded", decoded)):
            r = measure(items, args.threads, args.runs)
            r.update({"set": kind, "input": label, "images": len(items),
                      "max_abs_diff_vs_deploy_scale": worst_deploy})
            rows.append(r)
            print(f"{kind:9s} {label:8s} {r['ours_img_s']:>11.1f} {r['baseline_img_s']:>15.1f} {r['ratio']:>5.2f}x "
                  f"{r['ours_img_per_cpu_s']:>15.1f} {r['baseline_img_per_cpu_s']:>19.1f} {r['cpu_ratio']:>5.2f}x  "
                  f"{r['identical']}")
    print(f"max |ours - recipe with scale 0.00392157| = {max(r['max_abs_diff_vs_deploy_scale'] for r in rows):.3g}")
    steps = breakdown(args.runs)
    print("one thread, ms per image: " + ", ".join(f"{k} {v:.2f}" for k, v in steps.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows, "breakdown_ms": steps}, indent=2) + "\n")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
