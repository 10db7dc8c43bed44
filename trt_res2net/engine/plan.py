"""Pure planning of an engine build, no TensorRT: which ONNX to build from and how (the precision path per library
and release), which options the library refuses, the default workspace, the RTX targets.

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
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import MissingDependency, UserError
from ..model.contract import OnnxIO, inspect_onnx
from . import trt_compat
from .options import PRECISIONS, EngineOptions, GiB, MiB


@dataclass
class BuildPlan:
    """Which ONNX to build from and how, for one precision on one TensorRT release (of either family)."""

    precision: str
    onnx_path: Path
    int8_mode: str | None = None  # "qdq" | "calibrator" for int8
    flags: tuple[str, ...] = ()  # BuilderFlag names to set ("FP16", "INT8")
    strongly_typed: bool = False  # the network takes the precisions written in the ONNX
    explicit_batch: bool = False  # 8.x needs EXPLICIT_BATCH for ONNX
    calibrator: bool = False
    notes: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)  # warned about and recorded in the manifest


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
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    v = trt_compat.TrtVersion(*version) if isinstance(version, tuple) else trt_compat.parse_version(version)
    trt_compat.require_supported(v)
    onnx_path, fp32_onnx_path = Path(onnx_path), Path(fp32_onnx_path)
    converted = not same_file(onnx_path, fp32_onnx_path)
    explicit = trt_compat.needs_explicit_batch_flag(v)
    typed = trt_compat.always_strongly_typed(v)
    rel = f"{trt_compat.FAMILIES[v.family].label} {v.major}.{v.minor}"
    fp16_hint = ("no FP16 builder flag" if trt_compat.is_rtx(v) else "no FP16 builder flag since 11.0")

    if precision == "fp32":
        return BuildPlan("fp32", fp32_onnx_path, explicit_batch=explicit, strongly_typed=typed)

    if precision == "fp16":
        io = onnx_io or inspect_onnx(onnx_path)
        if io.has_fp16 and not converted:  # the given ONNX is FP16 already (converted elsewhere): its types rule
            if trt_compat.has_strongly_typed_flag(v):
                return BuildPlan("fp16", onnx_path, strongly_typed=True, explicit_batch=explicit,
                                 notes=[f"{rel}: the FP16 ONNX as given, strongly typed"])
            return BuildPlan("fp16", onnx_path, flags=("FP16",), explicit_batch=explicit,
                             notes=[f"{rel}: the FP16 ONNX as given, FP16 builder flag"])
        if trt_compat.fp16_source(v) == "flag":
            return BuildPlan("fp16", fp32_onnx_path, flags=("FP16",), explicit_batch=explicit,
                             notes=[f"{rel}: FP16 builder flag on the FP32 ONNX"])
        if not converted or not io.has_fp16:
            raise UserError(f"{rel} builds FP16 only from an FP16 ONNX ({fp16_hint}): "
                            "let build.py make it with ModelOpt AutoCast (pip install -e .[quant])")
        return BuildPlan("fp16", onnx_path, strongly_typed=True, explicit_batch=explicit,
                         notes=[f"{rel}: AutoCast FP16 ONNX, strongly typed"])

    io = onnx_io if onnx_io is not None else inspect_onnx(onnx_path)
    have_qdq = io.has_qdq  # made by the precision step, or the given ONNX is Q/DQ already
    if have_qdq and not converted and trt_compat.resolve_int8_mode(int8_mode, v, have_qdq_onnx=True) != "qdq":
        raise UserError(f"{onnx_path} is already INT8 (Q/DQ nodes), which {rel} builds only as explicit "
                        "quantization: use --int8-mode qdq (TensorRT 10 or later, TensorRT-RTX); its calibrator "
                        "quantizes an FP32 ONNX")
    mode = trt_compat.resolve_int8_mode(int8_mode, v, have_qdq_onnx=have_qdq)
    if mode == "qdq":
        if not have_qdq:
            raise UserError(f"--int8-mode qdq needs the Q/DQ ONNX from the precision step (ModelOpt: "
                            f"pip install -e .[quant]); {onnx_path} has no QuantizeLinear/DequantizeLinear "
                            "nodes")
        limit = trt_compat.max_onnx_opset(v)
        if limit is not None and io.opset > limit:
            raise UserError(f"{rel} reads ONNX opset ≤ {limit}; {onnx_path} is opset {io.opset}")
        return BuildPlan("int8", onnx_path, int8_mode="qdq", strongly_typed=True, explicit_batch=explicit,
                         notes=[f"{rel}: explicit quantization (Q/DQ ONNX), strongly typed"],
                         caveats=[RTX_INT8_CAVEAT] if trt_compat.is_rtx(v) else [])
    flags = ("INT8",) if high_precision == "fp32" else ("INT8", "FP16")
    return BuildPlan("int8", fp32_onnx_path, int8_mode="calibrator", flags=flags, calibrator=True,
                     explicit_batch=explicit,
                     notes=[f"{rel}: implicit quantization, TensorRT entropy calibrator on the FP32 ONNX"
                            + (" (+FP16 for layers without INT8 kernels)" if "FP16" in flags else "")])


def precision_onnx_needed(precision: str, int8_mode: str = "auto", version=None) -> bool:
    """Whether the engine step will build from the precision step's converted ONNX (AutoCast FP16 or Q/DQ),
    so the build knows whether to run that step. ``version=None`` (no TensorRT here): True for fp16 and for int8
    unless ``--int8-mode calibrator`` — the converted ONNX is then what this machine can produce."""
    if precision == "fp32":
        return False
    if version is None:
        return precision == "fp16" or int8_mode != "calibrator"
    if precision == "fp16":
        return trt_compat.fp16_source(version) == "onnx"
    return trt_compat.resolve_int8_mode(int8_mode, version, have_qdq_onnx=None) == "qdq"


def check_engine_request(options: EngineOptions, precision: str) -> None:
    """What can be refused without knowing the library: the precision, DLA in FP32, the batch profile."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if options.dla_core is not None and precision == "fp32":
        raise UserError("DLA runs FP16 or INT8 only: use --precision fp16 or int8 with --dla-core")
    options.batch_profile()


