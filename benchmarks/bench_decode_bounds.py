#!/usr/bin/env python3
"""What the crafted images of issue 21 cost: decoded by ``decode_image``, each in a fresh process.

    python benchmarks/bench_decode_bounds.py [--package-root DIR] [--only NAME ...]

For each image: the outcome (the first 100 characters of the one-line refusal, or the decoded shape), the wall time
of ``decode_image`` in milliseconds (cv2 already imported) and the process's peak resident memory (VmHWM).
``--package-root`` runs another checkout's ``trt_res2net`` (e.g. ``git archive <commit> trt_res2net | tar -x -C
/tmp/old``) for a before/after comparison. ``--cv2-only`` adds rows timing ``cv2.imdecode`` alone on the image, past
every check of this project, under OpenCV's default limits: what the decode itself costs.

The images are full-size bombs, built here (a few seconds): a deflate-compressed 20000×20000 TIFF whose first
ImageWidth / ImageLength entries say 20000 and later ones 100, the same as SLONG values, a 19000×19000 PBM whose size
follows a 4 KB comment, a run-length-encoded 20000×20000 Radiance HDR after a 20 KB header, and 8000×8000
progressive JPEGs of one grey of 694, 500, 33, 32 and 10 scans (10: as OpenCV encodes it).
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import crafted_images as ci  # noqa: E402


def deflated_tiff(side: int, dims) -> bytes:
    """A grey ``side``×``side`` TIFF of zeros in one deflate strip, with ImageWidth / ImageLength entries ``dims``."""
    z = zlib.compressobj(9)
    row = b"\0" * side
    strip = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    data = bytearray(ci.tiff(side, side, dims, pixels=strip))
    # Compression (259) = 8, deflate: patch the SHORT value of the one entry written as 1
    at = data.find(struct.pack("<HHI", 259, ci.SHORT, 1))
    data[at + 8 : at + 10] = struct.pack("<H", 8)
    return bytes(data)


def pbm(side: int) -> bytes:
    return b"P4\n#" + b"x" * 4000 + b"\n%d %d\n" % (side, side) + b"\0" * (side * ((side + 7) // 8))


def hdr(side: int) -> bytes:
    runs = []
    left = side
    while left:
        n = min(127, left)
        runs.append(bytes([128 + n, 0]))
        left -= n
    line = b"\x02\x02" + struct.pack(">H", side) + b"".join(runs) * 4
    return (b"#?RADIANCE\n" + b"COMMENT=padding the header\n" * 800 + b"FORMAT=32-bit_rle_rgbe\n\n"
            + b"-Y %d +X %d\n" % (side, side) + line * side)


IMAGES = {
    "tiff_duplicate_tags": lambda: deflated_tiff(20000, [(256, ci.LONG, 20000), (257, ci.LONG, 20000),
                                                         (256, ci.LONG, 100), (257, ci.LONG, 100)]),
    "tiff_slong": lambda: deflated_tiff(20000, [(256, ci.SLONG, 20000), (257, ci.SLONG, 20000)]),
    "pbm_long_comment": lambda: pbm(19000),
    "hdr_long_header": lambda: hdr(20000),
    "jpeg_694_scans": lambda: ci.progressive_jpeg(8000, 8000, 694, flat=True),
    "jpeg_500_scans": lambda: ci.progressive_jpeg(8000, 8000, 500, flat=True),
    "jpeg_33_scans": lambda: ci.progressive_jpeg(8000, 8000, 33, flat=True),
    "jpeg_32_scans": lambda: ci.progressive_jpeg(8000, 8000, 32, flat=True),
    "jpeg_10_scans": lambda: ci.progressive_jpeg(8000, 8000, 10, flat=True),
}

RUN = """
import json, sys, time
import trt_res2net
assert trt_res2net.__file__.startswith(sys.argv[3]), trt_res2net.__file__
mode, path = sys.argv[1:3]
data = open(path, "rb").read()
if mode == "cv2_only":
    import cv2, numpy as np
    t = time.perf_counter()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    outcome = "decoded %s" % (img.shape,) if img is not None else "not decoded"
else:
    from trt_res2net.data.preprocess import ImageDecodeError, decode_image
    import cv2  # imported before timing (after the package, which sets OpenCV's limit first)
    t = time.perf_counter()
    try:
        outcome = "decoded %s" % (decode_image(data).shape,)
    except ImageDecodeError as e:
        outcome = "refused: " + e.reason[:100]
seconds = time.perf_counter() - t
peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps({"outcome": outcome, "ms": round(seconds * 1000, 2), "peak_mb": round(peak)}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--package-root", type=Path, default=ROOT)
    ap.add_argument("--only", nargs="*", choices=sorted(IMAGES))
    ap.add_argument("--cv2-only", action="store_true", help="also time cv2.imdecode alone")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    env["PYTHONPATH"] = str(args.package_root)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or IMAGES:
            path = Path(tmp) / name
            path.write_bytes(IMAGES[name]())
            for mode in ("decode_image", "cv2_only") if args.cv2_only else ("decode_image",):
                proc = subprocess.run([sys.executable, "-c", RUN, mode, str(path), str(args.package_root.resolve())],
                                      capture_output=True, text=True, env=env, cwd=tmp)
                result = json.loads(proc.stdout) if proc.returncode == 0 else {"outcome": proc.stderr[-200:]}
                print(json.dumps({"image": name, "bytes": path.stat().st_size, "mode": mode, **result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
