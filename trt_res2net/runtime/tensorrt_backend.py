"""TensorRT runtime: ``TensorRTBackend`` runs a serialized engine (``.engine``/``.plan``) of either family —
standard TensorRT or TensorRT-RTX — on one GPU.

It implements the Backend protocol of ``trt_res2net.runtime.classifier`` (``input_name``, ``output_name``,
``num_classes``, ``max_batch``, ``fixed_batch``, ``outputs_probabilities``, ``run(batch) -> outputs``,
``describe()``) and adds a GPU fast path, ``classify_bgr(images, k)``: decoded BGR images → fused CUDA
preprocessing straight into the engine's input buffer → inference → softmax + top-k on the GPU → only k ids
and scores per image copied back.

The engine's family (its manifest, else its first bytes) chooses the library, through
``trt_compat.import_library``; the manifest is checked before anything is deserialized (``manifest``). Only the
name-based I/O API is used (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), which TensorRT 8.5 through 11.x and TensorRT-RTX share. A
TensorRT-RTX engine is first asked ``Runtime.get_engine_validity``; it runs through an ``IRuntimeConfig`` whose
runtime cache (a file beside the engine, keyed by library version and GPU) keeps the kernels it compiles just in
time on this GPU, and whose CUDA-graph strategy replaces our own capture. CUDA comes from cuda-python
(``trt_res2net.cuda.device``): device and pinned host buffers allocated once per batch size, one stream, and
optionally a CUDA graph of the enqueue per batch size. Not thread-safe: use one backend per thread.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..core.errors import MissingDependency, UserError
from ..data.preprocess import SPEC
from ..engine import manifest as manifest_mod
from ..engine import trt_compat

if TYPE_CHECKING:  # the API the code below is written against (trt-api-check reads this import); at run time
    import tensorrt as trt  # noqa: F401  the module is trt_compat.import_library(...).module, of either family

# TensorRT I/O data types that the runtime can feed from numpy, by enum member name.
_NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16}


class TopK(NamedTuple):
    ids: np.ndarray  # int32 [n, k], best first; ties in class-id order
    scores: np.ndarray  # float32 [n, k]: softmax probabilities (or the model's own when it outputs them)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# The engine's manifest and library


def engine_family(engine_path: Path, manifest: dict | None) -> str:
    """The family named by the manifest, else the one the file's first bytes show."""
    if manifest and manifest.get("engine_family"):
        return str(manifest["engine_family"])
    return trt_compat.engine_family_of(engine_path)


def import_engine_library(engine_path: Path, family_key: str) -> trt_compat.Library:
    """The library that runs this engine's family, or MissingDependency (exit 3) naming the family."""
    label = trt_compat.family(family_key).label
    try:
        return trt_compat.import_library(family_key)
    except MissingDependency as e:
        raise MissingDependency(f"cannot run {engine_path}, a {label} engine: {e}; .onnx files run anywhere "
                                "with ONNX Runtime") from e


def check_engine_manifest(manifest: dict, version: trt_compat.TrtVersion, gpu_name: str, compute_capability: str,
                          engine_path: Path | None = None) -> None:
    """Refuse (UserError naming the difference) an engine of another family, built for another release or GPU,
    or a file that is not the engine its manifest describes; warn when it was built for other preprocessing."""
    manifest_mod.check_engine_compatible(manifest, version, gpu_name, compute_capability,
                                         engine=str(engine_path) if engine_path else None)
    if engine_path is not None:
        manifest_mod.check_engine_file(manifest, engine_path)
    recorded = manifest.get("preprocess_sha256")
    if recorded and recorded != SPEC.sha256():
        _warn(f"{engine_path or 'the engine'} was built for other preprocessing than this trt_res2net's "
              "(preprocess_sha256 differs); inputs are preprocessed with this version's spec")


