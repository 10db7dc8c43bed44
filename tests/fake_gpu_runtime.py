"""Stand-ins for TensorRT and the GPU, so that TensorRTBackend's plumbing runs on any CPU.

- ``install(monkeypatch)`` replaces ``tensorrt`` (a fake module) and the CUDA layer of
  ``trt_res2net.cuda.device`` (host memory behind "device" addresses, copies done at once, no-op syncs).
- ``install(monkeypatch, rtx=True)`` installs a fake ``tensorrt_rtx`` instead: engine validity, an
  IRuntimeConfig with a runtime cache (its bytes list the batch sizes "compiled") and a CUDA-graph strategy.
- A fake engine file is JSON describing the engine's tensors (behind a 64-byte TensorRT-RTX-like header with
  ``rtx=True``); the fake engine computes
  ``outputs = mean over H, W of the input @ WEIGHTS[:, :classes]`` so results can be checked in numpy.
- The fake GPU has a simulated clock (``GPU_CLOCK``) that only an engine execution advances, by
  ``EXECUTE_MS_PER_IMAGE`` per image; ``FakeEvent`` reads it, so timings measured with events are exact.
- ``FakeKernels`` runs the CUDA kernels' own source compiled for the CPU (tests/cpu_kernels.py), on staging
  buffers packed as the GPU path packs them.
- ``fake_cuda_runtime(...)`` + ``install_cuda_runtime(monkeypatch, rt)``: a cuda-python runtime module
  with the calls device detection and plain device buffers make, behind ``cuda_util.cuda_modules()``, so
  that code built on ``cuda_util`` runs its real error handling against chosen CUDA results.
Nothing here is TensorRT's real API surface beyond the names the runtime uses.
"""

from __future__ import annotations

import ctypes
import enum
import json
import sys
import types
from dataclasses import dataclass, field

import numpy as np

from trt_res2net.cuda import device as cuda_util
from trt_res2net.cuda import kernels as cuda_preprocess

WEIGHTS = np.random.default_rng(0).standard_normal((3, 1000)).astype(np.float32)


def expected_outputs(batch: np.ndarray, classes: int) -> np.ndarray:
    return batch.astype(np.float32).mean(axis=(2, 3)) @ WEIGHTS[:, :classes]


def array_at(address: int, dtype, shape) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(address)
    return np.frombuffer(raw, dtype=np.uint8)[:nbytes].view(dtype).reshape(shape)


RTX_HEADER_SIZE = 64

# Simulated GPU time of one engine execution, per image of the batch (a power of two: sums stay exact).
EXECUTE_MS_PER_IMAGE = 0.125


class _GpuClock:
    """The fake GPU's time in milliseconds: advanced by the work the fakes run, never by the host's clock."""

    def __init__(self):
        self.ms = 0.0

    def advance(self, ms: float) -> None:
        self.ms += ms


GPU_CLOCK = _GpuClock()


def write_engine(path, *, inputs=None, outputs=None, batch=(1, 4, 8), classes=10, in_dtype="FLOAT",
                 out_dtype="FLOAT", out_name="logits", fixed=None, rtx=False, manifest=True):
    """A fake engine file. ``fixed=N`` makes a static-batch engine; ``rtx=True`` a TensorRT-RTX-like one.
    ``manifest``: with the manifest build.py would write beside it for the fake library and GPU of :func:`install`
    (the runtime refuses an engine without one)."""
    n = fixed if fixed else -1
    spec = {
        "inputs": inputs or {"input": {"shape": [n, 3, 224, 224], "dtype": in_dtype,
                                       "profile": [[b, 3, 224, 224] for b in batch]}},
        "outputs": outputs or {out_name: {"shape": [n, classes], "dtype": out_dtype}},
    }
    data = json.dumps(spec).encode()
    if rtx:  # magic, version 1.7.1 at 24, the default target mask at 32 (as observed on the real library)
        header = bytearray(RTX_HEADER_SIZE)
        header[:4], header[24:27], header[32] = b"vtrt", bytes([1, 7, 1]), 0x7E
        data = bytes(header) + data
    path.write_bytes(data)
    if manifest:
        write_fake_manifest(path, rtx=rtx)
    return path


