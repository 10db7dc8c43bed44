"""build.py --engine-family cpu: the model for CPUs (``engine.cpu_build``) from the same export or ONNX, calibration
images and preprocessing as the TensorRT path; the TensorRT-only flags do not apply and are refused in one line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import EXIT_OK
from ..engine.options import DEFAULT_ENGINE_DIR
from .common import usage_error

# Flags of the TensorRT engine that mean nothing for an OpenVINO model (refused when given, not ignored).
TENSORRT_ONLY = ("compute_capability", "int8_mode", "batch", "min_batch", "opt_batch", "max_batch", "workspace",
                 "timing_cache", "dla_core", "builder_opt_level", "calib_batch", "trt_calib_cache")


def check_cpu_request(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    given = [a for a in TENSORRT_ONLY if vars(args)[a] != parser.get_default(a)]
    if given:
        flags = ", ".join("--" + a.replace("_", "-") for a in given)
        raise usage_error(f"{flags} {'does' if len(given) == 1 else 'do'} not apply to --engine-family cpu "
                          "(an OpenVINO model for CPUs)")
    if args.onnx_only:
        raise usage_error("--onnx-only and --engine-family cpu exclude each other (the CPU model is made from "
                          "the ONNX)")


def cpu_out_path(args: argparse.Namespace, fp32_onnx: Path, precision: str) -> Path:
    from ..engine.cpu_build import cpu_model_path

    if args.save_engine:
        path = Path(args.save_engine)
        if path.suffix.lower() != ".xml":
            raise usage_error(f"--save-engine {path}: a CPU model is an OpenVINO .xml (its .bin beside it)")
        return path
    return cpu_model_path(fp32_onnx, precision, Path(args.engine_dir or DEFAULT_ENGINE_DIR))


def run_cpu_build(args: argparse.Namespace, parser, plan_source, precision_options, preprocess,
                  write_repository) -> int:
    """``plan_source(args)`` → (export plan or None, FP32 ONNX path, model name): build.py's own export or --onnx;
    ``write_repository(args, fp32_onnx, model_name, cpu_model=...)``: ``--triton-repo``'s, with the CPU model."""
    from ..engine.cpu_build import plan_cpu_model, run_cpu_model
    from ..model.export import run_export

    check_cpu_request(args, parser)
    precision = args.precision or "int8"
    export, fp32_onnx, model_name = plan_source(args)
    plan = plan_cpu_model(fp32_onnx, precision, precision_options(args), model_name=model_name,
                          out_path=cpu_out_path(args, fp32_onnx, precision), preprocess=preprocess(args))
    if export is not None:
        exported = run_export(export)
        print(f"wrote {fp32_onnx} (fp32 ONNX, {exported.bytes / 1e6:.1f} MB, checked)", flush=True)
    model = run_cpu_model(plan)
    print(f"CPU model ready: {model.path}", flush=True)
    write_repository(args, fp32_onnx, model_name, cpu_model=model.path)
    return EXIT_OK
