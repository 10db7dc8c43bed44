"""Preprocessing equals PaddleClas's recipe on real photographs and on every awkward input."""

from __future__ import annotations

import subprocess
import sys

import cv2
import image_factory as imf
import numpy as np
import pytest

from trt_res2net.core.errors import EXIT_USAGE
from trt_res2net.data.preprocess import (
    SPEC,
    ImageDecodeError,
    decode_image,
    preprocess,
    preprocess_batch,
    preprocess_bgr,
)

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
# One 8-bit step after normalisation, in the channel where it is largest (smallest std).
ONE_STEP = 1.0 / 255.0 / min(STD)


def paddleclas_deploy(data: bytes, scale=0.00392157) -> np.ndarray:
    """A straight transcription of PaddleClas deploy/python/preprocess.py (DecodeImage → ResizeImage →
    CropImage → NormalizeImage(order='') → ToCHWImage) for Res2Net's inference_cls.yaml."""
    img = cv2.imdecode(np.frombuffer(data, dtype="uint8"), 1)
    img = img[:, :, ::-1]  # to_rgb
    img_h, img_w = img.shape[:2]
    percent = float(256) / min(img_w, img_h)
    w = int(round(img_w * percent))
    h = int(round(img_h * percent))
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    img_h, img_w = img.shape[:2]
    w_start = (img_w - 224) // 2
    h_start = (img_h - 224) // 2
    img = img[h_start : h_start + 224, w_start : w_start + 224, :]
    mean = np.array(MEAN).reshape((1, 1, 3)).astype("float32")
    std = np.array(STD).reshape((1, 1, 3)).astype("float32")
    img = (img.astype("float32") * np.float32(scale) - mean) / std
    return img.transpose((2, 0, 1))


