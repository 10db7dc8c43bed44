"""A thin shim over NVIDIA's cuda-python: module layout, error checking, buffers, streams, events, graphs.

cuda-python returns ``(error, *results)`` tuples instead of raising, so every call goes through
:func:`check` (or :func:`call`), which turns a non-success code into one readable line. Two layouts
exist: ``cuda.bindings.{runtime,driver,nvrtc}`` (12.6.1 and later; the only one from 13.0) and the old
``cuda.{cudart,cuda,nvrtc}`` of the wheels that JetPack-era Pythons can get; :func:`cuda_modules` finds
whichever is installed.

Everything runs in the device's primary context (the one TensorRT uses): the runtime API creates it
(:func:`init_device`) and the driver API, used only for loading and launching our kernels, works inside it.
Nothing here is imported by ``import trt_res2net``; cuda-python itself is imported on first use.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import MissingDependency, UserError

INSTALL_HINT = (
    "pip install 'trt-res2net[trt]' (x86, a driver for CUDA 12: cuda-python 12) or 'trt-res2net[trt-cu13]' "
    "(a driver for CUDA 13: cuda-python 13); on JetPack 6, pip install 'cuda-python>=12.6,<=12.9.10'"
)

# Codes meaning "this machine has no usable GPU": reported as a missing dependency (exit status 3).
_NO_GPU_CODES = {
    "cudaErrorInsufficientDriver",
    "cudaErrorNoDevice",
    "CUDA_ERROR_NO_DEVICE",
}

_DRIVER_MISSING = ("the NVIDIA driver's libcuda.so.1 could not be loaded: a CUDA GPU and its driver are needed "
                   "(on Jetson the driver comes with JetPack's L4T)")
_JETPACK_NVRTC = "on Jetson use JetPack's: export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH"

# cuda-python 12.6 and older raise these when a library or one of its functions cannot be loaded.
_DLOPEN_FAILED = re.compile(r'Failed to dlopen (\S+)|Function "(\w+)" not found')


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


@dataclass(frozen=True)
class CudaModules:
    runtime: Any
    driver: Any
    nvrtc: Any
    layout: str  # "cuda.bindings" or "cuda" (the pre-12.6.1 layout)


@functools.cache
def cuda_modules() -> CudaModules:
    """The cuda-python modules, from whichever layout is installed."""
    try:
        from cuda.bindings import driver, nvrtc, runtime

        return CudaModules(runtime, driver, nvrtc, "cuda.bindings")
    except ImportError:
        pass
    try:
        from cuda import cuda as driver  # old layout (cuda-python 11.8 / 12.0-12.5, JetPack 5/6 wheels)
        from cuda import cudart as runtime
        from cuda import nvrtc

        return CudaModules(runtime, driver, nvrtc, "cuda")
    except ImportError as e:
        raise CudaUnavailable(f"cuda-python is not installed: {INSTALL_HINT}") from e


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


def _error_text(err) -> str:
    """The library's own description of an error code, or '' when it cannot be had."""
    kind = type(err).__name__
    try:
        mods = cuda_modules()
        if kind == "cudaError_t":
            text = mods.runtime.cudaGetErrorString(err)[1]
        elif kind == "CUresult":
            text = mods.driver.cuGetErrorString(err)[1]
        elif kind == "nvrtcResult":
            text = mods.nvrtc.nvrtcGetErrorString(err)[1]
        else:
            return ""
    except Exception:  # the description is a nicety; the code name is already in the message
        return ""
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text or "")


def check(result, what: str = "CUDA call"):
    """Unwrap a cuda-python result: raise on a non-success code, else return the value(s).

    ``result`` is ``(err, *values)`` or a bare ``err``; returns None, the single value, or the tuple.
    """
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        name = getattr(err, "name", None) or str(err)
        text = _error_text(err)
        message = f"{what} failed: {name}" + (f" ({text})" if text and text != name else "")
        if name == "cudaErrorInsufficientDriver":
            raise CudaUnavailable(driver_problem() or message + "; a CUDA GPU and its driver are needed",
                                  exit_code=None)
        if name in _NO_GPU_CODES:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            raise CudaUnavailable(f"{message}{hint}; a CUDA GPU and its driver are needed", exit_code=None)
        raise CudaError(message, code_name=name)
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _nvrtc_fix() -> str:
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