def write_fake_manifest(path, *, rtx=False, **fields):
    """A manifest for a fake engine as :func:`install` sets things up by default: TensorRT 10.3.0 on an H200, or
    TensorRT-RTX 1.7.1 for the library's default targets."""
    import hashlib

    from trt_res2net.engine import manifest as mf

    doc = {"format": mf.MANIFEST_FORMAT, "format_version": mf.MANIFEST_VERSION, "engine": path.name,
           "engine_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
           "engine_family": "tensorrt-rtx" if rtx else "tensorrt",
           "library_version": "1.7.1.116" if rtx else "10.3.0",
           "gpu": None if rtx else {"name": "NVIDIA H200", "compute_capability": "9.0"},
           "compute_capabilities": ["8.0", "8.6", "8.9", "12.0", "12.1"] if rtx else ["9.0"],
           "compute_capabilities_and_later": rtx, **fields}
    mf.manifest_path_for(path).write_text(json.dumps(doc))
    return mf.manifest_path_for(path)


# -- fake tensorrt ------------------------------------------------------------------------------------


class _Enum:
    def __init__(self, name):
        self.name = name

    def __eq__(self, other):
        return isinstance(other, _Enum) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


class FakeContext:
    def __init__(self, engine, config=None, user_managed=False):
        self.engine = engine
        self.config = config
        self.shapes = {}
        self.addresses = {}
        self.executions = 0
        self.fail_execute = False
        self.user_managed = user_managed  # its activation memory is the caller's (set_device_memory)
        self.device_memory = None
        self.capturable_asked = []

    def set_device_memory(self, address, size):
        assert size >= self.engine.device_memory_size_v2
        self.device_memory = int(address)

    def set_input_shape(self, name, shape):
        profile = self.engine.spec["inputs"][name].get("profile")
        declared = self.engine.spec["inputs"][name]["shape"]
        if profile:
            low, _, high = profile
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)):
                return False
        elif list(shape) != declared:
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.spec["outputs"]:
            n = next(iter(self.shapes.values()))[0]
            return (n, *self.engine.spec["outputs"][name]["shape"][1:])
        return self.shapes[name]

    def set_tensor_address(self, name, address):
        self.addresses[name] = int(address)
        return True

    def snapshot(self):
        return dict(self.shapes), dict(self.addresses)

    def is_stream_capturable(self, stream_handle):
        # TensorRT-RTX answers for the context as it is: asked before a shape is set, the answer means nothing.
        assert self.shapes, "is_stream_capturable asked before any input shape was set"
        self.capturable_asked.append((stream_handle, next(iter(self.shapes.values()))))
        return self.engine.capturable

    def execute_async_v3(self, stream_handle, state=None):
        if self.fail_execute or (self.user_managed and not self.device_memory):
            return False  # TensorRT refuses to run a user-managed context before its memory is set
        if FakeGraph.capturing is not None and state is None:  # captured with this moment's bindings, not run
            FakeGraph.capturing.recorded.append((self, self.snapshot()))
            return True
        if self.config is not None and self.config.cache is not None:  # TensorRT-RTX compiles per shape
            self.config.cache.compiled.add(tuple(self.shapes[next(iter(self.engine.spec["inputs"]))]))
        shapes, addresses = state or self.snapshot()
        (in_name, in_spec), = self.engine.spec["inputs"].items()
        (out_name, out_spec), = self.engine.spec["outputs"].items()
        shape = shapes[in_name]
        x = array_at(addresses[in_name], _DTYPES[in_spec["dtype"]], shape)
        classes = out_spec["shape"][1]
        y = array_at(addresses[out_name], _DTYPES[out_spec["dtype"]], (shape[0], classes))
        y[:] = expected_outputs(x, classes)
        self.executions += 1
        GPU_CLOCK.advance(EXECUTE_MS_PER_IMAGE * shape[0])
        return True


_DTYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8}


class FakeEngine:
    capturable = True  # what TensorRT-RTX's is_stream_capturable answers
    device_memory_size = device_memory_size_v2 = 1 << 20  # activations of one context

    def __init__(self, spec):
        self.spec = spec
        self.names = list(spec["inputs"]) + list(spec["outputs"])
        self.contexts = []

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return _Enum("INPUT") if name in self.spec["inputs"] else _Enum("OUTPUT")

    def get_tensor_shape(self, name):
        group = "inputs" if name in self.spec["inputs"] else "outputs"
        return tuple(self.spec[group][name]["shape"])

    def get_tensor_dtype(self, name):
        group = "inputs" if name in self.spec["inputs"] else "outputs"
        return _Enum(self.spec[group][name]["dtype"])

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return [tuple(s) for s in self.spec["inputs"][name]["profile"]]

    def create_execution_context(self, config=None):
        user_managed = isinstance(config, _Enum) and config.name == "USER_MANAGED"  # an allocation strategy
        ctx = FakeContext(self, None if isinstance(config, _Enum) else config, user_managed)
        self.contexts.append(ctx)
        return ctx

    def create_execution_context_without_device_memory(self):  # TensorRT 8.6
        ctx = FakeContext(self, None, user_managed=True)
        self.contexts.append(ctx)
        return ctx


