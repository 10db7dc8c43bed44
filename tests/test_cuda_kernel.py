"""The CUDA preprocessing/top-k kernels without a GPU: NVRTC compiles them, and a numpy port of their exact
index and weight arithmetic equals cv2.resize(INTER_LINEAR) and the CPU reference preprocessing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from trt_res2net.core.paths import cache_dir
from trt_res2net.cuda import kernels as cp
from trt_res2net.data.preprocess import SPEC, preprocess_bgr
from trt_res2net.runtime.tensorrt_backend import topk_numpy

# Shapes (h, w) that exercise every branch of OpenCV's tables: tiny up-scales (clamping on both sides),
# an exact 2x down-scale (OpenCV's INTER_AREA shortcut), odd aspect ratios, rounding halves.
AWKWARD_SHAPES = [(1, 1), (2, 3), (3, 2), (1, 700), (700, 1), (256, 256), (512, 512), (224, 224),
                  (375, 500), (500, 375), (257, 255), (333, 1000), (1023, 767), (300, 301)]


def _nvrtc_or_skip():
    pytest.importorskip("cuda.bindings.nvrtc", reason="no cuda-python: pip install 'cuda-python[all]'")
    from trt_res2net.cuda.device import CudaUnavailable

    try:
        return cp.nvrtc_version()
    except CudaUnavailable as e:
        pytest.skip(f"NVRTC is not available: {e}")


def _image(shape, seed, kind="noise"):
    rng = np.random.default_rng(seed)
    h, w = shape
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # smooth content: where rounding (not noise) decides the last bit
    img = cv2.resize(rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8), (w, h),
                     interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(img)


# -- NVRTC -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["compute_75", "compute_87", "compute_90"])
def test_kernels_compile_to_ptx(arch):
    _nvrtc_or_skip()
    ptx = cp.compile_source(cp.kernel_source(), arch, "ptx").decode()
    assert f".target sm_{arch.split('_')[1]}" in ptx
    assert f".entry {cp.PREPROCESS_KERNEL}(" in ptx
    assert f".entry {cp.TOPK_KERNEL}(" in ptx
    # --fmad=false: the coordinate and normalisation arithmetic must not be contracted into FMAs
    # (expf in the top-k kernel uses FMAs on purpose; only the preprocessing kernel is checked)
    body = ptx.split(f".entry {cp.PREPROCESS_KERNEL}(", 1)[1].split(".entry", 1)[0]
    assert "cvt.rn.f32.f64" in body and "div.rn.f32" in body
    assert "fma." not in body


@pytest.mark.parametrize("arch", ["sm_87", "sm_90"])  # Jetson Orin; Hopper (H100/H200)
def test_kernels_compile_to_cubin(arch):
    _nvrtc_or_skip()
    if int(arch[3:]) not in (cp.nvrtc_supported_archs() or [int(arch[3:])]):
        pytest.skip(f"this NVRTC cannot target {arch}")
    cubin = cp.compile_source(cp.kernel_source(), arch, "cubin")
    assert cubin[:4] == b"\x7fELF"
    assert cp.PREPROCESS_KERNEL.encode() in cubin and cp.TOPK_KERNEL.encode() in cubin
    assert cp.choose_target((int(arch[3]), int(arch[4])), cp.nvrtc_supported_archs()) == ("cubin", arch)


def test_compile_error_is_one_line_with_the_log_attached():
    _nvrtc_or_skip()
    from trt_res2net.cuda.device import CudaError

    broken = cp.kernel_source().replace("const int p = PLANE[c];", "const int p = PLANE[c]")
    with pytest.raises(CudaError) as err:
        cp.compile_source(broken, "compute_87")
    assert "\n" not in str(err.value) and "error" in str(err.value)
    assert "error" in err.value.log


def test_the_shipped_source_compiles_only_as_kernel_source_completes_it():
    _nvrtc_or_skip()
    from trt_res2net.cuda.device import CudaError

    with pytest.raises(CudaError, match="kernel_source"):
        cp.compile_source(cp.kernel_body(), "compute_87")


def test_the_kernels_source_is_package_data():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads TOML")
    root = Path(__file__).resolve().parents[1]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert cp.KERNEL_FILE in data["trt_res2net.cuda"]
    assert (root / "trt_res2net" / "cuda" / cp.KERNEL_FILE).read_text() == cp.kernel_body()
    assert cp.kernel_body() in cp.kernel_source()


def test_struct_layout_is_checked_by_the_compiler():
    _nvrtc_or_skip()
    from trt_res2net.cuda.device import CudaError

    src = cp.kernel_source().replace("int crop_x, crop_y;", "int crop_x, crop_y, extra_;")
    with pytest.raises(CudaError, match="ImageDesc"):
        cp.compile_source(src, "compute_87")


def test_kernel_cache_reuses_and_keys_by_source(tmp_path, monkeypatch):
    _nvrtc_or_skip()
    calls = []
    real = cp.compile_source
    monkeypatch.setattr(cp, "compile_source", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    image, path = cp.cached_kernel_image((8, 7), directory=tmp_path)
    assert path.parent == tmp_path / "kernels" and path.read_bytes() == image
    again, path2 = cp.cached_kernel_image((8, 7), directory=tmp_path)
    assert (again, path2) == (image, path) and len(calls) == 1
    other_spec = dataclasses.replace(SPEC, mean=(0.5, 0.5, 0.5))
    _, path3 = cp.cached_kernel_image((8, 7), other_spec, directory=tmp_path)
    assert path3 != path and len(calls) == 2


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRT_RES2NET_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TRT_RES2NET_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "trt_res2net"


# -- source generation and target choice ---------------------------------------------------------


def test_spec_numbers_are_written_into_the_source_exactly():
    src = cp.kernel_source()
    assert f"#define CROP_H {SPEC.crop_size}" in src and f"#define CROP_W {SPEC.crop_size}" in src
    for value in (*SPEC.mean, *SPEC.std, SPEC.scale):
        literal = float(np.float32(value)).hex() + "f"
        assert literal in src
        assert np.float32(float.fromhex(literal[:-1])) == np.float32(value)
    assert "PLANE[3] = {2, 1, 0}" in src  # BGR source → RGB planes
    assert SPEC.sha256()[:16] in src


def test_source_follows_the_spec_which_refuses_what_nothing_implements():
    small = dataclasses.replace(SPEC, crop_size=192)
    assert "#define CROP_H 192" in cp.kernel_source(small)
    assert "PLANE[3] = {2, 1, 0}" in cp.kernel_source(SPEC)
    with pytest.raises(ValueError, match=r"PreprocessSpec.channel_order 'BGR': .* implements RGB only"):
        dataclasses.replace(SPEC, channel_order="BGR")
    with pytest.raises(ValueError, match="PreprocessSpec.interpolation 'cv2.INTER_CUBIC'.*INTER_LINEAR only"):
        dataclasses.replace(SPEC, interpolation="cv2.INTER_CUBIC")
    with pytest.raises(ValueError, match="PreprocessSpec.layout 'NHWC'.*NCHW only"):
        dataclasses.replace(SPEC, layout="NHWC")


def test_choose_target():
    archs = [75, 80, 86, 87, 89, 90, 100, 120]
    assert cp.choose_target((8, 7), archs) == ("cubin", "sm_87")
    assert cp.choose_target((9, 0), archs) == ("cubin", "sm_90")
    # a GPU newer than this NVRTC: PTX for the newest architecture it knows, JIT-compiled by the driver
    assert cp.choose_target((12, 1), archs) == ("ptx", "compute_120")
    assert cp.choose_target((8, 8), archs) == ("ptx", "compute_87")
    assert cp.choose_target((8, 7), []) == ("cubin", "sm_87")  # NVRTC too old to list: trust it
    with pytest.raises(ValueError, match="7.2"):
        cp.choose_target((7, 2), archs)


# -- the kernel's arithmetic in numpy --------------------------------------------------------------


@pytest.mark.parametrize("shape", [s for s in AWKWARD_SHAPES if max(s) / min(s) < 100])  # 1x700 → 256x179200
def test_emulated_resize_equals_opencv_bit_for_bit(shape):
    h, w = shape
    new_w, new_h = SPEC.resized_size(w, h)
    for seed, kind in ((0, "noise"), (1, "smooth")):
        img = _image(shape, seed, kind)
        expected = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(cp.emulate_resize(img, new_w, new_h), expected)


def test_emulated_resize_equals_opencv_on_random_sizes():
    rng = np.random.default_rng(7)
    for i in range(40):
        h, w = (int(v) for v in rng.integers(1, 420, 2))
        dw, dh = (int(v) for v in rng.integers(1, 420, 2))  # any scale, not only the spec's
        img = _image((h, w), i, "noise" if i % 2 else "smooth")
        expected = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(cp.emulate_resize(img, dw, dh), expected, err_msg=f"{h}x{w}→{dh}x{dw}")


@pytest.mark.parametrize("shape", AWKWARD_SHAPES + [(1200, 1600), (3000, 200)])
def test_emulated_preprocessing_equals_the_cpu_reference(shape):
    img = _image(shape, 3, "smooth")
    got, ref = cp.emulate_preprocess(img), preprocess_bgr(img)
    assert got.shape == ref.shape == (3, SPEC.crop_size, SPEC.crop_size) and got.dtype == np.float32
    # The requirement is one 8-bit step (1/255/std ≈ 0.017); the arithmetic is in fact the same.
    assert np.abs(got - ref).max() <= 1e-6


def test_source_window_holds_every_pixel_the_crop_reads():
    for shape in AWKWARD_SHAPES + [(1200, 1600)]:
        h, w = shape
        img = _image(shape, 5)
        x, y, ww, wh = cp.source_window(w, h)
        assert 0 <= x and 0 <= y and x + ww <= w and y + wh <= h
        outside = np.ones((h, w), bool)
        outside[y : y + wh, x : x + ww] = False
        scrambled = img.copy()
        scrambled[outside] = 255 - scrambled[outside]
        np.testing.assert_array_equal(cp.emulate_preprocess(scrambled), cp.emulate_preprocess(img))


def test_source_window_saves_bytes_on_photos():
    x, y, w, h = cp.source_window(500, 375)
    assert w * h < 0.65 * 500 * 375


def test_pack_images_layout():
    images = [_image((375, 500), 0), _image((2, 3), 1), _image((40, 7), 2)]
    descs, windows, total = cp.pack_images(images, align=16)
    assert descs.dtype.itemsize == 56 and len(descs) == 3
    offset = 0
    for img, d, (x, y, w, h) in zip(images, descs, windows, strict=True):
        ih, iw = img.shape[:2]
        new_w, new_h = SPEC.resized_size(iw, ih)
        assert d["offset"] == offset and d["offset"] % 16 == 0
        assert (d["width"], d["height"], d["window_x"], d["window_y"], d["pitch"]) == (iw, ih, x, y, 3 * w)
        assert (d["crop_x"], d["crop_y"]) == SPEC.crop_offsets(new_w, new_h)
        assert d["scale_x"] == 1.0 / (new_w / iw) and d["scale_y"] == 1.0 / (new_h / ih)
        offset += -(-(3 * w * h) // 16) * 16
    assert total == offset


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8),
                                 np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8), "img.jpg"])
def test_pack_images_rejects_what_is_not_a_decoded_bgr_image(bad):
    with pytest.raises(ValueError, match="image 1"):
        cp.pack_images([_image((8, 8), 0), bad])


def test_topk_numpy_orders_by_score_then_class_id():
    logits = np.array([[1.0, 3.0, 3.0, -1.0, 2.0], [0.0, 0.0, 0.0, 0.0, 5.0]], np.float32)
    top = topk_numpy(logits, 3, apply_softmax=True)
    np.testing.assert_array_equal(top.ids, [[1, 2, 4], [4, 0, 1]])
    e = np.exp(logits - logits.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    np.testing.assert_allclose(top.scores, np.take_along_axis(p, top.ids.astype(np.int64), 1), rtol=1e-6)
    raw = topk_numpy(logits, 2, apply_softmax=False)
    np.testing.assert_array_equal(raw.scores, [[3.0, 3.0], [5.0, 0.0]])


def test_kernel_traffic_counts_what_the_kernel_must_move():
    shapes = [(375, 500), (3000, 4000), (2, 3)]
    t = cp.kernel_traffic(shapes)
    _, windows, pixel_bytes = cp.pack_images([np.empty((*s, 3), np.uint8) for s in shapes])
    assert t["window_bytes"] == pixel_bytes
    assert t["write_bytes"] == 3 * 4 * SPEC.crop_size**2 * 3
    assert t["desc_bytes"] == 256
    assert t["read_bytes"] % 32 == 0
    single = [cp.kernel_traffic([s])["read_bytes"] for s in shapes]
    assert all(r > 0 for r in single)
    # a 4000x3000 photo is scaled down ~12x: the kernel reads a fraction of the copied window
    big = cp.kernel_traffic([(3000, 4000)])
    assert big["read_bytes"] < 0.25 * big["window_bytes"]
    # at the spec's own scale nearly every copied byte is read
    same = cp.kernel_traffic([(256, 256)])
    assert same["read_bytes"] >= 0.9 * same["window_bytes"]
