"""ONNX → TensorRT engine, one code path for TensorRT 8.6, 10.x, 11.x and TensorRT-RTX 1.x, with the family and
release decisions in ``trt_res2net.engine.trt_compat``.

Precision paths (docs/tensorrt.md, docs/tensorrt_rtx.md):

============  ==========================================  =================================================
library       fp16                                        int8
============  ==========================================  =================================================
8.6           BuilderFlag.FP16 on the FP32 ONNX            entropy calibrator (+FP16) on the FP32 ONNX
10.x          BuilderFlag.FP16 on the FP32 ONNX            Q/DQ ONNX, strongly typed; or the calibrator
11.x          AutoCast FP16 ONNX (always strongly typed)  Q/DQ ONNX only
RTX 1.x       AutoCast FP16 ONNX (always strongly typed)  Q/DQ ONNX only (documented for weight-only GEMMs)
============  ==========================================  =================================================

TensorRT builds for the GPU of the building machine; TensorRT-RTX builds ahead of time, without a GPU, for a
list of compute capabilities (``--compute-capability``), and compiles its kernels on the user's GPU.

The build uses TensorRT's Python API directly rather than polygraphy's loaders: the version gates, the
calibration-cache checks and the progress reporting must be exercised by CPU tests against fake TensorRT
modules (and the real TensorRT-RTX builder), and polygraphy's ``Calibrator``/``CreateNetwork`` need a real
TensorRT even to be constructed. The library module comes from ``trt_compat.import_library``; ``import
trt_res2net.engine.builder`` stays light.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import MissingDependency, UserError
from . import trt_compat

if TYPE_CHECKING:  # the API the code below is written against (trt-api-check reads this import); at run time
    import tensorrt as trt  # noqa: F401  the module is trt_compat.import_library(...).module, of either family

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("auto", "qdq", "calibrator")
DEFAULT_MIN_BATCH, DEFAULT_OPT_BATCH, DEFAULT_MAX_BATCH = 1, 8, 32
DEFAULT_ENGINE_DIR = "engines"
LOG_LEVELS = ("error", "warning", "info", "verbose")
MiB = 1 << 20
GiB = 1 << 30


# ========================================================================================================
# Pure planning (no TensorRT): batch profiles, ONNX inspection, precision path, workspace, file names


@dataclass(frozen=True)
class BatchProfile:
    min: int
    opt: int
    max: int

    def shapes(self, chw: tuple[int, int, int]) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return tuple((b, *chw) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max


def resolve_batch_profile(
    *,
    batch: int | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    onnx_batch: int | None = None,
) -> BatchProfile:
    """``--batch N`` (a fixed-batch engine) or ``--min/--opt/--max-batch`` (one optimization profile);
    defaults 1/8/32. A fixed batch written in the ONNX file (``onnx_batch``) is the only batch there is."""
    ranged = {"--min-batch": min_batch, "--opt-batch": opt_batch, "--max-batch": max_batch}
    given = {k: v for k, v in ranged.items() if v is not None}
    for name, value in [("--batch", batch), *given.items()]:
        if value is not None and int(value) < 1:
            raise UserError(f"{name} must be ≥ 1, not {value}")
    if batch is not None and given:
        raise UserError(f"--batch and {', '.join(given)} exclude each other: --batch N builds a fixed "
                        "batch N")
    if onnx_batch is not None:
        asked = {b for b in [batch, *given.values()] if b is not None}
        if asked - {onnx_batch}:
            raise UserError(f"the ONNX has a fixed batch of {onnx_batch}, so the engine's batch is "
                            f"{onnx_batch}; drop the batch options or export the ONNX with a dynamic batch")
        return BatchProfile(onnx_batch, onnx_batch, onnx_batch)
    if batch is not None:
        return BatchProfile(batch, batch, batch)
    mn = min_batch or DEFAULT_MIN_BATCH
    mx = max_batch or max(DEFAULT_MAX_BATCH, opt_batch or 0, mn)
    opt = opt_batch or min(max(DEFAULT_OPT_BATCH, mn), mx)
    if not mn <= opt <= mx:
        raise UserError(f"batch profile needs min ≤ opt ≤ max, got --min-batch {mn} --opt-batch {opt} "
                        f"--max-batch {mx}")
    return BatchProfile(mn, opt, mx)


@dataclass(frozen=True)
class OnnxIO:
    """What the builder needs to know about a classification ONNX (ours, or a paddle2onnx export)."""

    input_name: str
    input_shape: tuple[int | None, ...]  # None = dynamic (symbolic) dimension
    output_name: str
    output_shape: tuple[int | None, ...]
    opset: int
    has_qdq: bool
    has_fp16: bool
    outputs_probabilities: bool = False  # the output comes out of a Softmax (PaddleClas-style export)

    @property
    def batch(self) -> int | None:
        return self.input_shape[0]

    def chw(self, default_hw: int) -> tuple[int, int, int]:
        c, h, w = self.input_shape[1:]
        return (c or 3, h or default_hw, w or default_hw)


def inspect_onnx(path: str | os.PathLike) -> OnnxIO:
    """Names, shapes (None for symbolic dims), opset and whether the graph is Q/DQ or FP16 — read from the
    file without its external weights. One NCHW input and one output, or UserError."""
    import onnx

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise UserError(f"ONNX file {path} not found") from None
    except Exception as e:  # onnx raises DecodeError and friends for a damaged file
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    g = model.graph
    init_names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in init_names]
    if len(inputs) != 1 or len(g.output) < 1:
        raise UserError(f"{path}: expected one image input and one output, found inputs "
                        f"{[i.name for i in inputs]} and outputs {[o.name for o in g.output]}")

    def dims(value_info) -> tuple[int | None, ...]:
        shape = value_info.type.tensor_type.shape
        return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim)

    in_shape, out_shape = dims(inputs[0]), dims(g.output[0])
    if len(in_shape) != 4:
        raise UserError(f"{path}: input {inputs[0].name!r} has shape {list(in_shape)}; an NCHW image input "
                        "[N, 3, H, W] is expected")
    elem = inputs[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise UserError(f"{path}: input {inputs[0].name!r} is {onnx.helper.tensor_dtype_to_string(elem)}; "
                        "float32 input is expected (an FP16 ONNX must keep float32 I/O: AutoCast "
                        "--keep_io_types)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops = {n.op_type for n in g.node}
    producer = next((n for n in g.node if g.output[0].name in n.output), None)
    has_fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in g.node
    )
    return OnnxIO(
        input_name=inputs[0].name,
        input_shape=in_shape,
        output_name=g.output[0].name,
        output_shape=out_shape,
        opset=int(opset),
        has_qdq=bool(ops & {"QuantizeLinear", "DequantizeLinear"}),
        has_fp16=has_fp16,
        outputs_probabilities=producer is not None and producer.op_type == "Softmax",
    )


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


def _same_file(a: Path, b: Path) -> bool:
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
    converted = not _same_file(onnx_path, fp32_onnx_path)
    explicit = trt_compat.needs_explicit_batch_flag(v)
    typed = trt_compat.always_strongly_typed(v)
    rel = f"{trt_compat.FAMILIES[v.family].label} {v.major}.{v.minor}"
    fp16_hint = ("no FP16 builder flag" if trt_compat.is_rtx(v) else "no FP16 builder flag since 11.0")

    if precision == "fp32":
        return BuildPlan("fp32", fp32_onnx_path, explicit_batch=explicit, strongly_typed=typed)

    if precision == "fp16":
        if trt_compat.fp16_source(v) == "flag":
            return BuildPlan("fp16", fp32_onnx_path, flags=("FP16",), explicit_batch=explicit,
                             notes=[f"{rel}: FP16 builder flag on the FP32 ONNX"])
        io = (onnx_io or inspect_onnx(onnx_path)) if converted else None
        if io is None or not io.has_fp16:
            raise UserError(f"{rel} builds FP16 only from an FP16 ONNX ({fp16_hint}): "
                            "let build.py make it with ModelOpt AutoCast (pip install -e .[quant])")
        return BuildPlan("fp16", onnx_path, strongly_typed=True, explicit_batch=explicit,
                         notes=[f"{rel}: AutoCast FP16 ONNX, strongly typed"])

    io = onnx_io if onnx_io is not None else inspect_onnx(onnx_path)
    have_qdq = converted and io.has_qdq
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
    so the build CLI knows whether to run that step. ``version=None`` (no TensorRT here): True for fp16 and
    for int8 unless ``--int8-mode calibrator`` — the converted ONNX is then what this machine can produce."""
    if precision == "fp32":
        return False
    if version is None:
        return precision == "fp16" or int8_mode != "calibrator"
    if precision == "fp16":
        return trt_compat.fp16_source(version) == "onnx"
    return trt_compat.resolve_int8_mode(int8_mode, version, have_qdq_onnx=None) == "qdq"


