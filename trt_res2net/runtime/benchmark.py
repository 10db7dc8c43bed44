"""Latency and throughput of a TensorRT or TensorRT-RTX engine, per batch size: ``infer.py ENGINE --benchmark``.

Two figures per batch size, each as mean / p50 / p90 / p99 over ``--iterations`` runs after ``--warmup``:
- GPU compute: CUDA events on the inference stream around the engine's enqueue (what trtexec calls
  "GPU Compute Time");
- end to end: host wall time of ``classify_bgr`` on already-decoded images — GPU preprocessing, the H2D
  copy of the source pixels, compute, softmax + top-k and the D2H copy of k ids and scores; decoding is
  excluded.
Throughput is images per second from the end-to-end mean. The first run of each batch size is reported apart
(host time, synchronous): the library initialises lazily then, and TensorRT-RTX compiles its kernels for the GPU
(a runtime cache beside the engine keeps them for the next process). A coefficient of variation above 2.5 % makes a
warning: the figures are then not stable enough to compare (clocks, other GPU work, too few iterations).

The statistics, table, JSON, plot and the equivalent polygraphy/trtexec commands are plain Python and run
without a GPU; only :func:`run_benchmark` needs a target that can time things (``TensorRTBackend``).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import EXIT_OK, MissingDependency, UserError

CV_WARN_THRESHOLD = 0.025
DEFAULT_BATCHES = (1, 8, 32)
DEFAULT_ITERATIONS = 200
DEFAULT_WARMUP = 20
SYNTHETIC_SIZE = (500, 375)  # width, height: the typical ImageNet validation photo
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latency samples in milliseconds."""

    count: int
    mean: float
    std: float  # sample standard deviation (ddof=1; 0 for one sample)
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @property
    def cv(self) -> float:
        """Coefficient of variation, std / mean."""
        return self.std / self.mean if self.mean > 0 else 0.0

    def to_dict(self) -> dict:
        keys = ("count", "mean", "std", "min", "p50", "p90", "p99", "max")
        return {**{k: getattr(self, k) for k in keys}, "cv": self.cv}


def latency_stats(samples_ms) -> LatencyStats:
    x = np.asarray(list(samples_ms), dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])  # linear interpolation between order statistics
    return LatencyStats(
        count=int(x.size),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        min=float(x.min()),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        max=float(x.max()),
    )


@dataclass(frozen=True)
class BatchResult:
    batch: int
    gpu_compute: LatencyStats
    end_to_end: LatencyStats
    first_run_ms: float | None = None  # the first, lazily initialising (TensorRT-RTX: compiling) run

    @property
    def throughput(self) -> float:
        """End-to-end images per second."""
        return self.batch * 1000.0 / self.end_to_end.mean

    @property
    def gpu_throughput(self) -> float:
        """Images per second of the engine alone (GPU compute)."""
        return self.batch * 1000.0 / self.gpu_compute.mean

    def warnings(self, threshold: float = CV_WARN_THRESHOLD) -> list[str]:
        out = []
        for label, stats in (("GPU compute", self.gpu_compute), ("end-to-end", self.end_to_end)):
            if stats.cv > threshold:
                out.append(
                    f"batch {self.batch}: {label} latency varies too much to compare (CV {stats.cv:.1%} > "
                    f"{threshold:.1%}); stop other GPU work, lock clocks or raise --iterations"
                )
        return out

    def to_dict(self, threshold: float = CV_WARN_THRESHOLD) -> dict:
        return {
            "batch": self.batch,
            "first_run_ms": self.first_run_ms,
            "gpu_compute_ms": self.gpu_compute.to_dict(),
            "end_to_end_ms": self.end_to_end.to_dict(),
            "throughput_images_per_s": self.throughput,
            "gpu_throughput_images_per_s": self.gpu_throughput,
            "warnings": self.warnings(threshold),
        }


_BATCH_ERROR = "batch sizes are positive integers like 1,8,32, not {!r}"


def parse_batch_list(text) -> list[int]:
    """"1,8,32" → [1, 8, 32]; also accepts an int or a list. Usable as an argparse ``type``."""
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
                raise argparse.ArgumentTypeError(_BATCH_ERROR.format(text)) from None
    if not items or any(b < 1 for b in items):
        raise argparse.ArgumentTypeError(_BATCH_ERROR.format(text))
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


