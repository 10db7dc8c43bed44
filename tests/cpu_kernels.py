"""The CUDA kernels of ``trt_res2net.cuda.kernels`` compiled by g++ for the CPU, through ``cuda_cpu_shim.h``.

``compile_cpu_kernels()`` compiles the shim + ``kernel_source()`` (the very text NVRTC compiles) + a small
launcher into a shared library, once per process and cached in the temp directory under a hash of the text,
and returns :class:`CpuKernels`. Its launches take the arguments, grid and block ``GpuKernels`` gives the GPU,
so the staging layout, descriptor struct and index arithmetic are exercised as well as the kernels' maths.

Top-k runs its 256 threads as fibers by default (cooperative, one OS thread, switched at each barrier and
shuffle); ``threads="os"`` runs them as 256 std::threads instead, ~50x slower on a 2-core host but truly
concurrent, so a missing barrier would show up as a race.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from trt_res2net.cuda import kernels
from trt_res2net.data.preprocess import SPEC, PreprocessSpec

SHIM = Path(__file__).with_name("cuda_cpu_shim.h")
# No contraction and no fast-math: every float step rounds on its own, as the GPU's _rn intrinsics do.
CXXFLAGS = ("-O2", "-std=c++20", "-ffp-contract=off", "-fno-fast-math", "-pthread", "-shared", "-fPIC")
TOPK_MODES = {"os": 0, "fibers": 1}

_LAUNCHER = r"""
// Entry points for ctypes: the launch arguments of GpuKernels.launch_preprocess / GpuKernels.topk, with
// the grid and block computed by the caller exactly as the GPU path computes them.
extern "C" int cpu_preprocess(const unsigned char* pixels, const ImageDesc* descs, float* out,
                              const unsigned int* grid, const unsigned int* block)
{{
    shim_launch_loop(dim3{{grid[0], grid[1], grid[2]}}, dim3{{block[0], block[1], block[2]}},
                     [&] {{ {preprocess}(pixels, descs, out); }});
    return 0;
}}

