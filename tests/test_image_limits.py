"""Bounded decoding: every format's header read before decoding, images over the pixel or byte limit refused in one
line without the memory or time their decode would take (infer.py included), accepted images decoded as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import image_factory as imf
import numpy as np
import pytest

from trt_res2net.data.image_header import image_size
from trt_res2net.data.preprocess import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageLimits,
    ImageTooLarge,
    check_encoded,
    decode_image,
    preprocess,
)

ROOT = Path(__file__).resolve().parents[1]


def encoded(ext: str, img: np.ndarray) -> bytes | None:
    try:
        ok, buf = cv2.imencode(ext, img)
    except cv2.error:
        return None
    return buf.tobytes() if ok else None


# Every format this OpenCV writes: the header's dimensions are the decoded ones.
FORMATS = [".jpg", ".png", ".bmp", ".webp", ".tiff", ".jp2", ".ppm", ".pgm", ".pbm", ".pam", ".pfm", ".ras", ".hdr",
           ".gif", ".avif", ".exr"]


@pytest.mark.parametrize("ext", FORMATS)
def test_the_header_gives_the_decoded_size(ext):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (123, 457, 3), dtype=np.uint8)
    if ext in (".pgm", ".pbm"):
        img = img[:, :, 0]
    if ext in (".hdr", ".pfm", ".exr"):
        img = img.astype(np.float32) / 255
    data = encoded(ext, img)
    if data is None:
        pytest.skip(f"this OpenCV ({cv2.__version__}) does not write {ext}")
    found = image_size(data)
    assert found is not None and found[1:] == (457, 123), (ext, found)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is not None:
        assert decoded.shape[:2] == (123, 457)


@pytest.mark.parametrize("name", sorted(imf.AWKWARD))
def test_awkward_images_declare_what_they_decode_to(name):
    data = imf.AWKWARD[name]()
    fmt, w, h = image_size(data)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert w * h == decoded.shape[0] * decoded.shape[1]  # EXIF orientation may swap the two
    assert np.array_equal(decode_image(data), decoded)  # accepted images: the same decode, bit for bit


def test_a_jpeg_frame_header_cannot_hide_behind_garbage():
    data = (imf.DATA / "coffee.jpg").read_bytes()
    # libjpeg skips bytes between segments ("extraneous bytes before marker"); so does the header reader
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    spoiled = data[:app0_end] + b"\x00\x13\x37garbage" + data[app0_end:]
    assert image_size(spoiled) == image_size(data) == ("JPEG", *decode_image(data).shape[1::-1])
    decoded = cv2.imdecode(np.frombuffer(spoiled, np.uint8), cv2.IMREAD_COLOR)  # what the decoder makes of it
    assert decoded is not None and decoded.shape[1::-1][:2] == image_size(spoiled)[1:]


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM12", b"RIFF\0\0\0\0WEBPVP8X",
                                  b"II*\x00\xff\xff\xff\x00", b"P6\n# c", imf.text(), imf.random_bytes()])
def test_cut_short_or_unknown_headers_say_nothing(data):
    assert image_size(data) is None


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM12", b"RIFF\0\0\0\0WEBPVP8X",
                                  b"II*\x00\xff\xff\xff\x00", b"P6\n# c"])
def test_a_known_format_whose_header_says_nothing_is_refused_not_passed_through(data):
    with pytest.raises(ImageDecodeError) as e:
        check_encoded(data)
    assert "\n" not in str(e.value) and ("does not say its size" in str(e.value) or "truncated" in str(e.value))
    assert check_encoded(imf.text()) is None and check_encoded(imf.random_bytes()) is None  # the decoder judges them


def test_the_bomb_is_refused_in_microseconds_without_decoding():
    bomb = imf.png_bomb()
    assert 1_000_000 < len(bomb) < 1_300_000 and image_size(bomb) == ("PNG", 20000, 20000)
    t = time.perf_counter()
    with pytest.raises(ImageTooLarge) as e:
        decode_image(bomb)
    assert time.perf_counter() - t < 0.05
    assert str(e.value) == ("PNG of 20000×20000 pixels (400.0 MP) is over the 64 MP limit "
                            "(ImageLimits(max_pixels=...) raises it)")
    with pytest.raises(ImageDecodeError, match="over the 64 MP limit"):
        preprocess(bomb)
    small = imf.png_bomb(300, 200)  # the same construction decodes to what it declares
    assert decode_image(small).shape == (200, 300, 3) and not decode_image(small).any()


def test_limits_are_configurable_and_name_the_option():
    photo = (imf.DATA / "coffee.jpg").read_bytes()
    w, h = check_encoded(photo)
    limits = ImageLimits(max_pixels=w * h - 1, pixels_option="--max-image-pixels")
    with pytest.raises(ImageTooLarge, match=r"over the 0\.\d+ MP limit \(--max-image-pixels raises it\)"):
        decode_image(photo, limits)
    assert decode_image(photo, ImageLimits(max_pixels=w * h)).shape == (h, w, 3)
    with pytest.raises(ImageTooLarge, match=r"is over the limit of 1000 bytes on encoded images"):
        check_encoded(photo, ImageLimits(max_bytes=1000))
    assert (DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_BYTES) == (ImageLimits().max_pixels, ImageLimits().max_bytes)


def test_a_file_over_the_byte_limit_is_not_read(tmp_path, monkeypatch):
    big = tmp_path / "big.jpg"
    big.write_bytes(imf.oversized_jpeg(3_000_000))
    read = []
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or b"")
    with pytest.raises(ImageTooLarge) as e:
        decode_image(big, ImageLimits(max_bytes=2_000_000, bytes_option="--max-image-bytes"))
    assert read == [] and str(e.value) == (f"{big}: 3 MB is over the limit of 2 MB on encoded images "
                                           "(--max-image-bytes raises it)")


MEASURE = """
import resource, sys, time
from trt_res2net.cli.infer import main
t = time.perf_counter()
code = main(sys.argv[1:])
print(f"MEASURED {time.perf_counter() - t:.3f} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr)
raise SystemExit(code)
"""


def run_infer(*args, cwd):
    proc = subprocess.run([sys.executable, "-c", MEASURE, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    seconds, maxrss_kib = proc.stderr.rsplit("MEASURED ", 1)[1].split()
    return proc, float(seconds), int(maxrss_kib) / 1024


def test_infer_py_skips_the_bomb_in_one_line_and_nothing_else_slows(tiny_onnx, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in imf.PHOTOS:
        (photos / p.name).write_bytes(p.read_bytes())
    common = ["--json", tmp_path / "out.json", "--no-progress", "--threads", "2"]
    _, without, rss_without = run_infer(tiny_onnx, photos, *common, cwd=tmp_path)
    (photos / "bomb.png").write_bytes(imf.png_bomb())
    proc, with_bomb, rss_with = run_infer(tiny_onnx, photos, *common, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # some image failed, the rest classified
    lines = [ln for ln in proc.stderr.splitlines() if "bomb.png" in ln]
    assert lines == [f"skipped {photos / 'bomb.png'}: PNG of 20000×20000 pixels (400.0 MP) is over the 64 MP limit "
                     "(--max-image-pixels raises it)"], proc.stderr
    assert "Traceback" not in proc.stderr
    results = json.loads((tmp_path / "out.json").read_text())
    assert sum("topk" in r for r in results) == len(imf.PHOTOS) and sum("error" in r for r in results) == 1
    # Decoding it would take 1.2 GB and seconds; refusing it takes neither.
    assert with_bomb < without + 1.0, (with_bomb, without)
    assert rss_with < rss_without + 100, (rss_with, rss_without)


def test_infer_py_byte_limit_flag(tiny_onnx, tmp_path):
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes((imf.DATA / "coffee.jpg").read_bytes())
    proc, _, _ = run_infer(tiny_onnx, photo, "--max-image-bytes", 1000, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 1 and "over the limit of 1000 bytes on encoded images (--max-image-bytes raises it)" \
        in proc.stderr
    proc, _, _ = run_infer(tiny_onnx, photo, "--max-image-pixels", 0, cwd=tmp_path)
    assert proc.returncode == 2 and "--max-image-pixels" in proc.stderr and "Traceback" not in proc.stderr
