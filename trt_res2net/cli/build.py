"""build.py: model name + PaddleClas weights → exact ONNX → (FP16 / INT8 ONNX) → TensorRT engine → (Triton repository).

The flags are declared here and mapped onto the library's options in one function per stage
(:func:`precision_options`, :func:`engine_options`, :func:`triton_options`); the work is the library's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core import log
from ..core.errors import EXIT_OK, MissingDependency, UserError
from ..core.version import __version__
from ..data.calibration_set import DEFAULT_CALIB_IMAGES, CalibrationImages, synthetic_calibration_images
from ..engine import trt_compat
from ..engine.build import build_engine
from ..engine.options import (
    DEFAULT_ENGINE_DIR,
    DEFAULT_MAX_BATCH,
    DEFAULT_MIN_BATCH,
    DEFAULT_OPT_BATCH,
    INT8_MODES,
    LOG_LEVELS,
    EngineOptions,
)
from ..engine.plan import check_engine_request, precision_onnx_needed, refuse_inapplicable_options
from ..model.export import DEFAULT_OPSET, check_weight_options, export_onnx
from ..precision.options import (
    CALIB_METHODS,
    DEFAULT_EVAL_IMAGES,
    DEFAULT_HIGH_PRECISION,
    HIGH_PRECISIONS,
    PRECISIONS,
    PrecisionOptions,
    check_precision_request,
)
from ..serving.repository import DEFAULT_MAX_BATCH as TRITON_DEFAULT_MAX_BATCH
from ..serving.repository import DEFAULT_QUEUE_DELAY_US, DEFAULT_TOPK, QUEUE_SIZE_PER_BATCH, TritonOptions
from .common import bounded_int, positive_int, run_main, usage_error


def _triton_repo_dir(text: str) -> Path:
    """``--triton-repo``: checked when the options are parsed, so a missing tritonclient stops before any work."""
    from ..serving.repository import check_repository_target

    try:
        return check_repository_target(text)
    except UserError as e:  # no tritonclient (exit 3 elsewhere), or a file where the folder should be
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build.py",
        description="Build an exact ONNX graph and a TensorRT or TensorRT-RTX engine for a PaddleClas Res2Net "
                    "classifier.",
        epilog="Exit status: 0 done; 1 the FP16/INT8 model missed --max-top1-drop; 2 usage or input error (a path "
               "the operating system refuses included: permission denied, not a folder, a FIFO, a symbolic link "
               "loop, disk full); 3 ONNX written but neither TensorRT nor TensorRT-RTX (or, for TensorRT, no GPU; "
               "or ModelOpt, for fp16/int8) here; 130 interrupted (Ctrl-C): the outputs of the step it stopped are "
               "as they were.",
    )
    src = p.add_argument_group("model")
    src.add_argument("--model", metavar="NAME", help="zoo model name (see --list-models)")
    src.add_argument("--onnx", metavar="PATH",
                     help="build from this classification ONNX instead of a zoo model (e.g. a paddle2onnx export)")
    src.add_argument("--list-models", action="store_true",
                     help="print every model with its parameters, GFLOPs and published accuracy, then exit")
    src.add_argument("--weights", metavar="PATH", help="PaddleClas .pdparams file (default: download once)")
    src.add_argument("--random-weights", action="store_true",
                     help="seeded random weights for smoke tests and benchmarks; predictions mean nothing")
    src.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    onnx = p.add_argument_group("ONNX export")
    onnx.add_argument("--onnx-only", action="store_true", help="stop after writing the ONNX model(s)")
    onnx.add_argument("--onnx-out", metavar="PATH",
                      help="where to write the FP32 ONNX (default engines/NAME.onnx); with --onnx, the FP16/INT8 ONNX "
                           "made from it (default <engine-dir>/<stem>_<precision>.onnx: never beside your file)")
    onnx.add_argument("--opset", type=int, default=None,
                      help=f"ONNX opset (default {DEFAULT_OPSET}, which TensorRT 8.6 parses; INT8 Q/DQ needs 19)")
    onnx.add_argument("--softmax", action="store_true",
                      help="end the graph with Softmax (output 'probabilities') like PaddleClas's exported models")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="engine precision (default fp32, or what an --onnx already is: int8 for a Q/DQ ONNX, fp16 for "
                        "an FP16 one, built as it is); fp16/int8 of an FP32 model also write the converted ONNX")
    _add_precision_arguments(p)
    _add_engine_arguments(p)
    _add_triton_arguments(p)
    p.add_argument("--json", action="store_true", help="with --list-models: print JSON instead of a table")
    p.add_argument("--quiet", action="store_true",
                   help="print only the results (stdout) and errors: no progress bars, notes or warnings")
    p.add_argument("--verbose", action="store_true",
                   help="print everything on stderr: TensorRT's messages down to info (--trt-log verbose for its "
                        "verbose log) and ModelOpt's, warnings uncollapsed")
    p.add_argument("--version", action="version", version=f"trt_res2net {__version__}")
    return p


def _add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("precision (FP16 / INT8 ONNX made with NVIDIA ModelOpt; needs the quant extra)")
    g.add_argument("--calib-dir", metavar="DIR",
                   help="INT8 calibration images: a few hundred real photographs like those the engine will see, "
                        "e.g. from the ImageNet train set (searched recursively: jpg, jpeg, png, bmp, webp)")
    g.add_argument("--calib-synthetic", type=positive_int, metavar="N",
                   help="no images at hand: calibrate on N generated images (written once to calib/synthetic_N_seedS)"
                        " — only to try the pipeline: their scales are not for an engine to deploy")
    g.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, metavar="N",
                   help="use at most N calibration images: all, sorted, or a seeded sample of N "
                        f"(default {DEFAULT_CALIB_IMAGES})")
    g.add_argument("--calib-seed", type=int, default=0, metavar="S",
                   help="seed of the calibration sample when there are more than N images (default 0)")
    g.add_argument("--calib-method", choices=CALIB_METHODS, default="entropy",
                   help="activation ranges: entropy (KL, default), max, or percentile")
    g.add_argument("--calib-percentile", type=float, default=99.999, metavar="P",
                   help="with --calib-method percentile: the percentile of |x| (default 99.999)")
    g.add_argument("--calib-cache", metavar="PATH",
                   help="calibration cache to reuse or write (default calib/<model>.<method>.cache); "
                        "TensorRT's text format with a <cache>.json sidecar that keys it")
    g.add_argument("--high-precision", choices=HIGH_PRECISIONS, default=DEFAULT_HIGH_PRECISION,
                   help=f"precision of what INT8 does not cover (default {DEFAULT_HIGH_PRECISION})")
    g.add_argument("--eval-dir", metavar="DIR",
                   help="held-out images: compare the FP16/INT8 ONNX with the FP32 ONNX on them")
    g.add_argument("--eval", metavar="LIST", dest="eval_list",
                   help="labelled held-out images, 'relative/path.jpg label' per line (PaddleClas val_list)")
    g.add_argument("--data-root", metavar="DIR", help="folder the --eval list's paths are relative to")
    g.add_argument("--eval-images", type=int, default=DEFAULT_EVAL_IMAGES, metavar="N",
                   help=f"compare on at most N held-out images, a seeded sample (default {DEFAULT_EVAL_IMAGES}; "
                        "0 = all)")
    g.add_argument("--max-top1-drop", type=float, metavar="PP",
                   help="fail when top-1 accuracy drops more than PP percentage points (labelled), or when "
                        "more than PP %% of the images change their top-1 class (unlabelled)")
    g.add_argument("--auto-fallback", action="store_true",
                   help="INT8: keep the most sensitive layers out of quantization until --max-top1-drop holds")


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("TensorRT engine")
    g.add_argument("--engine-family", choices=trt_compat.FAMILY_CHOICES, default="auto",
                   help="tensorrt: standard TensorRT, builds for this machine's GPU (servers, Jetson); "
                        "tensorrt-rtx: TensorRT for RTX, builds without a GPU for compute capability 8.0/8.6/"
                        "8.9/12.0 and later (7.5 on request); auto: tensorrt when importable, else "
                        "tensorrt-rtx (default)")
    g.add_argument("--compute-capability", metavar="LIST",
                   help="TensorRT-RTX targets, e.g. 8.6,8.9,12.0, or current (this machine's GPU); default "
                        "the library's portable set: 8.0, 8.6, 8.9, 12.0, 12.1 and later")
    g.add_argument("--int8-mode", choices=INT8_MODES, default="auto",
                   help="INT8 path: qdq = ModelOpt's Q/DQ ONNX (TensorRT 10/11, TensorRT-RTX), calibrator = "
                        "TensorRT's entropy calibrator (8.6/10.x), auto = what the installed library supports "
                        "(default)")
    g.add_argument("--batch", type=int, metavar="N", help="fixed batch size N (min = opt = max = N)")
    g.add_argument("--min-batch", type=int, metavar="N", help=f"smallest batch (default {DEFAULT_MIN_BATCH})")
    g.add_argument("--opt-batch", type=int, metavar="N",
                   help=f"batch TensorRT tunes for (default {DEFAULT_OPT_BATCH})")
    g.add_argument("--max-batch", type=int, metavar="N", help=f"largest batch (default {DEFAULT_MAX_BATCH})")
    g.add_argument("--workspace", type=int, metavar="MiB",
                   help="builder workspace limit in MiB (default: half the free GPU memory, a quarter on "
                        "Jetson; TensorRT-RTX without a GPU: the library's own default)")
    g.add_argument("--timing-cache", metavar="PATH",
                   help="TensorRT timing cache, read if present and updated after the build (speeds up "
                        "rebuilds; not for TensorRT-RTX)")
    g.add_argument("--dla-core", type=int, metavar="N",
                   help="build for Jetson DLA core N, with GPU fallback (TensorRT only)")
    g.add_argument("--builder-opt-level", type=int, choices=range(6), metavar="0-5",
                   help="builder optimization level (TensorRT default 3; higher searches longer)")
    g.add_argument("--calib-batch", type=int, default=None, metavar="N",
                   help="batch size of TensorRT's INT8 calibrator (default 8)")
    g.add_argument("--trt-calib-cache", metavar="PATH",
                   help="TensorRT calibration cache (default calib/<model>.trt<version>.cache)")
    g.add_argument("--engine-dir", default=str(DEFAULT_ENGINE_DIR), metavar="DIR",
                   help="where engines go (default engines/)")
    g.add_argument("--save-engine", metavar="PATH",
                   help="engine path (default <engine-dir>/<model>_<precision>_b<max>.engine, "
                        "….rtx.engine for TensorRT-RTX)")
    g.add_argument("--trt-log", choices=LOG_LEVELS, default="warning",
                   help="TensorRT log level (default warning)")


def _add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Triton model repository (docs/triton.md)")
    g.add_argument("--triton-repo", type=_triton_repo_dir, metavar="DIR",
                   help="also write a Triton Inference Server model repository to DIR (replaced if it holds one "
                        "written before): ensembles on image bytes over the engine (tensorrt_plan) and the ONNX "
                        "(onnxruntime_onnx), and a one-process Python model (ONNX Runtime in the Python backend); "
                        "needs tritonclient")
    g.add_argument("--triton-max-batch", type=positive_int, metavar="N",
                   help=f"max_batch_size of the ONNX/Python models and steps (default: the engine's max batch, "
                        f"else {TRITON_DEFAULT_MAX_BATCH})")
    g.add_argument("--triton-queue-delay-us", type=bounded_int(0), default=DEFAULT_QUEUE_DELAY_US, metavar="US",
                   help=f"dynamic batching: how long a classifier waits to fill a batch (default "
                        f"{DEFAULT_QUEUE_DELAY_US} µs)")
    g.add_argument("--triton-instances", type=positive_int, default=1, metavar="N",
                   help="instances of each classifier and of the one-process Python model (per GPU for the plan; "
                        "default 1)")
    defaults = TritonOptions()
    g.add_argument("--triton-preprocess-instances", type=positive_int, default=defaults.preprocess_instances,
                   metavar="N", help=f"instances of the image-decoding model (default {defaults.preprocess_instances})")
    g.add_argument("--triton-intra-op-threads", type=bounded_int(0), default=defaults.intra_op_threads, metavar="N",
                   help="ONNX Runtime threads per classifier instance (default 0: the serving machine's cores ÷ "
                        "--triton-instances)")
    g.add_argument("--triton-max-queue-size", type=positive_int, metavar="N",
                   help=f"requests each model queues; more are rejected with HTTP 503 / UNAVAILABLE (default "
                        f"{QUEUE_SIZE_PER_BATCH} × its max batch)")
    g.add_argument("--triton-queue-timeout-ms", type=bounded_int(0), default=defaults.queue_timeout_ms, metavar="MS",
                   help=f"a request queued longer is rejected (HTTP 503; default {defaults.queue_timeout_ms} ms, 0: "
                        "never)")
    g.add_argument("--triton-max-image-pixels", type=positive_int, default=defaults.max_image_pixels, metavar="N",
                   help=f"larger images (by their header) are refused with HTTP 400 before decoding (default "
                        f"{defaults.max_image_pixels})")
    g.add_argument("--triton-max-image-bytes", type=positive_int, default=defaults.max_image_bytes, metavar="N",
                   help=f"larger encoded images are refused with HTTP 400 (default {defaults.max_image_bytes})")
    g.add_argument("--triton-topk", type=positive_int, default=DEFAULT_TOPK, metavar="K",
                   help=f"top-k classes the image models return (default {DEFAULT_TOPK})")
    g.add_argument("--triton-labels", metavar="FILE",
                   help="class names for the image models' labels (infer.py's --labels formats; default ImageNet's "
                        "for 1000 classes, else the ids)")


# --------------------------------------------------------------------------------------------------------
# Flags → the library's options, one function per stage


def calibration_images(args: argparse.Namespace) -> CalibrationImages:
    synthetic = args.calib_synthetic
    if synthetic:
        from ..precision.convert import CALIB_DIR

        if args.calib_dir:
            raise usage_error("--calib-dir and --calib-synthetic exclude each other: real images, or generated ones")
        return synthetic_calibration_images(synthetic, CALIB_DIR, args.calib_seed)
    return CalibrationImages(args.calib_dir, args.calib_images, args.calib_seed)


def precision_options(args: argparse.Namespace) -> PrecisionOptions:
    return PrecisionOptions(
        calibration=calibration_images(args), calib_method=args.calib_method,
        calib_percentile=args.calib_percentile, calib_cache=args.calib_cache, high_precision=args.high_precision,
        eval_dir=args.eval_dir, eval_list=args.eval_list, data_root=args.data_root, eval_images=args.eval_images,
        max_top1_drop=args.max_top1_drop, auto_fallback=args.auto_fallback, progress=not args.quiet)


def engine_options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(
        family=args.engine_family, int8_mode=args.int8_mode, high_precision=args.high_precision,
        compute_capabilities=args.compute_capability, batch=args.batch, min_batch=args.min_batch,
        opt_batch=args.opt_batch, max_batch=args.max_batch, workspace_mib=args.workspace,
        timing_cache=args.timing_cache, dla_core=args.dla_core, builder_opt_level=args.builder_opt_level,
        calibration=calibration_images(args), calib_batch=args.calib_batch,
        calib_cache=args.trt_calib_cache, engine_dir=args.engine_dir, engine_path=args.save_engine,
        log_level="info" if args.verbose and args.trt_log == "warning" else args.trt_log, progress=not args.quiet)


def triton_options(args: argparse.Namespace) -> TritonOptions:
    return TritonOptions(max_batch=args.triton_max_batch, queue_delay_us=args.triton_queue_delay_us,
                         instances=args.triton_instances, topk=args.triton_topk, labels=args.triton_labels,
                         preprocess_instances=args.triton_preprocess_instances,
                         intra_op_threads=args.triton_intra_op_threads, max_queue_size=args.triton_max_queue_size,
                         queue_timeout_ms=args.triton_queue_timeout_ms, max_image_pixels=args.triton_max_image_pixels,
                         max_image_bytes=args.triton_max_image_bytes)


# --------------------------------------------------------------------------------------------------------
# The run


def list_models(as_json: bool) -> int:
    import json

    from ..model.onnx_export import graph_statistics
    from ..model.zoo import MODELS

    rows = []
    for spec in MODELS.values():
        stats = graph_statistics(spec)
        rows.append({"model": spec.name, "params": stats["params"], "gflops": round(stats["gflops"], 3),
                     "top1": spec.top1, "top5": spec.top5, "weights_url": spec.weights_url})
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'model':28s} {'params':>12s} {'GFLOPs':>8s} {'top-1':>6s} {'top-5':>6s}")
    for r in rows:
        print(f"{r['model']:28s} {r['params']:>12,d} {r['gflops']:>8.3f} {r['top1']:>6.1f} {r['top5']:>6.1f}")
    print("params: trainable (conv, BN scale/offset, FC); GFLOPs: 2 x conv+FC MACs at 224x224, from the graph.\n"
          "top-1/top-5: published by PaddleClas (ImageNet-1k val), not measured here.")
    return EXIT_OK


def _write_triton_repository(args, fp32_path: Path, model_name: str, engine: Path | None = None) -> None:
    """``--triton-repo``: the repository from what was built (the ONNX models alone without an engine)."""
    if args.triton_repo is None:
        return
    from ..serving.repository import write_triton_repository

    result = write_triton_repository(args.triton_repo, fp32_path, model_name=model_name, engine_path=engine,
                               options=triton_options(args))
    print(f"wrote Triton model repository {args.triton_repo}: {', '.join(result.models)} "
          f"(on image bytes: {', '.join(result.image_models)})", flush=True)


def _resolve_precision(asked: str | None, onnx_io, onnx_path: str | None) -> str:
    """``--precision``, or what an ``--onnx`` already is; a Q/DQ or FP16 ONNX is never converted or relabelled."""
    from ..precision.convert import onnx_precision

    already = onnx_precision(onnx_io) if onnx_io is not None else "fp32"
    if asked is None:
        if already != "fp32":
            log.note(f"{onnx_path} is already {already.upper()} ({'Q/DQ nodes' if already == 'int8' else 'FP16'}): "
                     f"building it as --precision {already}")
        return already
    if already != "fp32" and asked != already:
        kind = "Q/DQ nodes: quantized elsewhere" if already == "int8" else "FP16: converted elsewhere"
        raise usage_error(f"--onnx {onnx_path} is already {already.upper()} ({kind}), so --precision {asked} cannot "
                          f"be made from it: build it as --precision {already} (the default for it), or pass its "
                          "FP32 original")
    return asked


def _model_name_of(onnx: Path, onnx_io) -> str:
    """The engine's name stem for a given ONNX: its file stem, less the ``_fp16`` / ``_int8`` that this tool (or
    the user) put on an ONNX already of that precision, so that it does not appear twice in the engine's name."""
    done = None if onnx_io is None else "int8" if onnx_io.has_qdq else "fp16" if onnx_io.has_fp16 else None
    stem = onnx.stem
    return stem.removesuffix(f"_{done}") if done and stem != f"_{done}" else stem