def _missing_library(what: str, detail: str) -> CudaUnavailable:
    """The one line for a shared library that ``what`` (a cuda-python function) could not load."""
    if what.startswith("nvrtc") or "nvrtc" in detail:
        major = cuda_python_version().split(".")[0]
        return CudaUnavailable(f"NVRTC (libnvrtc.so.{major}, for cuda-python {cuda_python_version()}) is missing; "
                               f"it compiles the GPU preprocessing kernels: {_nvrtc_fix()}", library="nvrtc")
    return CudaUnavailable(_DRIVER_MISSING, library="libcuda")


def call(fn, *args):
    """``check(fn(*args), fn's name)``, with missing driver/NVRTC libraries reported as such."""
    what = getattr(fn, "__name__", "CUDA call")
    try:
        result = fn(*args)
    except Exception as e:
        if type(e).__name__ == "DynamicLibNotFoundError":  # cuda.pathfinder (12.9 and later): a library is absent
            raise _missing_library(what, str(e)) from e
        found = _DLOPEN_FAILED.search(str(e)) if isinstance(e, RuntimeError) else None
        if found:  # cuda-python 12.6 and older
            raise _missing_library(what, found.group(1) or found.group(2) or "") from e
        raise
    return check(result, what)


def driver_cuda_version() -> int:
    """The CUDA version the installed NVIDIA driver supports (12060 for 12.6); 0 when there is no driver."""
    try:
        return int(call(cuda_modules().runtime.cudaDriverGetVersion))
    except (CudaUnavailable, CudaError):
        return 0


def driver_problem() -> str | None:
    """Why the driver cannot serve these bindings, in one line, or None when it can.

    cuda-python's runtime needs a driver of its own CUDA major version (13.x: r580 or newer); 12.9 and later say
    cudaErrorInsufficientDriver for an older one, 12.6 goes on until the first call the driver cannot serve."""
    driver = driver_cuda_version()
    if driver == 0:
        return _DRIVER_MISSING
    try:
        runtime = int(call(cuda_modules().runtime.cudaRuntimeGetVersion))
    except (CudaUnavailable, CudaError):
        return None
    if driver // 1000 >= runtime // 1000:
        return None
    bindings = f"cuda-python {cuda_python_version()} (CUDA {cuda_version_text(runtime)})"
    if driver // 1000 == 12:
        fix = ("pip install 'cuda-python>=12.6,<13' (the trt extra) fits this driver, or install a driver for "
               "CUDA 13 (r580 or newer)")
    else:
        fix = "install a driver for CUDA 12 (r525 or newer), or CUDA 13 (r580 or newer) for cuda-python 13"
    return f"the NVIDIA driver supports CUDA {cuda_version_text(driver)}, older than {bindings} needs: {fix}"


def native_handle(obj) -> int:
    """The integer handle of a cuda-python object (a stream for TensorRT's ``execute_async_v3``)."""
    if isinstance(obj, int):
        return obj
    try:  # cuda-bindings 12.8+; int(obj) is deprecated in 13
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


# --------------------------------------------------------------------------------------------------
# Device


