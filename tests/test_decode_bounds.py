"""Decoding bounded by construction (issue 21): the header reader against what OpenCV really decodes, over crafted
headers of every format it reads (seeded random cases: ``hypothesis`` is not a dependency); the crafted bombs refused
in one line before any large allocation (in a subprocess whose address space is limited to 1 GB); OpenCV's own
pixel limit set in every process that decodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import crafted_images as ci
import cv2
import numpy as np
import pytest

from trt_res2net.data.image_header import image_format, image_size, jpeg_scans
from trt_res2net.data.preprocess import DEFAULT_MAX_JPEG_SCANS, ImageDecodeError, ImageLimits, check_encoded

ROOT = Path(__file__).resolve().parents[1]
CASES = int(os.environ.get("DECODE_BOUNDS_CASES", "200"))  # per format; each a few-pixel image, decoded for real


def decoded_size(data: bytes) -> tuple[int, int] | None:
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    return None if img is None else (img.shape[1], img.shape[0])


def agrees(data: bytes) -> None:
    """Whatever OpenCV decodes, the reader declared exactly (and check_encoded accepts it); what the reader cannot
    read is refused by check_encoded, never passed through."""
    decoded, declared = decoded_size(data), image_size(data)
    if decoded is not None:
        assert declared is not None and declared[1:] == decoded, (declared, decoded, data[:80])
    if declared is None and image_format(data) is not None:
        with pytest.raises(ImageDecodeError):
            check_encoded(data)


def _gap(rng, pnm: bool) -> bytes:
    """Whitespace and, for PNM, comments ending in LF or CR, sometimes longer than any fixed look at the header. It
    starts with whitespace (OpenCV reads a "#" right after a number as that number's end, then fails)."""
    parts = [bytes(rng.choice(list(b" \t\n\r\v\f"), rng.integers(1, 3)).astype(np.uint8))]
    for _ in range(rng.integers(0, 4)):
        if pnm and rng.random() < 0.5:
            parts.append(b"#" + b"c" * int(rng.choice([0, 5, 1500, 9000])) + rng.choice([b"\n", b"\r"]))
        else:
            parts.append(bytes(rng.choice(list(b" \t\n\r\v\f"), rng.integers(1, 4)).astype(np.uint8)))
    return b"".join(parts)


def test_tiff_first_tag_wins_with_every_integer_type():
    rng = np.random.default_rng(21)
    types = [ci.BYTE, ci.SHORT, ci.LONG, ci.SBYTE, ci.SSHORT, ci.SLONG, ci.LONG8, ci.SLONG8]
    for _ in range(CASES):
        w, h = (int(v) for v in rng.integers(1, 40, 2))
        dims = [(256, int(rng.choice(types)), w), (257, int(rng.choice(types)), h)]
        for _ in range(rng.integers(0, 3)):  # later duplicates, with other values: libtiff ignores them
            dims.append((int(rng.choice([256, 257])), int(rng.choice(types)), int(rng.integers(1, 60))))
        order = rng.permutation(len(dims)) if rng.random() < 0.3 else range(len(dims))
        dims = [dims[i] for i in order]
        data = ci.tiff(w, h, dims, big_endian=bool(rng.random() < 0.5), pixels=b"\x7f" * (60 * 60))
        agrees(data)


def test_tiff_entries_libtiff_refuses_are_refused():
    for dims in ([(256, ci.SLONG, -5), (257, ci.LONG, 5)], [(256, ci.SSHORT, -1), (257, ci.LONG, 5)],
                 [(257, ci.LONG, 5)]):
        data = ci.tiff(5, 5, dims)
        assert image_size(data) is None and decoded_size(data) is None
        with pytest.raises(ImageDecodeError, match="TIFF whose header does not say its size"):
            check_encoded(data)


@pytest.mark.parametrize("kind", [b"P1", b"P2", b"P3", b"P4", b"P5", b"P6"])
def test_pnm_comments_and_whitespace_of_any_length(kind):
    rng = np.random.default_rng(int.from_bytes(kind, "big"))
    for _ in range(CASES // 2):
        w, h = (int(v) for v in rng.integers(1, 30, 2))
        agrees(ci.pnm(kind, w, h, [_gap(rng, True) for _ in range(3)]))


def test_pam_and_pfm():
    rng = np.random.default_rng(7)
    for _ in range(CASES // 2):
        w, h = (int(v) for v in rng.integers(1, 30, 2))
        comment = b"# " + b"x" * int(rng.choice([0, 3000])) + b"\n"
        agrees(b"P7\n" + comment + b"WIDTH %d\nHEIGHT %d\nDEPTH 1\nMAXVAL 255\nTUPLTYPE GRAYSCALE\nENDHDR\n" % (w, h)
               + b"\x40" * (w * h))
        agrees(b"Pf\n%d %d\n-1.0\n" % (w, h) + np.full(w * h, 0.5, "<f4").tobytes())


def test_hdr_header_lines_of_any_length():
    rng = np.random.default_rng(8)
    for _ in range(CASES):
        w, h = int(rng.integers(1, 8)), int(rng.integers(1, 9))  # under 8 wide: flat pixels
        # lengths around the 127-byte chunks OpenCV reads lines in, and far beyond
        lengths = rng.choice([1, 20, 125, 126, 127, 128, 253, 254, 255, 9000], rng.integers(0, 4))
        lines = [b"EXPOSURE=" + b"1" * max(0, int(n) - 9) if n > 9 else b"X" * int(n) for n in lengths]
        size_line = rng.choice([b"-Y %d +X %d" % (h, w), b"-Y  %d  +X %d" % (h, w), b"-Y %d +X +%d" % (h, w)])
        agrees(ci.hdr(w, h, lines, size_line))


def test_jpeg_segments_garbage_and_fill_bytes():
    rng = np.random.default_rng(9)
    for _ in range(CASES // 2):
        w, h = (int(v) for v in rng.integers(1, 40, 2))
        _, buf = cv2.imencode(".jpg", np.full((h, w, 3), 90, np.uint8))
        seg = ci.jpeg_segments(buf.tobytes())
        extra = [b"\xff\xfe" + (2 + n).to_bytes(2, "big") + b"c" * n for n in map(int, rng.integers(0, 3000, 3))]
        junk = [b"", b"\xff\xff\xff", b"garbage"][int(rng.integers(0, 3))]
        agrees(seg[0] + seg[1] + junk + b"".join(extra) + b"".join(seg[2:]))


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".jp2", ".ras", ".gif", ".tiff"])
def test_other_formats_as_opencv_writes_them(ext):
    rng = np.random.default_rng(len(ext))
    for _ in range(10):
        w, h = (int(v) for v in rng.integers(33, 80, 2))  # OpenJPEG will not encode much smaller ones
        try:
            ok, buf = cv2.imencode(ext, np.full((h, w, 3), 100, np.uint8))
        except cv2.error:
            ok = False
        if not ok:
            pytest.skip(f"this OpenCV does not write {ext} of {w}×{h}")
        agrees(buf.tobytes())


def test_a_progressive_jpeg_of_hundreds_of_scans_is_refused_in_one_line():
    bomb = ci.progressive_jpeg(64, 64, 600)
    assert len(bomb) < 100_000 and jpeg_scans(bomb) == 600 and decoded_size(bomb) == (64, 64)  # a legal image
    with pytest.raises(ImageDecodeError) as e:
        check_encoded(bomb)
    assert str(e.value) == ("JPEG of 600 scans is over the limit of 500 (each scan is a pass over the whole image; "
                            "ImageLimits(max_jpeg_scans=...) raises it)")
    assert check_encoded(bomb, ImageLimits(max_jpeg_scans=600)) == (64, 64)
    # garbage between segments, which libjpeg skips, hides no scan from the count
    hidden = b"".join(s + b"junk" if s[1] == 0xC4 else s for s in ci.jpeg_segments(bomb))
    assert jpeg_scans(hidden) == 600 and decoded_size(hidden) == (64, 64)
    normal = ci.progressive_jpeg(64, 64, 10)
    assert jpeg_scans(normal) == 10 < DEFAULT_MAX_JPEG_SCANS and check_encoded(normal) == (64, 64)


def test_jpeg_scans_are_bounded_by_their_pixels_too():
    """As many scans as 32 passes over an image of ``max_pixels``: at the full size 32 (at 64 MP, the default, 500
    scans would take tens of seconds), at a fifth of it 160."""
    limits = ImageLimits(max_pixels=200 * 200)
    assert check_encoded(ci.progressive_jpeg(200, 200, 32, flat=True), limits) == (200, 200)
    with pytest.raises(ImageDecodeError) as e:
        check_encoded(ci.progressive_jpeg(200, 200, 33, flat=True), limits)
    assert str(e.value) == ("JPEG of 33 scans at 200×200 pixels is over the limit of 32 scans at that size (each "
                            "scan is a pass over the whole image; ImageLimits(max_pixels=...) raises it)")
    assert check_encoded(ci.progressive_jpeg(100, 80, 160, flat=True), limits) == (100, 80)
    with pytest.raises(ImageDecodeError, match="161 scans at 100×80 pixels is over the limit of 160 scans"):
        check_encoded(ci.progressive_jpeg(100, 80, 161, flat=True), limits)


def test_a_jpeg_of_too_many_segments_is_refused():
    _, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = buf.tobytes()
    bloated = data[:2] + b"\xff\xfe\x00\x02" * 20_000 + data[2:]
    with pytest.raises(ImageDecodeError, match="too many segments"):
        check_encoded(bloated)


# Each crafted file is decoded in a fresh process limited to 1 GB of address space: what it declares (20000×20000)
# would take 1.2 GB or more decoded, so a refusal after any large allocation fails there.
BOMBS = {"tiff_duplicate_tags.tif": ci.tiff_bomb_duplicate, "tiff_slong.tif": ci.tiff_bomb_slong,
         "pbm_long_comment.pbm": ci.pbm_bomb, "hdr_long_header.hdr": ci.hdr_bomb,
         "jpeg_600_scans.jpg": lambda: ci.progressive_jpeg(64, 64, 600)}
DECODE_ALL = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from trt_res2net.data.preprocess import ImageDecodeError, decode_image
out = {}
for path in sys.argv[1:]:
    try:
        decode_image(path)
        out[path] = ["decoded", ""]
    except ImageDecodeError as e:
        out[path] = [type(e).__name__, str(e)]
# this process's own peak (ru_maxrss would include the parent's, kept across fork and exec)
out["peak_mb"] = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bombs")
    paths = []
    for name, make in BOMBS.items():
        (folder / name).write_bytes(make())
        paths.append(str(folder / name))
    proc = subprocess.run([sys.executable, "-c", DECODE_ALL, *paths], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out.pop("peak_mb") < 400  # Python, numpy and OpenCV themselves: about 100 MB
    return {Path(k).name: v for k, v in out.items()}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_crafted_bombs_are_refused_before_decoding(refusals, name):
    kind, message = refusals[name]
    assert kind == "ImageTooLarge" and "\n" not in message, (kind, message)
    if name != "jpeg_600_scans.jpg":
        assert "of 20000×20000 pixels (400.0 MP) is over the 64 MP limit" in message, message


OPENCV_LIMIT = """
import os, sys
import trt_res2net.data.images  # what infer.py, calibration and streams import: it sets the limit
assert "cv2" not in sys.modules
import cv2, numpy as np
print(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
try:
    cv2.imdecode(np.frombuffer(open(sys.argv[1], "rb").read(), np.uint8), cv2.IMREAD_COLOR)
    print("decoded")
except cv2.error as e:
    print("refused by OpenCV:", "CV_IO_MAX_IMAGE_PIXELS" in str(e))
"""


def test_opencv_itself_refuses_over_the_limit_in_every_decoding_process(tmp_path):
    """cv2.imdecode called directly, past every check of this project, is still bounded (no header reader here)."""
    import image_factory as imf

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(imf.png_bomb())
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    proc = subprocess.run([sys.executable, "-c", "import resource; resource.setrlimit(resource.RLIMIT_AS, "
                           "(1 << 30, 1 << 30))\n" + OPENCV_LIMIT, str(bomb)], capture_output=True, text=True,
                          timeout=60, env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.split("\n")[:2] == ["64000000", "refused by OpenCV: True"], proc.stdout + proc.stderr
    # a value the user set is kept
    proc = subprocess.run([sys.executable, "-c", OPENCV_LIMIT, str(bomb)], capture_output=True, text=True,
                          timeout=60, env={**env, "PYTHONPATH": str(ROOT), "OPENCV_IO_MAX_IMAGE_PIXELS": "1000"})
    assert proc.stdout.split("\n")[:2] == ["1000", "refused by OpenCV: True"], proc.stdout + proc.stderr


RAISED = """
import os, sys
from trt_res2net.data import preprocess
if sys.argv[1] == "raised":  # the first decode asks for more than the default: OpenCV is imported under its limit
    preprocess._import_cv2(preprocess.ImageLimits(max_pixels=100_000_000))
    print(os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"])
else:  # the user's 1000 pixels: the project's limit is larger, OpenCV's refuses, in one line that says so
    import cv2, numpy as np
    if sys.argv[1] == "unread":  # a format the header reader does not know: OpenCV's check alone
        preprocess.image_size = preprocess.image_format = lambda data: None
    try:
        preprocess.decode_image(cv2.imencode(".png", np.zeros((100, 100, 3), np.uint8))[1].tobytes())
    except preprocess.ImageTooLarge as e:
        print(e)
"""


@pytest.mark.parametrize("case, expected", [
    ("raised", "100000000"),
    ("user", "100×100 pixels is over OpenCV's own limit of 1000 pixels in this process (the environment variable "
             "OPENCV_IO_MAX_IMAGE_PIXELS, read when cv2 is first imported)"),
    ("unread", "the size its header gives OpenCV is over OpenCV's own limits (1000 pixels in this process, from "
               "OPENCV_IO_MAX_IMAGE_PIXELS; 2^20 a side)")])
def test_opencv_limit_follows_a_raised_limit_and_names_a_users_value(case, expected):
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"}
    if case in ("user", "unread"):
        env["OPENCV_IO_MAX_IMAGE_PIXELS"] = "1000"
    proc = subprocess.run([sys.executable, "-c", RAISED, case], capture_output=True, text=True, timeout=60,
                          env={**env, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.strip() == expected, proc.stdout + proc.stderr