def refuse_inapplicable_options(options: EngineOptions, version, precision: str) -> None:
    """One line for an option that means nothing to the library that will build (checked before any work)."""
    v = version
    label = trt_compat.FAMILIES[v.family].label
    if options.dla_core is not None and not trt_compat.has_dla(v):
        raise UserError(f"--dla-core: {label} has no DLA (DLA cores exist on Jetson, which needs TensorRT: "
                        "--engine-family tensorrt)")
    if options.timing_cache is not None and not trt_compat.has_timing_cache(v):
        raise UserError(f"--timing-cache: {label} times no tactics ahead of time (its runtime cache beside "
                        "the engine keeps the kernels compiled on the user's GPU); drop the option")
    if options.compute_capabilities and not trt_compat.has_compute_capability_targets(v):
        raise UserError(f"--compute-capability is for TensorRT-RTX engines; {label} builds for this machine's "
                        "GPU (use --engine-family tensorrt-rtx for an engine that runs on a list of GPUs)")
    if precision == "int8":
        trt_compat.resolve_int8_mode(options.int8_mode, v)  # e.g. --int8-mode calibrator on TensorRT-RTX / 11.x
    given = options.calibrator_options_given
    if given and not trt_compat.has_int8_calibrator(v):
        raise UserError(f"{' and '.join(given)}: only for TensorRT's INT8 calibrator, which "
                        f"{label} {v.major}.{v.minor} does not have")


def rtx_targets(options: EngineOptions, gpu, written: str | None = None, why: str | None = None) -> list[str] | None:
    """The compute capabilities to build for (None = the library's default), checked against this machine's GPU
    where ``current`` is asked for (``written``: what the run wrote before; ``why``: why there is no GPU)."""
    ccs = list(options.compute_capabilities) if options.compute_capabilities else None
    if ccs != ["current"]:
        return ccs
    if gpu is None:
        head = f"wrote {written}; " if written else ""
        because = f" ({why})" if why else ""
        raise MissingDependency(f"{head}--compute-capability current needs an NVIDIA GPU on this "
                                f"machine{because}; name the targets instead (e.g. --compute-capability 8.9)")
    cc = gpu.cc
    if cc not in trt_compat.RTX_TARGETS and trt_compat.cc_key(cc) < trt_compat.cc_key("12.1"):
        raise UserError(f"this GPU ({gpu.name}, compute capability {cc}) is not a TensorRT-RTX target; build "
                        "with TensorRT (--engine-family tensorrt)")
    return ccs


def check_targets_early(options: EngineOptions, version, precision: str, *, onnx_path=None,
                        zoo_model: bool = False) -> None:
    """TensorRT-RTX targets that cannot work, refused before any long work: ``current`` without a GPU here, and
    Turing (7.5) for an FP32 classifier head (its FP32 GEMM does not compile there) — a zoo model's always is."""
    if not trt_compat.is_rtx(version) or not options.compute_capabilities:
        return
    targets = list(options.compute_capabilities)
    if targets == ["current"]:
        from ..cuda.device import detect_gpu

        try:
            gpu = detect_gpu(options.device)
        except MissingDependency as e:
            rtx_targets(options, None, why=str(e))
        else:
            rtx_targets(options, gpu)
        return
    if "7.5" in targets and precision == "fp32":
        gemm = fp32_gemm_nodes(onnx_path) if onnx_path else []
        detail = ("the zoo model computes its classifier head (Gemm) in FP32" if zoo_model
                  else f"{onnx_path} computes {gemm[0]!r} in FP32" if gemm else None)
        if detail:
            raise UserError(f"TensorRT-RTX cannot compile FP32 GEMM for Turing (compute capability 7.5), and "
                            f"{detail}: build --precision fp16 for 7.5, or leave 7.5 out of --compute-capability")


def default_workspace_bytes(free_bytes: int | None, total_bytes: int, integrated: bool) -> int:
    """Workspace limit when ``--workspace`` is not given: half the free device memory on a discrete GPU
    (capped at 16 GiB: more buys a Res2Net nothing), a quarter on a Jetson, whose GPU shares memory with the
    OS (capped at 4 GiB), and never below 256 MiB."""
    free = free_bytes if free_bytes is not None else total_bytes
    share, cap = (0.25, 4 * GiB) if integrated else (0.5, 16 * GiB)
    return int(max(256 * MiB, min(free * share, cap)))


def fp32_gemm_nodes(path: str | os.PathLike) -> list[str]:
    """Names of the Gemm/MatMul nodes that compute in float32 (types from ONNX shape inference): TensorRT-RTX
    cannot compile those for Turing (compute capability 7.5)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an exotic graph: let the builder decide
        return []
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return [n.name or n.output[0] for n in g.node
            if n.op_type in ("Gemm", "MatMul") and types.get(n.input[0]) == onnx.TensorProto.FLOAT]