class FakeRuntimeCache:
    """TensorRT-RTX's IRuntimeCache: serializes the shapes compiled so far; takes only its own blobs."""

    def __init__(self):
        self.compiled = set()
        self.deserialized = []

    def deserialize(self, blob):
        blob = bytes(blob)
        self.deserialized.append(blob)
        if not blob.startswith(b"CACHE:"):
            return False  # the real one refuses a cache from another GPU, driver or version
        self.compiled |= {tuple(s) for s in json.loads(blob[6:])}
        return True

    def serialize(self):
        return b"CACHE:" + json.dumps(sorted(self.compiled)).encode()


class FakeRuntimeConfig:
    def __init__(self):
        self.cache = None
        self.cuda_graph_strategy = _Enum("DISABLED")
        self.dynamic_shapes_kernel_specialization_strategy = _Enum("LAZY")

    def create_runtime_cache(self):
        return FakeRuntimeCache()

    def set_runtime_cache(self, cache):
        self.cache = cache
        return True

    def get_runtime_cache(self):
        return self.cache


def make_tensorrt(version="10.3.0", rtx=False):
    trt = types.ModuleType("fake_tensorrt_rtx" if rtx else "fake_tensorrt")
    trt.__version__ = version
    trt.loaded = []
    trt.validity = ("VALID", 0)  # what get_engine_validity answers (TensorRT-RTX)

    class Logger:
        VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR = 4, 3, 2, 1, 0

        def __init__(self, level):
            self.level = level

    class ILogger:
        def __init__(self):
            pass

    trt.ILogger = ILogger

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            plan = bytes(plan)
            if rtx and plan.startswith(b"vtrt"):
                plan = plan[RTX_HEADER_SIZE:]
            try:
                engine = FakeEngine(json.loads(plan))
            except ValueError:
                return None  # TensorRT returns None for a plan it cannot load
            if rtx:
                engine.create_runtime_config = FakeRuntimeConfig
            trt.loaded.append(engine)
            return engine

    trt.Logger, trt.Runtime = Logger, Runtime
    trt.TensorIOMode = types.SimpleNamespace(INPUT=_Enum("INPUT"), OUTPUT=_Enum("OUTPUT"))
    if rtx or int(version.split(".")[0]) >= 10:
        trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(
            STATIC=_Enum("STATIC"), ON_PROFILE_CHANGE=_Enum("ON_PROFILE_CHANGE"), USER_MANAGED=_Enum("USER_MANAGED"))
    if rtx:
        trt.EngineValidity = types.SimpleNamespace(VALID=_Enum("VALID"), SUBOPTIMAL=_Enum("SUBOPTIMAL"),
                                                   INVALID=_Enum("INVALID"))
        diagnostics = {"VERSION_MISMATCH": 1, "UNSUPPORTED_CC": 2, "OLD_CUDA_DRIVER": 4}
        trt.EngineInvalidityDiagnostics = types.SimpleNamespace(__members__=diagnostics)
        trt.CudaGraphStrategy = types.SimpleNamespace(DISABLED=_Enum("DISABLED"),
                                                      WHOLE_GRAPH_CAPTURE=_Enum("WHOLE_GRAPH_CAPTURE"))
        trt.DynamicShapesKernelSpecializationStrategy = types.SimpleNamespace(
            LAZY=_Enum("LAZY"), EAGER=_Enum("EAGER"), NONE=_Enum("NONE"))
        Runtime.engine_header_size = RTX_HEADER_SIZE

        def get_engine_validity(self, header):
            trt.validity_asked = bytes(header)
            name, bits = trt.validity
            return getattr(trt.EngineValidity, name), bits

        Runtime.get_engine_validity = get_engine_validity
    return trt


# -- fake CUDA -----------------------------------------------------------------------------------------


class FakeDeviceBuffer:
    def __init__(self, nbytes):
        self.nbytes = int(nbytes)
        self._mem = np.zeros(max(self.nbytes, 1), np.uint8)
        self.address = int(self._mem.ctypes.data)

    def free(self):
        self.address = 0


class FakePinnedBuffer(cuda_util.PinnedBuffer):
    def __init__(self, nbytes):
        self.nbytes = int(nbytes)
        self.bytes = np.zeros(max(self.nbytes, 1), np.uint8)[: self.nbytes]
        self.address = int(self.bytes.ctypes.data) if self.nbytes else 0

    def free(self):
        self.address = 0