@dataclass(frozen=True)
class DeviceInfo:
    """One GPU, as the builder, the runtime and the manifests describe it (the project's only GPU description)."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int  # bytes
    free_memory: int | None  # bytes, when queried
    integrated: bool  # Jetson: the GPU shares memory with the CPU
    multiprocessors: int = 0
    memory_bus_width_bits: int | None = None
    memory_clock_khz: int | None = None
    jetson: dict | None = None  # {"module": ..., "l4t": ...} on a Jetson (detect_gpu fills it in)

    @property
    def cc(self) -> str:
        """Compute capability as "8.7"."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def peak_bandwidth_bytes_per_s(self) -> float | None:
        """The datasheet DRAM bandwidth from clock × bus width × 2 (DDR), when the driver reports both."""
        if not self.memory_bus_width_bits or not self.memory_clock_khz:
            return None
        return 2.0 * self.memory_clock_khz * 1e3 * self.memory_bus_width_bits / 8

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "compute_capability": self.cc,
            "total_memory": self.total_memory,
            "integrated": self.integrated,
            "multiprocessors": self.multiprocessors,
        }

    def to_manifest(self) -> dict:
        """The build GPU as an engine manifest records it."""
        return {"name": self.name, "compute_capability": self.cc, "integrated": self.integrated,
                "device": self.index, "jetson": self.jetson, "total_memory_mib": self.total_memory // (1 << 20)}


def jetson_info(root: str | os.PathLike = "/") -> dict | None:
    """On a Jetson: ``{"module": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.0"}``; else None.

    Reads /proc/device-tree/model (the module/carrier name) and /etc/nv_tegra_release (the L4T release of
    JetPack); ``root`` lets tests point at a fake file tree.
    """
    root = Path(root)
    model = l4t = None
    try:
        model = (root / "proc/device-tree/model").read_bytes().decode("utf-8", "replace").strip("\x00 \n")
    except OSError:
        pass
    try:
        first = (root / "etc/nv_tegra_release").read_text(errors="replace").splitlines()[0]
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
        if m:
            rev = m.group(2).split(".")
            l4t = ".".join([m.group(1), *rev] + ["0"] * max(0, 2 - len(rev)))
    except (OSError, IndexError):
        pass
    if l4t is None and not (model and "jetson" in model.lower()):
        return None
    return {"module": model, "l4t": l4t}


def detect_gpu(device: int = 0) -> DeviceInfo:
    """The CUDA device TensorRT will build for, with its Jetson module when there is one.

    MissingDependency (exit 3) when cuda-python, the driver or a GPU is missing; UserError for a device index
    this machine does not have.
    """
    runtime = cuda_modules().runtime  # CudaUnavailable (exit 3) without cuda-python
    problem = driver_problem()
    if problem:
        raise MissingDependency(f"no usable NVIDIA GPU: {problem}")
    try:
        count = int(call(runtime.cudaGetDeviceCount))
    except CudaUnavailable as e:  # no driver, no device, no libcuda: the message says which
        raise MissingDependency(f"no usable NVIDIA GPU: {e}") from None
    except CudaError as e:  # any other failure to count devices also leaves no GPU to build for
        raise MissingDependency(f"no usable NVIDIA GPU: {e}; is the NVIDIA driver installed?") from None
    if count == 0:
        raise MissingDependency("no usable NVIDIA GPU: CUDA sees no device; is the NVIDIA driver installed?")
    if not 0 <= device < count:
        raise UserError(f"CUDA device {device} does not exist (this machine has {count})")
    set_device(device)  # the free memory reported is the device's own
    info = device_info(device)
    if info.integrated or platform.machine() == "aarch64":
        info = dataclasses.replace(info, jetson=jetson_info())
    return info


def device_count() -> int:
    """Number of CUDA devices; 0 when cuda-python, the driver or a GPU is missing (never raises)."""
    try:
        return int(call(cuda_modules().runtime.cudaGetDeviceCount))
    except (CudaUnavailable, CudaError):
        return 0


def set_device(device: int) -> None:
    """Make ``device``'s primary context current in the calling thread (cheap when it already is)."""
    call(cuda_modules().runtime.cudaSetDevice, device)


def init_device(device: int = 0) -> DeviceInfo:
    """Make ``device``'s primary context current in this thread (runtime and driver API) and describe it."""
    rt = cuda_modules().runtime
    problem = driver_problem()
    if problem:
        raise CudaUnavailable(problem)
    call(rt.cudaSetDevice, device)
    call(rt.cudaFree, 0)  # forces creation of the primary context
    call(cuda_modules().driver.cuInit, 0)
    return device_info(device)


def _attribute(device: int, name: str) -> int | None:
    rt = cuda_modules().runtime
    attr = getattr(rt.cudaDeviceAttr, name, None)
    if attr is None:
        return None
    try:
        return int(call(rt.cudaDeviceGetAttribute, attr, device))
    except CudaError:
        return None


def device_info(device: int = 0) -> DeviceInfo:
    rt = cuda_modules().runtime
    prop = call(rt.cudaGetDeviceProperties, device)
    name = prop.name
    if isinstance(name, bytes):
        name = name.split(b"\0", 1)[0].decode(errors="replace")
    free, total = call(rt.cudaMemGetInfo)
    return DeviceInfo(
        index=device,
        name=str(name).strip(),
        compute_capability=(int(prop.major), int(prop.minor)),
        total_memory=int(total),
        free_memory=int(free),
        integrated=bool(prop.integrated),
        multiprocessors=int(prop.multiProcessorCount),
        # From CUDA 13 these are no longer fields of cudaDeviceProp; attributes still report them.
        memory_bus_width_bits=_attribute(device, "cudaDevAttrGlobalMemoryBusWidth"),
        memory_clock_khz=_attribute(device, "cudaDevAttrMemoryClockRate"),
    )


# --------------------------------------------------------------------------------------------------
# Memory


class DeviceBuffer:
    """``nbytes`` of device memory starting at ``address``. Free it with :meth:`free` (or ``with``)."""

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.address = int(call(cuda_modules().runtime.cudaMalloc, max(self.nbytes, 1)))

    def free(self) -> None:
        if self.address:
            ptr, self.address = self.address, 0
            call(cuda_modules().runtime.cudaFree, ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()


class PinnedBuffer:
    """Page-locked host memory (for asynchronous copies), viewed as numpy arrays.

    Views returned by :meth:`view` are valid until :meth:`free`; copy what must outlive the buffer.
    """

    def __init__(self, nbytes: int):
        self.nbytes = int(nbytes)
        self.address = int(call(cuda_modules().runtime.cudaMallocHost, max(self.nbytes, 1)))
        raw = (ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.address)
        self.bytes = np.ctypeslib.as_array(raw)[: self.nbytes]

    def view(self, dtype, shape, offset: int = 0) -> np.ndarray:
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        end = offset + count * dtype.itemsize
        if offset % dtype.itemsize or end > self.nbytes:
            raise ValueError(f"view of {count} {dtype} at byte {offset} exceeds {self.nbytes} pinned bytes")
        return self.bytes[offset:end].view(dtype).reshape(shape)

    def free(self) -> None:
        if self.address:
            ptr, self.address = self.address, 0
            self.bytes = np.empty(0, np.uint8)
            call(cuda_modules().runtime.cudaFreeHost, ptr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()


def _host_address(host) -> int:
    if isinstance(host, np.ndarray):
        if not host.flags.c_contiguous:
            raise ValueError("host array for a CUDA copy must be C-contiguous")
        return int(host.ctypes.data)
    return int(host)


# --------------------------------------------------------------------------------------------------
# Streams, events, graphs


class Stream:
    """One CUDA stream; ``handle`` is the integer that TensorRT's ``execute_async_v3`` takes."""

    def __init__(self):
        self.obj = call(cuda_modules().runtime.cudaStreamCreate)
        self.handle = native_handle(self.obj)

    def copy_htod(self, device_ptr: int, host, nbytes: int) -> None:
        rt = cuda_modules().runtime
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        call(rt.cudaMemcpyAsync, int(device_ptr), _host_address(host), int(nbytes), kind, self.obj)

    def copy_dtoh(self, host, device_ptr: int, nbytes: int) -> None:
        rt = cuda_modules().runtime
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        call(rt.cudaMemcpyAsync, _host_address(host), int(device_ptr), int(nbytes), kind, self.obj)

    def copy_dtod(self, dst_ptr: int, src_ptr: int, nbytes: int) -> None:
        rt = cuda_modules().runtime
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        call(rt.cudaMemcpyAsync, int(dst_ptr), int(src_ptr), int(nbytes), kind, self.obj)

    def memset(self, device_ptr: int, value: int, nbytes: int) -> None:
        call(cuda_modules().runtime.cudaMemsetAsync, int(device_ptr), int(value), int(nbytes), self.obj)

    def synchronize(self) -> None:
        call(cuda_modules().runtime.cudaStreamSynchronize, self.obj)

    def destroy(self) -> None:
        if self.obj is not None:
            obj, self.obj = self.obj, None
            call(cuda_modules().runtime.cudaStreamDestroy, obj)


class Event:
    def __init__(self):
        self.obj = call(cuda_modules().runtime.cudaEventCreate)

    def record(self, stream: Stream) -> None:
        call(cuda_modules().runtime.cudaEventRecord, self.obj, stream.obj)

    def synchronize(self) -> None:
        call(cuda_modules().runtime.cudaEventSynchronize, self.obj)

    def elapsed_ms(self, start: Event) -> float:
        """Milliseconds from ``start`` to this event (both recorded, this one completed)."""
        return float(call(cuda_modules().runtime.cudaEventElapsedTime, start.obj, self.obj))

    def destroy(self) -> None:
        if self.obj is not None:
            obj, self.obj = self.obj, None
            call(cuda_modules().runtime.cudaEventDestroy, obj)


class Graph:
    """A CUDA graph captured from what ``enqueue()`` puts on ``stream``; :meth:`launch` replays it."""

    def __init__(self, stream: Stream, enqueue):
        rt = cuda_modules().runtime
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.exec = None
        call(rt.cudaStreamBeginCapture, stream.obj, mode)
        try:
            enqueue()
        except BaseException:
            # Always end the capture, or the stream stays unusable; the enqueue's error is the one to report.
            result = rt.cudaStreamEndCapture(stream.obj)
            if int(result[0]) == 0 and result[1] is not None:
                rt.cudaGraphDestroy(result[1])
            raise
        graph = call(rt.cudaStreamEndCapture, stream.obj)
        try:
            self.exec = call(rt.cudaGraphInstantiateWithFlags, graph, 0)
        finally:
            call(rt.cudaGraphDestroy, graph)
        self.stream = stream

    def launch(self) -> None:
        call(cuda_modules().runtime.cudaGraphLaunch, self.exec, self.stream.obj)

    def destroy(self) -> None:
        if self.exec is not None:
            ex, self.exec = self.exec, None
            call(cuda_modules().runtime.cudaGraphExecDestroy, ex)


# --------------------------------------------------------------------------------------------------
# Kernels (driver API inside the primary context)


class Module:
    """A loaded CUBIN or PTX image and its functions."""

    def __init__(self, image: bytes):
        if not image.endswith(b"\0") and image.lstrip().startswith((b"//", b".version")):
            image += b"\0"  # PTX text must be NUL-terminated
        self._image = image  # keep alive while loading
        self.handle = call(cuda_modules().driver.cuModuleLoadData, image)

    def function(self, name: str):
        return call(cuda_modules().driver.cuModuleGetFunction, self.handle, name.encode())

    def unload(self) -> None:
        if self.handle is not None:
            h, self.handle = self.handle, None
            call(cuda_modules().driver.cuModuleUnload, h)


def kernel_args(*values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pack kernel arguments for ``cuLaunchKernel``: an array of pointers to each argument's bytes.

    Each value is a one-element numpy array of the parameter's C type (``np.uint64`` for pointers).
    Returns the pointer array and the values, both of which must stay alive until the launch returns.
    """
    held = [np.ascontiguousarray(v) for v in values]
    return np.array([v.ctypes.data for v in held], dtype=np.uint64), held


def launch(function, grid: tuple[int, int, int], block: tuple[int, int, int], args, stream: Stream,
           shared_bytes: int = 0) -> None:
    params, _held = kernel_args(*args)
    drv = cuda_modules().driver
    call(drv.cuLaunchKernel, function, *grid, *block, shared_bytes, drv.CUstream(stream.handle),
         int(params.ctypes.data), 0)


def ptr_arg(ptr: int) -> np.ndarray:
    return np.array([ptr], dtype=np.uint64)


def i32_arg(value: int) -> np.ndarray:
    return np.array([value], dtype=np.int32)
