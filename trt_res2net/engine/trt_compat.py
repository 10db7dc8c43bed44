"""Which TensorRT library is installed, and what it can do: every family- and release-dependent decision.

Two families build engines from the same ONNX with the same Python API:

- **TensorRT** (module ``tensorrt``): 8.6 = JetPack 6.0; 10.x = JetPack 6.1/6.2 and x86; 11.x = x86, strongly
  typed only. It builds for the GPU it runs on, so a build needs that GPU.
- **TensorRT for RTX** (module ``tensorrt_rtx``, 1.7): strongly typed like 11.x; builds ahead of time without a
  GPU, for a list of compute capabilities (8.0, 8.6, 8.9, 12.0 and later by default; 7.5 on request); not for
  Hopper or Jetson. Its kernels are compiled just in time on the user's GPU.

Every import of either module in the package goes through :func:`import_library`. The gates below are pure
functions of a :class:`TrtVersion`, which carries its family, so tests exercise them without either library;
the code that touches TensorRT asks them before using a family- or release-dependent name (and tests run it
against fake 8.6-, 10.x- and 11.x-like modules, and against the real ``tensorrt_rtx``).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

from ..core.errors import MissingDependency, UserError
from .rtx_targets import (  # noqa: F401  the TensorRT-RTX targets and plan header, asked of trt_compat too
    RTX_DOCUMENTED_DEFAULT_TARGETS,
    RTX_HEADER_LAYOUTS,
    RTX_PLAN_MAGIC,
    RTX_TARGET_EXAMPLES,
    RTX_TARGETS,
    RtxPlanHeader,
    cc_key,
    parse_compute_capabilities,
    read_rtx_plan_header,
    rtx_plan_header_problem,
    rtx_runs_on,
    rtx_targets_sentence,
)


class Family(NamedTuple):
    key: str  # what --engine-family and the manifest say
    module: str  # the Python module
    label: str  # for people
    oldest: tuple[int, int]  # the oldest release whose API this code is written for
    install: str  # what to install, for one-line messages


# (keywords: trt-api-check takes a call whose first argument is "tensorrt" for an import of the module)
TENSORRT = Family(
    key="tensorrt", module="tensorrt", label="TensorRT", oldest=(8, 6),
    install="TensorRT (pip install 'trt-res2net[trt]' on x86 with a driver for CUDA 12, '[trt-cu13]' for CUDA 13; "
            "JetPack's python3-libnvinfer on Jetson)",
)
TENSORRT_RTX = Family(
    key="tensorrt-rtx", module="tensorrt_rtx", label="TensorRT-RTX", oldest=(1, 7),
    install="TensorRT-RTX (pip install 'trt-res2net[rtx]': tensorrt-rtx-cu13 1.7, builds without a GPU)",
)
FAMILIES = {f.key: f for f in (TENSORRT, TENSORRT_RTX)}
FAMILY_CHOICES = ("auto", *FAMILIES)

# Kept for messages that concern standard TensorRT only (8.6/10.x/11.x paths).
INSTALL_HINT = f"install {TENSORRT.install}"


def family(key: str) -> Family:
    try:
        return FAMILIES[key]
    except KeyError:
        raise UserError(f"unknown engine family {key!r}: use one of {', '.join(FAMILY_CHOICES)}") from None


class TrtVersion(NamedTuple):
    major: int
    minor: int
    patch: int = 0
    build: int = 0
    family: str = TENSORRT.key

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def full(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}.{self.build}" if self.build else str(self)

    @property
    def label(self) -> str:
        """``TensorRT 10.3.0`` / ``TensorRT-RTX 1.7.1``."""
        return f"{FAMILIES[self.family].label} {self}"


def parse_version(text: str, family_key: str = TENSORRT.key) -> TrtVersion:
    """``"10.3.0.26"`` → TrtVersion(10, 3, 0, 26); also ``"8.6.1"``, ``"11.4.0.106"``, ``"10.13.3.post1"``;
    ``parse_version("1.7.1.116", "tensorrt-rtx")`` for TensorRT-RTX."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if not m:
        raise ValueError(f"not a TensorRT version: {text!r}")
    return TrtVersion(*(int(g) if g is not None else 0 for g in m.groups()), family=family(family_key).key)