def default_workspace_bytes(free_bytes: int | None, total_bytes: int, integrated: bool) -> int:
    """Workspace limit when ``--workspace`` is not given: half the free device memory on a discrete GPU
    (capped at 16 GiB: more buys a Res2Net nothing), a quarter on a Jetson, whose GPU shares memory with the
    OS (capped at 4 GiB), and never below 256 MiB."""
    free = free_bytes if free_bytes is not None else total_bytes
    share, cap = (0.25, 4 * GiB) if integrated else (0.5, 16 * GiB)
    return int(max(256 * MiB, min(free * share, cap)))


def engine_path_for(model: str, precision: str, max_batch: int,
                    engine_dir: str | os.PathLike = DEFAULT_ENGINE_DIR, family: str = "tensorrt") -> Path:
    """``engines/<model>_<precision>_b<max>.engine``; a TensorRT-RTX engine ends ``.rtx.engine``, so that the
    file name tells the two families apart (neither runtime loads the other's plans)."""
    kind = ".rtx" if family == trt_compat.TENSORRT_RTX.key else ""
    return Path(engine_dir) / f"{model}_{precision}_b{max_batch}{kind}.engine"


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


def equivalent_commands(plan: BuildPlan, profile: BatchProfile, input_name: str, chw: tuple[int, int, int],
                        engine_path, *, workspace_bytes: int | None, dynamic: bool = True, calib_cache=None,
                        timing_cache=None, builder_opt_level: int | None = None, dla_core: int | None = None,
                        version=None, compute_capabilities=None) -> dict:
    """The trtexec and polygraphy command lines that build the same engine (recorded in the manifest, for a
    cross-check with NVIDIA's own tools). trtexec cannot calibrate from images: with the calibrator it reads
    the cache this build wrote (``--calib``). TensorRT-RTX: polygraphy switched to it by
    ``POLYGRAPHY_USE_TENSORRT_RTX=1``, with ``--compute-capabilities`` (the RTX wheels ship no trtexec)."""
    import shlex

    q = shlex.quote
    onnx_path, engine = q(str(plan.onnx_path)), q(str(engine_path))
    dims = [(b, *chw) for b in (profile.min, profile.opt, profile.max)]
    x = lambda d: "x".join(map(str, d))  # noqa: E731
    br = lambda d: "[" + ",".join(map(str, d)) + "]"  # noqa: E731
    rtx = version is not None and trt_compat.is_rtx(version)
    modern = version is not None and trt_compat.always_strongly_typed(version)

    t = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine}"]
    p = ["polygraphy", "convert", onnx_path, "--convert-to", "trt", "-o", engine, "--tf32"]
    # polygraphy turns TF32 off unless asked; TensorRT's default (and TensorRT-RTX's) is on
    if workspace_bytes:
        mib = max(1, int(workspace_bytes) // MiB)
        t.append(f"--memPoolSize=workspace:{mib}M")
        p += ["--pool-limit", f"workspace:{mib}M"]
    if dynamic:
        t += [q(f"--minShapes={input_name}:{x(dims[0])}"), q(f"--optShapes={input_name}:{x(dims[1])}"),
              q(f"--maxShapes={input_name}:{x(dims[2])}")]
        p += ["--trt-min-shapes", q(f"{input_name}:{br(dims[0])}"), "--trt-opt-shapes",
              q(f"{input_name}:{br(dims[1])}"), "--trt-max-shapes", q(f"{input_name}:{br(dims[2])}")]
    if "FP16" in plan.flags:
        t.append("--fp16")
        p.append("--fp16")
    if "INT8" in plan.flags:
        t += ["--int8"] + ([f"--calib={q(str(calib_cache))}"] if calib_cache else [])
        p += ["--int8"] + (["--calibration-cache", q(str(calib_cache))] if calib_cache else [])
    if plan.strongly_typed and not modern:
        t.append("--stronglyTyped")
        p.append("--strongly-typed")
    if builder_opt_level is not None:
        t.append(f"--builderOptimizationLevel={builder_opt_level}")
        p += ["--builder-optimization-level", str(builder_opt_level)]
    if timing_cache:
        t.append(f"--timingCacheFile={q(str(timing_cache))}")
        p += ["--load-timing-cache", q(str(timing_cache)), "--save-timing-cache", q(str(timing_cache))]
    if dla_core is not None:
        t += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
        p += ["--use-dla", "--allow-gpu-fallback"]
    if rtx:
        if compute_capabilities == ["current"]:
            p.append("--use-gpu")
        elif compute_capabilities:
            p += ["--compute-capabilities", *compute_capabilities]
        return {"polygraphy": "POLYGRAPHY_USE_TENSORRT_RTX=1 " + " ".join(p)}
    return {"trtexec": " ".join(t), "polygraphy": " ".join(p)}


# ========================================================================================================
# CLI options and the stage function build.py calls


def add_cli_arguments(parser) -> None:
    """The engine options of build.py (``--precision`` and ``--calib-*`` belong to the precision step)."""
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
    g.add_argument("--engine-dir", default=DEFAULT_ENGINE_DIR, metavar="DIR",
                   help="where engines go (default engines/)")
    g.add_argument("--save-engine", metavar="PATH",
                   help="engine path (default <engine-dir>/<model>_<precision>_b<max>.engine, "
                        "….rtx.engine for TensorRT-RTX)")
    g.add_argument("--trt-log", choices=LOG_LEVELS, default="warning",
                   help="TensorRT log level (default warning)")


@dataclass
class EngineOptions:
    profile_request: dict
    workspace_bytes: int | None
    timing_cache: Path | None
    dla_core: int | None
    builder_opt_level: int | None
    calib_batch: int
    calib_cache: Path | None
    log_level: str
    progress: bool
    family: str = "auto"
    compute_capabilities: list[str] | None = None  # TensorRT-RTX targets; None = the library's default
    calib_options: tuple[str, ...] = ()  # calibrator-only options the user gave (refused where none exists)

    @classmethod
    def from_args(cls, args) -> EngineOptions:
        from .calibrator import DEFAULT_CALIB_BATCH

        a = lambda name, default=None: getattr(args, name, default)  # noqa: E731
        workspace = a("workspace")
        if workspace is not None and workspace < 1:
            raise UserError(f"--workspace must be ≥ 1 MiB, not {workspace}")
        dla = a("dla_core")
        if dla is not None and dla < 0:
            raise UserError(f"--dla-core must be ≥ 0, not {dla}")
        ccs = a("compute_capability")
        return cls(
            profile_request={k: a(k) for k in ("batch", "min_batch", "opt_batch", "max_batch")},
            workspace_bytes=workspace * MiB if workspace else None,
            timing_cache=Path(a("timing_cache")) if a("timing_cache") else None,
            dla_core=dla,
            builder_opt_level=a("builder_opt_level"),
            calib_batch=a("calib_batch") or DEFAULT_CALIB_BATCH,
            calib_cache=Path(a("trt_calib_cache")) if a("trt_calib_cache") else None,
            log_level=a("trt_log", "warning") or "warning",
            progress=not (a("quiet", False) or a("no_progress", False)),
            family=a("engine_family", "auto") or "auto",
            compute_capabilities=trt_compat.parse_compute_capabilities(ccs) if ccs else None,
            calib_options=tuple(flag for flag, name in (("--calib-batch", "calib_batch"),
                                                        ("--trt-calib-cache", "trt_calib_cache"))
                                if a(name) is not None),
        )


def refuse_inapplicable_options(options: EngineOptions, version, precision: str, int8_mode: str = "auto") -> None:
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
        trt_compat.resolve_int8_mode(int8_mode, v)  # e.g. --int8-mode calibrator on TensorRT-RTX / 11.x
    if options.calib_options and not trt_compat.has_int8_calibrator(v):
        raise UserError(f"{' and '.join(options.calib_options)}: only for TensorRT's INT8 calibrator, which "
                        f"{label} {v.major}.{v.minor} does not have")


def _rtx_targets(options: EngineOptions, gpu, written: str) -> list[str] | None:
    """The compute capabilities to build for (None = the library's default), checked against this machine's
    GPU where ``current`` is asked for."""
    ccs = options.compute_capabilities
    if ccs != ["current"]:
        return ccs
    if gpu is None:
        raise MissingDependency(f"wrote {written}; --compute-capability current needs an NVIDIA GPU on this "
                                "machine; name the targets instead (e.g. --compute-capability 8.9)")
    cc = gpu.compute_capability
    if cc not in trt_compat.RTX_TARGETS and trt_compat.cc_key(cc) < trt_compat.cc_key("12.1"):
        raise UserError(f"this GPU ({gpu.name}, compute capability {cc}) is not a TensorRT-RTX target; build "
                        "with TensorRT (--engine-family tensorrt)")
    return ccs


def _gpu_for_build(version, device: int, written: str):
    """The GPU TensorRT builds for (MissingDependency, exit 3, without one); for TensorRT-RTX, which needs no
    GPU, this machine's GPU when there is one, else None."""
    from . import manifest as manifest_mod

    try:
        return manifest_mod.detect_gpu(device)
    except MissingDependency as e:
        if trt_compat.builds_without_gpu(version):
            return None
        raise MissingDependency(f"wrote {written}; {e}; to build the engine {trt_compat.INSTALL_HINT} "
                                "(or --engine-family tensorrt-rtx, which builds without a GPU)") from e


def run_engine_step(args, onnx_path: Path, model_name: str, precision: str, fp32_onnx_path: Path) -> Path:
    """Build the engine and its manifest; returns the engine path.

    Without the library (or, for TensorRT, without a GPU): MissingDependency (exit status 3) whose one line
    says which ONNX files were written and what to install to finish.
    """
    onnx_path, fp32_onnx_path = Path(onnx_path), Path(fp32_onnx_path)
    options = EngineOptions.from_args(args)
    if options.dla_core is not None and precision == "fp32":
        raise UserError("DLA runs FP16 or INT8 only: use --precision fp16 or int8 with --dla-core")
    resolve_batch_profile(**options.profile_request)  # usage errors are exit 2 even without TensorRT
    written = str(fp32_onnx_path)
    if not _same_file(onnx_path, fp32_onnx_path):
        written += f" and {onnx_path}"

    library = trt_compat.import_library(options.family, what_was_written=written)
    version = library.version
    int8_mode = getattr(args, "int8_mode", "auto") or "auto"
    refuse_inapplicable_options(options, version, precision, int8_mode)
    from . import manifest as manifest_mod

    gpu = _gpu_for_build(version, getattr(args, "device", 0) or 0, written)
    targets = _rtx_targets(options, gpu, written) if trt_compat.is_rtx(version) else None

    io_converted = inspect_onnx(onnx_path)
    plan = plan_build(precision, version, onnx_path=onnx_path, fp32_onnx_path=fp32_onnx_path,
                      onnx_io=io_converted, int8_mode=int8_mode,
                      high_precision=getattr(args, "high_precision", None) or "fp16")
    io = io_converted if _same_file(plan.onnx_path, onnx_path) else inspect_onnx(plan.onnx_path)
    if targets and "7.5" in targets:
        fp32 = fp32_gemm_nodes(plan.onnx_path)
        if fp32:
            raise UserError(f"TensorRT-RTX cannot compile FP32 GEMM for Turing (compute capability 7.5), and "
                            f"{plan.onnx_path} computes {fp32[0]!r} in FP32: build --precision fp16 for 7.5, or "
                            "leave 7.5 out of --compute-capability")
    profile = resolve_batch_profile(**options.profile_request, onnx_batch=io.batch)
    if options.workspace_bytes is None and gpu is not None:
        options.workspace_bytes = default_workspace_bytes(gpu.free_memory, gpu.total_memory, gpu.integrated)

    onnx_sha = _sha256(plan.onnx_path)
    calibration = None
    if plan.calibrator:
        from .calibrator import DEFAULT_CALIB_IMAGES, prepare_calibration

        calib_batch = options.calib_batch if io.batch is None else io.batch
        calibration = prepare_calibration(
            model=model_name, trt_version=version, onnx_sha256=onnx_sha, batch=calib_batch,
            calib_dir=getattr(args, "calib_dir", None),
            calib_images=getattr(args, "calib_images", None) or DEFAULT_CALIB_IMAGES,
            seed=getattr(args, "calib_seed", None) or 0, cache_path=options.calib_cache,
        )

    engine_path = Path(args.save_engine) if getattr(args, "save_engine", None) else engine_path_for(
        model_name, precision, profile.max, getattr(args, "engine_dir", None) or DEFAULT_ENGINE_DIR,
        family=version.family)
    for note in plan.notes:
        print(f"build: {note}", file=sys.stderr)
    for caveat in plan.caveats:
        print(f"warning: {caveat}", file=sys.stderr)
    result = build_engine(library, plan, io, profile, options, engine_path=engine_path, gpu=gpu,
                          targets=targets, calibration=calibration)

    manifest = manifest_mod.build_manifest(
        engine_path=engine_path, model=model_name, precision=precision, int8_mode=plan.int8_mode,
        engine_family=version.family, library_version=version.full, gpu=gpu,
        compute_capabilities=result.compute_capabilities, compute_capabilities_and_later=result.and_later,
        onnx_path=plan.onnx_path, onnx_sha256=onnx_sha,
        fp32_onnx_sha256=onnx_sha if _same_file(plan.onnx_path, fp32_onnx_path) else _sha256(fp32_onnx_path),
        io=result.io, outputs_probabilities=io.outputs_probabilities, profiles=result.profiles,
        build_options=result.build_options, caveats=plan.caveats,
        build_time_s=result.build_time_s, calibration=calibration.manifest() if calibration else None,
    )
    mpath = manifest_mod.write_manifest(engine_path, manifest)
    print(f"wrote {engine_path} ({_mib(engine_path)} MiB, built in {result.build_time_s:.1f}s) and {mpath}",
          file=sys.stderr)
    for tool, command in result.build_options["equivalent_commands"].items():  # to cross-check with NVIDIA's
        print(f"{tool} equivalent: {command}", file=sys.stderr)
    if trt_compat.is_rtx(version):
        print(f"{engine_path} is a TensorRT-RTX engine: it runs on GPUs of "
              f"{trt_compat.rtx_targets_sentence(result.compute_capabilities, result.and_later)}, with TensorRT-RTX "
              f"{version} and a driver for CUDA 13; its kernels are compiled on the first run there (kept in a "
              "runtime cache beside the engine). Data-center Hopper GPUs (H100, H200) and Jetson need standard "
              "TensorRT: install it there and rerun with --engine-family tensorrt", file=sys.stderr)
    return engine_path


def _sha256(path: Path) -> str:
    from .manifest import sha256_file

    return sha256_file(path)


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / MiB:.1f}"


