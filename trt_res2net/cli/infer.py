"""infer.py: top-k for images, or accuracy on a labelled list, with an ONNX model or a TensorRT engine.

    python infer.py MODEL_FILE IMAGE_OR_DIR... [--topk 5] [--batch N] [--json PATH] [--labels FILE]
    python infer.py MODEL_FILE [MODEL_FILE...] --eval LIST [--data-root DIR] [--limit N] [--json PATH]
    python infer.py ENGINE --benchmark [--batch 1,8,32] [--iterations N] [--warmup N] [--polygraphy] ...
    python infer.py MODEL_FILE SOURCE... [--jsonl PATH] [--save-video DIR] [--smooth N] ...  (cli/streams.py)

Exit status: 0 every image classified, 1 some images could not be read (the others are still reported),
2 usage or input error (a path the operating system refuses included), 3 a TensorRT engine was given but TensorRT /
a GPU is missing, 130 interrupted (Ctrl-C); in stream mode also 143 stopped by SIGTERM and 129 by SIGHUP, each after
the summary and --json are written (docs/streams.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, UserError
from ..cuda.device import CudaUnavailable
from ..data.preprocess import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from ..runtime.backend import GpuBackend, warn_about_metadata
from .benchmark import BENCHMARK_FIELDS, add_benchmark_arguments, run_benchmark
from .common import (
    PREPROCESS_FIELDS,
    FieldFlags,
    add_preprocess_arguments,
    positive_int,
    run_main,
    write_json_output,
)
from .streams import STREAM_FIELDS, add_stream_arguments, run_streams, wants_streams


def image_limits(args: argparse.Namespace):
    """``--max-image-pixels`` / ``--max-image-bytes`` → ``ImageLimits`` whose refusals name these flags."""
    from ..data.preprocess import ImageLimits

    return ImageLimits(max_pixels=args.max_image_pixels, max_bytes=args.max_image_bytes,
                       pixels_option="--max-image-pixels", bytes_option="--max-image-bytes")


# The library's option fields → infer.py's flags (cli/common.FieldFlags): its refusals are shown with the flags.
FLAGS = FieldFlags({
    "Classifier.batch": "--batch",
    "Classifier.topk": "--topk",
    "TensorRTBackend.check_manifest": "--no-manifest-check",
    **PREPROCESS_FIELDS,
    **STREAM_FIELDS,
    **BENCHMARK_FIELDS,
})

PROGRESS_MIN_IMAGES = 16  # fewer images finish too fast for a progress bar to help
DEFAULT_BATCH = 8


def _batch_sizes(text: str) -> list[int]:
    """``--batch``: one size ("8"), or with --benchmark a list ("1,8,32")."""
    from ..runtime.benchmark import parse_batch_list

    try:
        return parse_batch_list(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="infer.py",
        description="Classify images with an ONNX model (ONNX Runtime, CUDA if present, else CPU) or a "
        "TensorRT engine (.engine/.plan). Preprocessing is PaddleClas's evaluation recipe.",
        epilog="Exit status: 0 all classified, 1 some images unreadable, 2 usage or input error (a path the OS "
        "refuses included), 3 TensorRT missing, 130 interrupted (Ctrl-C); stream mode: 143 stopped by SIGTERM, 129 by "
        "SIGHUP (the summary and --json written first).",
    )
    p.add_argument("model", metavar="MODEL_FILE", help="a classifier .onnx, or a TensorRT .engine/.plan")
    p.add_argument(
        "inputs",
        metavar="IMAGE_OR_DIR",
        nargs="*",
        help="image files, or folders walked for .jpg .jpeg .png .bmp .webp (any case); "
        "with --eval: more model files to evaluate and compare with the first; video files, cameras and "
        "streams: see 'video and streams'",
    )
    out = p.add_argument_group("output")
    out.add_argument("--topk", type=positive_int, default=5, metavar="K", help="classes to report per image (5)")
    out.add_argument("--labels", metavar="FILE",
                     help="class names: PaddleClas '<id> <label>' lines or one label per line "
                     "(default: ImageNet's for 1000 classes, else the ids)")
    out.add_argument("--json", type=Path, metavar="PATH",
                     help="also write the results (or evaluation summary, or benchmark) as JSON")
    out.add_argument("-q", "--quiet", action="store_true", help="no per-image tables: failures and totals")
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    run = p.add_argument_group("running")
    run.add_argument("--batch", type=_batch_sizes, default=None, metavar="N",
                     help=f"images per inference batch ({DEFAULT_BATCH}; a fixed-batch model uses its own size); "
                     "with --benchmark a list B[,B...] (default 1,8,32)")
    run.add_argument("--threads", type=positive_int, default=2, metavar="N",
                     help="threads decoding and preprocessing images ahead of inference (2)")
    run.add_argument("--max-image-pixels", type=positive_int, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                     help="skip images whose header declares more pixels, before decoding them "
                     f"({DEFAULT_MAX_IMAGE_PIXELS})")
    run.add_argument("--max-image-bytes", type=positive_int, default=DEFAULT_MAX_IMAGE_BYTES, metavar="N",
                     help=f"skip larger image files, before reading them ({DEFAULT_MAX_IMAGE_BYTES})")
    run.add_argument("--no-manifest-check", action="store_true",
                     help="run an engine without its manifest (e.g. made by trtexec), or one that differs from it, "
                     "unchecked (default: refused, since nothing then says which library and GPUs it was built for)")
    run.add_argument("--cpu-preprocess", action="store_true",
                     help="preprocess on the CPU even where a TensorRT engine can do it on the GPU (its "
                     "default: images are only decoded on the CPU; resize, crop, normalisation and top-k run "
                     "on the GPU), e.g. to cross-check the two; --eval always preprocesses on the CPU (it "
                     "needs every model's full outputs)")
    add_preprocess_arguments(p.add_argument_group("preprocessing (PaddleClas's evaluation recipe at the model's size)"))
    ev = p.add_argument_group("evaluation")
    ev.add_argument("--eval", metavar="LIST",
                    help="labelled list in PaddleClas val_list.txt form ('relative/path.jpg label' per "
                    "line): report top-1/top-5, and agreement when several models are given")
    ev.add_argument("--data-root", metavar="DIR", help="where the list's paths start (the list's folder)")
    ev.add_argument("--limit", type=positive_int, metavar="N", help="evaluate only the first N listed images")
    add_benchmark_arguments(p)  # --benchmark, --iterations, --warmup, --cuda-graph, --plot, --polygraphy
    add_stream_arguments(p)  # --jsonl, --save-video, --display, --threshold, --smooth, --loop, ...
    return p


def _progress_disable(args: argparse.Namespace, n: int) -> bool | None:
    """tqdm's ``disable``: None lets tqdm show the bar only on a terminal."""
    return None if args.progress and n >= PROGRESS_MIN_IMAGES else True


