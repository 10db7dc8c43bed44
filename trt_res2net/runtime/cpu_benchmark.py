"""``infer.py MODEL.xml --benchmark``: the CPU model (``engine.cpu_build``) timed as engines are, in the same
report (``BenchmarkReport``): per batch size the model alone on a preprocessed batch ("compute") and end to end
(the CPU reference preprocessing of decoded images, the model, softmax and top-k), with the first run apart."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..data.postprocess import softmax, topk
from ..data.preprocess import preprocess_bgr
from .benchmark import SYNTHETIC_SIZE, BenchmarkOptions, BenchmarkReport, BenchmarkSettings, run_benchmark
from .benchmark import synthetic_images as make_images


class CpuTarget:
    """A ``BenchmarkTarget`` over a CPU backend: compute is wall time of ``run`` on a preprocessed batch."""

    def __init__(self, backend):
        self.backend = backend
        self.first_run_ms: dict[int, float] = {}
        self._inputs: dict[int, np.ndarray] = {}

    def time_compute_ms(self, batch: int) -> float:
        x = self._inputs.get(batch)
        if x is None:
            x = self._inputs[batch] = np.zeros((batch, 3, *self.backend.recipe.spec.crop_hw), np.float32)
            t0 = time.perf_counter()
            self.backend.run(x)
            self.first_run_ms[batch] = (time.perf_counter() - t0) * 1000.0
        t0 = time.perf_counter()
        self.backend.run(x)
        return (time.perf_counter() - t0) * 1000.0

    def classify_bgr(self, images: Sequence[np.ndarray], k: int = 5):
        spec = self.backend.recipe.spec
        logits = self.backend.run(np.stack([preprocess_bgr(im, spec) for im in images]))
        scores = logits if self.backend.outputs_probabilities else softmax(logits)
        return topk(scores, k)


def benchmark_cpu_model(model: str | os.PathLike, images: Sequence[np.ndarray] | None = None,
                        options: BenchmarkOptions | None = None) -> BenchmarkReport:
    """Latency and throughput of a CPU model (``.xml`` with its manifest) at each batch size of ``options``."""
    from .openvino_backend import OpenVinoBackend

    options = options or BenchmarkOptions()
    model = Path(model)
    if not model.is_file():
        raise UserError(f"CPU model not found: {model}")
    backend = OpenVinoBackend(model, check_manifest=options.check_manifest)
    usable = [b for b in options.batches if not backend.fixed_batch or b == backend.max_batch]
    if not usable:
        raise UserError(f"the model has a fixed batch of {backend.max_batch}, not one of {list(options.batches)}")
    source = f"{len(images)} images" if images else "synthetic {}x{} images".format(*SYNTHETIC_SIZE)
    images = images or make_images(min(max(usable), 64))
    k = min(options.topk, backend.num_classes)
    results = run_benchmark(CpuTarget(backend), usable, images, iterations=options.iterations,
                            warmup=options.warmup, k=k, progress=options.progress)
    settings = BenchmarkSettings(tuple(usable), options.iterations, options.warmup, k, source, False, None)
    skipped = tuple(sorted(set(options.batches) - set(usable)))
    return BenchmarkReport(model, tuple(results), backend.info(), settings, skipped)
