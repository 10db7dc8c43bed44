"""CUDA's failures in words: the error types of :mod:`trt_res2net.cuda.device`, and what to install when a
library (cuda-python, the driver's libcuda, NVRTC) is missing or too old for the bindings.

Only the standard library is imported: nothing here loads CUDA.
"""

from __future__ import annotations

import functools
import re

from ..core.errors import MissingDependency, UserError

INSTALL_HINT = (
    "pip install 'trt-res2net[trt]' (x86, a driver for CUDA 12: cuda-python 12) or 'trt-res2net[trt-cu13]' "
    "(a driver for CUDA 13: cuda-python 13); on JetPack 6, pip install 'cuda-python>=12.6,<=12.9.10'"
)

# Codes meaning "this machine has no usable GPU": reported as a missing dependency (exit status 3).
NO_GPU_CODES = {
    "cudaErrorInsufficientDriver",
    "cudaErrorNoDevice",
    "CUDA_ERROR_NO_DEVICE",
}

DRIVER_MISSING = ("the NVIDIA driver's libcuda.so.1 could not be loaded: a CUDA GPU and its driver are needed "
                  "(on Jetson the driver comes with JetPack's L4T)")
_JETPACK_NVRTC = "on Jetson use JetPack's: export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH"

# cuda-python 12.6 and older raise these when a library or one of its functions cannot be loaded.
DLOPEN_FAILED = re.compile(r'Failed to dlopen (\S+)|Function "(\w+)" not found')


class CudaError(UserError):
    """A CUDA runtime, driver or NVRTC call returned an error code (message: call, code name, text)."""

    def __init__(self, message: str, code_name: str = "", log: str = ""):
        super().__init__(message)
        self.code_name = code_name
        self.log = log  # NVRTC compile log, when there is one


class CudaUnavailable(MissingDependency):
    """cuda-python, the NVIDIA driver, a GPU or NVRTC is missing; ``library`` names a missing shared library
    ("libcuda", "nvrtc") when that is the reason."""

    def __init__(self, message: str, exit_code: int | None = None, library: str | None = None):
        super().__init__(message, exit_code)
        self.library = library



@functools.cache
def cuda_python_version() -> str:
    """The version of the bindings in use ("12.6.2.post1", "13.4.4"): the module's own, else its package's."""
    try:
        from cuda.bindings import __version__

        return str(__version__)
    except ImportError:
        pass
    from importlib import metadata

    try:
        return metadata.version("cuda-python")
    except metadata.PackageNotFoundError:
        return "unknown"


def cuda_version_text(version: int) -> str:
    """CUDA's integer version (12060) as people write it ("12.6")."""
    return f"{version // 1000}.{version % 1000 // 10}"



def nvrtc_fix() -> str:
    """What to install for NVRTC with these bindings. cuda-python 12.6 dlopens libnvrtc.so.12 by name only (the
    library path and the loader's cache); from 12.9, cuda.pathfinder also finds pip's nvidia-cuda-nvrtc wheels."""
    major = cuda_python_version().split(".")[0]
    try:
        import cuda.pathfinder  # noqa: F401
    except ImportError:
        return (f"put CUDA {major}'s libnvrtc.so.{major} on LD_LIBRARY_PATH ({_JETPACK_NVRTC}), or use "
                "cuda-python 12.9 or later, which also finds pip's nvidia-cuda-nvrtc-cu12")
    wheel = "nvidia-cuda-nvrtc-cu12" if major == "12" else "nvidia-cuda-nvrtc>=13"
    return f"pip install '{wheel}' (x86); {_JETPACK_NVRTC}"


def missing_library(what: str, detail: str) -> CudaUnavailable:
    """The one line for a shared library that ``what`` (a cuda-python function) could not load."""
    if what.startswith("nvrtc") or "nvrtc" in detail:
        major = cuda_python_version().split(".")[0]
        return CudaUnavailable(f"NVRTC (libnvrtc.so.{major}, for cuda-python {cuda_python_version()}) is missing; "
                               f"it compiles the GPU preprocessing kernels: {nvrtc_fix()}", library="nvrtc")
    return CudaUnavailable(DRIVER_MISSING, library="libcuda")