extern "C" int cpu_topk(const float* logits, int num_classes, int k, int apply_softmax, int* out_ids,
                        float* out_scores, const unsigned int* grid, const unsigned int* block, int mode)
{{
    const dim3 g{{grid[0], grid[1], grid[2]}}, b{{block[0], block[1], block[2]}};
    auto run = [&] {{ {topk}(logits, num_classes, k, apply_softmax, out_ids, out_scores); }};
    if (mode == 0) shim_launch_threads(g, b, run);
    else shim_launch_fibers(g, b, run);
    return 0;
}}
"""


def cpu_source(spec: PreprocessSpec = SPEC) -> str:
    """The translation unit: the shim, the unchanged kernel source, the launcher (``#line`` marks each part,
    so that a compile error names the part it is in)."""
    return "\n".join([
        '#line 1 "tests/cuda_cpu_shim.h"',
        SHIM.read_text(),
        '#line 1 "kernels.kernel_source()"',
        kernels.kernel_source(spec),
        '#line 1 "cpu_kernels._LAUNCHER"',
        _LAUNCHER.format(preprocess=kernels.PREPROCESS_KERNEL, topk=kernels.TOPK_KERNEL),
    ])


def _address(a) -> int:
    return a if isinstance(a, int) else int(a.ctypes.data)


class CpuKernels:
    """The compiled library: launches on host addresses (what FakeKernels hands out as device memory), and
    array-in, array-out conveniences for the tests."""

    def __init__(self, path: Path, spec: PreprocessSpec, compile_seconds: float | None):
        self.path = path
        self.spec = spec
        self.compile_seconds = compile_seconds  # None: the library came from the cache
        self.lib = ctypes.CDLL(str(path))
        u3 = ctypes.c_uint * 3
        ptr, i32 = ctypes.c_void_p, ctypes.c_int
        self.lib.cpu_preprocess.argtypes = [ptr, ptr, ptr, u3, u3]
        self.lib.cpu_preprocess.restype = i32
        self.lib.cpu_topk.argtypes = [ptr, i32, i32, i32, ptr, ptr, u3, u3, i32]
        self.lib.cpu_topk.restype = i32
        self._u3 = u3

    def launch_preprocess(self, pixels, descs, out, n: int) -> None:
        """``res2net_preprocess_bgr(pixels, descs, out)`` for ``n`` images, on GpuKernels' grid and block."""
        if n == 0:
            return
        (crop_h, crop_w), block = self.spec.crop_hw, kernels.PREPROCESS_BLOCK
        grid = (-(-crop_w // block[0]), -(-crop_h // block[1]), n)
        self.lib.cpu_preprocess(_address(pixels), _address(descs), _address(out), self._u3(*grid),
                                self._u3(*block))

    def launch_topk(self, logits, n: int, num_classes: int, k: int, apply_softmax: bool, ids, scores,
                    threads: str = "fibers") -> None:
        """``res2net_softmax_topk`` on grid (n, 1, 1), block (TOPK_BLOCK, 1, 1), as GpuKernels.topk."""
        if not 1 <= k <= num_classes:
            raise ValueError(f"k must be between 1 and the number of classes ({num_classes}), not {k}")
        if n == 0:
            return
        self.lib.cpu_topk(_address(logits), num_classes, k, int(bool(apply_softmax)), _address(ids),
                          _address(scores), self._u3(n, 1, 1), self._u3(kernels.TOPK_BLOCK, 1, 1),
                          TOPK_MODES[threads])

    def preprocess(self, images) -> np.ndarray:
        """float32 [n, 3, H, W] (the spec's crop) of BGR uint8 images, packed by staging_layout + fill_staging as
        the GPU path packs them (descriptors at the base, pixels from base + desc_bytes)."""
        descs, windows, desc_bytes, pixel_bytes = kernels.staging_layout(images, self.spec)
        staging = np.zeros(desc_bytes + pixel_bytes, np.uint8)  # exactly the bytes the GPU copy would move
        kernels.fill_staging(staging, images, descs, windows, desc_bytes)
        out = np.full((len(images), 3, *self.spec.crop_hw), np.nan, np.float32)  # NaN marks anything left unwritten
        base = int(staging.ctypes.data)
        self.launch_preprocess(base + desc_bytes, base, out, len(images))
        return out

    def topk(self, logits: np.ndarray, k: int, apply_softmax: bool, threads: str = "fibers"):
        """(ids int32 [n, k], scores float32 [n, k]) of float32 logits [n, classes]."""
        x = np.ascontiguousarray(logits, dtype=np.float32)
        n, classes = x.shape
        ids = np.full((n, k), -2, np.int32)  # -2: never written (the kernel writes -1 for "none left")
        scores = np.full((n, k), np.inf, np.float32)
        self.launch_topk(x, n, classes, k, apply_softmax, ids, scores, threads)
        return ids, scores


_lock = threading.Lock()
_loaded: dict[str, CpuKernels] = {}


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++")
    if not cxx or not shutil.which(cxx):
        raise RuntimeError("the CPU build of the CUDA kernels needs g++ (C++20, e.g. g++ 12) on PATH or in $CXX; "
                           "none found (Debian/Ubuntu: apt-get install g++)")
    return cxx


def compile_cpu_kernels(spec: PreprocessSpec = SPEC) -> CpuKernels:
    """The kernels for ``spec`` compiled for this CPU: built once per process, reused across processes from
    ``$TMPDIR/trt_res2net_cpu_kernels`` while the source, shim, flags and compiler are the same."""
    source = cpu_source(spec)
    with _lock:
        cxx = _compiler()
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
        key = hashlib.sha256("\n".join([source, cxx, version, *CXXFLAGS]).encode()).hexdigest()[:24]
        if key in _loaded:
            return _loaded[key]
        directory = Path(tempfile.gettempdir()) / "trt_res2net_cpu_kernels"
        directory.mkdir(parents=True, exist_ok=True)
        library = directory / f"kernels-{key}.so"
        seconds = None
        if not library.is_file():
            t0 = time.perf_counter()
            cpp = directory / f"kernels-{key}.cpp"
            cpp.write_text(source)
            partial = directory / f"kernels-{key}.{os.getpid()}.{threading.get_ident()}.so"
            done = subprocess.run([cxx, *CXXFLAGS, "-o", str(partial), str(cpp)], capture_output=True,
                                  text=True, check=False)
            if done.returncode != 0:
                partial.unlink(missing_ok=True)
                raise RuntimeError(f"g++ could not compile the CUDA kernels for the CPU ({cpp}):\n"
                                   f"{done.stderr[-6000:]}")
            os.replace(partial, library)  # atomic: a concurrent process loads either no file or a whole one
            seconds = time.perf_counter() - t0
        _loaded[key] = CpuKernels(library, spec, seconds)
        return _loaded[key]