def run_benchmark(target, batches, images, iterations: int = DEFAULT_ITERATIONS,
                  warmup: int = DEFAULT_WARMUP, k: int = 5, progress: bool = True) -> list[BatchResult]:
    """Time ``target`` (``time_compute_ms(batch)``, ``classify_bgr(images, k)``) at each batch size.

    ``images`` are decoded BGR arrays, cycled to fill the largest batch.
    """
    if iterations < 1:
        raise UserError("--iterations must be at least 1")
    if warmup < 0:
        raise UserError("--warmup must not be negative")
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
            first = getattr(target, "first_run_ms", {}).get(batch)
            results.append(BatchResult(batch, latency_stats(compute), latency_stats(e2e), first))
    return results


# --------------------------------------------------------------------------------------------------
# Reporting


def format_table(results) -> str:
    header = ("batch", "first run", "GPU mean", "p50", "p90", "p99", "e2e mean", "p50", "p90", "p99", "img/s",
              "CV gpu/e2e")
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
    return ("latency in ms (first run: host time of the first, initialising run; GPU compute: events around "
            "the enqueue; e2e: preprocessing on GPU to top-k)\n" + "\n".join(lines))


def results_json(results, info: dict | None = None, settings: dict | None = None,
                 threshold: float = CV_WARN_THRESHOLD) -> dict:
    return {
        "benchmark": "trt_res2net",
        "info": info or {},
        "settings": settings or {},
        "cv_warning_threshold": threshold,
        "results": [r.to_dict(threshold) for r in results],
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
    from ..engine.trt_compat import family

    if shutil.which("polygraphy") is None:
        return False
    return importlib.util.find_spec(family(family_key).module) is not None


# --------------------------------------------------------------------------------------------------
# CLI


def _add(parser, *flags, **kwargs) -> None:
    """Add an option unless the parser already has it (infer.py owns --batch and --json)."""
    try:
        parser.add_argument(*flags, **kwargs)
    except argparse.ArgumentError:
        pass


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("benchmark (TensorRT engines)")
    group.add_argument("--benchmark", action="store_true",
                       help="measure GPU compute and end-to-end latency and throughput per batch size")
    group.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, metavar="N",
                       help=f"timed runs per batch size and measure (default {DEFAULT_ITERATIONS})")
    group.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="N",
                       help=f"untimed runs first (default {DEFAULT_WARMUP})")
    group.add_argument("--cuda-graph", action="store_true",
                       help="capture the engine's enqueue as a CUDA graph per batch size "
                            "(like trtexec --useCudaGraph)")
    group.add_argument("--plot", type=Path, metavar="PNG",
                       help="write latency and throughput against batch size (default: next to --json)")
    group.add_argument("--polygraphy", action="store_true",
                       help="print the equivalent polygraphy and trtexec commands; "
                            "run polygraphy when installed")
    _add(group, "--batch", type=parse_batch_list, default=None, metavar="B[,B...]",
         help=f"batch sizes (default {','.join(map(str, DEFAULT_BATCHES))})")
    _add(group, "--json", type=Path, metavar="PATH", help="write the results as JSON")


def _model_path(args) -> Path:
    for name in ("model", "model_file", "engine"):
        value = getattr(args, name, None)
        if value:
            return Path(value)
    raise UserError("--benchmark needs an engine file")


def _input_paths(args) -> list[Path]:
    for name in ("images", "inputs", "paths"):
        value = getattr(args, name, None)
        if value:
            return [Path(v) for v in value]
    return []