# ========================================================================================================
# The build itself (TensorRT from here on)


@dataclass
class BuildResult:
    engine_path: Path
    build_time_s: float
    io: dict
    profiles: list[dict]
    build_options: dict
    compute_capabilities: list[str]  # what the engine runs on: the build GPU's, or TensorRT-RTX's targets
    and_later: bool = False  # TensorRT-RTX default targets: also GPUs newer than the newest listed


def _severity(trt, level: str):
    return {
        "error": trt.Logger.ERROR,
        "warning": trt.Logger.WARNING,
        "info": trt.Logger.INFO,
        "verbose": trt.Logger.VERBOSE,
    }[level]


def _builder_flag(trt, name: str, version):
    """BuilderFlag members by name, each behind the gate of the releases that have it."""
    if name in ("FP16", "INT8"):
        if not trt_compat.has_precision_flags(version):
            raise UserError(f"{version.label} has no BuilderFlag.{name} (strongly typed: precisions come "
                            "from the ONNX)")
        return trt.BuilderFlag.FP16 if name == "FP16" else trt.BuilderFlag.INT8
    if name == "GPU_FALLBACK":
        return trt.BuilderFlag.GPU_FALLBACK
    raise ValueError(f"unknown builder flag {name}")


def network_creation_flags(trt, plan: BuildPlan, version) -> int:
    """EXPLICIT_BATCH on 8.x (the ONNX parser needs it; 11.x no longer has the name); STRONGLY_TYPED on
    9.x/10.x for a pre-typed (AutoCast/Q/DQ) ONNX (11.x is always strongly typed)."""
    flags = 0
    if plan.explicit_batch and trt_compat.needs_explicit_batch_flag(version):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if (plan.strongly_typed and trt_compat.has_strongly_typed_flag(version)
            and not trt_compat.always_strongly_typed(version)):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def make_progress_monitor(trt, progress):
    """A ``trt.IProgressMonitor`` (9.0+) forwarding to a ``build_progress.BuildProgress``."""

    class _ProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.on_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return progress.on_step(phase_name, step)

        def phase_finish(self, phase_name):
            progress.on_finish(phase_name)

    return _ProgressMonitor()


