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
    "pip install 'cuda-python>=12.6' (x86; 'cuda-python[all]' adds NVRTC), "
    "or 'cuda-python>=12.6,<=12.9.10' on JetPack 6"
)

# Codes meaning "this machine has no usable GPU": reported as a missing dependency (exit status 3).
_NO_GPU_CODES = {
    "cudaErrorInsufficientDriver",
    "cudaErrorNoDevice",
    "CUDA_ERROR_NO_DEVICE",
}


class CudaError(UserError):
    """A CUDA runtime, driver or NVRTC call returned an error code (message: call, code name, text)."""

    def __init__(self, message: str, code_name: str = "", log: str = ""):
        super().__init__(message)
        self.code_name = code_name
        self.log = log  # NVRTC compile log, when there is one


class CudaUnavailable(MissingDependency):
    """cuda-python, the NVIDIA driver, a GPU or NVRTC is missing."""


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
        if name in _NO_GPU_CODES:
            raise CudaUnavailable(message + "; a CUDA GPU and its driver are needed", exit_code=None)
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
        if type(e).__name__ != "DynamicLibNotFoundError":  # cuda.pathfinder: a shared library is absent
            raise
        if what.startswith("nvrtc"):
            hint = "NVRTC is missing: pip install 'cuda-python[all]' (x86), or use JetPack's /usr/local/cuda"
        else:
            hint = "the NVIDIA driver (libcuda) is missing: a CUDA GPU and its driver are needed"
        raise CudaUnavailable(f"{what}: {hint}") from e
    return check(result, what)


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
