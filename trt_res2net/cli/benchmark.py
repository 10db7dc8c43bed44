"""``infer.py ENGINE --benchmark``: its flags, their mapping onto ``BenchmarkOptions``, and the report (table, JSON,
plot, and the trtexec / polygraphy commands for the same engine)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..core import log
from ..core.errors import EXIT_OK, MissingDependency, UserError
from ..runtime.benchmark import (
    DEFAULT_BATCHES,
    DEFAULT_ITERATIONS,
    DEFAULT_WARMUP,
    BenchmarkOptions,
    benchmark_engine,
    cross_check_commands,
    engine_summary,
)
from .common import FieldFlags

# The benchmark's part of infer.py's table from option fields to flags (cli/infer.py FLAGS).
BENCHMARK_FIELDS = {
    "BenchmarkOptions.iterations": "--iterations",
    "BenchmarkOptions.warmup": "--warmup",
    "BenchmarkOptions.topk": "--topk",
    "BenchmarkOptions.cuda_graph": "--cuda-graph",
    "BenchmarkOptions.kernel_specialization": "--kernel-specialization",
}


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's own flags (infer.py's ``--batch`` takes the list of sizes, ``--json`` the report)."""
    group = parser.add_argument_group("benchmark (TensorRT engines)")
    group.add_argument("--benchmark", action="store_true",
                       help="measure GPU compute and end-to-end latency and throughput per batch size "
                            f"(--batch B[,B...], default {','.join(map(str, DEFAULT_BATCHES))})")
    group.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS, metavar="N",
                       help=f"timed runs per batch size and measure (default {DEFAULT_ITERATIONS})")
    group.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, metavar="N",
                       help=f"untimed runs first (default {DEFAULT_WARMUP})")
    group.add_argument("--cuda-graph", action="store_true",
                       help="capture the engine's enqueue as a CUDA graph per batch size "
                            "(like trtexec --useCudaGraph)")
    group.add_argument("--kernel-specialization", choices=("eager", "lazy", "none"), default="eager",
                       help="TensorRT-RTX engines: when kernels specialised for each batch size are compiled — eager "
                            "(default: in its first run, reported apart, so timed runs use them only), lazy (the "
                            "library's default: in the background, fallback kernels meanwhile), none (never)")
    group.add_argument("--plot", type=Path, metavar="PNG",
                       help="write latency and throughput against batch size (default: next to --json)")
    group.add_argument("--polygraphy", action="store_true",
                       help="print the equivalent polygraphy and trtexec commands; "
                            "run polygraphy when installed")


def benchmark_options(args: argparse.Namespace) -> BenchmarkOptions:
    """The flags → ``BenchmarkOptions``: those of the table, and the ones that are not one flag's value."""
    return FieldFlags(BENCHMARK_FIELDS).options(BenchmarkOptions, args, batches=tuple(args.batch or DEFAULT_BATCHES),
                                                progress=args.progress, check_manifest=not args.no_manifest_check)


def load_images(paths) -> list[np.ndarray]:
    """Decode the given images (folders walked) once; unreadable ones are named and skipped."""
    from ..data.images import find_images
    from ..data.preprocess import ImageDecodeError, decode_image

    images = []
    for f in find_images(paths):
        try:
            images.append(decode_image(f))
        except ImageDecodeError:
            print(f"warning: {f}: not a readable image; skipped", file=sys.stderr)
    return images


def _print_cross_check(engine: Path, info: dict, batches, iterations: int, run: bool = True) -> None:
    check = cross_check_commands(engine, info, batches, iterations)
    runnable = run and check.polygraphy_runnable
    for tool, cmd in check.commands:
        pad = " " * max(1, 11 - len(tool))
        print(f"{tool} equivalent:{pad}{shlex.join(cmd)}")
        if tool == "polygraphy" and runnable:
            sys.stdout.flush()
            code = subprocess.run(cmd, check=False).returncode
            if code != 0:
                print(f"warning: polygraphy exited with status {code}", file=sys.stderr)
    if not runnable:
        rtx = check.family == "tensorrt-rtx"
        print(f"(polygraphy not run: it needs `pip install polygraphy` and {'TensorRT-RTX' if rtx else 'TensorRT'}"
              " with a GPU)")


def run_benchmark(args: argparse.Namespace) -> int:
    from ..core.files import write_json

    engine = Path(args.model)
    options = benchmark_options(args)
    cpu = engine.suffix.lower() == ".xml"
    if engine.suffix.lower() not in (".engine", ".plan", ".xml"):
        raise UserError(f"--benchmark runs TensorRT engines (.engine, .plan) and CPU models (.xml), not {engine}")
    if cpu and args.polygraphy:
        raise UserError("--polygraphy cross-checks TensorRT engines; a CPU model (.xml) has no TensorRT to ask")
    images = load_images(args.inputs) if args.inputs else None
    try:
        if cpu:
            from ..runtime.cpu_benchmark import benchmark_cpu_model

            report = benchmark_cpu_model(engine, images, options)
        else:
            report = benchmark_engine(engine, images, options)
    except MissingDependency:
        if args.polygraphy:  # the commands are still worth having for another machine
            _print_cross_check(engine, engine_summary(engine), options.batches, options.iterations, run=False)
        raise
    print(report.table())
    for w in report.warnings():
        log.warn(w)
    if args.json:
        write_json(args.json, report.to_json())
        print(f"wrote {args.json}")
    plot_path = args.plot or (Path(args.json).with_suffix(".png") if args.json else None)
    if plot_path:
        try:
            report.plot(plot_path)
            print(f"wrote {plot_path}")
        except UserError as e:
            print(f"warning: {e}", file=sys.stderr)
    if args.polygraphy:
        _print_cross_check(engine, report.info, report.settings.batches, options.iterations)
    return EXIT_OK
