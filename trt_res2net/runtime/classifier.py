"""The runtime interface: a Backend runs NCHW float32 batches; a Classifier owns the whole path from image
files to top-k (preprocess → inference → postprocess).

ONNX Runtime runs ``.onnx`` files on every machine (CUDA execution provider when present, else CPU);
TensorRT engines (``.engine`` / ``.plan``) are run by ``trt_res2net.runtime.tensorrt_backend.TensorRTBackend``, imported
only when such a file is opened. Any image-classification ONNX works — one NCHW float input and one
[N, classes] output — whatever its tensor names (e.g. a paddle2onnx export of a fine-tuned PaddleClas model).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..core.errors import MissingDependency, UserError
from ..data.images import Batch, ImageBatcher
from ..data.postprocess import is_probability, load_labels, softmax, topk, topk_entries
from ..data.preprocess import SPEC

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")
TRT_INSTALL_HINT = (
    "running engines needs cuda-python, an NVIDIA GPU and the engine's library: TensorRT (pip install "
    "'trt-res2net[trt]' on x86, JetPack's python3-libnvinfer on Jetson) or TensorRT-RTX (pip install "
    "'trt-res2net[rtx,nvrtc]'); .onnx files run anywhere with ONNX Runtime"
)


@runtime_checkable
class Backend(Protocol):
    """What a Classifier needs from an inference engine.

    ``max_batch`` is None for a dynamic batch dimension, else the most images one ``run`` takes; a backend
    whose batch is fixed (it must get exactly ``max_batch`` images) also sets ``fixed_batch = True``.
    ``run`` takes float32 [n, 3, 224, 224] and returns float32 [n, num_classes].
    """

    input_name: str
    output_name: str
    num_classes: int
    max_batch: int | None
    outputs_probabilities: bool

    def run(self, batch_nchw_float32: np.ndarray) -> np.ndarray: ...


# ------------------------------------------------------------------------------------------ ONNX Runtime


_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "CastLike"}


def onnx_output_is_softmax(model_path: str | os.PathLike, output_name: str) -> bool:
    """Whether the graph output is produced by a Softmax (through shape-only ops such as Reshape or Cast)."""
    try:
        import onnx

        graph = onnx.load(str(model_path), load_external_data=False).graph
    except Exception:  # unreadable here; the probability heuristic on real outputs decides instead
        return False
    producer = {out: node for node in graph.node for out in node.output}
    name, seen = output_name, set()
    while name in producer and name not in seen:
        seen.add(name)
        node = producer[name]
        if node.op_type == "Softmax":
            return True
        if node.op_type not in _PASS_THROUGH or not node.input:
            return False
        name = node.input[0]
    return False


class OnnxRuntimeBackend:
    """ONNX Runtime on the CUDA execution provider when present, else the CPU.

    ``threads``: intra-op threads (0: ONNX Runtime's default, one per core); ``spinning``: let idle
    intra-op threads spin-wait (off, so that image decoding running alongside gets the CPU).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        spinning: bool = False,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such model file")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider-fallback chatter on stderr
        # Idle ORT worker threads spin by default; that steals the CPU the decoding threads run on between
        # batches (docs/runtime.md: 1.9x images/s at batch 1 on 2 busy cores, no change at batch 8).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{self.path}: not a loadable ONNX model ({reason[:300]})") from None
        self.provider = self.session.get_providers()[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_io()
        self.outputs_probabilities = onnx_output_is_softmax(self.path, self.output_name)

    def _check_io(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        where = str(self.path)
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs)
            raise UserError(f"{where}: has {len(inputs)} inputs ({names}); an image classifier has one")
        if len(outputs) != 1:
            names = ", ".join(o.name for o in outputs)
            raise UserError(f"{where}: has {len(outputs)} outputs ({names}); expected one, [N, classes]")
        inp, out = inputs[0], outputs[0]
        self.input_name, self.output_name = inp.name, out.name
        if inp.type not in ("tensor(float)", "tensor(float16)"):
            raise UserError(f"{where}: input {inp.name!r} is {inp.type}; expected float32 or float16")
        self._input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        shape = list(inp.shape)
        c = SPEC.crop_size
        fixed = [d if isinstance(d, int) else None for d in shape]
        if len(shape) != 4 or fixed[1] not in (3, None) or not set(fixed[2:]) <= {c, None}:
            raise UserError(
                f"{where}: input {inp.name!r} has shape {shape}; expected NCHW [N, 3, {c}, {c}] "
                "(the preprocessing makes 3×224×224)"
            )
        self.max_batch = fixed[0] if fixed[0] and fixed[0] > 0 else None
        self.fixed_batch = self.max_batch is not None
        oshape = list(out.shape)
        if len(oshape) < 2 or any(isinstance(d, int) and d != 1 for d in oshape[2:]):
            raise UserError(f"{where}: output {out.name!r} has shape {oshape}; expected [N, classes]")
        if isinstance(oshape[1], int) and oshape[1] > 0:
            self.num_classes = oshape[1]
        else:  # a symbolic class dimension: one zero batch tells
            probe = np.zeros((self.max_batch or 1, 3, c, c), np.float32)
            self.num_classes = int(self.run(probe).shape[1])

    def run(self, batch_nchw_float32: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch_nchw_float32, dtype=self._input_dtype)
        try:
            (y,) = self.session.run([self.output_name], {self.input_name: x})
        except Exception as e:  # e.g. a model whose symbolic input size hides a fixed one
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
            raise UserError(f"{self.path}: inference failed on a batch of shape {x.shape}: {lines[0][:300]}") from None
        y = np.asarray(y)
        return y.reshape(y.shape[0], -1).astype(np.float32, copy=False)

    def describe(self) -> str:
        batch = f"fixed batch {self.max_batch}" if self.fixed_batch else "dynamic batch"
        return f"ONNX Runtime ({self.provider}), {batch}, {self.num_classes} classes"


def open_backend(path: str | os.PathLike, **kwargs) -> Backend:
    """The backend for a model file: ``.onnx`` → ONNX Runtime, ``.engine``/``.plan`` → TensorRT or TensorRT-RTX
    (the engine's family decides)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in ONNX_SUFFIXES + ENGINE_SUFFIXES:
        raise UserError(f"{p}: unsupported model file; expected .onnx, .engine or .plan")
    if not p.is_file():
        raise UserError(f"{p}: no such model file")
    if suffix in ONNX_SUFFIXES:
        return OnnxRuntimeBackend(p, **kwargs)
    try:
        from .tensorrt_backend import TensorRTBackend
    except ImportError as e:
        raise MissingDependency(f"{p}: {TRT_INSTALL_HINT} ({e})") from None
    return TensorRTBackend(p, **kwargs)


def backend_preprocesses_on_gpu(backend) -> bool:
    """Whether ``backend`` takes decoded images and preprocesses them on the GPU (``classify_bgr``)."""
    return callable(getattr(backend, "classify_bgr", None)) and bool(getattr(backend, "gpu_preprocessing", False))


# ------------------------------------------------------------------------------------------ Classifier


class Classifier:
    """Image files → top-k, through one backend.

    ``labels``: a labels file (``--labels``), a list of names, or None (ImageNet's for 1000 classes, else
    ids). Softmax is applied unless the model already outputs probabilities (a Softmax at the end of the
    graph, or rows that are non-negative and sum to one).

    ``gpu_preprocess``: when the backend can preprocess on the GPU (a TensorRT engine with float32 I/O:
    ``backend.gpu_preprocessing`` and ``classify_bgr``), ``classify`` only decodes images on the CPU and
    hands them to ``backend.classify_bgr``, which preprocesses, runs and takes the top-k on the GPU; False
    keeps preprocessing on the CPU (to cross-check). ``self.preprocessing`` says which ("gpu" or "cpu").
    On the GPU path whether the outputs already are probabilities is the backend's own
    ``outputs_probabilities`` (from the engine's manifest or output name), without the row heuristic.
    ``infer``/``batches`` (what evaluation uses) always preprocess on the CPU: they need the full outputs.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        labels: str | os.PathLike | list[str] | None = None,
        topk: int = 5,
        batch: int = 8,
        threads: int = 2,
        backend: Backend | None = None,
        gpu_preprocess: bool = True,
    ):
        if batch < 1 or topk < 1:
            raise UserError("--batch and --topk must be at least 1")
        self.model_path = Path(model_path)
        self.backend = backend if backend is not None else open_backend(model_path)
        n = self.backend.num_classes
        if isinstance(labels, list):
            if len(labels) != n:
                raise UserError(f"{len(labels)} labels given, but the model has {n} classes")
            self.labels = labels
        else:
            self.labels = load_labels(labels, n)
        self.topk = topk
        self.batch = batch
        self.threads = threads
        self._probabilities: bool | None = True if self.backend.outputs_probabilities else None
        self.preprocessing = "gpu" if gpu_preprocess and backend_preprocesses_on_gpu(self.backend) else "cpu"

    @property
    def num_classes(self) -> int:
        return self.backend.num_classes

    def close(self) -> None:
        """Release the backend (a TensorRT-RTX engine saves its runtime cache then); ONNX Runtime needs nothing."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Raw model outputs float32 [n, classes] for a preprocessed batch of any size n.

        Splits into chunks of the backend's ``max_batch``; a fixed-batch model gets its last chunk padded
        with zeros (the padding's outputs are dropped).
        """
        n = batch.shape[0]
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        step = self.backend.max_batch or n
        fixed = getattr(self.backend, "fixed_batch", False)
        outs = []
        for start in range(0, n, step):
            chunk = batch[start : start + step]
            m = chunk.shape[0]
            if fixed and m < step:
                padded = np.zeros((step, *chunk.shape[1:]), np.float32)
                padded[:m] = chunk
                chunk = padded
            outs.append(self.backend.run(chunk)[:m])
        return outs[0] if len(outs) == 1 else np.concatenate(outs)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Scores to report: the outputs themselves when they are probabilities, else their softmax."""
        if outputs.shape[0] == 0:
            return outputs
        if self._probabilities is None:  # decided once, on the first real batch
            self._probabilities = is_probability(outputs)
        return outputs.astype(np.float32, copy=False) if self._probabilities else softmax(outputs)

    def batches(self, items: Sequence, exact_batches: bool = False) -> ImageBatcher:
        return ImageBatcher(items, self.batch, threads=self.threads, exact_batches=exact_batches)

    def _topk(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) [n, k] of a batch: on the GPU from decoded images, else from preprocessed ones."""
        if self.preprocessing == "gpu":
            top = self.backend.classify_bgr(batch.images, self.topk)
            return top.ids, top.scores
        return topk(self.probabilities(self.infer(batch.array)), self.topk)

    def classify(self, items: Iterable) -> Iterator[dict]:
        """Yield one result per item, in input order: ``{"image", "topk": [{"class_id", "label", "score"}]}``
        or ``{"image", "error"}`` for an input that could not be read. Decoding (and on the CPU path
        preprocessing) of the next images runs in a thread pool while the model runs on the current batch."""
        batcher = ImageBatcher(list(items), self.batch, threads=self.threads,
                               decode_only=self.preprocessing == "gpu")
        for batch in batcher:
            results: list[tuple[int, dict]] = [
                (i, {"image": path, "error": reason})
                for i, (path, reason) in zip(batch.failure_indices, batch.failures, strict=True)
            ]
            if len(batch):
                ids, vals = self._topk(batch)
                for row, (i, path) in enumerate(zip(batch.indices, batch.paths, strict=True)):
                    entries = topk_entries(ids[row], vals[row], self.labels)
                    results.append((i, {"image": path, "topk": entries}))
            for _, result in sorted(results, key=lambda r: r[0]):
                yield result
