"""A thin shim over NVIDIA's cuda-python: module layout, error checking, the device, buffers, streams, events,
graphs, kernel launches. The error types and their wording are :mod:`.errors`'s; the GPU's description is
:mod:`.gpu_info`'s; both are re-exported here.

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
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import MissingDependency, UserError
from .errors import (
    DLOPEN_FAILED,
    DRIVER_MISSING,
    INSTALL_HINT,
    NO_GPU_CODES,
    CudaError,
    CudaUnavailable,
    cuda_python_version,
    cuda_version_text,
    missing_library,
)
from .gpu_info import DeviceInfo, jetson_info

__all__ = [  # what callers use from here, this module's own and its neighbours' (one import for the lot)
    "INSTALL_HINT", "CudaError", "CudaModules", "CudaUnavailable", "DeviceBuffer", "DeviceInfo", "Event", "Graph",
    "Module", "PinnedBuffer", "Stream", "call", "check", "cuda_modules", "cuda_python_version", "cuda_version_text",
    "detect_gpu", "device_count", "device_info", "driver_cuda_version", "driver_problem", "i32_arg", "init_device",
    "jetson_info", "kernel_args", "launch", "native_handle", "ptr_arg", "set_device",
]


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
        if name in NO_GPU_CODES:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
            raise CudaUnavailable(f"{message}{hint}; a CUDA GPU and its driver are needed", exit_code=None)
        raise CudaError(message, code_name=name)
    if not values:
        return None
    return values[0] if len(values) == 1 else values



def call(fn, *args):
    """``check(fn(*args), fn's name)``, with missing driver/NVRTC libraries reported as such."""
    what = getattr(fn, "__name__", "CUDA call")
    try:
        result = fn(*args)
    except Exception as e:
        if type(e).__name__ == "DynamicLibNotFoundError":  # cuda.pathfinder (12.9 and later): a library is absent
            raise missing_library(what, str(e)) from e
        found = DLOPEN_FAILED.search(str(e)) if isinstance(e, RuntimeError) else None
        if found:  # cuda-python 12.6 and older
            raise missing_library(what, found.group(1) or found.group(2) or "") from e
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
        return DRIVER_MISSING
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