def _outputs_probabilities(manifest: dict | None, output_name: str) -> bool:
    """Whether the engine's output is already softmax probabilities: the manifest says so, else the name."""
    if manifest:
        for key in ("outputs_probabilities", "softmax"):
            if isinstance(manifest.get(key), bool):
                return manifest[key]
    lowered = output_name.lower()
    return "prob" in lowered or "softmax" in lowered


def topk_numpy(outputs: np.ndarray, k: int, apply_softmax: bool) -> TopK:
    """The CPU equivalent of the top-k kernel (ranked by the raw output, ties in class order)."""
    x = np.asarray(outputs, dtype=np.float32)
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    if apply_softmax:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        x = e / e.sum(axis=1, keepdims=True)
    return TopK(order.astype(np.int32), np.take_along_axis(x, order, axis=1).astype(np.float32))


# --------------------------------------------------------------------------------------------------
# TensorRT-RTX: engine validity and the runtime cache


def check_rtx_validity(trt, runtime, data: bytes, engine_path: Path) -> None:
    """``Runtime.get_engine_validity`` on the plan's header before deserializing: INVALID → one line naming the
    library's diagnostics; SUBOPTIMAL → a warning."""
    size = int(runtime.engine_header_size)
    validity, diagnostics = runtime.get_engine_validity(memoryview(data)[:size])
    if validity == trt.EngineValidity.VALID:
        return
    bits = int(diagnostics)
    names = [name for name, member in trt.EngineInvalidityDiagnostics.__members__.items() if bits & int(member)]
    why = ", ".join(names) or "no diagnostic given"
    if validity == trt.EngineValidity.SUBOPTIMAL:
        _warn(f"TensorRT-RTX says {engine_path} runs suboptimally on this GPU ({why})")
        return
    raise UserError(f"TensorRT-RTX says {engine_path} cannot run here ({why}); rebuild it with build.py "
                    "--engine-family tensorrt-rtx for this GPU's compute capability")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


class RuntimeCacheFile:
    """The TensorRT-RTX runtime cache beside an engine: the kernels compiled just in time on one GPU, so that
    the compilation is paid once. One file per (library version, GPU), named after both — caches from other
    GPUs or releases sit beside it untouched — written atomically."""

    def __init__(self, engine_path: Path, library_version: str, gpu_name: str, compute_capability: str):
        cc = compute_capability.replace(".", "")
        self.path = Path(engine_path).with_name(
            f"{Path(engine_path).name}.{_slug(gpu_name)}-sm{cc}.rtx-{library_version}.runtime-cache")
        self.loaded = b""

    def load(self) -> bytes:
        try:
            self.loaded = self.path.read_bytes()
        except FileNotFoundError:
            self.loaded = b""
        except OSError as e:
            _warn(f"runtime cache {self.path} is unreadable ({e.strerror or e}); kernels are compiled again")
            self.loaded = b""
        return self.loaded

    def save(self, data: bytes) -> bool:
        """Write ``data`` when it differs from what was loaded; False (with a warning) when the folder is not
        writable — the engine still runs, compiling again next time."""
        from ..core.files import write_bytes

        if not data or data == self.loaded:
            return False
        try:
            write_bytes(self.path, data)
        except OSError as e:
            _warn(f"could not write the runtime cache {self.path} ({e.strerror or e})")
            return False
        self.loaded = data
        return True


# --------------------------------------------------------------------------------------------------


@dataclass
class _Bindings:
    """Buffers (and the CUDA graph) for one batch size."""

    batch: int
    device_in: object
    device_out: object
    pinned_in: object
    pinned_out: object
    host_in: np.ndarray
    host_out: np.ndarray
    graph: object = None
    ran: bool = False  # executed at least once (the first run of a TensorRT-RTX engine compiles kernels)