def _fr(v) -> tuple[str, tuple[int, int]]:
    """(family, (major, minor)) of a TrtVersion, a (major, minor[, ...]) tuple or a version string; tuples and
    strings are standard TensorRT (a TensorRT-RTX version is always a TrtVersion)."""
    if isinstance(v, str):
        v = parse_version(v)
    fam = v.family if isinstance(v, TrtVersion) else TENSORRT.key
    return fam, (int(v[0]), int(v[1]))


def _trt(v) -> tuple[int, int] | None:
    """(major, minor) for standard TensorRT, None for TensorRT-RTX."""
    fam, rel = _fr(v)
    return rel if fam == TENSORRT.key else None


def is_rtx(v) -> bool:
    return _fr(v)[0] == TENSORRT_RTX.key


# --------------------------------------------------------------------------------------------------------
# Gates: pure functions of (family, release). Sources: docs/tensorrt.md, docs/tensorrt_rtx.md and the
# bindings' name lists (TensorRT 8.6.1 / 10.3.0 / 10.13.3 / 11.4.0; TensorRT-RTX 1.7.1 read from the module).


def is_supported(v) -> bool:
    fam, rel = _fr(v)
    return rel >= FAMILIES[fam].oldest


def needs_explicit_batch_flag(v) -> bool:
    """8.x: create_network(0) means implicit batch, which the ONNX parser refuses. 10.x ignores the flag;
    11.x and TensorRT-RTX have no NetworkDefinitionCreationFlag.EXPLICIT_BATCH."""
    rel = _trt(v)
    return rel is not None and rel[0] < 10


def has_strongly_typed_flag(v) -> bool:
    """NetworkDefinitionCreationFlag.STRONGLY_TYPED: added in 9.0 (absent from 8.6), ignored in 11.x; the only
    network flag TensorRT-RTX has."""
    rel = _trt(v)
    return rel is None or rel[0] >= 9


def always_strongly_typed(v) -> bool:
    """11.x and TensorRT-RTX: weak typing is gone; every network takes the precisions written in the ONNX."""
    rel = _trt(v)
    return rel is None or rel[0] >= 11


def has_precision_flags(v) -> bool:
    """BuilderFlag.FP16 / INT8: deprecated in 10.12, removed in 11.0, never in TensorRT-RTX."""
    rel = _trt(v)
    return rel is not None and rel[0] <= 10


def has_int8_calibrator(v) -> bool:
    """IInt8EntropyCalibrator2, IBuilderConfig.int8_calibrator, set_calibration_profile: deprecated in 10.1
    (still working through 10.x), removed in 11.0, never in TensorRT-RTX."""
    rel = _trt(v)
    return rel is not None and rel[0] <= 10


def has_progress_monitor(v) -> bool:
    """IProgressMonitor and IBuilderConfig.progress_monitor: added in 9.0 (absent from 8.6)."""
    rel = _trt(v)
    return rel is None or rel[0] >= 9


def has_builder_optimization_level(v) -> bool:
    """IBuilderConfig.builder_optimization_level: added in 8.6."""
    rel = _trt(v)
    return rel is None or rel >= (8, 6)


def has_dla(v) -> bool:
    """Deep-learning accelerators exist on Jetson only, which TensorRT-RTX does not target."""
    return _trt(v) is not None


def builds_without_gpu(v) -> bool:
    """TensorRT-RTX builds ahead of time on any machine; TensorRT builds for (and on) the GPU it runs on."""
    return is_rtx(v)


def has_compute_capability_targets(v) -> bool:
    """IBuilderConfig.num_compute_capabilities / set_compute_capability and trt.ComputeCapability (TensorRT-RTX):
    the GPUs an ahead-of-time engine runs on."""
    return is_rtx(v)


def has_runtime_cache(v) -> bool:
    """IRuntimeConfig with an IRuntimeCache for the kernels compiled just in time, a CUDA-graph strategy, and
    Runtime.get_engine_validity (TensorRT-RTX)."""
    return is_rtx(v)


def has_timing_cache(v) -> bool:
    """A timing cache speeds up TensorRT's tactic timing on the build GPU; TensorRT-RTX times nothing ahead of
    time (its runtime cache plays that role on the user's GPU)."""
    return not is_rtx(v)


def has_user_managed_context_memory(v) -> bool:
    """ExecutionContextAllocationStrategy.USER_MANAGED, IExecutionContext.set_device_memory and
    ICudaEngine.device_memory_size_v2 (10.x, 11.x, TensorRT-RTX); 8.6 has
    create_execution_context_without_device_memory, the device_memory attribute and device_memory_size instead."""
    rel = _trt(v)
    return rel is None or rel[0] >= 10


