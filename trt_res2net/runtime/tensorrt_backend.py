"""``TensorRTBackend`` runs a serialized engine (``.engine``/``.plan``) of either family — standard TensorRT or
TensorRT-RTX — on one GPU, in four parts: loading and validity (``trt_engine.LoadedEngine``) → bindings (device and
pinned buffers per batch size) → execution (one stream, optionally a CUDA graph per batch size) → GPU preprocessing
and top-k (``classify_bgr``).

It implements the Backend protocol of ``trt_res2net.runtime.backend`` (``input_name``, ``output_name``,
``num_classes``, ``max_batch``, ``fixed_batch``, ``outputs_probabilities``, ``run(batch) -> outputs``,
``describe()``) and adds the GPU fast path, ``classify_bgr(images, k)``: decoded BGR images → fused CUDA
preprocessing straight into the engine's input buffer → inference → softmax + top-k on the GPU → only k ids
and scores per image copied back.

Only the name-based I/O API is used (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), which TensorRT 8.5 through 11.x and
TensorRT-RTX share. CUDA comes from cuda-python (``trt_res2net.cuda.device``). Not thread-safe: use one backend
per thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..core import log
from ..core.errors import UserError
from ..data.recipe import FROM_MODEL, PreprocessOptions, choose_recipe
from .trt_engine import LoadedEngine

if TYPE_CHECKING:  # the API the code below is written against (trt-api-check reads this import); at run time
    import tensorrt as trt  # noqa: F401  the module is trt_compat.import_library(...).module, of either family


class TopK(NamedTuple):
    ids: np.ndarray  # int32 [n, k], best first; ties in class-id order
    scores: np.ndarray  # float32 [n, k]: softmax probabilities (or the model's own when it outputs them)


def topk_numpy(outputs: np.ndarray, k: int, apply_softmax: bool) -> TopK:
    """The CPU equivalent of the top-k kernel (ranked by the raw output, ties in class order)."""
    x = np.asarray(outputs, dtype=np.float32)
    order = np.argsort(-x, axis=1, kind="stable")[:, :k]
    if apply_softmax:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        x = e / e.sum(axis=1, keepdims=True)
    return TopK(order.astype(np.int32), np.take_along_axis(x, order, axis=1).astype(np.float32))


@dataclass
class _Bindings:
    """The buffers of one batch size — device input and output, their pinned host mirrors — and its CUDA graph."""

    batch: int
    device_in: object
    device_out: object
    pinned_in: object
    pinned_out: object
    host_in: np.ndarray
    host_out: np.ndarray
    graph: object = None
    context: object = None  # its own execution context when it is replayed as a CUDA graph (standard TensorRT)
    ran: bool = False  # executed at least once (the first run of a TensorRT-RTX engine compiles kernels)

    @classmethod
    def allocate(cls, stream, input_shape: tuple[int, ...], input_dtype: np.dtype, num_classes: int,
                 output_dtype: np.dtype) -> _Bindings:
        from ..cuda import device as cu

        n = input_shape[0]
        in_bytes = int(np.prod(input_shape)) * input_dtype.itemsize
        out_bytes = n * num_classes * output_dtype.itemsize
        device_in, device_out = cu.DeviceBuffer(in_bytes), cu.DeviceBuffer(out_bytes)
        pinned_in, pinned_out = cu.PinnedBuffer(in_bytes), cu.PinnedBuffer(out_bytes)
        stream.memset(device_in.address, 0, in_bytes)  # padding slots of fixed-batch runs stay finite
        return cls(n, device_in, device_out, pinned_in, pinned_out, pinned_in.view(input_dtype, input_shape),
                   pinned_out.view(output_dtype, (n, num_classes)))

    def free(self) -> None:
        if self.graph is not None:
            self.graph.destroy()
        self.context = None  # before the memory it runs in is freed
        for buf in (self.device_in, self.device_out, self.pinned_in, self.pinned_out):
            buf.free()


class TensorRTBackend:
    """A TensorRT or TensorRT-RTX engine with one float NCHW input and one [N, classes] output.

    ``cuda_graph=True`` replays each batch size's enqueue as a CUDA graph: for TensorRT captured here, one execution
    context per graph as TensorRT's CUDA-graph guidance asks (a graph holds the shapes and addresses of its
    context at capture time), all the contexts on one activation buffer since they run one after another on one
    stream, and with a warning and no graphs when the engine cannot be captured; for TensorRT-RTX the library's
    own whole-graph strategy, with a warning when the library says the enqueue of a batch size cannot be
    captured (asked after that batch size's first run, its shapes and addresses set).
    ``check_manifest=False`` runs an engine without (or unlike) its manifest unchecked (the library still refuses a
    plan it cannot load); otherwise an engine without its manifest is refused. ``runtime_cache=False``
    neither reads nor writes a TensorRT-RTX runtime cache. ``kernel_specialization`` (TensorRT-RTX: ``lazy``,
    ``eager``, ``none``; None = the library's default) is its dynamic-shape kernel specialisation strategy.
    ``first_run_ms`` holds the host time of the first run of each batch size (for TensorRT-RTX, the kernel
    compilation).
    """

    def __init__(self, engine_path, *, device: int = 0, cuda_graph: bool = False, check_manifest: bool = True,
                 outputs_probabilities: bool | None = None, runtime_cache: bool = True,
                 kernel_specialization: str | None = None, preprocess: PreprocessOptions = FROM_MODEL):
        from ..cuda import device as cu

        self.device = device
        self.loaded = LoadedEngine(engine_path, device, check_manifest=check_manifest)
        self.device_info = self.loaded.device_info
        manifest = self.loaded.manifest
        self.recipe = choose_recipe(self.input_hw, str(engine_path), preprocess,
                                    manifest.preprocess if manifest is not None else None)
        self.cuda_graph = cuda_graph
        self._graph_failed = False
        self.stream = cu.Stream()
        self._context_memory = None  # the activations of every context (standard TensorRT with CUDA graphs)
        if cuda_graph and not self.rtx:
            self._context_memory = cu.DeviceBuffer(self.loaded.context_memory_size())
            self.context = self._context_on_shared_memory()
        else:
            self.context = self.loaded.create_context(cuda_graph=cuda_graph, use_runtime_cache=runtime_cache,
                                                      kernel_specialization=kernel_specialization)
        self.num_classes = self._output_classes()
        self.outputs_probabilities = (outputs_probabilities if outputs_probabilities is not None
                                      else self.loaded.outputs_probabilities())
        self._bindings: dict[int, _Bindings] = {}
        self.first_run_ms: dict[int, float] = {}
        self._kernels = None  # compiled on first classify_bgr
        self._events = None

    # -- what was loaded -------------------------------------------------------------------------

    engine_path = property(lambda self: self.loaded.path)
    manifest = property(lambda self: self.loaded.manifest)
    manifest_path = property(lambda self: self.loaded.manifest_path)
    library = property(lambda self: self.loaded.library)
    engine = property(lambda self: self.loaded.engine)
    rtx = property(lambda self: self.loaded.rtx)
    runtime_cache = property(lambda self: self.loaded.runtime_cache)
    trt_version = property(lambda self: str(self.loaded.library.version))
    input_name = property(lambda self: self.loaded.io.input_name)
    output_name = property(lambda self: self.loaded.io.output_name)
    input_hw = property(lambda self: self.loaded.io.input_hw)
    input_dtype = property(lambda self: self.loaded.io.input_dtype)
    output_dtype = property(lambda self: self.loaded.io.output_dtype)
    min_batch = property(lambda self: self.loaded.io.min_batch)
    opt_batch = property(lambda self: self.loaded.io.opt_batch)
    max_batch = property(lambda self: self.loaded.io.max_batch)
    fixed_batch = False  # run() takes any n: it splits and pads to the profile itself

    @property
    def metadata(self) -> dict[str, str]:
        """An engine has no ONNX metadata properties: its manifest was checked on loading."""
        return {}

    def save_runtime_cache(self) -> bool:
        return self.loaded.save_runtime_cache()

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
        """Whether ``classify_bgr`` can run fully on the GPU (float32 I/O; the recipe's crop is the input's)."""
        return self.input_dtype == np.float32 and self.output_dtype == np.float32

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
                      "batch": [self.min_batch, self.opt_batch, self.max_batch], "hw": list(self.input_hw)},
            "output": {"name": self.output_name, "dtype": str(self.output_dtype), "classes": self.num_classes,
                       "probabilities": self.outputs_probabilities},
            "manifest": str(self.manifest_path) if self.manifest_path else None,
            "cuda_graph": self.cuda_graph and not self._graph_failed,
            "runtime_cache": str(self.runtime_cache.path) if self.runtime_cache is not None else None,
            "first_run_ms": {str(b): round(ms, 3) for b, ms in sorted(self.first_run_ms.items())},
        }

    # -- execution: bindings per batch size, the enqueue (and its CUDA graph), chunks of any n --------

    def _get_bindings(self, n: int) -> _Bindings:
        """The buffers of batch size ``n``, allocated once."""
        b = self._bindings.get(n)
        if b is None:
            b = self._bindings[n] = _Bindings.allocate(self.stream, self._input_shape(n), self.input_dtype,
                                                       self.num_classes, self.output_dtype)
        return b

    def _context_on_shared_memory(self):
        return self.loaded.create_context_on(self._context_memory.address, self._context_memory.nbytes)

    def _context_for(self, b: _Bindings):
        """The execution context that runs ``b``: its own while it may become a CUDA graph, else the shared one."""
        if b.context is None and self._context_memory is not None and not self._graph_failed:
            b.context = self._context_on_shared_memory()
        return b.context if b.context is not None else self.context

    def _bind(self, b: _Bindings) -> None:
        context = self._context_for(b)
        if not context.set_input_shape(self.input_name, self._input_shape(b.batch)):
            raise UserError(f"{self.library.family.label} refused batch {b.batch} (profile "
                            f"{self.min_batch}..{self.max_batch})")
        context.set_tensor_address(self.input_name, b.device_in.address)
        context.set_tensor_address(self.output_name, b.device_out.address)

    def _execute(self, context=None) -> None:
        if not (context or self.context).execute_async_v3(self.stream.handle):
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
        context = self._context_for(b)
        if b.ran:
            self._execute(context)
            return
        started = time.perf_counter()
        self._execute(context)  # the run before capture that TensorRT asks for, with shapes and addresses set
        self.stream.synchronize()
        self.first_run_ms[b.batch] = (time.perf_counter() - started) * 1e3
        b.ran = True
        if not self.cuda_graph or self._graph_failed:
            return
        if self.rtx:  # the library captures its graphs itself; whether it can is known for the shapes now set
            if not context.is_stream_capturable(self.stream.handle):
                self._graph_failed = True
                log.warn(f"{self.engine_path}: TensorRT-RTX cannot capture this engine's enqueue at batch {b.batch}; "
                         "running without CUDA graphs")
            return
        try:
            b.graph = cu.Graph(self.stream, lambda: self._execute(context))  # capture only: this run is done
        except (cu.CudaError, UserError) as e:
            self._graph_failed = True
            log.warn(f"CUDA graph capture is not possible for this engine ({e}); running without graphs")

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

    # -- GPU preprocessing and top-k -----------------------------------------------------------------

    def _gpu_kernels(self):
        if self._kernels is None:
            from ..cuda.kernels import GpuKernels

            self._kernels = GpuKernels(self.stream, self.device_info.compute_capability, self.recipe.spec)
        return self._kernels

    def classify_bgr(self, images, k: int = 5) -> TopK:
        """Top-k of decoded BGR uint8 images [H, W, 3] (any sizes): preprocessing, inference and top-k on
        the GPU; only k ids and scores per image come back. Falls back to the CPU reference preprocessing
        when the engine's I/O is not float32."""
        from ..cuda import device as cu

        images = list(images)
        k = min(int(k), self.num_classes)
        apply_softmax = not self.outputs_probabilities
        if not self.gpu_preprocessing:
            from ..data.preprocess import preprocess_bgr

            if not images:
                return TopK(np.empty((0, k), np.int32), np.empty((0, k), np.float32))
            return topk_numpy(self.run(np.stack([preprocess_bgr(im, self.recipe.spec) for im in images])), k,
                              apply_softmax)
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
            b.free()
        self._bindings.clear()
        if self._context_memory is not None:
            self.context = None  # the contexts go before the memory they run in
            self._context_memory.free()
            self._context_memory = None
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
