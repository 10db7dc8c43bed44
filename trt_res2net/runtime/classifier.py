"""The Classifier: image files, encoded bytes or decoded arrays → top-k, through one backend (preprocess →
inference → postprocess), with PaddleClas's evaluation preprocessing."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..data.images import ImageBatcher
from ..data.postprocess import is_probability, load_labels, softmax, topk, topk_entries
from ..data.preprocess import DEFAULT_LIMITS, ImageLimits
from ..data.recipe import FROM_MODEL, PreprocessOptions
from .backend import Backend, backend_preprocesses_on_gpu, open_backend


class Classifier:
    """Image files, encoded bytes or decoded BGR arrays → top-k, through one backend (``open_backend``: ``.onnx``
    with ONNX Runtime, ``.engine``/``.plan`` with TensorRT or TensorRT-RTX). Use it with ``with``, or ``close()`` it.

    ``classify(items)`` yields one result per item in input order (``{"image", "topk"}`` or ``{"image",
    "error"}``), decoding ahead in threads; ``classify_image(item)`` is one item's top-k (ImageDecodeError for an
    unreadable one); ``predict(batch)`` gives the probabilities [n, classes] of a preprocessed float32 NCHW batch;
    ``classify_batch(inputs, k)`` is one prepared batch's top-k on whichever path ``preprocessing`` names.

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

    ``preprocess`` (``PreprocessOptions``): the model's recipe where its user states it, else it comes from the model
    (``data.recipe``; ``self.spec`` is the one fed).

    ``limits`` (``ImageLimits``): an image over them (its file size, or the pixels its header declares) is skipped
    with one line, before it is read or decoded.
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
        limits: ImageLimits = DEFAULT_LIMITS,
        preprocess: PreprocessOptions = FROM_MODEL,
    ):
        for name, value in (("batch", batch), ("topk", topk)):
            if value < 1:
                raise UserError(f"Classifier.{name} must be at least 1, not {value}")
        self.model_path = Path(model_path)
        self.backend = backend if backend is not None else open_backend(model_path, preprocess=preprocess)
        n = self.backend.num_classes
        if isinstance(labels, list):
            if len(labels) != n:
                raise UserError(f"{len(labels)} labels given, but the model has {n} classes")
            self.labels, self.labels_source = labels, "the caller"
        else:
            self.labels, self.labels_source = load_labels(labels, n), None if labels is None else str(labels)
        self.topk = topk
        self.batch = batch
        self.threads = threads
        self.limits = limits
        self._probabilities: bool | None = True if self.backend.outputs_probabilities else None
        self.preprocessing = "gpu" if gpu_preprocess and backend_preprocesses_on_gpu(self.backend) else "cpu"

    @property
    def num_classes(self) -> int:
        return self.backend.num_classes

    @property
    def spec(self):
        """The preprocessing the model is fed (``backend.recipe``: from the model, or as its user states it)."""
        return self.backend.recipe.spec

    def close(self) -> None:
        """Release the backend (a TensorRT-RTX engine saves its runtime cache then)."""
        self.backend.close()

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
        fixed = self.backend.fixed_batch
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

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities [n, classes] of a preprocessed float32 [n, 3, H, W] batch (``trt_res2net.preprocess`` with
        ``self.spec``)."""
        return self.probabilities(self.infer(np.asarray(batch, np.float32)))

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """Scores to report: the outputs themselves when they are probabilities, else their softmax."""
        if outputs.shape[0] == 0:
            return outputs
        if self._probabilities is None:  # decided once, on the first real batch
            self._probabilities = is_probability(outputs)
        return outputs.astype(np.float32, copy=False) if self._probabilities else softmax(outputs)

    def batches(self, items: Sequence, exact_batches: bool = False) -> ImageBatcher:
        return ImageBatcher(items, self.batch, threads=self.threads, exact_batches=exact_batches, limits=self.limits,
                            spec=self.spec)

    def classify_batch(self, inputs, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) [n, k] of one batch, best first — the one place that picks the path: on the GPU path
        ``inputs`` are decoded BGR images (``backend.classify_bgr`` preprocesses, runs and takes the top-k there),
        else a preprocessed float32 NCHW array (the CPU reference, then softmax and top-k here)."""
        if self.preprocessing == "gpu":
            top = self.backend.classify_bgr(inputs, k)
            return top.ids, top.scores
        return topk(self.probabilities(self.infer(inputs)), k)

    def batch_probabilities(self, inputs) -> np.ndarray:
        """Every class's score [n, classes] of one batch (``classify_batch``'s inputs): the top-k of all classes,
        put back in class order."""
        ids, scores = self.classify_batch(inputs, self.num_classes)
        probabilities = np.zeros((len(ids), self.num_classes), np.float32)
        np.put_along_axis(probabilities, np.asarray(ids, np.int64), scores, axis=1)
        return probabilities

    def classify_image(self, image) -> list[dict]:
        """One image (a path, encoded bytes or a decoded BGR uint8 array) → its top-k entries
        ``[{"class_id", "label", "score"}]``; ImageDecodeError (one line) when it cannot be read."""
        from ..data.preprocess import ImageDecodeError

        (result,) = self.classify([image])
        if "error" in result:
            raise ImageDecodeError(result["error"], image if isinstance(image, (str, os.PathLike)) else None)
        return result["topk"]

    def classify(self, items: Iterable) -> Iterator[dict]:
        """Yield one result per item, in input order: ``{"image", "topk": [{"class_id", "label", "score"}]}``
        or ``{"image", "error"}`` for an input that could not be read. Decoding (and on the CPU path
        preprocessing) of the next images runs in a thread pool while the model runs on the current batch."""
        batcher = ImageBatcher(list(items), self.batch, threads=self.threads,
                               decode_only=self.preprocessing == "gpu", limits=self.limits, spec=self.spec)
        for batch in batcher:
            results: list[tuple[int, dict]] = [
                (i, {"image": path, "error": reason})
                for i, (path, reason) in zip(batch.failure_indices, batch.failures, strict=True)
            ]
            if len(batch):
                prepared = batch.array if batch.array is not None else batch.images  # decode_only: images
                ids, vals = self.classify_batch(prepared, self.topk)
                for row, (i, path) in enumerate(zip(batch.indices, batch.paths, strict=True)):
                    entries = topk_entries(ids[row], vals[row], self.labels)
                    results.append((i, {"image": path, "topk": entries}))
            for _, result in sorted(results, key=lambda r: r[0]):
                yield result