def has_v1_context_memory(v) -> bool:
    """create_execution_context_without_device_memory and ICudaEngine.device_memory_size: TensorRT 8.6 to 10.x."""
    rel = _trt(v)
    return rel is not None and rel[0] <= 10


def has_device_memory_attribute(v) -> bool:
    """IExecutionContext.device_memory (settable): TensorRT 8.6 and TensorRT-RTX, not 10.x or 11.x."""
    rel = _trt(v)
    return rel is None or rel[0] < 10


def max_onnx_opset(v) -> int | None:
    """Highest ONNX opset the bundled parser reads: 17 on 8.6 (so no opset-19 Q/DQ from ModelOpt);
    None = newer than anything this project writes."""
    rel = _trt(v)
    return 17 if rel is not None and rel[0] < 10 else None


def int8_modes(v) -> tuple[str, ...]:
    """INT8 paths this library can build, preferred first.

    8.6: only the calibrator (ModelOpt's Q/DQ ONNX is opset 19, beyond the 8.6 parser); 10.x: Q/DQ ONNX or
    the (deprecated, working) calibrator; 11.x and TensorRT-RTX: Q/DQ ONNX only (no calibrator classes)."""
    modes = []
    if max_onnx_opset(v) is None:
        modes.append("qdq")
    if has_int8_calibrator(v):
        modes.append("calibrator")
    return tuple(modes)


def fp16_source(v) -> str:
    """Where FP16 comes from: ``"flag"`` (BuilderFlag.FP16 on the FP32 ONNX, ≤ 10) or ``"onnx"`` (an FP16
    ONNX from ModelOpt AutoCast built strongly typed: 11.x and TensorRT-RTX)."""
    return "flag" if has_precision_flags(v) else "onnx"


# Every TensorRT name this project uses that only some releases (or only one family) have → the gate that
# guards it. tests/test_trt_compat.py checks that trt-api-check's "release-dependent" list (with --rtx) is
# covered by this table, and each gate against the fake releases and the real tensorrt_rtx module.
GATED_NAMES = {
    "EXPLICIT_BATCH": needs_explicit_batch_flag,
    "STRONGLY_TYPED": has_strongly_typed_flag,
    "FP16": has_precision_flags,
    "IInt8EntropyCalibrator2": has_int8_calibrator,
    "int8_calibrator": has_int8_calibrator,
    "set_calibration_profile": has_int8_calibrator,
    "IProgressMonitor": has_progress_monitor,
    "progress_monitor": has_progress_monitor,
    "ComputeCapability": has_compute_capability_targets,
    "num_compute_capabilities": has_compute_capability_targets,
    "set_compute_capability": has_compute_capability_targets,
    "get_engine_validity": has_runtime_cache,
    "engine_header_size": has_runtime_cache,
    "EngineValidity": has_runtime_cache,
    "create_runtime_config": has_runtime_cache,
    "create_runtime_cache": has_runtime_cache,
    "set_runtime_cache": has_runtime_cache,
    "get_runtime_cache": has_runtime_cache,
    "deserialize": has_runtime_cache,  # IRuntimeCache.deserialize
    "cuda_graph_strategy": has_runtime_cache,
    "CudaGraphStrategy": has_runtime_cache,
    "WHOLE_GRAPH_CAPTURE": has_runtime_cache,
    "VALID": has_runtime_cache,
    "SUBOPTIMAL": has_runtime_cache,
    "EngineInvalidityDiagnostics": has_runtime_cache,
    "is_stream_capturable": has_runtime_cache,
    "ExecutionContextAllocationStrategy": has_user_managed_context_memory,
    "USER_MANAGED": has_user_managed_context_memory,
    "set_device_memory": has_user_managed_context_memory,
    "device_memory_size_v2": has_user_managed_context_memory,
    "create_execution_context_without_device_memory": has_v1_context_memory,
    "device_memory_size": has_v1_context_memory,
    "device_memory": has_device_memory_attribute,
    "dynamic_shapes_kernel_specialization_strategy": has_runtime_cache,
    "DynamicShapesKernelSpecializationStrategy": has_runtime_cache,
}


# --------------------------------------------------------------------------------------------------------
# The installed library


@dataclass(frozen=True)
class Library:
    """An imported TensorRT module of either family, with its parsed version."""

    module: ModuleType
    version: TrtVersion

    @property
    def family(self) -> Family:
        return FAMILIES[self.version.family]

    @property
    def label(self) -> str:
        return self.version.label