def preprocess_options(args: argparse.Namespace):
    from ..data.recipe import PreprocessOptions

    return FLAGS.options(PreprocessOptions, args)


def describe_inputs(clf) -> str:
    """One line: the preprocessing a model is fed and its classes, so that a mismatch shows before the answers."""
    n = clf.num_classes
    labels = ("ImageNet's labels" if clf.labels_source is None and n == 1000 else "class ids as labels"
              if clf.labels_source is None else f"labels from {clf.labels_source}")
    return f"preprocessing: {clf.backend.recipe.describe()}; {n} classes, {labels}"


def _one_batch_size(batch: list[int] | None) -> int:
    if batch is None:
        return DEFAULT_BATCH
    if len(batch) != 1:
        raise UserError(f"--batch takes one size here (a list {','.join(map(str, batch))} is for --benchmark)")
    return batch[0]


def run_classify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..data.images import find_images
    from ..data.postprocess import format_topk
    from ..runtime.classifier import Classifier

    if not args.inputs:
        raise UserError("no images given (IMAGE_OR_DIR...), and no --eval list")
    paths = find_images(args.inputs)
    if not paths:
        where = ", ".join(args.inputs)
        raise UserError(f"no images found in {where} (looked for .jpg .jpeg .png .bmp .webp)")
    backend = None
    if args.no_manifest_check and Path(args.model).suffix.lower() in (".engine", ".plan"):
        from ..runtime.backend import open_backend

        backend = open_backend(args.model, check_manifest=False, preprocess=preprocess_options(args))
    clf = Classifier(args.model, labels=args.labels, topk=args.topk, batch=args.batch, threads=args.threads,
                     backend=backend, limits=image_limits(args), gpu_preprocess=not args.cpu_preprocess,
                     preprocess=preprocess_options(args))
    if not args.quiet:
        print(f"{args.model}: {clf.backend.describe()}; preprocessing on the {clf.preprocessing.upper()}",
              file=sys.stderr)
        print(describe_inputs(clf), file=sys.stderr)
    warn_about_metadata(clf.backend, args.model)
    results, failed = [], 0
    bar = tqdm(total=len(paths), unit="img", disable=_progress_disable(args, len(paths)), dynamic_ncols=True)
    try:
        for result in clf.classify(paths):
            results.append(result)
            if "error" in result:
                failed += 1
                tqdm.write(f"skipped {result['image']}: {result['error']}", file=sys.stderr)
            elif not args.quiet:
                tqdm.write(format_topk(result["topk"], title=result["image"]), file=sys.stdout)
            bar.update(1)
    finally:
        bar.close()
        _report_first_runs(clf.backend, args.quiet)
        clf.close()  # a TensorRT-RTX engine writes its runtime cache here
    if args.json:
        # infer.py's JSON: a list of {"image", "topk"} / {"image", "error"}; each classified image also
        # says where it was preprocessed ("gpu" kernel or the "cpu" reference).
        write_json_output(args.json,
                          [r if "error" in r else {**r, "preprocessing": clf.preprocessing} for r in results])
    if failed or args.quiet:
        print(f"classified {len(results) - failed} of {len(results)} images; {failed} could not be read",
              file=sys.stderr)
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _report_first_runs(backend, quiet: bool) -> None:
    """The first run of each batch size, apart from the rest: for TensorRT-RTX, the kernels compiled for this GPU
    (kept in the runtime cache beside the engine, so the next process pays less)."""
    if quiet or not isinstance(backend, GpuBackend) or not backend.first_run_ms:
        return
    runs = ", ".join(f"{ms:.0f} ms at batch {b}" for b, ms in sorted(backend.first_run_ms.items()))
    cache = backend.runtime_cache
    where = f"; runtime cache {cache.path}" if cache is not None else ""
    print(f"first runs (lazy initialisation, kernel compilation): {runs}{where}", file=sys.stderr)