def _precision_out(args, precision: str, fp32_path: Path | None, eng_opts) -> Path | None:
    """Where the FP16/INT8 ONNX goes: beside the exported FP32 ONNX (None: the library's default), or for a user's
    ``--onnx``, ``--onnx-out`` or the engine folder — never beside the user's file."""
    if not args.onnx:
        return None
    if args.onnx_out:
        return Path(args.onnx_out)
    return Path(eng_opts.engine_dir) / f"{Path(args.onnx).stem}_{precision}.onnx"


def _main(argv) -> int:
    from ..core.files import check_input_file, check_writable_folder
    from ..model.export import default_onnx_path

    args = build_parser().parse_args(argv)
    if args.quiet and args.verbose:
        raise usage_error("--quiet and --verbose exclude each other")
    log.configure("quiet" if args.quiet else "verbose" if args.verbose else "normal")
    if args.list_models:
        return list_models(args.json)
    if bool(args.model) == bool(args.onnx):
        raise usage_error("pass --model NAME or --onnx PATH (--list-models shows the names)")
    check_weight_options(args.weights, args.random_weights)

    # ---- every check that can be made before any long work -------------------------------------------
    onnx_io = None
    if args.onnx:  # the contract both runtimes check, in their words, before any work
        from ..model.contract import inspect_onnx

        check_input_file(args.onnx, "--onnx", "an ONNX file")
        onnx_io = inspect_onnx(args.onnx)
    else:
        from ..model.zoo import get_model

        get_model(args.model)
    if args.weights:
        check_input_file(args.weights, "--weights")
    precision = _resolve_precision(args.precision, onnx_io, args.onnx)
    eng_opts, prec_opts = engine_options(args), precision_options(args)
    check_engine_request(eng_opts, precision)
    version = trt_compat.installed_version(eng_opts.family)  # None: the ONNX is all this machine can make
    building = version is not None and not args.onnx_only
    if building:  # refuse options that mean nothing here before any work
        from ..engine.plan import check_targets_early

        refuse_inapplicable_options(eng_opts, version, precision)
        check_targets_early(eng_opts, version, precision, onnx_path=args.onnx, zoo_model=not args.onnx)
    already = onnx_io is not None and (onnx_io.has_qdq or onnx_io.has_fp16)
    needs_precision_onnx = precision_onnx_needed(precision, eng_opts.int8_mode, version) and not already
    if needs_precision_onnx:
        check_precision_request(precision, prec_opts, opset=args.opset)
    model_name = args.model or _model_name_of(Path(args.onnx), onnx_io)
    fp32_out = None if args.onnx else Path(args.onnx_out) if args.onnx_out else default_onnx_path(args.model)
    if fp32_out is not None:
        check_writable_folder(fp32_out.parent, "--onnx-out" if args.onnx_out else "the ONNX folder")
    precision_out = _precision_out(args, precision, fp32_out, eng_opts)
    if needs_precision_onnx and precision_out is not None:
        check_writable_folder(precision_out.parent, "--onnx-out" if args.onnx_out else "--engine-dir")
    calibrating = needs_precision_onnx and precision == "int8"
    if calibrating or (precision == "int8" and building and eng_opts.int8_mode == "calibrator"):
        from ..precision.convert import check_calibration_source, default_cache_path

        cache = Path(prec_opts.calib_cache) if prec_opts.calib_cache else default_cache_path(model_name, prec_opts)
        if prec_opts.calib_cache and os.path.lexists(cache):
            check_input_file(prec_opts.calib_cache, "--calib-cache")
        check_writable_folder(cache.parent, "the calibration cache folder")
        if calibrating:
            check_calibration_source(prec_opts, model_name)
        elif prec_opts.calibration.directory is not None:
            prec_opts.calibration.check()
    if prec_opts.eval_list:
        check_input_file(prec_opts.eval_list, "--eval")
    lock = None
    if building:
        from ..core.commit import PathLock
        from ..engine.build import planned_engine_path
        from ..engine.plan import RTX_INT8_CAVEAT

        engine_path = planned_engine_path(model_name, precision, eng_opts, version,
                                          onnx_io.batch if onnx_io is not None else None)
        check_writable_folder(engine_path.parent, "--save-engine" if args.save_engine else "--engine-dir")
        if eng_opts.timing_cache is not None and Path(eng_opts.timing_cache).exists():
            check_input_file(eng_opts.timing_cache, "--timing-cache")
        lock = PathLock(engine_path, "build").acquire()  # a second build of this engine is refused now, not later
        if precision == "int8" and trt_compat.is_rtx(version):
            log.warn_once(RTX_INT8_CAVEAT)  # said before the long work, recorded in the manifest after it
    try:
        return _run(args, precision, model_name, onnx_io, eng_opts, prec_opts, needs_precision_onnx, precision_out)
    finally:
        if lock is not None:
            lock.release()