@dataclass
class FakeStream:
    handle: int = 77
    copies: list = field(default_factory=list)

    def copy_htod(self, dst, host, nbytes):
        ctypes.memmove(int(dst), cuda_util._host_address(host), int(nbytes))
        self.copies.append(("htod", int(nbytes)))

    def copy_dtoh(self, host, src, nbytes):
        ctypes.memmove(cuda_util._host_address(host), int(src), int(nbytes))
        self.copies.append(("dtoh", int(nbytes)))

    def copy_dtod(self, dst, src, nbytes):
        ctypes.memmove(int(dst), int(src), int(nbytes))

    def memset(self, dst, value, nbytes):
        ctypes.memset(int(dst), int(value), int(nbytes))

    def synchronize(self):
        pass

    def destroy(self):
        pass


class FakeEvent:
    """Records the simulated GPU clock (the fake stream runs everything at once, in order)."""

    def __init__(self):
        self.t = None

    def record(self, stream):
        self.t = GPU_CLOCK.ms

    def synchronize(self):
        pass

    def elapsed_ms(self, start):
        return self.t - start.t

    def destroy(self):
        pass


class FakeGraph:
    """Captures like CUDA: what is enqueued while capturing is recorded with its execution context's shapes and
    addresses at that moment, not run; launch replays it. A graph holds its context's state at capture time, so
    TensorRT asks for one context per graph: replaying one whose context has been given other shapes or addresses
    since fails here, where a GPU would run with undefined results."""

    instances = []
    fail = False
    capturing = None

    def __init__(self, stream, enqueue):
        if FakeGraph.fail:
            raise cuda_util.CudaError("cudaStreamEndCapture failed: cudaErrorStreamCaptureUnsupported")
        self.recorded, self.launches = [], 0
        FakeGraph.capturing = self
        try:
            enqueue()
        finally:
            FakeGraph.capturing = None
        FakeGraph.instances.append(self)

    @property
    def state(self):
        return self.recorded[0][1]

    def launch(self):
        self.launches += 1
        for context, state in self.recorded:
            assert context.snapshot() == state, "a CUDA graph replayed after its context's bindings changed"
            assert context.execute_async_v3(0, state)

    def destroy(self):
        pass


class FakeKernels:
    """What GpuKernels does, with the CUDA kernels themselves compiled for the CPU (tests/cpu_kernels.py): the
    same staging layout, launch arguments and grid, on host memory behind the fake device addresses."""

    instances = []

    @dataclass(frozen=True)
    class Staged(cuda_preprocess.StagedBatch):
        buffer: np.ndarray = None  # the "device" staging memory: alive as long as the batch is

    def __init__(self, stream, compute_capability, spec=cuda_preprocess.SPEC, cache_directory=None):
        from cpu_kernels import compile_cpu_kernels

        self.spec = spec
        self.cache_path = cuda_preprocess.cache_dir() / "kernels" / "fake.cubin"
        self.batches = []
        self._result = None
        self._cpu = compile_cpu_kernels(spec)
        FakeKernels.instances.append(self)

    def stage(self, images):
        descs, windows, desc_bytes, pixel_bytes = cuda_preprocess.staging_layout(images, self.spec)
        buffer = np.zeros(max(desc_bytes + pixel_bytes, 1), np.uint8)
        cuda_preprocess.fill_staging(buffer, images, descs, windows, desc_bytes)
        return FakeKernels.Staged(len(images), int(buffer.ctypes.data), desc_bytes, pixel_bytes, descs, windows,
                                  buffer)

    def launch_preprocess(self, staged, out_ptr):
        # The GPU path's arguments: pixels from base + desc_bytes, descriptors at base.
        self._cpu.launch_preprocess(staged.device_address + staged.desc_bytes, staged.device_address, out_ptr,
                                    staged.count)
        self.batches.append(staged.count)

    def preprocess(self, images, out_ptr):
        self.launch_preprocess(self.stage(images), out_ptr)

    def topk(self, logits_ptr, n, num_classes, k, apply_softmax):
        from trt_res2net.runtime.tensorrt_backend import TopK

        ids, scores = np.empty((n, k), np.int32), np.empty((n, k), np.float32)
        self._cpu.launch_topk(logits_ptr, n, num_classes, k, apply_softmax, ids, scores)
        self._result = TopK(ids, scores)

    def topk_result(self):
        return self._result.ids.copy(), self._result.scores.copy()

    def close(self):
        pass


