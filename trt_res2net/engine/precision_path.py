"""The precision path of an engine build, no TensorRT: which ONNX to build from and how, per library and release
(:class:`BuildPlan`, :func:`plan_build`).

============  ==========================================  =================================================
library       fp16                                        int8
============  ==========================================  =================================================
8.6           BuilderFlag.FP16 on the FP32 ONNX            entropy calibrator (+FP16) on the FP32 ONNX
10.x          BuilderFlag.FP16 on the FP32 ONNX            Q/DQ ONNX, strongly typed; or the calibrator
11.x          AutoCast FP16 ONNX (always strongly typed)  Q/DQ ONNX only
RTX 1.x       AutoCast FP16 ONNX (always strongly typed)  Q/DQ ONNX only (documented for weight-only GEMMs)
============  ==========================================  =================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..model.contract import OnnxIO, inspect_onnx
from . import trt_compat
from .options import PRECISIONS


@dataclass(frozen=True)
class BuildPlan:
    """Which ONNX to build from and how, for one precision on one TensorRT release (of either family)."""

    precision: str
    onnx_path: Path
    int8_mode: str | None = None  # "qdq" | "calibrator" for int8
    flags: tuple[str, ...] = ()  # BuilderFlag names to set ("FP16", "INT8")
    strongly_typed: bool = False  # the network takes the precisions written in the ONNX
    explicit_batch: bool = False  # 8.x needs EXPLICIT_BATCH for ONNX
    calibrator: bool = False
    notes: tuple[str, ...] = ()
    caveats: tuple[str, ...] = ()  # warned about and recorded in the manifest


# TensorRT-RTX's documented INT8 is weight-only quantization of GEMMs (support matrix); a Q/DQ ONNX builds, but
# nothing promises INT8 convolutions. Printed as a warning and kept in the manifest.
RTX_INT8_CAVEAT = (
    "TensorRT-RTX documents INT8 only as weight-only quantization of GEMMs: the Q/DQ ONNX builds, but nothing "
    "promises INT8 convolutions or a speed-up over FP16 (the recommended TensorRT-RTX precision); measure it "
    "on the target GPU"
)


def engine_label(precision: str, version=None) -> str:
    """The precision as an engine's file name says it: ``int8qdq`` for a TensorRT-RTX engine built from an INT8 Q/DQ
    ONNX — built from INT8 Q/DQ, computing in what the library decides on the user's GPU (its manifest's
    ``compute_precision``) — else the precision itself."""
    if precision == "int8" and version is not None and trt_compat.is_rtx(version):
        return "int8qdq"
    return precision


def same_file(a: Path, b: Path) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return str(a) == str(b)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"build_engine.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def plan_build(
    precision: str,
    version,
    *,
    onnx_path: str | os.PathLike,
    fp32_onnx_path: str | os.PathLike,
    onnx_io: OnnxIO | None = None,
    int8_mode: str = "auto",
    high_precision: str = "fp16",
) -> BuildPlan:
    """Decide the precision path (see the module table). ``onnx_path`` is what the precision step produced
    (FP16 AutoCast or Q/DQ ONNX, or the FP32 ONNX itself); ``onnx_io`` describes it (read when None)."""
    check_precision(precision)
    v = trt_compat.TrtVersion(*version) if isinstance(version, tuple) else trt_compat.parse_version(version)
    trt_compat.require_supported(v)
    onnx_path, fp32_onnx_path = Path(onnx_path), Path(fp32_onnx_path)
    if precision == "fp32":
        return BuildPlan("fp32", fp32_onnx_path, explicit_batch=trt_compat.needs_explicit_batch_flag(v),
                         strongly_typed=trt_compat.always_strongly_typed(v))
    io = onnx_io if onnx_io is not None else inspect_onnx(onnx_path)
    converted = not same_file(onnx_path, fp32_onnx_path)
    if precision == "fp16":
        return _plan_fp16(v, onnx_path, fp32_onnx_path, io, converted)
    return _plan_int8(v, onnx_path, fp32_onnx_path, io, converted, int8_mode, high_precision)


def _release(v) -> str:
    return f"{trt_compat.FAMILIES[v.family].label} {v.major}.{v.minor}"


def _plan_fp16(v, onnx_path: Path, fp32_onnx_path: Path, io: OnnxIO, converted: bool) -> BuildPlan:
    rel, explicit = _release(v), trt_compat.needs_explicit_batch_flag(v)
    if io.has_fp16 and not converted:  # the given ONNX is FP16 already (converted elsewhere): its types rule
        if trt_compat.has_strongly_typed_flag(v):
            return BuildPlan("fp16", onnx_path, strongly_typed=True, explicit_batch=explicit,
                             notes=(f"{rel}: the FP16 ONNX as given, strongly typed",))
        return BuildPlan("fp16", onnx_path, flags=("FP16",), explicit_batch=explicit,
                         notes=(f"{rel}: the FP16 ONNX as given, FP16 builder flag",))
    if trt_compat.fp16_source(v) == "flag":
        return BuildPlan("fp16", fp32_onnx_path, flags=("FP16",), explicit_batch=explicit,
                         notes=(f"{rel}: FP16 builder flag on the FP32 ONNX",))
    if not converted or not io.has_fp16:
        hint = "no FP16 builder flag" if trt_compat.is_rtx(v) else "no FP16 builder flag since 11.0"
        raise UserError(f"{rel} builds FP16 only from an FP16 ONNX ({hint}): "
                        "let build.py make it with ModelOpt AutoCast (pip install -e .[quant])")
    return BuildPlan("fp16", onnx_path, strongly_typed=True, explicit_batch=explicit,
                     notes=(f"{rel}: AutoCast FP16 ONNX, strongly typed",))


def _plan_int8(v, onnx_path: Path, fp32_onnx_path: Path, io: OnnxIO, converted: bool, int8_mode: str,
               high_precision: str) -> BuildPlan:
    rel, explicit = _release(v), trt_compat.needs_explicit_batch_flag(v)
    have_qdq = io.has_qdq  # made by the precision step, or the given ONNX is Q/DQ already
    if have_qdq and not converted and trt_compat.resolve_int8_mode(int8_mode, v, have_qdq_onnx=True) != "qdq":
        raise UserError(f"{onnx_path} is already INT8 (Q/DQ nodes), which {rel} builds only as explicit "
                        "quantization: use EngineOptions.int8_mode='qdq' (TensorRT 10 or later, TensorRT-RTX); its "
                        "calibrator quantizes an FP32 ONNX")
    mode = trt_compat.resolve_int8_mode(int8_mode, v, have_qdq_onnx=have_qdq)
    if mode == "qdq":
        if not have_qdq:
            raise UserError(f"EngineOptions.int8_mode='qdq' needs the Q/DQ ONNX from the precision step (ModelOpt: "
                            f"pip install -e .[quant]); {onnx_path} has no QuantizeLinear/DequantizeLinear nodes")
        limit = trt_compat.max_onnx_opset(v)
        if limit is not None and io.opset > limit:
            raise UserError(f"{rel} reads ONNX opset ≤ {limit}; {onnx_path} is opset {io.opset}")
        return BuildPlan("int8", onnx_path, int8_mode="qdq", strongly_typed=True, explicit_batch=explicit,
                         notes=(f"{rel}: explicit quantization (Q/DQ ONNX), strongly typed",),
                         caveats=(RTX_INT8_CAVEAT,) if trt_compat.is_rtx(v) else ())
    flags = ("INT8",) if high_precision == "fp32" else ("INT8", "FP16")
    return BuildPlan("int8", fp32_onnx_path, int8_mode="calibrator", flags=flags, calibrator=True,
                     explicit_batch=explicit,
                     notes=(f"{rel}: implicit quantization, TensorRT entropy calibrator on the FP32 ONNX"
                            + (" (+FP16 for layers without INT8 kernels)" if "FP16" in flags else ""),))


def precision_onnx_needed(precision: str, int8_mode: str = "auto", version=None) -> bool:
    """Whether the engine step will build from the precision step's converted ONNX (AutoCast FP16 or Q/DQ),
    so the build knows whether to run that step. ``version=None`` (no TensorRT here): True for fp16 and for int8
    unless ``int8_mode="calibrator"`` — the converted ONNX is then what this machine can produce."""
    if precision == "fp32":
        return False
    if version is None:
        return precision == "fp16" or int8_mode != "calibrator"
    if precision == "fp16":
        return trt_compat.fp16_source(version) == "onnx"
    return trt_compat.resolve_int8_mode(int8_mode, version, have_qdq_onnx=None) == "qdq"
