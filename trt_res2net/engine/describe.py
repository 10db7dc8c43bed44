"""What an engine is, for its manifest: the manifest of a build (:func:`build_manifest`), where the engine's
precision came from (:func:`describe_quantization`) and what it computes in, as far as the library lets a build find
out (:func:`describe_compute_precision`)."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from typing import TYPE_CHECKING

from ..core.hashing import sha256_bytes
from ..core.version import __version__
from . import trt_compat
from .manifest import BuildGpu, CalibrationRecord, ComputePrecision, EngineManifest, Quantization, normalize_cc

if TYPE_CHECKING:
    from .builder import BuildResult
    from .plan import EnginePlan

QUANTIZATION_SOURCES = {
    "none": "FP32: nothing quantized",
    "fp16-builder-flag": "FP16 by TensorRT's builder flag on the FP32 ONNX",
    "autocast-fp16": "FP16 by ModelOpt AutoCast here",
    "external-fp16": "FP16 as the given ONNX has it (converted elsewhere)",
    "calibrated": "INT8 Q/DQ calibrated here (ModelOpt PTQ)",
    "external-qdq": "INT8 Q/DQ as the given ONNX has it (quantized elsewhere; not calibrated here)",
    "tensorrt-calibrator": "INT8 calibrated here by TensorRT's entropy calibrator",
}


def describe_quantization(plan: EnginePlan, onnx_sha: str, calibration: CalibrationRecord | None = None
                          ) -> Quantization:
    """Where the engine's precision came from (``QUANTIZATION_SOURCES``): the ONNX it was built from (what it
    declares), and the precision step's sidecar beside it when that sidecar describes these very bytes."""
    from ..precision.sidecar import read_precision_sidecar

    path, precision, io = plan.build, plan.precision, plan.io
    built_from_fp16 = io.has_fp16 and not io.has_qdq
    if precision == "fp32":
        source = "none"
    elif path.calibrator:
        source = "tensorrt-calibrator"
    elif "FP16" in path.flags and precision == "fp16" and not built_from_fp16:
        source = "fp16-builder-flag"
    else:
        side = read_precision_sidecar(path.onnx_path, onnx_sha)
        if side is not None:
            source = side.quantization_source or ("calibrated" if precision == "int8" else "autocast-fp16")
            label = QUANTIZATION_SOURCES.get(source, source)
            if side.calibration_synthetic:
                label += " on synthetic images: its scales are only for trying the pipeline"
            layers = side.excluded_layers
            return Quantization(source, label, side.calibration_method, side.calibration_cache,
                                side.calibration_images, side.calibration_synthetic, side.high_precision,
                                None if layers is None else tuple(layers))
        source = "external-qdq" if precision == "int8" else "external-fp16"
    return Quantization(source, QUANTIZATION_SOURCES[source],
                        calibration_cache=calibration.cache if calibration is not None else None)


_RTX_QDQ_SUMMARY = (
    "not known ahead of time: the engine was built from an INT8 Q/DQ graph; TensorRT-RTX documents INT8 as "
    "weight-only quantization (of GEMMs; its 1.7 release notes add INT8 weight-only-quantized convolutions) and "
    "does not say what the activations of a Q/DQ convolution compute in")


def describe_compute_precision(plan: EnginePlan, result: BuildResult) -> ComputePrecision:
    """What the engine computes in, as far as the library lets a build find out. A standard TensorRT build follows
    documented rules; a TensorRT-RTX build compiles its kernels on the user's GPU, and its INT8 is documented as
    weight-only quantization: for an INT8 Q/DQ graph that is recorded as not known, with what the build did see."""
    precision, path = plan.precision, plan.build
    net = result.network or {}
    requested = None
    if net.get("weighted_layers") and precision == "int8":
        requested = (f"{net['weighted_layers_qdq']} of {net['weighted_layers']} convolutions and matrix multiplies "
                     "with INT8 Q/DQ on their data and weights")
    if precision == "fp32":
        return ComputePrecision(True, "FP32, TF32 allowed in convolutions and matrix multiplies (the library's "
                                      "default)")
    if precision == "fp16":
        if "FP16" in path.flags:
            return ComputePrecision(True, "FP16 where TensorRT finds it faster (builder flag), FP32 elsewhere")
        return ComputePrecision(True, "the types the FP16 ONNX declares (strongly typed): FP16, with the nodes kept "
                                      "in FP32 and the float32 input and output")
    if path.calibrator:
        return ComputePrecision(True, "INT8 where TensorRT has an INT8 kernel for the calibrated ranges (implicit "
                                      "quantization), " + ("FP16 or FP32" if "FP16" in path.flags else "FP32")
                                      + " elsewhere")
    if not trt_compat.is_rtx(plan.version):
        return ComputePrecision(True, "INT8 where the Q/DQ nodes ask and TensorRT has an INT8 kernel (explicit "
                                      "quantization), the types the ONNX declares elsewhere", requested=requested)
    warnings: dict[str, int] = {}
    if result.log is not None:
        for message in result.log.messages("warning"):
            warnings[message] = warnings.get(message, 0) + 1
    return ComputePrecision(
        False, _RTX_QDQ_SUMMARY, label="int8qdq", requested=requested,
        build_log={"warnings": warnings, "note": "the builder compiles the network as one fused node and reports no "
                                                 "per-layer precision"},
        engine_inspector="needs the engine deserialized on a GPU it targets (IEngineInspector): not available to an "
                         "ahead-of-time build; measure on the target GPU")


def build_manifest(plan: EnginePlan, result: BuildResult, *, onnx_sha256: str,
                   fp32_onnx_sha256: str) -> EngineManifest:
    """The manifest of the engine that ``result`` holds (serialized, not yet on disk: its bytes are hashed here),
    built as ``plan`` says; ``onnx_sha256`` / ``fp32_onnx_sha256`` hash the ONNX built from and its FP32 source."""

    version = plan.version
    return EngineManifest(
        engine=plan.engine_path.name, engine_sha256=sha256_bytes(result.serialized),
        engine_bytes=memoryview(result.serialized).nbytes, model=plan.model_name, precision=plan.precision,
        int8_mode=plan.build.int8_mode, quantization=describe_quantization(plan, onnx_sha256, result.calibration),
        compute_precision=describe_compute_precision(plan, result), engine_family=version.family,
        library_version=version.full, compute_capabilities=tuple(map(normalize_cc, result.compute_capabilities)),
        compute_capabilities_and_later=result.and_later,
        compute_capabilities_source=result.compute_capabilities_source,
        gpu=None if plan.gpu is None else BuildGpu.from_json(plan.gpu.to_manifest()), caveats=plan.build.caveats,
        onnx=str(plan.build.onnx_path), onnx_sha256=onnx_sha256, fp32_onnx_sha256=fp32_onnx_sha256,
        io=result.io, outputs_probabilities=plan.io.outputs_probabilities, profiles=result.profiles,
        calibration=result.calibration, preprocess=plan.recipe.spec.to_dict(),
        preprocess_sha256=plan.recipe.spec.sha256(),
        build_options=result.build_options, build_time_s=round(float(result.build_time_s), 3),
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host={"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()},
        trt_res2net_version=__version__, command=" ".join(shlex.quote(a) for a in sys.argv),
    )