def spec_in_numpy(data: bytes) -> np.ndarray:
    """An independent implementation of the recipe (docs/preprocessing.md) that does not use cv2.resize: bilinear with
    half-pixel centres and clamped edges in float64, rounded to 8 bits, then crop and normalise."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    rgb = bgr[:, :, ::-1]
    h, w = rgb.shape[:2]
    s = 256 / min(w, h)
    nw, nh = round(w * s), round(h * s)
    x0, y0 = (nw - 224) // 2, (nh - 224) // 2

    def taps(n_src, n_dst, start):
        d = np.arange(start, start + 224, dtype=np.float64)
        src = (d + 0.5) * (n_src / n_dst) - 0.5
        i0 = np.floor(src).astype(int)
        f = src - i0
        f[i0 < 0], i0[i0 < 0] = 0.0, 0
        last = i0 >= n_src - 1
        f[last], i0[last] = 0.0, n_src - 1
        i1 = np.minimum(i0 + 1, n_src - 1)
        return i0, i1, f

    yi0, yi1, fy = taps(h, nh, y0)
    xi0, xi1, fx = taps(w, nw, x0)
    rows = rgb[yi0].astype(np.float64) * (1 - fy)[:, None, None] + rgb[yi1] * fy[:, None, None]
    out = rows[:, xi0] * (1 - fx)[None, :, None] + rows[:, xi1] * fx[None, :, None]
    out = np.clip(np.floor(out + 0.5), 0, 255)
    out = (out / 255.0 - np.array(MEAN)) / np.array(STD)
    return out.transpose(2, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def image_bytes():
    cases = {p.name: p.read_bytes() for p in imf.PHOTOS}
    cases.update({name: make() for name, make in imf.AWKWARD.items()})
    return cases


@pytest.fixture(scope="module")
def huge_bytes():
    return imf.huge_jpeg(6000)


def test_photographs_are_shipped():
    assert len(imf.PHOTOS) >= 4
    assert all(p.stat().st_size < 100_000 for p in imf.PHOTOS)


def test_equals_paddleclas_training_recipe_bit_for_bit(image_bytes):
    # The training repo's NormalizeImage uses scale 1/255, which SPEC records: results are identical.
    for name, data in image_bytes.items():
        ours = preprocess(data)
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, paddleclas_deploy(data, scale=1.0 / 255.0), err_msg=name)


def test_matches_paddleclas_deploy_recipe(image_bytes):
    # The deploy config writes the scale as 0.00392157 (a rounded 1/255): a difference of float32 rounding.
    worst = max(float(np.abs(preprocess(d) - paddleclas_deploy(d)).max()) for d in image_bytes.values())
    assert worst < 1e-5


def test_6000x6000_image(huge_bytes):
    ours = preprocess(huge_bytes)
    np.testing.assert_array_equal(ours, paddleclas_deploy(huge_bytes, scale=1.0 / 255.0))


def test_independent_implementation_within_one_8bit_step(image_bytes, huge_bytes):
    off = total = 0
    for name, data in [*image_bytes.items(), ("huge", huge_bytes)]:
        diff = np.abs(preprocess(data) - spec_in_numpy(data))
        assert diff.max() <= ONE_STEP * 1.0001, name
        # OpenCV interpolates in 11-bit fixed point: most values agree exactly, a few are one step off.
        assert (diff > ONE_STEP / 2).mean() < 0.2, name
        off, total = off + int((diff > ONE_STEP / 2).sum()), total + diff.size
    print(f"independent implementation: {100 * off / total:.1f}% of values one 8-bit step off, none more")


def test_path_bytes_and_array_agree(tmp_path):
    path = imf.PHOTOS[0]
    data = path.read_bytes()
    from_path = preprocess(path)
    np.testing.assert_array_equal(from_path, preprocess(str(path)))
    np.testing.assert_array_equal(from_path, preprocess(data))
    np.testing.assert_array_equal(from_path, preprocess(cv2.imread(str(path))))
    np.testing.assert_array_equal(from_path, preprocess_bgr(cv2.imread(str(path))))
    # A non-ASCII file name (cv2.imread fails on these on Windows; we read bytes ourselves).
    other = tmp_path / "café ☕.jpg"
    other.write_bytes(data)
    np.testing.assert_array_equal(from_path, preprocess(other))


# ------------------------------------------------------------------------ how each awkward case decodes


def test_grayscale_is_replicated_to_three_channels(image_bytes):
    for name in ("gray.png", "gray.jpg", "gray16.png"):
        img = decode_image(image_bytes[name])
        assert img.shape[2] == 3
        assert np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 1], img[:, :, 2])


def test_alpha_is_dropped_not_composited(image_bytes):
    import io

    from PIL import Image

    rgba = np.asarray(Image.open(io.BytesIO(image_bytes["rgba.png"])))
    np.testing.assert_array_equal(decode_image(image_bytes["rgba.png"]), rgba[:, :, 2::-1])


def test_16bit_keeps_the_high_byte(image_bytes):
    data = image_bytes["rgb16.png"]
    raw16 = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert raw16.dtype == np.uint16
    np.testing.assert_array_equal(decode_image(data), (raw16 >> 8).astype(np.uint8))
    # An in-memory 16-bit array is treated the same way.
    np.testing.assert_array_equal(decode_image(raw16), decode_image(data))


def test_cmyk_jpeg_is_converted_to_colour(image_bytes):
    import io

    from PIL import Image

    data = image_bytes["cmyk.jpg"]
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    pil_rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    ours = decode_image(data)[:, :, ::-1].astype(int)
    assert ours.shape == pil_rgb.shape
    assert np.abs(ours - pil_rgb).max() <= 2  # libjpeg's and PIL's CMYK→RGB agree to rounding
    print(f"CMYK JPEG: max |OpenCV - PIL| = {np.abs(ours - pil_rgb).max()}")


@pytest.mark.parametrize(
    "orientation, rotate",
    [(3, cv2.ROTATE_180), (6, cv2.ROTATE_90_CLOCKWISE), (8, cv2.ROTATE_90_COUNTERCLOCKWISE)],
)
def test_exif_orientation_is_applied(image_bytes, orientation, rotate):
    data = image_bytes[f"exif{orientation}.jpg"]
    stored = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    np.testing.assert_array_equal(decode_image(data), cv2.rotate(stored, rotate))


def test_tiny_images_are_upscaled(image_bytes):
    for name, size in (("tiny3x2.png", (384, 256)), ("tiny2x3.png", (256, 384)), ("tiny1x1.png", (256, 256))):
        img = decode_image(image_bytes[name])
        assert SPEC.resized_size(img.shape[1], img.shape[0]) == size
        assert preprocess(image_bytes[name]).shape == (3, 224, 224)


def test_rounding_is_pythons_half_to_even():
    # 500×384: 256/384 * 500 = 333.33; 3×2: 384 exactly; and a true half: 257×2 → 32896.0 (exact).
    assert SPEC.resized_size(500, 384) == (333, 256)
    assert SPEC.resized_size(3, 2) == (384, 256)
    # 1025×512 gives 512.5 → 512 (half to even), where int(x + 0.5) would give 513.
    assert SPEC.resized_size(1025, 512) == (512, 256)
    assert SPEC.crop_offsets(333, 256) == (54, 16)


def test_array_inputs_follow_imread_color():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(gray), np.dstack([gray] * 3))
    bgra = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(bgra), bgra[:, :, :3])
    with pytest.raises(ImageDecodeError):
        decode_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ImageDecodeError):
        decode_image(np.zeros((4, 4, 2), np.uint8))


# ----------------------------------------------------------------------------------------- broken inputs


@pytest.mark.parametrize("name", sorted(imf.BROKEN))
def test_broken_input_is_one_line_error(name, tmp_path):
    data = imf.BROKEN[name]()
    path = tmp_path / name
    path.write_bytes(data)
    for src in (data, path):
        with pytest.raises(ImageDecodeError) as e:
            preprocess(src)
        msg = str(e.value)
        assert "\n" not in msg and msg.strip() and e.value.exit_code == EXIT_USAGE
        assert e.value.reason and e.value.reason in msg
        if src is path:
            assert msg.startswith(str(path)) and e.value.source == str(path)
    if name.startswith("truncated"):
        assert "truncated" in str(e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageDecodeError, match="no such file"):
        preprocess(tmp_path / "missing.jpg")
    with pytest.raises(ImageDecodeError, match="is a directory"):
        preprocess(tmp_path)
    with pytest.raises(ImageDecodeError):
        preprocess(12345)


def test_valid_jpeg_variants_are_not_taken_for_truncated(image_bytes):
    from trt_res2net.data.preprocess import _jpeg_is_truncated

    for name in ("progressive.jpg", "restart.jpg", "trailing.jpg", "exif6.jpg", "cmyk.jpg", "gray.jpg"):
        assert not _jpeg_is_truncated(image_bytes[name]), name
    for p in imf.PHOTOS:
        data = p.read_bytes()
        assert not _jpeg_is_truncated(data)
        for cut in (100, len(data) // 3, len(data) - 2):
            assert _jpeg_is_truncated(data[:cut])


def test_absurd_aspect_ratio_is_refused_not_allocated():
    with pytest.raises(ImageDecodeError, match="aspect ratio"):
        preprocess(np.zeros((1, 5000, 3), np.uint8))


# ------------------------------------------------------------------------------------------- batching


def test_preprocess_batch_matches_single_and_writes_into_buffer():
    srcs = [*imf.PHOTOS, imf.PHOTOS[0].read_bytes(), cv2.imread(str(imf.PHOTOS[1]))]
    single = np.stack([preprocess(s) for s in srcs])
    np.testing.assert_array_equal(preprocess_batch(srcs, threads=1), single)
    np.testing.assert_array_equal(preprocess_batch(srcs, threads=2), single)
    buf = np.full((10, 3, 224, 224), np.nan, np.float32)  # e.g. a pinned host buffer, larger than needed
    view = preprocess_batch(srcs, out=buf, threads=2)
    assert np.shares_memory(view, buf) and view.shape[0] == len(srcs)
    np.testing.assert_array_equal(buf[: len(srcs)], single)
    assert np.isnan(buf[len(srcs) :]).all()
    with pytest.raises(ValueError):
        preprocess_batch(srcs, out=np.empty((2, 3, 224, 224), np.float32))


def test_preprocess_batch_names_the_first_bad_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(ImageDecodeError, match="bad.jpg"):
        preprocess_batch([imf.PHOTOS[0], bad, imf.PHOTOS[1]])


# ---------------------------------------------------------------------------------------------- the spec


def test_spec_numbers_and_table():
    assert (SPEC.resize_short, SPEC.crop_size, SPEC.mean, SPEC.std) == (256, 224, tuple(MEAN), tuple(STD))
    table = SPEC.normalization_table()
    assert table.shape == (3, 256) and table.dtype == np.float32 and not table.flags.writeable
    x = np.arange(256, dtype=np.float32)
    for c in range(3):
        expect = (x * np.float32(1 / 255) - np.float32(MEAN[c])) / np.float32(STD[c])
        np.testing.assert_array_equal(table[c], expect)
    a, b = SPEC.scale_offset()
    np.testing.assert_allclose(x[None, :] * a[:, None] + b[:, None], table, atol=2e-6)
    assert SPEC.sha256() == SPEC.sha256() and len(SPEC.sha256()) == 64


def test_import_is_light():
    code = "import sys, trt_res2net.data.preprocess; print(sorted({'cv2', 'onnxruntime'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