def _load_images(paths) -> list[np.ndarray]:
    """Decode the given images (directories walked) once; unreadable ones are named and skipped."""
    import cv2

    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"no such file or directory: {p}")
    images = []
    for f in files:
        img = cv2.imdecode(np.fromfile(str(f), np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            print(f"warning: {f}: not a readable image; skipped", file=sys.stderr)
        else:
            images.append(img)
    return images


def run_benchmark_cli(args) -> int:
    """``infer.py ENGINE --benchmark ...``: time, print a table, write --json / --plot, cross-check."""
    from ..core.files import write_json
    from .tensorrt_backend import TensorRTBackend

    engine = _model_path(args)
    if engine.suffix.lower() not in (".engine", ".plan"):
        raise UserError(f"--benchmark runs TensorRT engines (.engine, .plan), not {engine}")
    if not engine.is_file():
        raise UserError(f"engine not found: {engine}")
    batches = parse_batch_list(getattr(args, "batch", None))
    iterations = getattr(args, "iterations", DEFAULT_ITERATIONS)
    try:
        backend = TensorRTBackend(engine, cuda_graph=getattr(args, "cuda_graph", False))
    except MissingDependency:
        if getattr(args, "polygraphy", False):  # the commands are still worth having for another machine
            _cross_check(engine, _info_from_manifest(engine), batches, iterations, run=False)
        raise
    try:
        usable = [b for b in batches if backend.min_batch <= b <= backend.max_batch]
        for b in sorted(set(batches) - set(usable)):
            print(f"warning: batch {b} is outside the engine's range "
                  f"{backend.min_batch}..{backend.max_batch}; skipped", file=sys.stderr)
        if not usable:
            raise UserError(f"none of the batch sizes {batches} fits the engine's range "
                            f"{backend.min_batch}..{backend.max_batch}")
        paths = _input_paths(args)
        images = _load_images(paths) if paths else synthetic_images(min(max(usable), 64))
        source = f"{len(images)} images" if paths else "synthetic {}x{} images".format(*SYNTHETIC_SIZE)
        k = min(int(getattr(args, "topk", 5) or 5), backend.num_classes)
        warmup = getattr(args, "warmup", DEFAULT_WARMUP)
        results = run_benchmark(backend, usable, images, iterations=iterations, warmup=warmup, k=k)
        info = backend.info()
    finally:
        backend.close()

    print(format_table(results))
    for r in results:
        for w in r.warnings():
            print(f"warning: {w}", file=sys.stderr)
    settings = {"batches": usable, "iterations": iterations, "warmup": warmup, "topk": k, "images": source,
                "cuda_graph": info.get("cuda_graph", False)}
    json_path = getattr(args, "json", None)
    if json_path:
        write_json(json_path, results_json(results, info, settings))
        print(f"wrote {json_path}")
    plot_path = getattr(args, "plot", None) or (Path(json_path).with_suffix(".png") if json_path else None)
    if plot_path:
        try:
            plot_results(results, plot_path, title=f"{engine.name} — {info['library']}, {info['gpu']['name']}")
            print(f"wrote {plot_path}")
        except UserError as e:
            print(f"warning: {e}", file=sys.stderr)
    if getattr(args, "polygraphy", False):
        _cross_check(engine, info, usable, iterations)
    return EXIT_OK


def _info_from_manifest(engine: Path) -> dict:
    """Input name, batch range and family from the engine's manifest (or file) when the library cannot be
    asked."""
    from ..engine.manifest import find_manifest
    from ..engine.trt_compat import engine_family_of

    name, batch = "input", [1, 1, 2]  # unknown: assume our exporter's name and a dynamic batch
    family_key = engine_family_of(engine)
    try:
        doc = find_manifest(engine) or {}
        family_key = doc.get("engine_family", family_key)
        name = doc["io"]["input"]["name"]
        first = int(doc["io"]["input"]["shape"][0])
        if first > 0:
            batch = [first, first, first]
    except (UserError, KeyError, TypeError, ValueError, IndexError):
        pass
    return {"input": {"name": name, "batch": batch}, "engine_family": family_key}


def _cross_check(engine: Path, info: dict, batches, iterations: int, run: bool = True) -> None:
    name = info["input"]["name"]
    dynamic = info["input"]["batch"][0] != info["input"]["batch"][2]
    family_key = info.get("engine_family", "tensorrt")
    rtx = family_key == "tensorrt-rtx"
    runnable = run and _polygraphy_runnable(family_key)
    tool = "tensorrt_rtx" if rtx else "trtexec"
    for b in batches:
        print(f"{tool} equivalent:{' ' * max(1, 11 - len(tool))}"
              f"{shlex.join(trtexec_command(engine, name, b, dynamic=dynamic, rtx=rtx))}")
        cmd = polygraphy_command(engine, name, b, iterations=iterations, rtx=rtx)
        print(f"polygraphy equivalent: {shlex.join(cmd)}")
        if runnable:
            sys.stdout.flush()
            code = subprocess.run(cmd, check=False).returncode
            if code != 0:
                print(f"warning: polygraphy exited with status {code}", file=sys.stderr)
    if not runnable:
        print(f"(polygraphy not run: it needs `pip install polygraphy` and {'TensorRT-RTX' if rtx else 'TensorRT'}"
              " with a GPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trt_res2net.runtime.benchmark",
        description="Latency and throughput of a TensorRT engine per batch size "
                    "(the same as infer.py ENGINE --benchmark).",
    )
    parser.add_argument("model", type=Path, metavar="ENGINE", help="TensorRT engine (.engine or .plan)")
    parser.add_argument("images", nargs="*", type=Path, metavar="IMAGE_OR_DIR",
                        help="images to time end to end (default: synthetic photos)")
    parser.add_argument("--topk", type=int, default=5, metavar="K")
    add_cli_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.benchmark = True
    try:
        return run_benchmark_cli(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