def _import(fam: Family) -> ModuleType:
    return importlib.import_module(fam.module)


def _why(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else "not found"
    return f"{type(e).__name__}: {text}"


def import_library(family_key: str = "auto", what_was_written: str | None = None) -> Library:
    """The TensorRT library to build or run with: ``"tensorrt"``, ``"tensorrt-rtx"``, or ``"auto"``
    (TensorRT when importable, else TensorRT-RTX). MissingDependency (exit status 3) when it is not
    importable, saying what to install.

    ``what_was_written`` names what the build produced before it needed the library (e.g. the ONNX path),
    so that the one message says both what exists and what is missing.
    """
    head = f"wrote {what_was_written}; " if what_was_written else ""
    tail = "to build the engine" if what_was_written else "to build or run engines"
    candidates = list(FAMILIES.values()) if family_key == "auto" else [family(family_key)]
    reasons = []
    for fam in candidates:
        try:
            module = _import(fam)
        except (ImportError, OSError) as e:  # OSError: bindings present but their shared library missing
            reasons.append((fam, e))
            continue
        version = parse_version(getattr(module, "__version__", "0.0"), fam.key)
        require_supported(version)
        return Library(module, version)
    if len(reasons) == 1:
        fam, e = reasons[0]
        why = f"{fam.label} is not importable ({_why(e)})"
        raise MissingDependency(f"{head}{why}; {tail} install {fam.install}") from e
    raise MissingDependency(
        f"{head}neither TensorRT nor TensorRT-RTX is importable; {tail} install "
        + " or ".join(fam.install for fam, _ in reasons)
    )


def installed_version(family_key: str = "auto") -> TrtVersion | None:
    """The version of the library ``import_library(family_key)`` would pick, or None (no exception)."""
    try:
        return import_library(family_key).version
    except MissingDependency:
        return None


def require_supported(v) -> None:
    if not is_supported(v):
        fam, (major, minor) = _fr(v)
        f = FAMILIES[fam]
        hint = ("JetPack 5 / TensorRT 8.5 is out of scope; upgrade TensorRT (JetPack 6 on Jetson)"
                if f is TENSORRT else f"upgrade: {f.install}")
        raise UserError(f"{f.label} {major}.{minor} is older than the oldest supported release "
                        f"{f.oldest[0]}.{f.oldest[1]} ({hint})")


def resolve_int8_mode(requested: str, v, *, have_qdq_onnx: bool | None = None) -> str:
    """``EngineOptions.int8_mode`` (qdq, calibrator or auto) → the path this library takes, or UserError saying why not.

    ``auto``: the only path there is (8.6 → calibrator; 11.x, TensorRT-RTX → qdq); on 10.x, Q/DQ when a Q/DQ
    ONNX is at hand (``have_qdq_onnx``; None = not known yet, e.g. before the precision step, → qdq), else
    the calibrator, which needs no ModelOpt (the usual case on a Jetson).
    """
    modes = int8_modes(v)
    fam, (major, minor) = _fr(v)
    label = f"{FAMILIES[fam].label} {major}.{minor}"
    if requested == "auto":
        if len(modes) == 1:
            return modes[0]
        return "calibrator" if have_qdq_onnx is False else "qdq"
    if requested not in ("qdq", "calibrator"):
        raise UserError(f"EngineOptions.int8_mode must be qdq, calibrator or auto, not {requested!r}")
    if requested not in modes:
        if requested == "qdq":
            why = (f"{label}'s ONNX parser reads opset ≤ {max_onnx_opset(v)} and ModelOpt's Q/DQ ONNX is opset "
                   "19; use EngineOptions.int8_mode='calibrator' (or auto)")
        else:
            removed = "never had one" if fam == TENSORRT_RTX.key else "removed in 11.0"
            why = (f"{label} has no INT8 calibrator ({removed}); use EngineOptions.int8_mode='qdq' (or auto), "
                   "which needs the Q/DQ ONNX from ModelOpt (pip install -e .[quant])")
        raise UserError(why)
    return requested


def engine_family_of(path: str | Path) -> str:
    """``"tensorrt-rtx"`` for a file that starts like a TensorRT-RTX plan, else ``"tensorrt"``."""
    with open(path, "rb") as f:
        head = f.read(len(RTX_PLAN_MAGIC))
    return TENSORRT_RTX.key if head == RTX_PLAN_MAGIC else TENSORRT.key