def make_entropy_calibrator(trt, feed):
    """A ``trt.IInt8EntropyCalibrator2`` (8.6/10.x) forwarding to a ``trt_calibrator.CalibrationFeed``."""

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self):
            return feed.batch_size

        def get_batch(self, names):
            return feed.next_batch(names)

        def read_calibration_cache(self):
            return feed.read_cache()

        def write_calibration_cache(self, cache):
            feed.write_cache(bytes(memoryview(cache)))

    return _EntropyCalibrator()


def _dims(shape) -> list[int]:
    return [int(d) for d in shape]


def _dtype_name(dtype) -> str:
    return str(getattr(dtype, "name", dtype)).split(".")[-1].lower()


class TimingCacheFile:
    """``--timing-cache PATH`` plus ``PATH.json`` naming the TensorRT release and GPU it was measured on.

    TensorRT rejects or (with ignore_mismatch) silently misuses a timing cache from another device; a cache
    from another release or GPU is refused here with the difference named, instead of being overwritten.
    """

    def __init__(self, path: Path, trt_version: str, gpu_name: str, cc: str):
        self.path = Path(path)
        self.fields = {"tensorrt_version": str(trt_version), "gpu": gpu_name, "compute_capability": cc}

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def load(self) -> bytes:
        import json

        if not self.path.exists():
            return b""
        if self.sidecar.exists():
            try:
                made = json.loads(self.sidecar.read_text())
            except (OSError, ValueError):
                made = {}
            for field_name, value in self.fields.items():
                if made.get(field_name) != value:
                    raise UserError(f"timing cache {self.path} was measured with {field_name}="
                                    f"{made.get(field_name)!r}, this build has {value!r}: pass another "
                                    "--timing-cache path or delete it")
        return self.path.read_bytes()

    def save(self, data: bytes) -> None:
        from ..core.files import write_bytes, write_json

        write_bytes(self.path, data)
        write_json(self.sidecar, self.fields)


