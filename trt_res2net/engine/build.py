"""The engine stage: an ONNX → a TensorRT or TensorRT-RTX engine and its manifest (``trt_res2net.build_engine``).

Checks come first (the options the library refuses, the batch profile, the GPU or the RTX targets, the precision
path), then the build (``builder``), then the engine and its manifest are written.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..core.errors import MissingDependency, UserError
from ..core.files import write_bytes
from ..core.hashing import sha256_file
from ..model.contract import inspect_onnx
from . import manifest as manifest_mod
from . import trt_compat
from .builder import build
from .options import EngineOptions, MiB, engine_path_for
from .plan import (
    check_engine_request,
    default_workspace_bytes,
    fp32_gemm_nodes,
    plan_build,
    refuse_inapplicable_options,
    rtx_targets,
    same_file,
)


@dataclass(frozen=True)
class BuiltEngine:
    """An engine on disk with its manifest (``manifest`` is what ``manifest_path`` holds)."""

    path: Path
    manifest_path: Path
    manifest: dict

    @property
    def family(self) -> str:
        return self.manifest["engine_family"]


def gpu_for_build(version, device: int, written: str):
    """The GPU TensorRT builds for (MissingDependency, exit 3, without one); for TensorRT-RTX, which needs no
    GPU, this machine's GPU when there is one, else None."""
    from ..cuda.device import detect_gpu

    try:
        return detect_gpu(device)
    except MissingDependency as e:
        if trt_compat.builds_without_gpu(version):
            return None
        raise MissingDependency(f"wrote {written}; {e}; to build the engine {trt_compat.INSTALL_HINT} "
                                "(or --engine-family tensorrt-rtx, which builds without a GPU)") from e


def build_engine(onnx_path: str | os.PathLike, precision: str = "fp32", options: EngineOptions | None = None, *,
                 fp32_onnx_path: str | os.PathLike | None = None, model_name: str | None = None) -> BuiltEngine:
    """Build the engine of ``onnx_path`` and write it with its manifest.

    ``onnx_path`` is what the engine is built from: the FP32 ONNX, or the FP16 / INT8 Q/DQ ONNX that
    ``trt_res2net.convert_precision`` made from ``fp32_onnx_path`` (default: ``onnx_path`` itself; TensorRT ≤ 10
    builds FP16 and calibrator INT8 from the FP32 one). ``model_name`` names the engine file (default: the FP32
    ONNX's stem). Without the library (or, for TensorRT, without a GPU): MissingDependency (exit status 3) whose
    one line says which ONNX files exist and what to install.
    """
    options = options or EngineOptions()
    onnx_path = Path(onnx_path)
    fp32_onnx_path = Path(fp32_onnx_path) if fp32_onnx_path is not None else onnx_path
    model_name = model_name or fp32_onnx_path.stem
    check_engine_request(options, precision)  # usage errors are exit 2 even without TensorRT
    io_converted = inspect_onnx(onnx_path)
    written = str(fp32_onnx_path) + ("" if same_file(onnx_path, fp32_onnx_path) else f" and {onnx_path}")

    library = trt_compat.import_library(options.family, what_was_written=written)
    version = library.version
    refuse_inapplicable_options(options, version, precision)
    gpu = gpu_for_build(version, options.device, written)
    targets = rtx_targets(options, gpu, written) if trt_compat.is_rtx(version) else None

    plan = plan_build(precision, version, onnx_path=onnx_path, fp32_onnx_path=fp32_onnx_path,
                      onnx_io=io_converted, int8_mode=options.int8_mode, high_precision=options.high_precision)
    io = io_converted if same_file(plan.onnx_path, onnx_path) else inspect_onnx(plan.onnx_path)
    if targets and "7.5" in targets:
        fp32 = fp32_gemm_nodes(plan.onnx_path)
        if fp32:
            raise UserError(f"TensorRT-RTX cannot compile FP32 GEMM for Turing (compute capability 7.5), and "
                            f"{plan.onnx_path} computes {fp32[0]!r} in FP32: build --precision fp16 for 7.5, or "
                            "leave 7.5 out of --compute-capability")
    profile = options.batch_profile(onnx_batch=io.batch)
    if options.workspace_bytes is None and gpu is not None:
        workspace = default_workspace_bytes(gpu.free_memory, gpu.total_memory, gpu.integrated)
        options = replace(options, workspace_mib=max(1, workspace // MiB))

    onnx_sha = sha256_file(plan.onnx_path)
    calibration = None
    if plan.calibrator:
        from .calibrator import prepare_calibration

        calibration = prepare_calibration(
            model=model_name, trt_version=version, onnx_sha256=onnx_sha,
            batch=options.calibrator_batch if io.batch is None else io.batch,
            calib_dir=options.calibration.directory, calib_images=options.calibration.count,
            seed=options.calibration.seed,
            cache_path=options.calib_cache,
        )

    engine_path = options.engine_path or engine_path_for(model_name, precision, profile.max, options.engine_dir,
                                                         family=version.family)
    for note in plan.notes:
        print(f"build: {note}", file=sys.stderr)
    for caveat in plan.caveats:
        print(f"warning: {caveat}", file=sys.stderr)
    result = build(library, plan, io, profile, options, engine_path=engine_path, gpu=gpu, targets=targets,
                   calibration=calibration)

    # A manifest left from an earlier build must not describe the new engine (the runtime would refuse a
    # mismatch anyway, by engine_sha256).
    manifest_mod.manifest_path_for(engine_path).unlink(missing_ok=True)
    write_bytes(engine_path, result.serialized)
    manifest = manifest_mod.build_manifest(
        engine_path=engine_path, model=model_name, precision=precision, int8_mode=plan.int8_mode,
        engine_family=version.family, library_version=version.full, gpu=gpu,
        compute_capabilities=result.compute_capabilities, compute_capabilities_and_later=result.and_later,
        onnx_path=plan.onnx_path, onnx_sha256=onnx_sha,
        fp32_onnx_sha256=onnx_sha if same_file(plan.onnx_path, fp32_onnx_path) else sha256_file(fp32_onnx_path),
        io=result.io, outputs_probabilities=io.outputs_probabilities, profiles=result.profiles,
        build_options=result.build_options, caveats=plan.caveats,
        build_time_s=result.build_time_s, calibration=calibration.manifest() if calibration else None,
    )
    mpath = manifest_mod.write_manifest(engine_path, manifest)
    _report(engine_path, mpath, result, version)
    return BuiltEngine(engine_path, mpath, manifest)


def _report(engine_path: Path, manifest_path: Path, result, version) -> None:
    print(f"wrote {engine_path} ({engine_path.stat().st_size / MiB:.1f} MiB, built in {result.build_time_s:.1f}s) "
          f"and {manifest_path}", file=sys.stderr)
    for tool, command in result.build_options["equivalent_commands"].items():  # to cross-check with NVIDIA's
        print(f"{tool} equivalent: {command}", file=sys.stderr)
    if trt_compat.is_rtx(version):
        print(f"{engine_path} is a TensorRT-RTX engine: it runs on GPUs of "
              f"{trt_compat.rtx_targets_sentence(result.compute_capabilities, result.and_later)}, with TensorRT-RTX "
              f"{version} and a driver for CUDA 13; its kernels are compiled on the first run there (kept in a "
              "runtime cache beside the engine). Data-center Hopper GPUs (H100, H200) and Jetson need standard "
              "TensorRT: install it there and rerun with --engine-family tensorrt", file=sys.stderr)