def run_eval(args: argparse.Namespace) -> int:
    from ..runtime.backend import CPU_MODEL_SUFFIXES, ENGINE_SUFFIXES, ONNX_SUFFIXES
    from ..runtime.evaluate import evaluate

    models = [args.model, *args.inputs]
    for m in models:
        if Path(m).suffix.lower() not in ONNX_SUFFIXES + ENGINE_SUFFIXES + CPU_MODEL_SUFFIXES:
            raise UserError(f"{m}: with --eval, positional arguments are model files (.onnx, .engine, .plan, or a "
                            "CPU model's .xml)")
    backends = None
    if args.no_manifest_check:  # engines run unchecked, as the user said; the backends are closed here
        from ..runtime.backend import open_backend

        preprocess = preprocess_options(args)
        backends = [open_backend(m, check_manifest=False, preprocess=preprocess)
                    if Path(m).suffix.lower() in ENGINE_SUFFIXES else open_backend(m, preprocess=preprocess)
                    for m in models]
    try:
        result = evaluate(models, args.eval, args.data_root, batch=args.batch, threads=args.threads,
                          limit=args.limit, progress=None if args.progress else False, backends=backends,
                          preprocess=preprocess_options(args))
    finally:
        for b in backends or []:
            b.close()
    for f in result.failures:
        print(f"skipped {f['image']}: {f['error']}", file=sys.stderr)
    print(result.format())
    if args.json:
        write_json_output(args.json, {**result.to_dict(), "preprocessing": "cpu"})
    return EXIT_SOME_FAILED if result.failures else EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Dispatch parsed arguments (raises UserError)."""
    if args.benchmark or args.polygraphy:
        return run_benchmark(args)
    args.batch = _one_batch_size(args.batch)
    if args.eval:
        return run_eval(args)
    try:
        if wants_streams(args):
            return run_streams(args, image_limits(args), FLAGS)
        return run_classify(args)
    except CudaUnavailable as e:
        if e.library != "nvrtc" or args.cpu_preprocess:
            raise
        raise CudaUnavailable(f"{e}; or classify without NVRTC: --cpu-preprocess", library=e.library) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    return run_main(lambda: run(args), FLAGS)
