"""The CUDA source of trt_res2net/cuda/kernels.cu, as kernels.kernel_source() completes it, compiled unchanged by
g++ for the CPU (tests/cpu_kernels.py), against the CPU references: the preprocessing kernel equals OpenCV's
preprocess_bgr and the numpy port emulate_preprocess bit for bit; the top-k kernel ranks as topk_numpy does, its raw
scores bit for bit and its softmax scores within a tight tolerance. Needs g++ (C++20); no GPU, no NVRTC."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from cpu_kernels import CXXFLAGS, _compiler, compile_cpu_kernels, cpu_source

from trt_res2net.cuda import kernels
from trt_res2net.data.preprocess import preprocess_bgr
from trt_res2net.runtime.tensorrt_backend import topk_numpy

DATA = Path(__file__).parent / "data"

# Softmax scores cannot be bit-exact: the kernel calls glibc's expf here (CUDA's expf on the GPU) where
# numpy uses its own SIMD exp, and it sums 256 strided float32 partial sums in a shuffle tree where numpy
# sums pairwise. Both stay within a few ulp: the cases below differ by at most 4.3e-7 relative (6 ulp).
# benchmarks/check_gpu_topk.py allows the GPU 1e-5; the CPU build is held ~5x tighter.
RTOL = 2e-6
ATOL = 1e-9


@pytest.fixture(scope="module")
def cpu():
    return compile_cpu_kernels()


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """float32 arrays equal bit for bit (so 0.0 and -0.0 differ, and equal NaNs match)."""
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32, what
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=what)


# -- preprocessing -----------------------------------------------------------------------------------------


def _noise(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _smooth(h, w, seed):
    """Smooth content: rounding, not noise, decides the last bit of the interpolation."""
    small = _noise(max(h // 16, 2), max(w // 16, 2), seed)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _images() -> dict[str, np.ndarray]:
    images = {p.stem: cv2.imread(str(p), cv2.IMREAD_COLOR) for p in sorted(DATA.glob("*.jpg"))}
    assert len(images) == 4 and all(img is not None for img in images.values())
    # (h, w): the strips up-scale 256x along the short side, so the long side stays short to keep cv2.resize's
    # full-size result (what preprocess_bgr computes) to ~40 MB.
    shapes = [(333, 517), (517, 333), (1, 1), (1, 2), (2, 1), (1, 200), (200, 1), (4, 900), (900, 4), (3, 3),
              (224, 224), (225, 225), (224, 225), (225, 224), (223, 224), (256, 256), (257, 300), (512, 512),
              (511, 767), (1023, 769)]
    for i, (h, w) in enumerate(shapes):
        images[f"noise {h}x{w}"] = _noise(h, w, i)
    for h, w in [(300, 400), (257, 300), (2, 700)]:
        images[f"smooth {h}x{w}"] = _smooth(h, w, h + w)
    for value in (0, 1, 127, 128, 254, 255):
        images[f"constant {value} 240x320"] = np.full((240, 320, 3), value, np.uint8)
    images["channels 0/128/255 1x1"] = np.array([[[0, 128, 255]]], np.uint8)
    images["checkerboard 256x256"] = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, 2)
    ramp = np.arange(300 * 400) % 256
    images["ramp 300x400"] = np.ascontiguousarray(np.stack([ramp, 255 - ramp, ramp // 2], -1).astype(np.uint8)
                                                  .reshape(300, 400, 3))
    images["non-contiguous 250x300"] = _noise(500, 300, 99)[::2]  # a strided view, as a decoder may hand out
    return images


IMAGES = _images()
NAMES = list(IMAGES)


@pytest.fixture(scope="module")
def one_batch(cpu):
    """All the images, mixed sizes, in one launch (one staging buffer, one grid)."""
    return cpu.preprocess(list(IMAGES.values()))


@pytest.mark.parametrize("name", NAMES)
def test_preprocess_kernel_equals_opencv_and_the_numpy_port(name, one_batch):
    image = IMAGES[name]
    got = one_batch[NAMES.index(name)]
    assert_bits_equal(got, kernels.emulate_preprocess(image), f"{name}: kernel vs emulate_preprocess")
    assert_bits_equal(got, preprocess_bgr(image), f"{name}: kernel vs preprocess_bgr (OpenCV)")


def test_preprocess_batch_position_does_not_matter(cpu, one_batch):
    """Each image alone, and the batch reversed, give what the mixed batch gave (offsets, descriptor index)."""
    for i in (0, 5, len(NAMES) - 1):
        assert_bits_equal(cpu.preprocess([IMAGES[NAMES[i]]])[0], one_batch[i], NAMES[i])
    assert_bits_equal(cpu.preprocess(list(IMAGES.values())[::-1]), one_batch[::-1], "reversed batch")


def test_preprocess_of_no_images_is_empty(cpu):
    assert cpu.preprocess([]).shape == (0, 3, 224, 224)


# -- top-k -------------------------------------------------------------------------------------------------


def _rows(kind: str, n: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = rng.standard_normal((n, classes)) * 4
    elif kind == "few values":  # exact ties everywhere, across threads and warps
        x = rng.integers(0, 4, (n, classes))
    elif kind == "constant":
        x = np.full((n, classes), 2.5)
    elif kind == "tie at stride 256":  # the same top value in one thread's slots and in other warps'
        x = rng.standard_normal((n, classes))
        x[:, [i for i in (3, 259, 515, 771, classes - 1) if i < classes]] = 9.0
    elif kind == "signed zeros":  # 0.0 == -0.0: a tie, so class order decides
        x = np.where(rng.random((n, classes)) < 0.5, 0.0, -0.0)
    elif kind == "-inf entries":
        x = rng.standard_normal((n, classes)) * 4
        x[rng.random((n, classes)) < 0.4] = -np.inf
        x[:, 0] = 1.0
        x[0, 1:] = -np.inf  # one finite entry: k > 1 ranks -inf entries, in class order
    elif kind == "all -inf":  # softmax is NaN everywhere (in both); the ranking is class order
        x = np.full((n, classes), -np.inf)
    elif kind == "+inf entries":  # softmax NaN everywhere (inf - inf), in both
        x = rng.standard_normal((n, classes))
        x[:, [i for i in (classes - 1, classes // 2, 0) if i < classes]] = np.inf
    elif kind == "large magnitudes":
        x = rng.standard_normal((n, classes)) * 1e30
    else:
        raise ValueError(kind)
    return np.ascontiguousarray(x, np.float32)


def _check_topk(cpu, x, k, softmax, threads="fibers"):
    ids, scores = cpu.topk(x, k, softmax, threads)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = topk_numpy(x, k, softmax)
    np.testing.assert_array_equal(ids, ref.ids)
    if softmax:
        np.testing.assert_allclose(scores, ref.scores, rtol=RTOL, atol=ATOL, equal_nan=True)
    else:
        assert_bits_equal(scores, ref.scores, "raw scores")  # the kernel copies the logit itself
    return ids, scores


TOPK_CASES = [
    (kind, n, classes, k)
    for kind in ("normal", "few values", "constant", "tie at stride 256", "signed zeros", "-inf entries",
                 "all -inf", "+inf entries", "large magnitudes")
    for n, classes, k in ((3, 10, 1), (3, 10, 5), (2, 10, 10), (5, 1000, 1), (5, 1000, 5), (2, 1001, 5),
                          (1, 1001, 1001), (2, 257, 257), (2, 1, 1), (2, 300, 7))
]


@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "raw"])
@pytest.mark.parametrize(("kind", "n", "classes", "k"), TOPK_CASES,
                         ids=[f"{c[0]}-n{c[1]}-c{c[2]}-k{c[3]}" for c in TOPK_CASES])
def test_topk_kernel_equals_topk_numpy(cpu, kind, n, classes, k, softmax):
    _check_topk(cpu, _rows(kind, n, classes, seed=classes + k), k, softmax)


def _nan_rows() -> np.ndarray:
    x = _rows("normal", 4, 300, 7)
    x[np.random.default_rng(8).random(x.shape) < 0.3] = np.nan
    x[0, :] = np.nan
    x[1, 5:] = np.nan  # five numbers, then NaN
    x[2, [0, 299]] = np.nan
    return x


def test_topk_nan_never_ranks(cpu):
    """The kernel documents that NaN never ranks: where numpy sorts NaNs last, the kernel has nothing left to
    rank and writes id -1 with a NaN score. Before that point the two agree."""
    x = _nan_rows()
    valid = (~np.isnan(x)).sum(axis=1)
    for softmax in (False, True):
        ids, scores = cpu.topk(x, 300, softmax)
        ref = topk_numpy(x, 300, softmax)  # NaN rows: numpy's softmax is NaN too (max is NaN)
        for row in range(x.shape[0]):
            r = valid[row]
            np.testing.assert_array_equal(ids[row, :r], ref.ids[row, :r])
            if r < x.shape[1]:
                assert ids[row, r] == -1 and np.isnan(scores[row, r])
            if softmax:  # the sum runs over every entry, NaN included: NaN scores, as numpy's
                assert np.isnan(scores[row, :r]).all() and np.isnan(ref.scores[row]).all()
            else:
                assert_bits_equal(scores[row, :r], ref.scores[row, :r], f"row {row}")


def test_topk_writes_every_slot_when_nan_leaves_fewer_than_k(cpu):
    """Slots past the last value that ranks say id -1, score NaN: not what the output buffer held before (on the
    GPU, the previous call's results)."""
    x = _nan_rows()
    valid = (~np.isnan(x)).sum(axis=1)
    ids, scores = cpu.topk(x, 300, False)  # cpu.topk fills the outputs with id -2 / +inf before the launch
    for row in range(x.shape[0]):
        assert (ids[row, valid[row]:] == -1).all() and np.isnan(scores[row, valid[row]:]).all()


@pytest.mark.parametrize("threads", ["os", "fibers"])
def test_topk_with_real_threads_equals_fibers(cpu, threads):
    """256 std::threads with std::barrier (truly concurrent: a missing __syncthreads would race) give what the
    cooperative fibers give, bit for bit, and both agree with topk_numpy."""
    x = _rows("few values", 3, 1001, 3)
    x[1] = _rows("normal", 1, 1001, 4)[0]
    base = cpu.topk(x, 6, True, "fibers")
    for softmax in (True, False):
        ids, scores = _check_topk(cpu, x, 6, softmax, threads)
        if softmax:
            np.testing.assert_array_equal(ids, base[0])
            assert_bits_equal(scores, base[1], "threads vs fibers")
    _check_topk(cpu, _rows("tie at stride 256", 2, 10, 5), 10, True, threads)


@pytest.mark.parametrize("k", [0, 11])
def test_topk_refuses_k_outside_the_classes(cpu, k):
    with pytest.raises(ValueError, match="k must be between 1"):
        cpu.topk(np.zeros((1, 10), np.float32), k, True)


def test_topk_measured_softmax_error_is_far_inside_the_tolerance(cpu):
    """The largest relative difference to numpy's softmax on normal logits (3.1e-7 measured) stays well inside
    the tolerance, so a few ulp more of drift shows up here before it fails the cases above."""
    x = _rows("normal", 32, 1000, 11)
    ids, scores = cpu.topk(x, 5, True)
    ref = topk_numpy(x, 5, True)
    assert (ids == ref.ids).all()
    assert (np.abs(scores - ref.scores) / ref.scores).max() < RTOL / 4


# -- the source and the compiler ---------------------------------------------------------------------------


def test_the_cpu_build_compiles_the_kernel_source_unchanged():
    assert kernels.kernel_source() in cpu_source()


def test_g_plus_plus_checks_the_descriptor_offsets(tmp_path):
    """The source's __builtin_offsetof static_asserts are live under g++ (no __CUDACC_RTC__): a descriptor
    layout that disagrees with DESC_DTYPE does not compile."""
    good = cpu_source()
    assert 'static_assert(__builtin_offsetof(ImageDesc, scale_x) == 40, "ImageDesc.scale_x");' in good
    bad = good.replace("(ImageDesc, scale_x) == 40", "(ImageDesc, scale_x) == 44")
    path = tmp_path / "bad.cpp"
    path.write_text(bad)
    flags = [f for f in CXXFLAGS if f not in ("-shared", "-fPIC")]
    done = subprocess.run([_compiler(), *flags, "-fsyntax-only", str(path)], capture_output=True, text=True)
    assert done.returncode != 0 and "ImageDesc.scale_x" in done.stderr


@pytest.mark.parametrize(("height", "width"), [(288, 288), (224, 320), (320, 224)], ids=["288", "224x320", "320x224"])
def test_preprocess_kernel_is_exact_at_other_input_sizes(height, width):
    """A model's own input size (``spec_for_input``: the crop H×W, the short side at the recipe's ratio): the
    kernel, its numpy port and OpenCV's preprocess_bgr agree bit for bit, square or not."""
    from trt_res2net.data.preprocess_spec import spec_for_input

    spec = spec_for_input(height, width)
    assert spec.resize_short == max(height, width) * 8 // 7
    cpu = compile_cpu_kernels(spec)
    names = ["chelsea", "noise 333x517", "noise 517x333", "noise 1x200", "smooth 300x400", "ramp 300x400",
             "noise 1023x769"]
    names = [n for n in names if n in IMAGES] or NAMES[:6]
    got = cpu.preprocess([IMAGES[n] for n in names])
    assert got.shape == (len(names), 3, height, width)
    for row, name in zip(got, names, strict=True):
        assert_bits_equal(row, kernels.emulate_preprocess(IMAGES[name], spec), f"{name}: kernel vs numpy port")
        assert_bits_equal(row, preprocess_bgr(IMAGES[name], spec), f"{name}: kernel vs preprocess_bgr")