def _run(args, precision, model_name, onnx_io, eng_opts, prec_opts, needs_precision_onnx, precision_out) -> int:
    """The work, after the checks: export → precision → engine → Triton repository."""
    if args.onnx:
        fp32_path = Path(args.onnx)
    else:
        exported = export_onnx(args.model, args.onnx_out, weights=args.weights, random_weights=args.random_weights,
                                seed=args.seed, opset=args.opset or DEFAULT_OPSET, softmax=args.softmax,
                                progress=not args.quiet)
        fp32_path, model_name = exported.path, exported.model
        print(f"wrote {fp32_path} (fp32 ONNX, {exported.bytes / 1e6:.1f} MB, checked)", flush=True)
    onnx_path = fp32_path
    if needs_precision_onnx:
        from ..precision.convert import convert_precision

        onnx_path = convert_precision(fp32_path, precision, prec_opts, model_name=model_name, out_path=precision_out)
    if args.onnx_only:
        _write_triton_repository(args, fp32_path, model_name)
        return EXIT_OK
    try:
        built = build_engine(onnx_path, precision, eng_opts, fp32_onnx_path=fp32_path, model_name=model_name)
    except MissingDependency:
        _write_triton_repository(args, fp32_path, model_name)  # the ONNX-only repository, then exit status 3
        raise
    print(f"engine ready: {built.path}", flush=True)
    _write_triton_repository(args, fp32_path, model_name, built.path)
    return EXIT_OK


def main(argv=None) -> int:
    return run_main(lambda: _main(sys.argv[1:] if argv is None else argv))
