"""Latency and throughput of a TensorRT or TensorRT-RTX engine, per batch size: ``infer.py ENGINE --benchmark``.

Two figures per batch size, each as mean / p50 / p90 / p99 over ``--iterations`` runs after ``--warmup``:
- GPU compute: CUDA events on the inference stream around the engine's enqueue (what trtexec calls
  "GPU Compute Time");
- end to end: host wall time of ``classify_bgr`` on already-decoded images — GPU preprocessing, the H2D
  copy of the source pixels, compute, softmax + top-k and the D2H copy of k ids and scores; decoding is
  excluded.
Throughput is images per second from the end-to-end mean. The first run of each batch size is reported apart
(host time, synchronous): the library initialises lazily then, and TensorRT-RTX compiles its kernels for the GPU
(a runtime cache beside the engine keeps them for the next process). A TensorRT-RTX engine is benchmarked with
eager kernel specialisation (``dynamic_shapes_kernel_specialization_strategy = EAGER``): the kernels specialised
for each batch size are compiled in its first run, so the timed runs never mix the library's fallback kernels
with specialised ones (its lazy default compiles them in the background and swaps them in later). A coefficient of
variation above 2.5 % makes a warning: the figures are then not stable enough to compare (clocks, other GPU work,
too few iterations).

The statistics (``runtime/latency.py``), table, JSON report (:class:`BenchmarkReport`), plot and the equivalent
polygraphy/trtexec commands are plain Python and run without a GPU; only :func:`run_benchmark` needs a target
that can time things (``TensorRTBackend``).
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from ..core import log
from ..core.artifact import check_format, header
from ..core.errors import UserError
from .latency import CV_WARN_THRESHOLD, BatchResult, LatencyStats, latency_stats  # noqa: F401 - re-exported

DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_ITERATIONS = 200
DEFAULT_WARMUP = 20
SYNTHETIC_SIZE = (500, 375)  # width, height: the typical ImageNet validation photo


_BATCH_ERROR = "batch sizes are positive integers like 1,8,32, not {!r}"


def parse_batch_list(text) -> list[int]:
    """"1,8,32" → [1, 8, 32]; also accepts an int or a list; UserError for anything else."""
    if text is None:
        return list(DEFAULT_BATCHES)
    if isinstance(text, int):
        items = [text]
    elif isinstance(text, (list, tuple)):
        items = [b for t in text for b in parse_batch_list(t)]
    else:
        items = []
        for part in str(text).replace(" ", "").split(","):
            if not part:
                continue
            try:
                items.append(int(part))
            except ValueError:
                raise UserError(_BATCH_ERROR.format(text)) from None
    if not items or any(b < 1 for b in items):
        raise UserError(_BATCH_ERROR.format(text))
    return sorted(set(items))


def synthetic_images(count: int, size: tuple[int, int] = SYNTHETIC_SIZE, seed: int = 0) -> list[np.ndarray]:
    """Seeded BGR uint8 images of a typical photo size (blocky noise plus fine noise, not flat)."""
    rng = np.random.default_rng(seed)
    w, h = size
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
        img = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:h, :w]
        images.append(np.ascontiguousarray(img ^ rng.integers(0, 16, img.shape, dtype=np.uint8)))
    return images


class BenchmarkTarget(Protocol):
    """What :func:`run_benchmark` times (``TensorRTBackend``): GPU compute of one batch size, end to end on decoded
    images, and the host time of each batch size's first run."""

    first_run_ms: dict[int, float]

    def time_compute_ms(self, batch: int) -> float: ...

    def classify_bgr(self, images: Sequence[np.ndarray], k: int = 5): ...


def run_benchmark(target: BenchmarkTarget, batches, images, iterations: int = DEFAULT_ITERATIONS,
                  warmup: int = DEFAULT_WARMUP, k: int = 5, progress: bool = True) -> list[BatchResult]:
    """Time ``target`` (``time_compute_ms(batch)``, ``classify_bgr(images, k)``) at each batch size.

    ``images`` are decoded BGR arrays, cycled to fill the largest batch.
    """
    if iterations < 1:
        raise UserError(f"run_benchmark.iterations must be at least 1, not {iterations}")
    if warmup < 0:
        raise UserError(f"run_benchmark.warmup must not be negative, not {warmup}")
    if not images:
        raise UserError("no images to benchmark with")
    from tqdm import tqdm

    batches = list(batches)
    pool = [images[i % len(images)] for i in range(max(batches))]
    results = []
    bar = tqdm(total=len(batches) * (iterations + warmup) * 2, unit="run", desc="benchmark",
               disable=not progress, file=sys.stderr)
    with bar:
        for batch in batches:
            chunk = pool[:batch]
            for _ in range(warmup):
                target.time_compute_ms(batch)
                target.classify_bgr(chunk, k)
                bar.update(2)
            compute = []
            for _ in range(iterations):
                compute.append(target.time_compute_ms(batch))
                bar.update(1)
            e2e = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                target.classify_bgr(chunk, k)
                e2e.append((time.perf_counter() - t0) * 1000.0)
                bar.update(1)
            first = target.first_run_ms.get(batch)
            results.append(BatchResult(batch, latency_stats(compute), latency_stats(e2e), first))
    return results