def _set_targets(trt, config, targets: list[str]) -> None:
    """TensorRT-RTX: build for these compute capabilities (``["current"]``: this machine's GPU)."""
    members = ["CURRENT"] if targets == ["current"] else [trt_compat.RTX_TARGETS[cc] for cc in targets]
    config.num_compute_capabilities = len(members)
    for index, member in enumerate(members):
        if config.set_compute_capability(getattr(trt.ComputeCapability, member), index) is False:
            raise UserError(f"TensorRT-RTX refused the build target {member}")


def build_engine(
    library: trt_compat.Library,
    plan: BuildPlan,
    io: OnnxIO,
    profile: BatchProfile,
    options: EngineOptions,
    *,
    engine_path: Path,
    gpu,
    targets: list[str] | None = None,
    calibration=None,
    device_buffer=None,
) -> BuildResult:
    """Parse ``plan.onnx_path``, configure, build, write the engine atomically. ``gpu`` is None for an
    ahead-of-time TensorRT-RTX build on a machine without one; ``targets`` are its compute capabilities (None =
    the library's default). ``device_buffer`` replaces the CUDA allocation of calibration batches (tests)."""
    from ..core.files import write_bytes
    from ..data.preprocess import SPEC
    from .progress import BuildProgress, Spinner

    trt = library.module
    version = library.version
    rtx = trt_compat.is_rtx(version)
    logger = trt.Logger(_severity(trt, options.log_level))
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(trt, plan, version))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no detail"
        raise UserError(f"{library.family.label}'s ONNX parser rejected {plan.onnx_path}: {errors}")
    if network.num_inputs != 1:
        raise UserError(f"{plan.onnx_path}: {library.family.label} sees {network.num_inputs} inputs; one image "
                        "input is expected")
    net_in, net_out = network.get_input(0), network.get_output(0)
    in_shape = _dims(net_in.shape)
    dynamic = any(d < 0 for d in in_shape)
    chw = io.chw(SPEC.crop_size)
    min_s, opt_s, max_s = profile.shapes(chw)

    config = builder.create_builder_config()
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_bytes))
    workspace = int(config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE))  # what the build really had
    if rtx and targets:
        _set_targets(trt, config, targets)
    for name in plan.flags:
        config.set_flag(_builder_flag(trt, name, version))
    profiles = [{"input": net_in.name, "min": list(min_s), "opt": list(opt_s), "max": list(max_s)}]
    if dynamic:
        opt_profile = builder.create_optimization_profile()
        opt_profile.set_shape(net_in.name, min_s, opt_s, max_s)
        config.add_optimization_profile(opt_profile)

    if options.builder_opt_level is not None:
        if not trt_compat.has_builder_optimization_level(version):
            raise UserError(f"{version.label} has no builder optimization level (added in 8.6)")
        config.builder_optimization_level = int(options.builder_opt_level)

    if options.dla_core is not None:
        available = int(builder.num_DLA_cores)
        if options.dla_core >= available:
            hint = "" if available else " (DLA exists on Jetson AGX/NX Orin and Xavier only)"
            raise UserError(f"--dla-core {options.dla_core}: this device has {available} DLA core(s){hint}")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options.dla_core)
        config.set_flag(_builder_flag(trt, "GPU_FALLBACK", version))

    timing = None
    if options.timing_cache is not None:
        timing = TimingCacheFile(options.timing_cache, str(version), gpu.name, gpu.compute_capability)
        cache = config.create_timing_cache(timing.load())
        if config.set_timing_cache(cache, False) is False:
            raise UserError(f"TensorRT refused timing cache {options.timing_cache} (made on another "
                            "device?): pass another --timing-cache path or delete it")

    feed = calibrator = None
    calib_shape = None
    if plan.calibrator:
        if calibration is None:
            raise ValueError("a calibrator plan needs a CalibrationSetup")
        if not trt_compat.has_int8_calibrator(version):
            raise UserError(f"{version.label} has no INT8 calibrator: use --int8-mode qdq")
        from .calibrator import CalibrationFeed

        calib_shape = (calibration.batch, *chw)
        kwargs = {"device_buffer": device_buffer} if device_buffer is not None else {}
        feed = CalibrationFeed(calibration, calib_shape, progress=options.progress, **kwargs)
        if dynamic:
            # The calibration profile is its own min = opt = max profile, not one of the engine's.
            calib_profile = builder.create_optimization_profile()
            calib_profile.set_shape(net_in.name, calib_shape, calib_shape, calib_shape)
            if config.set_calibration_profile(calib_profile) is False:
                raise UserError(f"TensorRT refused the calibration profile {list(calib_shape)}")
        calibrator = make_entropy_calibrator(trt, feed)  # referenced here until the build ends
        config.int8_calibrator = calibrator

    progress = BuildProgress(enabled=options.progress)
    use_monitor = trt_compat.has_progress_monitor(version)
    monitor = None
    if use_monitor:
        # pybind11 does not keep a Python subclass alive through the config: hold it until the build ends.
        monitor = make_progress_monitor(trt, progress)
        config.progress_monitor = monitor
    spinner = (contextlib.nullcontext() if use_monitor
               else Spinner(f"building {engine_path.name}", enabled=options.progress))

    mode = f", {plan.int8_mode}" if plan.int8_mode else ""
    if rtx:
        where = ("for " + ", ".join(targets) if targets else "for the library's default targets") + (
            f", on {gpu.name}" if gpu is not None else ", ahead of time (no GPU needed)")
    else:
        where = gpu.name
    print(f"build: {plan.onnx_path} → {engine_path} ({library.label}, {where}, {plan.precision}{mode}, "
          f"batch {profile.min}/{profile.opt}/{profile.max})", file=sys.stderr)
    started = time.perf_counter()
    try:
        with spinner:
            serialized = builder.build_serialized_network(network, config)
    finally:
        progress.close()
        if feed is not None:
            feed.close()
    build_time = time.perf_counter() - started
    del monitor, calibrator  # now TensorRT is done with them
    if feed is not None and feed.error is not None:
        err = feed.error
        raise err if isinstance(err, (UserError, KeyboardInterrupt)) else UserError(
            f"INT8 calibration failed: {type(err).__name__}: {err}") from err
    if serialized is None:
        if progress.cancelled:  # Ctrl-C during the build: TensorRT stopped it; nothing was written
            raise KeyboardInterrupt
        raise UserError(f"building the engine from {plan.onnx_path} failed ({library.family.label}'s log above "
                        "says why)")
    # A manifest left from an earlier build must not describe the new engine (the runtime would refuse a
    # mismatch anyway, by engine_sha256); the caller writes the new one.
    from .manifest import manifest_path_for

    manifest_path_for(engine_path).unlink(missing_ok=True)
    write_bytes(engine_path, memoryview(serialized))
    if rtx:
        header = trt_compat.read_rtx_plan_header(bytes(memoryview(serialized)[:64]))
        ccs, and_later = ((list(header.compute_capabilities), header.and_later) if header is not None
                          else (list(targets or []), not targets))
    else:
        ccs, and_later = [gpu.compute_capability], False
    if timing is not None:
        timing.save(bytes(memoryview(config.get_timing_cache().serialize())))

    io_doc = {
        "input": {"name": net_in.name, "shape": in_shape, "dtype": _dtype_name(net_in.dtype)},
        "output": {"name": net_out.name, "shape": _dims(net_out.shape), "dtype": _dtype_name(net_out.dtype)},
    }
    build_options = {
        "flags": list(plan.flags),
        "strongly_typed": plan.strongly_typed,
        "network_flags": network_creation_flags(trt, plan, version),
        "workspace_mib": workspace // MiB,
        "workspace_default": options.workspace_bytes is None,
        "compute_capabilities_requested": targets,
        "builder_opt_level": options.builder_opt_level,
        "timing_cache": str(options.timing_cache) if options.timing_cache else None,
        "dla_core": options.dla_core,
        "calibration_profile": list(calib_shape) if calib_shape else None,
        "progress": "monitor" if use_monitor else "spinner",
        "equivalent_commands": equivalent_commands(
            plan, profile, net_in.name, chw, engine_path, workspace_bytes=options.workspace_bytes, dynamic=dynamic,
            calib_cache=calibration.cache_path if calibration is not None else None,
            timing_cache=options.timing_cache, builder_opt_level=options.builder_opt_level,
            dla_core=options.dla_core, version=version, compute_capabilities=targets),
    }
    return BuildResult(engine_path=engine_path, build_time_s=build_time, io=io_doc, profiles=profiles,
                       build_options=build_options, compute_capabilities=ccs, and_later=and_later)
