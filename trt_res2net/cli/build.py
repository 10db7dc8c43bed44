"""build.py: model name + PaddleClas weights → exact ONNX → (FP16 / INT8 ONNX) → TensorRT engine → (Triton repository).

The flags (declared in ``cli.build_parser``) are mapped onto the library's options here, through one table
(:data:`FLAGS`), in one function per stage (:func:`precision_options`, :func:`engine_options`,
:func:`triton_options`); the work is the library's. The engine's plan is made once: its target before the export
(``engine.plan.plan_target``: every refusal, and the lock), the rest once the ONNX it is built from exists.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from ..core import log
from ..core.errors import EXIT_OK, MissingDependency
from ..core.files import check_writable_folder
from ..data.calibration_set import CalibrationImages, synthetic_calibration_images
from ..data.recipe import PreprocessOptions
from ..engine import trt_compat
from ..engine.build import run_engine
from ..engine.options import EngineOptions
from ..engine.plan import EngineTarget, check_engine_request, plan_engine, plan_target
from ..engine.precision_path import precision_onnx_needed
from ..model.export import DEFAULT_OPSET, ExportOptions, ExportPlan, plan_export, run_export
from ..precision.convert import ConvertedOnnx, PrecisionPlan, plan_precision, run_precision
from ..precision.options import PrecisionOptions, check_qdq_opset
from ..serving.repository import TritonOptions
from .build_parser import build_parser
from .common import PREPROCESS_FIELDS, FieldFlags, run_main, usage_error

# --------------------------------------------------------------------------------------------------------
# Flags → the library's options, one function per stage


# The one table from the library's option fields to this command's flags: the options are built from it, and
# the library's refusals, which name the fields, are shown with the flags.
FLAGS = FieldFlags({
    # export (model.export.ExportOptions)
    "ExportOptions.model": "--model",
    "ExportOptions.weights": "--weights",
    "ExportOptions.random_weights": "--random-weights",
    "ExportOptions.seed": "--seed",
    "ExportOptions.opset": "--opset",
    "ExportOptions.path": "--onnx-out",
    "ExportOptions.softmax": "--softmax",
    "convert_precision.precision": "--precision",
    "convert_precision.out_path": "--onnx-out",
    "build_engine.precision": "--precision",
    # precision (precision.options.PrecisionOptions)
    "CalibrationImages.directory": "--calib-dir",
    "CalibrationImages.count": "--calib-images",
    "CalibrationImages.seed": "--calib-seed",
    "synthetic_calibration_images.n": "--calib-synthetic",
    "PrecisionOptions.calib_method": "--calib-method",
    "PrecisionOptions.calib_percentile": "--calib-percentile",
    "PrecisionOptions.calib_cache": "--calib-cache",
    "PrecisionOptions.high_precision": "--high-precision",
    "PrecisionOptions.eval_dir": "--eval-dir",
    "PrecisionOptions.eval_list": "--eval",
    "PrecisionOptions.data_root": "--data-root",
    "PrecisionOptions.eval_images": "--eval-images",
    "PrecisionOptions.max_top1_drop": "--max-top1-drop",
    "PrecisionOptions.auto_fallback": "--auto-fallback",
    # engine (engine.options.EngineOptions)
    "EngineOptions.family": "--engine-family",
    "EngineOptions.int8_mode": "--int8-mode",
    "EngineOptions.high_precision": "--high-precision",
    "EngineOptions.compute_capabilities": "--compute-capability",
    "EngineOptions.batch": "--batch",
    "EngineOptions.min_batch": "--min-batch",
    "EngineOptions.opt_batch": "--opt-batch",
    "EngineOptions.max_batch": "--max-batch",
    "EngineOptions.workspace_mib": "--workspace",
    "EngineOptions.timing_cache": "--timing-cache",
    "EngineOptions.dla_core": "--dla-core",
    "EngineOptions.builder_opt_level": "--builder-opt-level",
    "EngineOptions.calib_batch": "--calib-batch",
    "EngineOptions.calib_cache": "--trt-calib-cache",
    "EngineOptions.engine_dir": "--engine-dir",
    "EngineOptions.engine_path": "--save-engine",
    "EngineOptions.log_level": "--trt-log",
    # Triton repository (serving.repository.TritonOptions)
    "TritonOptions.max_batch": "--triton-max-batch",
    "TritonOptions.queue_delay_us": "--triton-queue-delay-us",
    "TritonOptions.instances": "--triton-instances",
    "TritonOptions.topk": "--triton-topk",
    "TritonOptions.labels": "--triton-labels",
    "TritonOptions.preprocess_instances": "--triton-preprocess-instances",
    "TritonOptions.intra_op_threads": "--triton-intra-op-threads",
    "TritonOptions.max_queue_size": "--triton-max-queue-size",
    "TritonOptions.queue_timeout_ms": "--triton-queue-timeout-ms",
    "TritonOptions.max_image_pixels": "--triton-max-image-pixels",
    "TritonOptions.max_image_bytes": "--triton-max-image-bytes",
    "TritonOptions.costly_image_pixels": "--triton-costly-image-pixels",
    "TritonOptions.decode_deadline_ms": "--triton-decode-deadline-ms",
    **PREPROCESS_FIELDS,
    "plan_repository.out_dir": "--triton-repo",
}, dests={"--eval": "eval_list"})


def calibration_images(args: argparse.Namespace) -> CalibrationImages:
    synthetic = args.calib_synthetic
    if synthetic:
        from ..precision.calibration import CALIB_DIR

        if args.calib_dir:
            raise usage_error("--calib-dir and --calib-synthetic exclude each other: real images, or generated ones")
        return synthetic_calibration_images(synthetic, CALIB_DIR, args.calib_seed)
    return CalibrationImages(args.calib_dir, args.calib_images, args.calib_seed)


def precision_options(args: argparse.Namespace) -> PrecisionOptions:
    return FLAGS.options(PrecisionOptions, args, calibration=calibration_images(args), progress=not args.quiet)


def engine_options(args: argparse.Namespace) -> EngineOptions:
    return FLAGS.options(EngineOptions, args, calibration=calibration_images(args),
                         log_level="info" if args.verbose and args.trt_log == "warning" else args.trt_log,
                         progress=not args.quiet)


def triton_options(args: argparse.Namespace) -> TritonOptions:
    return FLAGS.options(TritonOptions, args)


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


def _write_triton_repository(args, fp32_path: Path, model_name: str, engine: Path | None = None,
                             cpu_model: Path | None = None) -> None:
    """``--triton-repo``: the repository from what was built (the ONNX models alone without an engine or a CPU
    model)."""
    if args.triton_repo is None:
        return
    from ..serving.repository import write_triton_repository

    result = write_triton_repository(args.triton_repo, fp32_path, model_name=model_name, engine_path=engine,
                                     options=triton_options(args), preprocess=preprocess_options(args),
                                     cpu_model_path=cpu_model)
    print(f"wrote Triton model repository {args.triton_repo}: {', '.join(result.models)} "
          f"(on image bytes: {', '.join(result.image_models)})", flush=True)


def preprocess_options(args) -> PreprocessOptions:
    return FLAGS.options(PreprocessOptions, args)


def _say_what_is_assumed(args, onnx_io) -> None:
    """One line for an ONNX of the user's: the preprocessing it will be fed and its classes, so that a mismatch
    shows before any work."""
    from ..data.postprocess import IMAGENET_CLASSES
    from ..model.contract import onnx_recipe

    recipe = onnx_recipe(args.onnx, preprocess_options(args))
    n = onnx_io.io.num_classes
    labels = (f"labels from {args.triton_labels}" if args.triton_labels
              else "ImageNet's labels" if n == IMAGENET_CLASSES else "class ids as labels")
    classes = f"{n} classes" if n else "classes from the model's output"
    print(f"preprocessing: {recipe.describe()}; {classes}, {labels}", flush=True)


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


def _precision_out(args, precision: str, eng_opts: EngineOptions) -> Path | None:
    """Where the FP16/INT8 ONNX goes: beside the exported FP32 ONNX (None: the library's default), or for a user's
    ``--onnx``, ``--onnx-out`` or the engine folder — never beside the user's file."""
    if not args.onnx:
        return None
    if args.onnx_out:
        return Path(args.onnx_out)
    return Path(eng_opts.engine_dir) / f"{Path(args.onnx).stem}_{precision}.onnx"


@dataclass(frozen=True)
class _Plans:
    """build.py's plan of every stage it runs, made before the first long one: the export (None for ``--onnx``),
    the precision step (None: no FP16/INT8 ONNX to make), the engine's target (None: no engine here —
    ``--onnx-only``, or no library, which the engine step reports once the ONNX is written)."""

    precision: str
    model_name: str
    fp32_onnx: Path
    export: ExportPlan | None
    precision_plan: PrecisionPlan | None
    engine: EngineOptions
    target: EngineTarget | None


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet and args.verbose:
        raise usage_error("--quiet and --verbose exclude each other")
    log.configure("quiet" if args.quiet else "verbose" if args.verbose else "normal")
    if args.list_models:
        return list_models(args.json)
    if bool(args.model) == bool(args.onnx):
        raise usage_error("pass --model NAME or --onnx PATH (--list-models shows the names)")
    if args.engine_family == "cpu":
        from .build_cpu import run_cpu_build

        def source(args):
            export, _, fp32_onnx, model_name = _source(args)
            return export, fp32_onnx, model_name

        return run_cpu_build(args, build_parser(), source, precision_options, preprocess_options,
                             _write_triton_repository)
    if args.precision == "bf16":
        raise usage_error("--precision bf16 is for --engine-family cpu (TensorRT's engines are fp32, fp16 or int8)")
    plans = _plan(args)
    if plans.target is None:
        return _run(args, plans)
    with plans.target.lock():  # a second build of this engine is refused now, not after the export
        for caveat in plans.target.caveats:
            log.warn_once(caveat)  # said before the long work, recorded in the manifest after it
        return _run(args, plans)


def _source(args):
    """(the export's plan or None, the ``--onnx``'s checked I/O or None, the FP32 ONNX, the model name)."""
    export, onnx_io = None, None
    if args.onnx:  # the contract both runtimes check, in their words, before any work
        from ..core.files import check_input_file
        from ..model.contract import inspect_onnx

        check_input_file(args.onnx, "--onnx", "an ONNX file")
        onnx_io = inspect_onnx(args.onnx)
        fp32_onnx, model_name = Path(args.onnx), _model_name_of(Path(args.onnx), onnx_io)
        if not args.quiet:
            _say_what_is_assumed(args, onnx_io)
    else:
        export = plan_export(FLAGS.options(ExportOptions, args, opset=args.opset or DEFAULT_OPSET, path=args.onnx_out,
                                           progress=not args.quiet))
        fp32_onnx, model_name = export.path, export.spec.name
    return export, onnx_io, fp32_onnx, model_name


def _plan(args) -> _Plans:
    """Every stage planned, every refusal made, before any long work: the export (or the ONNX given), the engine's
    target (``engine.plan.plan_target``: what needs no ONNX), the precision step."""
    export, onnx_io, fp32_onnx, model_name = _source(args)
    precision = _resolve_precision(args.precision, onnx_io, args.onnx)
    eng_opts, prec_opts = engine_options(args), precision_options(args)
    version = trt_compat.installed_version(eng_opts.family)  # None: the ONNX is all this machine can make
    if version is None or args.onnx_only:
        check_engine_request(eng_opts, precision)  # usage errors are exit status 2 even without the library
        target = None
    else:
        target = plan_target(eng_opts, precision, model_name=model_name, onnx=args.onnx, onnx_io=onnx_io)
    already = onnx_io is not None and (onnx_io.has_qdq or onnx_io.has_fp16)
    precision_plan = None
    if precision_onnx_needed(precision, eng_opts.int8_mode, version) and not already:
        check_qdq_opset(precision, args.opset)  # the export's opset asked for, which a Q/DQ ONNX cannot keep
        out = _precision_out(args, precision, eng_opts)
        if out is not None and not args.onnx_out and target is None:  # the engine folder, which no target checked
            check_writable_folder(eng_opts.engine_dir, "--engine-dir")
        precision_plan = plan_precision(fp32_onnx, precision, prec_opts, model_name=model_name, out_path=out,
                                        exported_opset=None if export is None else export.opset,
                                        preprocess=preprocess_options(args))
    return _Plans(precision, model_name, fp32_onnx, export, precision_plan, eng_opts, target)


def _run(args, plans: _Plans) -> int:
    """The plans run: export → precision → engine → Triton repository."""
    model_name, fp32_path = plans.model_name, plans.fp32_onnx
    if plans.export is not None:
        exported = run_export(plans.export)
        print(f"wrote {fp32_path} (fp32 ONNX, {exported.bytes / 1e6:.1f} MB, checked)", flush=True)
    onnx: Path | ConvertedOnnx = fp32_path
    if plans.precision_plan is not None:
        onnx = run_precision(plans.precision_plan)
    if args.onnx_only:
        _write_triton_repository(args, fp32_path, model_name)
        return EXIT_OK
    try:  # the engine's plan completed with the ONNX it is built from (no library here: exit status 3)
        plan = plan_engine(onnx, None if plans.target else plans.engine, precision=plans.precision,
                           fp32_onnx_path=fp32_path, model_name=model_name, target=plans.target,
                           preprocess=preprocess_options(args))
    except MissingDependency:
        _write_triton_repository(args, fp32_path, model_name)  # the ONNX-only repository, then exit status 3
        raise
    built = run_engine(plan)
    print(f"engine ready: {built.path}", flush=True)
    _write_triton_repository(args, fp32_path, model_name, built.path)
    return EXIT_OK


def main(argv=None) -> int:
    return run_main(lambda: _main(sys.argv[1:] if argv is None else argv), FLAGS)
