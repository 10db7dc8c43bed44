#!/usr/bin/env python3
"""How exactly the CUDA kernel's arithmetic (its numpy port) reproduces OpenCV, on this machine's OpenCV.

    python benchmarks/check_kernel_port.py [--images 300] [--max-side 900] [--seed 0]

Resizes seeded random images (noise, blurred noise, flat; random sizes) to the spec's short-side-256 size
with cv2.resize(INTER_LINEAR) and with the kernel's port (``cuda_preprocess.emulate_resize``), and counts the
8-bit values that differ. For contrast it also counts them for the textbook fixed-point rounding of the
vertical pass, ``(h0*wy0 + h1*wy1 + 2^21) >> 22`` (OpenCV's scalar code), which the kernel does not use:
OpenCV's vectorised code truncates differently, and that is what the kernel reproduces. Needs no GPU.
Also prints the bytes the kernel moves for common photo sizes (``cuda_preprocess.kernel_traffic``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402

from trt_res2net.cuda import kernels as cp  # noqa: E402
from trt_res2net.data.preprocess import SPEC, preprocess_bgr  # noqa: E402


def scalar_rounding_resize(image, width, height):
    """The resize with OpenCV's scalar vertical rounding instead of its SIMD truncation."""
    h, w = image.shape[:2]
    x0, x1, wx0, wx1 = cp.axis_coefficients(np.arange(width), cp.resize_scale(w, width), w, True)
    y0, y1, wy0, wy1 = cp.axis_coefficients(np.arange(height), cp.resize_scale(h, height), h, False)
    img = image.astype(np.int64)
    h0 = img[y0][:, x0] * wx0[None, :, None] + img[y0][:, x1] * wx1[None, :, None]
    h1 = img[y1][:, x0] * wx0[None, :, None] + img[y1][:, x1] * wx1[None, :, None]
    v = (h0 * wy0[:, None, None] + h1 * wy1[:, None, None] + (1 << 21)) >> 22
    return np.clip(v, 0, 255).astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--max-side", type=int, default=900)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    values = port_diff = scalar_diff = port_max = scalar_max = 0
    pre_max = 0.0
    for i in range(args.images):
        h, w = (int(v) for v in rng.integers(2, args.max_side, 2))
        kind = i % 3
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        if kind == 1:
            img = cv2.GaussianBlur(img, (0, 0), 3)
        elif kind == 2:
            img = np.full((h, w, 3), rng.integers(0, 256), np.uint8)
        new_w, new_h = SPEC.resized_size(w, h)
        ref = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.int16)
        d_port = np.abs(cp.emulate_resize(img, new_w, new_h) - ref)
        d_scalar = np.abs(scalar_rounding_resize(img, new_w, new_h) - ref)
        values += ref.size
        port_diff += int((d_port > 0).sum())
        scalar_diff += int((d_scalar > 0).sum())
        port_max, scalar_max = max(port_max, int(d_port.max())), max(scalar_max, int(d_scalar.max()))
        pre_max = max(pre_max, float(np.abs(cp.emulate_preprocess(img) - preprocess_bgr(img)).max()))
    print(f"OpenCV {cv2.__version__}; {args.images} images up to {args.max_side} px; {values} resized values")
    print(f"kernel port:           {port_diff} values differ from cv2.resize (max {port_max})")
    share = scalar_diff / values
    print(f"scalar-rounding variant: {scalar_diff} values differ ({share:.2%}, max {scalar_max})")
    print(f"kernel port vs preprocess_bgr after normalisation: max |difference| {pre_max:g}")
    print("\nbytes the kernel moves per image "
          "(source window H2D; DRAM read in 32-byte sectors; output written):")
    for shape in ((375, 500), (224, 224), (480, 640), (1080, 1920), (3000, 4000)):
        t = cp.kernel_traffic([shape])
        image_bytes = shape[0] * shape[1] * 3
        print(f"  {shape[1]}x{shape[0]}: image {image_bytes:>10,}  window {t['window_bytes']:>10,}  "
              f"read {t['read_bytes']:>9,}  written {t['write_bytes']:,}")
    return 0 if port_diff == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