# --------------------------------------------------------------------------------------------------
# Reporting


CPU_CAPTION = ("latency in ms (first run: the first, initialising run; compute: the model alone on a preprocessed "
               "batch; e2e: CPU preprocessing of decoded images to top-k)")
GPU_CAPTION = ("latency in ms (first run: host time of the first, initialising run; GPU compute: events around "
               "the enqueue; e2e: preprocessing on GPU to top-k)")


def format_table(results, on_cpu: bool = False) -> str:
    compute = "compute" if on_cpu else "GPU"
    header = ("batch", "first run", f"{compute} mean", "p50", "p90", "p99", "e2e mean", "p50", "p90", "p99", "img/s",
              f"CV {compute.lower()}/e2e")
    rows = [header]
    for r in results:
        g, e = r.gpu_compute, r.end_to_end
        rows.append((
            str(r.batch), "-" if r.first_run_ms is None else f"{r.first_run_ms:.1f}",
            *(f"{v:.3f}" for v in (g.mean, g.p50, g.p90, g.p99, e.mean, e.p50, e.p90, e.p99)),
            f"{r.throughput:.1f}", f"{g.cv:.1%}/{e.cv:.1%}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return (CPU_CAPTION if on_cpu else GPU_CAPTION) + "\n" + "\n".join(lines)


def results_json(results, info: dict | None = None, settings: dict | None = None,
                 threshold: float = CV_WARN_THRESHOLD, on_cpu: bool = False) -> dict:
    return {
        "benchmark": "trt_res2net",
        "info": info or {},
        "settings": settings or {},
        "cv_warning_threshold": threshold,
        "results": [r.to_dict(threshold, on_cpu) for r in results],
    }


def plot_results(results, path, title: str = "") -> Path:
    """A PNG with latency (mean and p99, GPU compute and end to end) and throughput against batch size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise UserError("the plot needs matplotlib: pip install 'trt-res2net[plot]'") from e
    from ..core.files import write_bytes

    batches = [r.batch for r in results]
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    series = (("GPU compute", "gpu_compute", "tab:blue"), ("end to end", "end_to_end", "tab:red"))
    for label, attr, colour in series:
        stats = [getattr(r, attr) for r in results]
        ax_lat.plot(batches, [s.mean for s in stats], "o-", color=colour, label=f"{label} mean")
        ax_lat.plot(batches, [s.p99 for s in stats], "^--", color=colour, alpha=0.6, label=f"{label} p99")
    ax_tp.plot(batches, [r.throughput for r in results], "o-", color="tab:red", label="end to end")
    ax_tp.plot(batches, [r.gpu_throughput for r in results], "o-", color="tab:blue", label="GPU compute")
    for ax, ylabel in ((ax_lat, "latency (ms)"), (ax_tp, "throughput (images/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return write_bytes(path, buf.getvalue())


def _shape(batch: int, input_hw: tuple[int, int], sep: str) -> str:
    return sep.join(str(d) for d in (batch, 3, *input_hw))


def polygraphy_command(engine, input_name: str, batch: int, input_hw=(224, 224),
                       iterations: int = DEFAULT_ITERATIONS, rtx: bool = False) -> list[str]:
    """The polygraphy cross-check: runs the engine on random input at this batch size (switched to
    TensorRT-RTX by its environment variable for an RTX engine)."""
    env = ["env", "POLYGRAPHY_USE_TENSORRT_RTX=1"] if rtx else []
    return [*env, "polygraphy", "run", str(engine), "--model-type", "engine", "--trt",
            "--input-shapes", f"{input_name}:[{_shape(batch, input_hw, ',')}]",
            "--iterations", str(iterations)]


def trtexec_command(engine, input_name: str, batch: int, input_hw=(224, 224), dynamic: bool = True,
                    iterations: int = DEFAULT_ITERATIONS, rtx: bool = False) -> list[str]:
    """trtexec's GPU compute time for the same engine and batch (no copies, CUDA graph); for an RTX engine the
    SDK's ``tensorrt_rtx`` tool with the library's whole-graph CUDA-graph strategy."""
    cmd = ["tensorrt_rtx" if rtx else "trtexec", f"--loadEngine={engine}"]
    if dynamic:
        cmd.append(f"--shapes={input_name}:{_shape(batch, input_hw, 'x')}")
    graphs = "--rtxCudaGraphStrategy=wholeGraph" if rtx else "--useCudaGraph"
    return cmd + [graphs, "--noDataTransfers", f"--iterations={iterations}", f"--avgRuns={iterations}"]


def _polygraphy_runnable(family_key: str) -> bool:
    import importlib.util
    import shutil

    from ..engine.trt_compat import family

    if shutil.which("polygraphy") is None:
        return False
    return importlib.util.find_spec(family(family_key).module) is not None


def engine_summary(engine) -> dict:
    """Input name, batch range and family from the engine's manifest (or file), for the equivalent commands when
    the library cannot be asked."""
    from ..engine.manifest import find_manifest
    from ..engine.trt_compat import engine_family_of

    name, batch, hw = "input", [1, 1, 2], [224, 224]  # unknown: assume our exporter's name, a dynamic batch, 224
    family_key = engine_family_of(engine)
    try:
        manifest = find_manifest(engine)
    except UserError:  # a damaged manifest: what the file shows
        manifest = None
    if manifest is not None:
        family_key = manifest.engine_family
        if manifest.io is not None:
            name, shape = manifest.io.input.name, manifest.io.input.shape
            if shape and shape[0] > 0:
                batch = [shape[0]] * 3
            if shape and len(shape) == 4 and min(shape[2:]) > 0:
                hw = list(shape[2:])
    return {"input": {"name": name, "batch": batch, "hw": hw}, "engine_family": family_key}


@dataclass(frozen=True)
class CrossCheck:
    """The NVIDIA tools' commands for the same engine and batch sizes, and whether polygraphy can run here."""

    commands: list[tuple[str, list[str]]]  # (tool, argv) per batch size: trtexec / tensorrt_rtx, then polygraphy
    polygraphy_runnable: bool
    family: str


def cross_check_commands(engine, info: dict, batches, iterations: int = DEFAULT_ITERATIONS) -> CrossCheck:
    name = info["input"]["name"]
    dynamic = info["input"]["batch"][0] != info["input"]["batch"][2]
    family_key = info["engine_family"]
    rtx = family_key == "tensorrt-rtx"
    tool = "tensorrt_rtx" if rtx else "trtexec"
    hw = tuple(info["input"]["hw"])
    commands = []
    for b in batches:
        commands.append((tool, trtexec_command(engine, name, b, hw, dynamic=dynamic, rtx=rtx)))
        commands.append(("polygraphy", polygraphy_command(engine, name, b, hw, iterations=iterations, rtx=rtx)))
    return CrossCheck(commands, _polygraphy_runnable(family_key), family_key)


# --------------------------------------------------------------------------------------------------
# The whole benchmark of one engine


@dataclass(frozen=True)
class BenchmarkOptions:
    """``infer.py ENGINE --benchmark``'s settings; every default stated here."""

    batches: tuple[int, ...] = DEFAULT_BATCHES
    iterations: int = DEFAULT_ITERATIONS
    warmup: int = DEFAULT_WARMUP
    topk: int = 5
    cuda_graph: bool = False
    progress: bool = True
    kernel_specialization: str = "eager"  # TensorRT-RTX engines: lazy, eager or none (see the module docstring)
    check_manifest: bool = True  # False: run an engine without (or unlike) its manifest unchecked

    def __post_init__(self):
        object.__setattr__(self, "batches", tuple(parse_batch_list(self.batches)))
        if self.kernel_specialization not in ("lazy", "eager", "none"):
            raise UserError("BenchmarkOptions.kernel_specialization must be lazy, eager or none, not "
                            f"{self.kernel_specialization!r}")
        if self.iterations < 1:
            raise UserError("BenchmarkOptions.iterations must be at least 1")
        if self.warmup < 0:
            raise UserError("BenchmarkOptions.warmup must not be negative")


@dataclass(frozen=True)
class BenchmarkSettings:
    """How a benchmark ran: the batch sizes timed, runs per size, the top-k, the images, and the engine settings
    that applied (``kernel_specialization`` None for a TensorRT engine)."""

    batches: tuple[int, ...]
    iterations: int
    warmup: int
    topk: int
    images: str
    cuda_graph: bool
    kernel_specialization: str | None

    def to_json(self) -> dict:
        return {"batches": list(self.batches), "iterations": self.iterations, "warmup": self.warmup,
                "topk": self.topk, "images": self.images, "cuda_graph": self.cuda_graph,
                "kernel_specialization": self.kernel_specialization}

    @classmethod
    def from_json(cls, data: dict) -> BenchmarkSettings:
        return cls(tuple(int(b) for b in data["batches"]), int(data["iterations"]), int(data["warmup"]),
                   int(data["topk"]), str(data["images"]), bool(data["cuda_graph"]), data["kernel_specialization"])


@dataclass(frozen=True)
class BenchmarkReport:
    """What :func:`benchmark_engine` measured: per batch size, with the engine and GPU (``info``: the backend's
    description, JSON-ready) and the settings. ``to_json`` is ``infer.py --benchmark --json``'s document."""

    FORMAT: ClassVar[str] = "trt_res2net.benchmark"
    SCHEMA_VERSION: ClassVar[int] = 1  # 0: the first release's document, without format, engine and skipped

    engine: Path
    results: tuple[BatchResult, ...]
    info: dict
    settings: BenchmarkSettings
    skipped_batches: tuple[int, ...] = ()

    def table(self) -> str:
        return format_table(self.results, on_cpu=self.info["engine_family"] == "cpu")

    def warnings(self) -> list[str]:
        return [w for r in self.results for w in r.warnings(on_cpu=self.info["engine_family"] == "cpu")]

    def to_json(self) -> dict:
        return {**header(self.FORMAT, self.SCHEMA_VERSION),
                **results_json(self.results, self.info, self.settings.to_json(),
                               on_cpu=self.info["engine_family"] == "cpu"),
                "engine": str(self.engine), "skipped_batches": list(self.skipped_batches)}

    @classmethod
    def from_json(cls, data, where: str) -> BenchmarkReport:
        """A report ``to_json`` wrote (or the first release's, which has no header); UserError (one line) for
        another document, a newer format or a damaged one."""
        if isinstance(data, dict) and "format" not in data and data.get("benchmark") == "trt_res2net":
            data = {**header(cls.FORMAT, 0), **data}
        version = check_format(data, cls.FORMAT, cls.SCHEMA_VERSION, where, "benchmark report", oldest=0)
        try:
            if version == 0:  # the engine was only in the backend's info; skipped sizes were not kept
                data = {**data, "engine": data["info"]["engine"], "skipped_batches": []}
            return cls(Path(data["engine"]), tuple(BatchResult.from_dict(r) for r in data["results"]),
                       dict(data["info"]), BenchmarkSettings.from_json(data["settings"]),
                       tuple(int(b) for b in data["skipped_batches"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where}: a damaged benchmark report ({type(e).__name__}: {e})") from None

    def plot(self, path) -> Path:
        on_cpu = self.info["engine_family"] == "cpu"
        device = self.info["cpu"]["name"] if on_cpu else self.info["gpu"]["name"]
        return plot_results(self.results, path, title=f"{self.engine.name} — {self.info['library']}, {device}")


def benchmark_engine(engine: str | os.PathLike, images: Sequence[np.ndarray] | None = None,
                     options: BenchmarkOptions | None = None) -> BenchmarkReport:
    """Latency and throughput of a TensorRT or TensorRT-RTX engine (needs its library and a GPU) at each batch size
    of ``options`` that fits the engine's range. ``images``: decoded BGR arrays to time end to end (default:
    synthetic photo-sized images)."""
    from .tensorrt_backend import TensorRTBackend

    options = options or BenchmarkOptions()
    engine = Path(engine)
    if engine.suffix.lower() not in (".engine", ".plan"):
        raise UserError(f"benchmark_engine.engine must be a TensorRT engine (.engine, .plan), not {engine}")
    if not engine.is_file():
        raise UserError(f"engine not found: {engine}")
    with TensorRTBackend(engine, cuda_graph=options.cuda_graph, check_manifest=options.check_manifest,
                         kernel_specialization=options.kernel_specialization) as backend:
        usable = [b for b in options.batches if backend.min_batch <= b <= backend.max_batch]
        skipped = sorted(set(options.batches) - set(usable))
        if not usable:
            raise UserError(f"none of the batch sizes {list(options.batches)} fits the engine's range "
                            f"{backend.min_batch}..{backend.max_batch}")
        for b in skipped:
            log.warn(f"batch {b} is outside the engine's range {backend.min_batch}..{backend.max_batch}; skipped")
        source = f"{len(images)} images" if images else "synthetic {}x{} images".format(*SYNTHETIC_SIZE)
        if not images:
            images = synthetic_images(min(max(usable), 64))
        k = min(options.topk, backend.num_classes)
        results = run_benchmark(backend, usable, images, iterations=options.iterations, warmup=options.warmup, k=k,
                                progress=options.progress)
        info = backend.info()
    rtx = info["engine_family"] == "tensorrt-rtx"
    settings = BenchmarkSettings(tuple(usable), options.iterations, options.warmup, k, source, info["cuda_graph"],
                                 options.kernel_specialization if rtx else None)
    return BenchmarkReport(engine, tuple(results), info, settings, tuple(skipped))