class cudaError_t(enum.IntEnum):  # named like cuda-python's enum (cuda_util reads the type's name)
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2
    cudaErrorInitializationError = 3
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


def fake_cuda_runtime(*, count=1, count_error=cudaError_t.cudaSuccess, name=b"NVIDIA GeForce RTX 4090\x00\x00",
                      cc=(8, 9), integrated=False, free=20 << 30, total=24 << 30, driver=13000, runtime=13000):
    """A stand-in for cuda-python's runtime module: ``count`` devices (or ``count_error`` from
    cudaGetDeviceCount), one set of device properties, the driver's and runtime's CUDA versions, and
    malloc/memcpy/free on fake addresses.
    ``rt.calls`` records (function name, arguments) of everything but the queries."""
    ok = cudaError_t.cudaSuccess
    props = types.SimpleNamespace(name=name, major=cc[0], minor=cc[1], integrated=int(integrated),
                                  multiProcessorCount=128)
    rt = types.ModuleType("fake_cudart")
    rt.calls, rt.allocated = [], {}
    rt.cudaError_t, rt.cudaMemcpyKind = cudaError_t, cudaMemcpyKind
    rt.cudaDeviceAttr = types.SimpleNamespace()  # no attributes: cuda_util reports None for them

    def cudaGetDeviceCount():
        return cudaError_t(count_error), (count if count_error == ok else 0)

    def cudaDriverGetVersion():
        return ok, driver

    def cudaRuntimeGetVersion():
        return ok, runtime

    def cudaGetDeviceProperties(device):
        return ok, props

    def cudaMemGetInfo():
        return ok, free, total

    def cudaGetErrorString(err):
        return ok, f"description of {cudaError_t(err).name}".encode()

    def cudaSetDevice(device):
        rt.calls.append(("cudaSetDevice", device))
        return (ok,)

    def cudaMalloc(nbytes):
        address = 0x1000 * (len(rt.allocated) + 1)
        rt.allocated[address] = nbytes
        rt.calls.append(("cudaMalloc", nbytes))
        return ok, address

    def cudaMemcpy(dst, src, nbytes, kind):
        rt.calls.append(("cudaMemcpy", dst, nbytes, cudaMemcpyKind(kind).name))
        return (ok,)

    def cudaFree(address):
        rt.calls.append(("cudaFree", address))
        return (ok,)

    for fn in (cudaDriverGetVersion, cudaRuntimeGetVersion, cudaGetDeviceCount, cudaGetDeviceProperties,
               cudaMemGetInfo, cudaGetErrorString, cudaSetDevice,
               cudaMalloc, cudaMemcpy, cudaFree):
        setattr(rt, fn.__name__, fn)
    return rt


def install_cuda_runtime(monkeypatch, rt):
    """Make ``cuda_util.cuda_modules()`` hand out ``rt`` as the runtime module for one test."""
    modules = cuda_util.CudaModules(runtime=rt, driver=None, nvrtc=None, layout="fake")
    monkeypatch.setattr(cuda_util, "cuda_modules", lambda: modules)
    return rt


def install(monkeypatch, version=None, gpu_name=None, cc=None, rtx=False):
    """Fake TensorRT (or, ``rtx=True``, TensorRT-RTX: 1.7.1 on an RTX 4090 by default) + GPU for the duration of
    a test; returns the fake module."""
    version = version or ("1.7.1.116" if rtx else "10.3.0")
    gpu_name = gpu_name or ("NVIDIA GeForce RTX 4090" if rtx else "NVIDIA H200")
    cc = cc or ((8, 9) if rtx else (9, 0))
    trt = make_tensorrt(version, rtx=rtx)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx" if rtx else "tensorrt", trt)
    info = cuda_util.DeviceInfo(0, gpu_name, cc, 80 << 30, 79 << 30, False, 132, 5120, 2_619_000)
    monkeypatch.setattr(cuda_util, "init_device", lambda device=0: info)
    monkeypatch.setattr(cuda_util, "set_device", lambda device: None)
    monkeypatch.setattr(cuda_util, "DeviceBuffer", FakeDeviceBuffer)
    monkeypatch.setattr(cuda_util, "PinnedBuffer", FakePinnedBuffer)
    monkeypatch.setattr(cuda_util, "Stream", FakeStream)
    monkeypatch.setattr(cuda_util, "Event", FakeEvent)
    monkeypatch.setattr(cuda_util, "Graph", FakeGraph)
    monkeypatch.setattr(cuda_preprocess, "GpuKernels", FakeKernels)
    FakeGraph.instances, FakeGraph.fail, FakeKernels.instances = [], False, []
    return trt
