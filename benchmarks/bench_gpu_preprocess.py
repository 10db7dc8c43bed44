#!/usr/bin/env python3
"""The fused CUDA preprocessing kernel on a GPU: agreement with the CPU reference, and its time against the
floor set by the bytes it must move. Needs a CUDA GPU and cuda-python with NVRTC; no TensorRT.

    python benchmarks/bench_gpu_preprocess.py [IMAGE_OR_DIR ...] [--batch 1,8,32] [--iterations 200]
                                              [--warmup 20] [--json PATH]

Images default to tests/data (real photographs, when present) plus seeded synthetic photos of three
common sizes. Per batch size it reports:
- kernel: CUDA events around the kernel launch alone (source windows already on the device), median and
  p90 over --iterations; the floor is (bytes read + bytes written) / DRAM bandwidth, where the bandwidth
  is measured here with a device-to-device copy (and the datasheet figure is printed beside it);
- staged: host wall time of stage (window copies into pinned memory + H2D) + kernel + synchronise, and
  the H2D floor (window bytes / measured pinned H2D bandwidth);
- CPU: the reference ``preprocess_bgr`` per image on this host, for scale.
Every figure is the median of many runs measured in the same process. Record results in
docs/gpu_preprocessing.md with the command line used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trt_res2net.core.errors import UserError  # noqa: E402
from trt_res2net.cuda import device as cu  # noqa: E402
from trt_res2net.cuda.kernels import GpuKernels, emulate_preprocess, kernel_traffic  # noqa: E402
from trt_res2net.data.preprocess import SPEC, preprocess_bgr  # noqa: E402
from trt_res2net.runtime.benchmark import latency_stats, parse_batch_list, synthetic_images  # noqa: E402

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
STEP = 1.0 / 255.0  # one 8-bit step, before mean/std


def load_images(paths):
    import cv2

    files = []
    for p in paths:
        p = Path(p)
        files += sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES) if p.is_dir() else [p]
    images, names = [], []
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            print(f"warning: {f}: not a readable image; skipped", file=sys.stderr)
            continue
        images.append(img)
        names.append(str(f.relative_to(ROOT) if f.is_relative_to(ROOT) else f))
    return images, names


def default_images():
    images, names = load_images([ROOT / "tests" / "data"]) if (ROOT / "tests" / "data").is_dir() else ([], [])
    for size in ((500, 375), (1920, 1080), (4000, 3000)):
        images += synthetic_images(4, size=size, seed=sum(size))
        names += [f"synthetic {size[0]}x{size[1]} #{i}" for i in range(4)]
    return images, names


def measure_bandwidth(stream, kind: str, nbytes: int = 512 << 20, repeats: int = 10) -> float:
    """Bytes per second moved by a cudaMemcpyAsync (D2D counts read + write)."""
    src = cu.DeviceBuffer(nbytes) if kind == "dtod" else cu.PinnedBuffer(nbytes)
    dst = cu.DeviceBuffer(nbytes)
    start, end = cu.Event(), cu.Event()
    times = []
    try:
        for _ in range(repeats + 2):
            start.record(stream)
            if kind == "dtod":
                stream.copy_dtod(dst.address, src.address, nbytes)
            else:
                stream.copy_htod(dst.address, src.address, nbytes)
            end.record(stream)
            end.synchronize()
            times.append(end.elapsed_ms(start) / 1000.0)
    finally:
        src.free()
        dst.free()
        start.destroy()
        end.destroy()
    moved = 2 * nbytes if kind == "dtod" else nbytes
    return moved / float(np.median(times[2:]))


def check_agreement(kernels, stream, images, names):
    crop = SPEC.crop_size
    out = cu.DeviceBuffer(3 * crop * crop * 4)
    host = np.empty((1, 3, crop, crop), np.float32)
    std = np.asarray(SPEC.std, np.float32)[:, None, None]
    rows, worst = [], 0.0
    try:
        for img, name in zip(images, names, strict=True):
            kernels.preprocess([img], out.address)
            stream.copy_dtoh(host, out.address, host.nbytes)
            stream.synchronize()
            ref = preprocess_bgr(img)
            steps = np.abs(host[0] - ref) * std / STEP  # difference in 8-bit steps of the resized pixel
            exact_port = bool(np.array_equal(host[0], emulate_preprocess(img)))
            rows.append({"image": name, "shape": list(img.shape[:2]), "max_steps": float(steps.max()),
                         "differing_values": int((steps > 0.5).sum()), "equals_numpy_port": exact_port})
            worst = max(worst, float(steps.max()))
    finally:
        out.free()
    return rows, worst


def time_batches(kernels, stream, images, batches, iterations, warmup, dram_bw, h2d_bw):
    crop = SPEC.crop_size
    results = []
    start, end = cu.Event(), cu.Event()
    for b in batches:
        batch = [images[i % len(images)] for i in range(b)]
        out = cu.DeviceBuffer(b * 3 * crop * crop * 4)
        try:
            staged = kernels.stage(batch)
            stream.synchronize()
            kernel_ms = []
            for i in range(warmup + iterations):
                start.record(stream)
                kernels.launch_preprocess(staged, out.address)
                end.record(stream)
                end.synchronize()
                if i >= warmup:
                    kernel_ms.append(end.elapsed_ms(start))
            staged_ms = []
            for i in range(warmup + iterations):
                t0 = time.perf_counter()
                kernels.preprocess(batch, out.address)
                stream.synchronize()
                if i >= warmup:
                    staged_ms.append((time.perf_counter() - t0) * 1000.0)
        finally:
            out.free()
        traffic = kernel_traffic([im.shape[:2] for im in batch])
        device_bytes = traffic["read_bytes"] + traffic["write_bytes"] + traffic["desc_bytes"]
        kernel_floor_ms = device_bytes / dram_bw * 1e3
        h2d_floor_ms = (traffic["window_bytes"] + traffic["desc_bytes"]) / h2d_bw * 1e3
        k, s = latency_stats(kernel_ms), latency_stats(staged_ms)
        results.append({
            "batch": b, "traffic_bytes": traffic,
            "kernel_ms": k.to_dict(), "kernel_floor_ms": kernel_floor_ms,
            "kernel_over_floor": k.p50 / kernel_floor_ms,
            "staged_ms": s.to_dict(), "h2d_floor_ms": h2d_floor_ms,
        })
    start.destroy()
    end.destroy()
    return results


def cpu_reference_ms(images, repeats=3):
    times = []
    for img in images:
        best = min(_timed(preprocess_bgr, img) for _ in range(repeats))
        times.append(best)
    return float(np.median(times))


def _timed(fn, arg):
    t0 = time.perf_counter()
    fn(arg)
    return (time.perf_counter() - t0) * 1000.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGE_OR_DIR")
    parser.add_argument("--batch", type=parse_batch_list, default=[1, 8, 32], metavar="B[,B...]")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    try:
        info = cu.init_device(0)
        stream = cu.Stream()
        images, names = load_images(args.images) if args.images else default_images()
        if not images:
            raise UserError("no readable images")
        kernels = GpuKernels(stream, info.compute_capability)
        print(f"GPU: {info.name} (compute {info.cc}, {info.total_memory / 2**30:.1f} GiB), "
              f"kernel image {kernels.cache_path.name}")
        dram_bw = measure_bandwidth(stream, "dtod")
        h2d_bw = measure_bandwidth(stream, "htod")
        peak = info.peak_bandwidth_bytes_per_s
        print(f"DRAM bandwidth (D2D copy, read+write): {dram_bw / 1e9:.0f} GB/s"
              + (f"; datasheet {peak / 1e9:.0f} GB/s" if peak else "")
              + f"; pinned H2D: {h2d_bw / 1e9:.1f} GB/s")
        rows, worst = check_agreement(kernels, stream, images, names)
        print(f"\nagreement with the CPU reference on {len(rows)} images: max {worst:.2f} 8-bit steps; "
              f"{sum(r['differing_values'] > 0 for r in rows)} images with any difference; "
              f"{sum(r['equals_numpy_port'] for r in rows)} bit-identical to the numpy port")
        for r in rows:
            if r["differing_values"] or not r["equals_numpy_port"]:
                port = "=" if r["equals_numpy_port"] else "≠"
                print(f"  {r['image']} {r['shape']}: max {r['max_steps']:.2f} steps, "
                      f"{r['differing_values']} values differ, numpy port {port}")
        results = time_batches(kernels, stream, images, args.batch, args.iterations, args.warmup,
                               dram_bw, h2d_bw)
        cpu_ms = cpu_reference_ms(images[: min(len(images), 16)])
        print(f"\n{'batch':>5} {'kernel p50':>11} {'p90':>8} {'floor':>8} {'x floor':>8} "
              f"{'staged p50':>11} {'H2D floor':>10} {'MB read':>8} {'MB H2D':>8}")
        for r in results:
            t = r["traffic_bytes"]
            print(f"{r['batch']:>5} {r['kernel_ms']['p50']:>11.4f} {r['kernel_ms']['p90']:>8.4f} "
                  f"{r['kernel_floor_ms']:>8.4f} {r['kernel_over_floor']:>8.2f} "
                  f"{r['staged_ms']['p50']:>11.3f} {r['h2d_floor_ms']:>10.3f} "
                  f"{t['read_bytes'] / 1e6:>8.2f} {t['window_bytes'] / 1e6:>8.2f}")
        print(f"(ms; CPU reference preprocess_bgr: {cpu_ms:.3f} ms per image, median over the images)")
        if args.json:
            from trt_res2net.core.files import write_json

            write_json(args.json, {
                "gpu": info.to_dict(), "dram_bandwidth_bytes_per_s": dram_bw,
                "h2d_bandwidth_bytes_per_s": h2d_bw,
                "datasheet_bandwidth_bytes_per_s": peak, "agreement": rows, "max_steps": worst,
                "timing": results, "cpu_reference_ms_per_image": cpu_ms,
                "settings": {"batches": args.batch, "iterations": args.iterations, "warmup": args.warmup},
            })
            print(f"wrote {args.json}")
        kernels.close()
        stream.destroy()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0 if worst <= 1.0 + 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