class TensorRTBackend:
    """A TensorRT or TensorRT-RTX engine with one float NCHW input and one [N, classes] output.

    ``cuda_graph=True`` replays each batch size's enqueue as a CUDA graph: captured here for TensorRT (with a
    warning and no graphs when the engine cannot be captured), TensorRT-RTX's own whole-graph strategy for its
    engines. ``check_manifest=False`` skips the manifest comparison (the library still refuses a plan it cannot
    load). ``runtime_cache=False`` neither reads nor writes a TensorRT-RTX runtime cache. ``first_run_ms`` holds
    the host time of the first run of each batch size (for TensorRT-RTX, the kernel compilation).
    """

    def __init__(self, engine_path, *, device: int = 0, cuda_graph: bool = False, check_manifest: bool = True,
                 outputs_probabilities: bool | None = None, runtime_cache: bool = True):
        from ..cuda import device as cu

        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise UserError(f"engine not found: {self.engine_path}")
        self.manifest = manifest_mod.find_manifest(self.engine_path)
        self.manifest_path = manifest_mod.manifest_path_for(self.engine_path) if self.manifest else None
        self.library = import_engine_library(self.engine_path, engine_family(self.engine_path, self.manifest))
        trt = self.library.module
        version = self.library.version
        self.rtx = trt_compat.has_runtime_cache(version)
        self.trt_version = str(version)
        self.device = device
        self.device_info = cu.init_device(device)
        if self.manifest is not None and check_manifest:
            check_engine_manifest(self.manifest, version, self.device_info.name, self.device_info.cc,
                                  self.engine_path)
        elif self.manifest is None and check_manifest:
            _warn(f"no manifest next to {self.engine_path}: cannot confirm it was built for {self.library.label} "
                  f"on {self.device_info.name}")

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        data = self.engine_path.read_bytes()
        if self.rtx:
            check_rtx_validity(trt, self._runtime, data, self.engine_path)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        del data
        if self.engine is None:
            raise UserError(f"{self.library.label} could not load {self.engine_path} (see its message above): "
                            "engines only run on the library version and GPUs they were built for")
        self._read_io(trt)
        self.cuda_graph = cuda_graph
        self._graph_failed = False
        self.stream = cu.Stream()
        self.runtime_cache = self._runtime_cache_config = self._runtime_cache_object = None
        if self.rtx:
            self.context = self._rtx_context(trt, runtime_cache)
        else:
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"{self.library.label} could not create an execution context for "
                            f"{self.engine_path} (out of GPU memory?)")
        if self.rtx and cuda_graph and not self.context.is_stream_capturable(self.stream.handle):
            self._graph_failed = True
            _warn(f"{self.engine_path}: TensorRT-RTX cannot capture this engine's enqueue; running without graphs")
        self.num_classes = self._output_classes()
        self.outputs_probabilities = (
            outputs_probabilities if outputs_probabilities is not None
            else _outputs_probabilities(self.manifest, self.output_name)
        )
        self._bindings: dict[int, _Bindings] = {}
        self.first_run_ms: dict[int, float] = {}
        self._kernels = None  # compiled on first classify_bgr
        self._events = None

    def _rtx_context(self, trt, use_cache: bool):
        """An execution context through an IRuntimeConfig: the runtime cache beside the engine, and the
        library's whole-graph CUDA-graph strategy when graphs are asked for."""
        config = self.engine.create_runtime_config()
        if use_cache:
            self.runtime_cache = RuntimeCacheFile(self.engine_path, self.library.version.full,
                                                  self.device_info.name, self.device_info.cc)
            cache = config.create_runtime_cache()
            blob = self.runtime_cache.load()
            if blob and not cache.deserialize(blob):
                _warn(f"runtime cache {self.runtime_cache.path} does not fit this GPU, driver or TensorRT-RTX; "
                      "kernels are compiled again and the cache replaced")
                self.runtime_cache.loaded = b""
            config.set_runtime_cache(cache)
            self._runtime_cache_object = cache  # the config holds a pointer only: keep the object alive
        if self.cuda_graph:
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        self._runtime_cache_config = config  # keeps the cache alive with the context
        return self.engine.create_execution_context(config)

    def save_runtime_cache(self) -> bool:
        """Write the TensorRT-RTX runtime cache beside the engine (atomically) if it grew; True if written."""
        if self.runtime_cache is None or self._runtime_cache_config is None:
            return False
        cache = self._runtime_cache_config.get_runtime_cache()
        if cache is None:
            return False
        return self.runtime_cache.save(bytes(memoryview(cache.serialize())))

    # -- engine description ------------------------------------------------------------------------

    def _read_io(self, trt) -> None:
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(f"{self.engine_path}: expected one input and one output, found inputs {inputs} "
                            f"and outputs {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        if len(shape) != 4 or shape[1] != 3 or min(shape[2:]) <= 0:
            raise UserError(f"{self.engine_path}: input {self.input_name!r} has shape {list(shape)}; "
                            "expected [N, 3, H, W] with fixed H and W")
        self.input_hw = (shape[2], shape[3])
        if shape[0] > 0:
            self.min_batch = self.opt_batch = self.max_batch = shape[0]
        else:
            low, opt, high = engine.get_tensor_profile_shape(self.input_name, 0)
            self.min_batch, self.opt_batch, self.max_batch = int(low[0]), int(opt[0]), int(high[0])
        self.fixed_batch = False  # run() takes any n: it splits and pads to the profile itself
        self.input_dtype = self._numpy_dtype(engine.get_tensor_dtype(self.input_name), self.input_name)
        self.output_dtype = self._numpy_dtype(engine.get_tensor_dtype(self.output_name), self.output_name)

    def _numpy_dtype(self, trt_dtype, name: str):
        key = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
        if key not in _NUMPY_DTYPES:
            raise UserError(f"{self.engine_path}: tensor {name!r} has data type {key}; "
                            f"the runtime feeds {', '.join(_NUMPY_DTYPES)} only")
        return np.dtype(_NUMPY_DTYPES[key])

    def _input_shape(self, n: int) -> tuple[int, int, int, int]:
        return (n, 3, *self.input_hw)

    def _output_classes(self) -> int:
        shape = self._input_shape(self.min_batch)
        if not self.context.set_input_shape(self.input_name, shape):
            raise UserError(f"{self.engine_path}: TensorRT refused input shape {list(shape)}")
        shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output_name))
        classes = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) >= 2 else -1
        if len(shape) < 2 or classes <= 0 or any(d != 1 for d in shape[2:]):
            raise UserError(f"{self.engine_path}: output {self.output_name!r} has shape {list(shape)}; "
                            "expected [N, classes]")
        return classes

    @property
    def gpu_preprocessing(self) -> bool:
        """Whether ``classify_bgr`` can run fully on the GPU (float32 I/O at the spec's crop size)."""
        crop = SPEC.crop_size
        return (self.input_hw == (crop, crop) and self.input_dtype == np.float32
                and self.output_dtype == np.float32)

    def describe(self) -> str:
        """One line for people (infer.py prints it)."""
        batch = (f"fixed batch {self.max_batch}" if self.min_batch == self.max_batch
                 else f"batch {self.min_batch}..{self.max_batch}")
        graph = ", CUDA graphs" if self.cuda_graph and not self._graph_failed else ""
        cache = ", runtime cache" if self.runtime_cache is not None else ""
        return (f"{self.library.label} on {self.device_info.name} (compute {self.device_info.cc}), "
                f"{batch}, {self.num_classes} classes, {self.input_dtype.name} input{graph}{cache}")

    def info(self) -> dict:
        """The engine, GPU and I/O as JSON-ready data (the benchmark's report carries it)."""
        return {
            "engine": str(self.engine_path),
            "library": self.library.label,
            "engine_family": self.library.version.family,
            "library_version": self.library.version.full,
            "gpu": self.device_info.to_dict(),
            "input": {"name": self.input_name, "dtype": str(self.input_dtype),
                      "batch": [self.min_batch, self.opt_batch, self.max_batch]},
            "output": {"name": self.output_name, "dtype": str(self.output_dtype), "classes": self.num_classes,
                       "probabilities": self.outputs_probabilities},
            "manifest": str(self.manifest_path) if self.manifest_path else None,
            "cuda_graph": self.cuda_graph and not self._graph_failed,
            "runtime_cache": str(self.runtime_cache.path) if self.runtime_cache is not None else None,
            "first_run_ms": {str(b): round(ms, 3) for b, ms in sorted(self.first_run_ms.items())},
        }

    # -- buffers and execution ---------------------------------------------------------------------

    def _get_bindings(self, n: int) -> _Bindings:
        from ..cuda import device as cu

        b = self._bindings.get(n)
        if b is not None:
            return b
        in_shape = self._input_shape(n)
        in_bytes = int(np.prod(in_shape)) * self.input_dtype.itemsize
        out_bytes = n * self.num_classes * self.output_dtype.itemsize
        device_in, device_out = cu.DeviceBuffer(in_bytes), cu.DeviceBuffer(out_bytes)
        pinned_in, pinned_out = cu.PinnedBuffer(in_bytes), cu.PinnedBuffer(out_bytes)
        self.stream.memset(device_in.address, 0, in_bytes)  # padding slots of fixed-batch runs stay finite
        b = _Bindings(n, device_in, device_out, pinned_in, pinned_out,
                      pinned_in.view(self.input_dtype, in_shape), pinned_out.view(self.output_dtype,
                                                                                  (n, self.num_classes)))
        self._bindings[n] = b
        return b

    def _bind(self, b: _Bindings) -> None:
        if not self.context.set_input_shape(self.input_name, self._input_shape(b.batch)):
            raise UserError(f"{self.library.family.label} refused batch {b.batch} (profile "
                            f"{self.min_batch}..{self.max_batch})")
        self.context.set_tensor_address(self.input_name, b.device_in.address)
        self.context.set_tensor_address(self.output_name, b.device_out.address)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise UserError(f"{self.library.family.label} could not run {self.engine_path} (see its message "
                            "above)")

    def _enqueue(self, b: _Bindings, bind: bool = True) -> None:
        """Put one inference of ``b`` on the stream (replaying its CUDA graph when there is one).

        The first run of each batch size is synchronous and timed apart (``first_run_ms``): the library
        initialises lazily then — TensorRT-RTX compiles its kernels for this GPU — and our own CUDA graph is
        captured only after it."""
        from ..cuda import device as cu

        if b.graph is not None:
            b.graph.launch()
            return
        if bind:
            self._bind(b)
        if b.ran:
            self._execute()
            return
        started = time.perf_counter()
        self._execute()
        self.stream.synchronize()
        self.first_run_ms[b.batch] = (time.perf_counter() - started) * 1e3
        b.ran = True
        if not self.cuda_graph or self._graph_failed or self.rtx:  # TensorRT-RTX captures graphs itself
            return
        try:
            b.graph = cu.Graph(self.stream, self._execute)  # capture only: this call's run is done
        except (cu.CudaError, UserError) as e:
            self._graph_failed = True
            _warn(f"CUDA graph capture is not possible for this engine ({e}); running without graphs")

    def _chunks(self, n: int):
        """(start, count, batch to run) over n items: at most max_batch each, padded up to min_batch."""
        for start in range(0, n, self.max_batch):
            count = min(self.max_batch, n - start)
            yield start, count, max(count, self.min_batch)

    def run(self, batch_nchw_float32: np.ndarray) -> np.ndarray:
        """Raw outputs (float32 [n, classes]) for a preprocessed batch [n, 3, H, W] of any n."""
        from ..cuda import device as cu

        x = np.asarray(batch_nchw_float32)
        if x.ndim != 4 or x.shape[1:] != self._input_shape(1)[1:]:
            raise UserError(f"input batch has shape {list(x.shape)}; the engine takes "
                            f"{['N', *self._input_shape(1)[1:]]}")
        out = np.empty((x.shape[0], self.num_classes), np.float32)
        cu.set_device(self.device)
        for start, count, run_n in self._chunks(x.shape[0]):
            b = self._get_bindings(run_n)
            b.host_in[:count] = x[start : start + count]
            self.stream.copy_htod(b.device_in.address, b.pinned_in.address, count * b.host_in[0].nbytes)
            self._enqueue(b)
            self.stream.copy_dtoh(b.pinned_out.address, b.device_out.address, count * b.host_out[0].nbytes)
            self.stream.synchronize()
            out[start : start + count] = b.host_out[:count]
        return out

    def _gpu_kernels(self):
        if self._kernels is None:
            from ..cuda.kernels import GpuKernels

            self._kernels = GpuKernels(self.stream, self.device_info.compute_capability)
        return self._kernels

    def classify_bgr(self, images, k: int = 5) -> TopK:
        """Top-k of decoded BGR uint8 images [H, W, 3] (any sizes): preprocessing, inference and top-k on
        the GPU; only k ids and scores per image come back. Falls back to the CPU reference preprocessing
        when the engine's I/O is not float32 at the spec's crop size."""
        from ..cuda import device as cu

        images = list(images)
        k = min(int(k), self.num_classes)
        apply_softmax = not self.outputs_probabilities
        if not self.gpu_preprocessing:
            from ..data.preprocess import preprocess_bgr

            if not images:
                return TopK(np.empty((0, k), np.int32), np.empty((0, k), np.float32))
            return topk_numpy(self.run(np.stack([preprocess_bgr(im) for im in images])), k, apply_softmax)
        cu.set_device(self.device)
        kernels = self._gpu_kernels()
        ids = np.empty((len(images), k), np.int32)
        scores = np.empty((len(images), k), np.float32)
        for start, count, run_n in self._chunks(len(images)):
            b = self._get_bindings(run_n)
            kernels.preprocess(images[start : start + count], b.device_in.address)
            self._enqueue(b)
            kernels.topk(b.device_out.address, count, self.num_classes, k, apply_softmax)
            self.stream.synchronize()
            ids[start : start + count], scores[start : start + count] = kernels.topk_result()
        return TopK(ids, scores)

    def time_compute_ms(self, batch: int) -> float:
        """GPU time of one enqueue at ``batch`` (CUDA events around it on the stream), in milliseconds."""
        from ..cuda import device as cu

        if not self.min_batch <= batch <= self.max_batch:
            raise UserError(f"batch {batch} is not in the engine's range {self.min_batch}..{self.max_batch}")
        if self._events is None:
            self._events = (cu.Event(), cu.Event())
        start, end = self._events
        b = self._get_bindings(batch)
        if not b.ran:
            self._enqueue(b)  # the first run (and any graph capture) outside the timed region
        if b.graph is None:
            self._bind(b)  # host-side work kept out of the timed region
        start.record(self.stream)
        self._enqueue(b, bind=False)
        end.record(self.stream)
        end.synchronize()
        return end.elapsed_ms(start)

    def close(self) -> None:
        """Save the runtime cache (TensorRT-RTX); free the GPU buffers, graphs, kernels and stream (the engine
        goes with the object)."""
        self.save_runtime_cache()
        for b in self._bindings.values():
            if b.graph is not None:
                b.graph.destroy()
            for buf in (b.device_in, b.device_out, b.pinned_in, b.pinned_out):
                buf.free()
        self._bindings.clear()
        if self._kernels is not None:
            self._kernels.close()
            self._kernels = None
        if self._events is not None:
            for e in self._events:
                e.destroy()
            self._events = None
        if self.stream is not None:
            self.stream.destroy()
            self.stream = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
