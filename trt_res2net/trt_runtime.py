"""TensorRT runtime: ``TensorRTBackend`` runs a serialized engine (``.engine``/``.plan``) on one GPU.

It implements the Backend protocol of ``trt_res2net.runtime`` (``input_name``, ``output_name``,
``num_classes``, ``max_batch``, ``fixed_batch``, ``outputs_probabilities``, ``run(batch) -> outputs``,
``describe()``) and adds a GPU fast
path, ``classify_bgr(images, k)``: decoded BGR images → fused CUDA preprocessing straight into the engine's
input buffer → inference → softmax + top-k on the GPU → only k ids and scores per image copied back.

Only the name-based I/O API is used (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), which TensorRT 8.5 through 11.x share, so
there is no version branch here. CUDA comes from cuda-python (``trt_res2net.cuda_util``): device buffers and
pinned host buffers allocated once per batch size, one stream, and optionally a CUDA graph of the enqueue
per batch size. An engine whose manifest names another TensorRT version or GPU is refused before TensorRT
is asked to deserialize it. Not thread-safe: use one backend per thread.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import MissingDependency, UserError
from .preprocess import SPEC

TENSORRT_HINT = (
    "install TensorRT: pip install tensorrt (x86, with cuda-python) or JetPack's python3-libnvinfer (Jetson)"
)

# TensorRT I/O data types that the runtime can feed from numpy, by enum member name.
_NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16}


class TopK(NamedTuple):
    ids: np.ndarray  # int32 [n, k], best first; ties in class-id order
    scores: np.ndarray  # float32 [n, k]: softmax probabilities (or the model's own when it outputs them)


def _import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise MissingDependency(f"cannot run a TensorRT engine: TensorRT is missing; {TENSORRT_HINT}") from e
    return tensorrt


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# The engine manifest (written by trt_res2net.builder through trt_res2net.manifest)


def find_manifest(engine_path: Path) -> Path | None:
    """The JSON manifest written next to an engine, if any."""
    engine_path = Path(engine_path)
    try:
        from . import manifest as manifest_module
    except ImportError:
        manifest_module = None
    locate = getattr(manifest_module, "manifest_path", None)
    if callable(locate):  # the builder's naming, and only it: a stray <stem>.json is not a manifest
        candidates = [Path(locate(engine_path))]
    else:
        candidates = [engine_path.with_name(engine_path.name + ".json"), engine_path.with_suffix(".json")]
    return next((p for p in candidates if p.is_file()), None)


def load_manifest(path: Path) -> dict:
    try:
        from . import manifest as manifest_module
    except ImportError:
        manifest_module = None
    read = getattr(manifest_module, "read_manifest", None)
    if callable(read):
        return read(path)
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read engine manifest {path}: {e}") from e


def check_engine_manifest(manifest: dict, trt_version: str, gpu_name: str, compute_capability: str,
                          engine_path: Path | None = None, manifest_path: Path | None = None) -> None:
    """Refuse (UserError naming the difference) an engine built for another TensorRT version or GPU, or a
    file that is not the engine its manifest describes; warn when it was built for other preprocessing.

    The comparisons are ``trt_res2net.manifest``'s (``check_engine_compatible``, and ``check_engine_file``
    when it has one); without that module the check is skipped with a warning.
    """
    try:
        from . import manifest as manifest_module
    except ImportError:
        manifest_module = None
    check = getattr(manifest_module, "check_engine_compatible", None)
    if check is None:
        _warn(f"trt_res2net.manifest is not available; {manifest_path or 'the manifest'} was not checked")
        return
    check(manifest, trt_version, gpu_name, compute_capability)
    check_file = getattr(manifest_module, "check_engine_file", None)
    if engine_path is not None and callable(check_file):
        check_file(manifest, engine_path)
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


class TensorRTBackend:
    """A TensorRT engine with one float NCHW input and one [N, classes] output.

    ``cuda_graph=True`` captures the enqueue of each batch size once as a CUDA graph and replays it
    (falls back, with a warning, when the engine cannot be captured). ``check_manifest=False`` skips the
    manifest comparison (TensorRT still refuses a plan it cannot load).
    """

    def __init__(self, engine_path, *, device: int = 0, cuda_graph: bool = False, check_manifest: bool = True,
                 outputs_probabilities: bool | None = None):
        from . import cuda_util as cu

        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise UserError(f"engine not found: {self.engine_path}")
        trt = _import_tensorrt()
        self.trt_version = str(trt.__version__)
        self.device = device
        self.device_info = cu.init_device(device)
        self.manifest_path = find_manifest(self.engine_path)
        self.manifest = load_manifest(self.manifest_path) if self.manifest_path else None
        if self.manifest is not None and check_manifest:
            check_engine_manifest(self.manifest, self.trt_version, self.device_info.name, self.device_info.cc,
                                  self.engine_path, self.manifest_path)
        elif self.manifest is None and check_manifest:
            _warn(f"no manifest next to {self.engine_path}: cannot confirm it was built for TensorRT "
                  f"{self.trt_version} on {self.device_info.name}")

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self.engine is None:
            raise UserError(f"TensorRT {self.trt_version} could not load {self.engine_path} (see its message "
                            "above): engines only run on the TensorRT version and GPU they were built with")
        self._read_io(trt)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise UserError(f"TensorRT could not create an execution context for {self.engine_path} "
                            "(out of GPU memory?)")
        self.num_classes = self._output_classes()
        self.outputs_probabilities = (
            outputs_probabilities if outputs_probabilities is not None
            else _outputs_probabilities(self.manifest, self.output_name)
        )
        self.cuda_graph = cuda_graph
        self._graph_failed = False
        self.stream = cu.Stream()
        self._bindings: dict[int, _Bindings] = {}
        self._kernels = None  # compiled on first classify_bgr
        self._events = None

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
        return (f"TensorRT {self.trt_version} on {self.device_info.name} (compute {self.device_info.cc}), "
                f"{batch}, {self.num_classes} classes, {self.input_dtype.name} input{graph}")

    def info(self) -> dict:
        """The engine, GPU and I/O as JSON-ready data (the benchmark's report carries it)."""
        return {
            "engine": str(self.engine_path),
            "tensorrt": self.trt_version,
            "gpu": self.device_info.to_dict(),
            "input": {"name": self.input_name, "dtype": str(self.input_dtype),
                      "batch": [self.min_batch, self.opt_batch, self.max_batch]},
            "output": {"name": self.output_name, "dtype": str(self.output_dtype), "classes": self.num_classes,
                       "probabilities": self.outputs_probabilities},
            "manifest": str(self.manifest_path) if self.manifest_path else None,
            "cuda_graph": self.cuda_graph and not self._graph_failed,
        }

    # -- buffers and execution ---------------------------------------------------------------------

    def _get_bindings(self, n: int) -> _Bindings:
        from . import cuda_util as cu

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
            raise UserError(f"TensorRT refused batch {b.batch} (profile {self.min_batch}..{self.max_batch})")
        self.context.set_tensor_address(self.input_name, b.device_in.address)
        self.context.set_tensor_address(self.output_name, b.device_out.address)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise UserError(f"TensorRT could not run {self.engine_path} (see its message above)")

    def _enqueue(self, b: _Bindings, bind: bool = True) -> None:
        """Put one inference of ``b`` on the stream (replaying its CUDA graph when there is one)."""
        from . import cuda_util as cu

        if b.graph is not None:
            b.graph.launch()
            return
        if bind:
            self._bind(b)
        if not self.cuda_graph or self._graph_failed:
            self._execute()
            return
        # TensorRT must run once outside capture (lazy initialisation) before its enqueue can be captured.
        self._execute()
        self.stream.synchronize()
        try:
            b.graph = cu.Graph(self.stream, self._execute)
        except (cu.CudaError, UserError) as e:
            self._graph_failed = True
            _warn(f"CUDA graph capture is not possible for this engine ({e}); running without graphs")
            return
        b.graph.launch()

    def _chunks(self, n: int):
        """(start, count, batch to run) over n items: at most max_batch each, padded up to min_batch."""
        for start in range(0, n, self.max_batch):
            count = min(self.max_batch, n - start)
            yield start, count, max(count, self.min_batch)

    def run(self, batch_nchw_float32: np.ndarray) -> np.ndarray:
        """Raw outputs (float32 [n, classes]) for a preprocessed batch [n, 3, H, W] of any n."""
        from . import cuda_util as cu

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
            from .cuda_preprocess import GpuKernels

            self._kernels = GpuKernels(self.stream, self.device_info.compute_capability)
        return self._kernels

    def classify_bgr(self, images, k: int = 5) -> TopK:
        """Top-k of decoded BGR uint8 images [H, W, 3] (any sizes): preprocessing, inference and top-k on
        the GPU; only k ids and scores per image come back. Falls back to the CPU reference preprocessing
        when the engine's I/O is not float32 at the spec's crop size."""
        from . import cuda_util as cu

        images = list(images)
        k = min(int(k), self.num_classes)
        apply_softmax = not self.outputs_probabilities
        if not self.gpu_preprocessing:
            from .preprocess import preprocess_bgr

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
        from . import cuda_util as cu

        if not self.min_batch <= batch <= self.max_batch:
            raise UserError(f"batch {batch} is not in the engine's range {self.min_batch}..{self.max_batch}")
        if self._events is None:
            self._events = (cu.Event(), cu.Event())
        start, end = self._events
        b = self._get_bindings(batch)
        if self.cuda_graph and b.graph is None and not self._graph_failed:
            self._enqueue(b)  # capture outside the timed region
            self.stream.synchronize()
        if b.graph is None:
            self._bind(b)  # host-side work kept out of the timed region
        start.record(self.stream)
        self._enqueue(b, bind=False)
        end.record(self.stream)
        end.synchronize()
        return end.elapsed_ms(start)

    def close(self) -> None:
        """Free the GPU buffers, graphs, kernels and stream (the engine goes with the object)."""
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
