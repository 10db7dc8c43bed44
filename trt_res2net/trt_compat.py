"""Which TensorRT is installed, and what it can do: every release-dependent decision lives here.

TensorRT cannot be installed on the machines this project is developed on, so the engine layer is written
against the documented API of each supported release (8.6 = JetPack 6.0; 10.x = JetPack 6.1/6.2 and x86;
11.x = x86, strongly typed only) and checked with ``../shared/tools/trt-api-check``. The gates below are
pure functions of ``(major, minor)`` so that tests exercise them without TensorRT; the code that touches
TensorRT asks them before using a release-dependent name (and tests run that code against fake 8.6-, 10.x-
and 11.x-like modules that lack exactly what those releases lack).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .errors import MissingDependency, UserError

INSTALL_HINT = (
    "install TensorRT: pip install tensorrt (x86) / JetPack's python3-libnvinfer (Jetson), "
    "plus cuda-python, on a machine with an NVIDIA GPU"
)

# The oldest release whose API this code is written for (JetPack 5's 8.5 lacks builder_optimization_level,
# the name-based I/O API is incomplete there, and its Python is 3.8).
OLDEST_SUPPORTED = (8, 6)


class TrtVersion(NamedTuple):
    major: int
    minor: int
    patch: int = 0
    build: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def full(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}.{self.build}" if self.build else str(self)

    def release(self) -> tuple[int, int]:
        return self.major, self.minor


def parse_version(text: str) -> TrtVersion:
    """``"10.3.0.26"`` → TrtVersion(10, 3, 0, 26); also ``"8.6.1"``, ``"11.4.0.106"``, ``"10.13.3.post1"``."""
    m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if not m:
        raise ValueError(f"not a TensorRT version: {text!r}")
    return TrtVersion(*(int(g) if g is not None else 0 for g in m.groups()))


def _rel(v) -> tuple[int, int]:
    """Accept a TrtVersion, a (major, minor[, ...]) tuple or a version string."""
    if isinstance(v, str):
        v = parse_version(v)
    return int(v[0]), int(v[1])


# --------------------------------------------------------------------------------------------------------
# Version gates: pure functions of (major, minor). Sources: docs/tensorrt.md and the bindings name lists.


def is_supported(v) -> bool:
    return _rel(v) >= OLDEST_SUPPORTED


def needs_explicit_batch_flag(v) -> bool:
    """8.x: create_network(0) means implicit batch, which the ONNX parser refuses. 10.x ignores the flag;
    11.x removed NetworkDefinitionCreationFlag.EXPLICIT_BATCH."""
    return _rel(v)[0] < 10


def has_strongly_typed_flag(v) -> bool:
    """NetworkDefinitionCreationFlag.STRONGLY_TYPED: added in 9.0 (absent from 8.6), ignored in 11.x."""
    return _rel(v)[0] >= 9


def always_strongly_typed(v) -> bool:
    """11.x: weak typing is gone; every network takes the precisions written in the ONNX."""
    return _rel(v)[0] >= 11


def has_precision_flags(v) -> bool:
    """BuilderFlag.FP16 / INT8: deprecated in 10.12, removed in 11.0."""
    return _rel(v)[0] <= 10


def has_int8_calibrator(v) -> bool:
    """IInt8EntropyCalibrator2, IBuilderConfig.int8_calibrator, set_calibration_profile: deprecated in 10.1
    (still working through 10.x), removed in 11.0."""
    return _rel(v)[0] <= 10


def has_progress_monitor(v) -> bool:
    """IProgressMonitor and IBuilderConfig.progress_monitor: added in 9.0 (absent from 8.6)."""
    return _rel(v)[0] >= 9


def has_builder_optimization_level(v) -> bool:
    """IBuilderConfig.builder_optimization_level: added in 8.6."""
    return _rel(v) >= (8, 6)


def has_device_memory_size_v2(v) -> bool:
    """ICudaEngine.device_memory_size_v2 (added in 10.1); device_memory_size was removed in 11.0."""
    return _rel(v) >= (10, 1)


def max_onnx_opset(v) -> int | None:
    """Highest ONNX opset the bundled parser reads: 17 on 8.6 (so no opset-19 Q/DQ from ModelOpt);
    None = newer than anything this project writes."""
    return 17 if _rel(v)[0] < 10 else None


def int8_modes(v) -> tuple[str, ...]:
    """INT8 paths this TensorRT can build, preferred first.

    8.6: only the calibrator (ModelOpt's Q/DQ ONNX is opset 19, beyond the 8.6 parser); 10.x: Q/DQ ONNX or
    the (deprecated, working) calibrator; 11.x: Q/DQ ONNX only (no calibrator classes any more)."""
    modes = []
    if max_onnx_opset(v) is None:
        modes.append("qdq")
    if has_int8_calibrator(v):
        modes.append("calibrator")
    return tuple(modes)


def fp16_source(v) -> str:
    """Where FP16 comes from: ``"flag"`` (BuilderFlag.FP16 on the FP32 ONNX, ≤ 10) or ``"onnx"`` (an FP16
    ONNX from ModelOpt AutoCast built strongly typed, 11.x)."""
    return "flag" if has_precision_flags(v) else "onnx"


# Every TensorRT name this project uses that only some releases have → the gate that guards it.
# tests/test_trt_compat.py checks that trt-api-check's "release-dependent" list is covered by this table.
GATED_NAMES = {
    "EXPLICIT_BATCH": needs_explicit_batch_flag,
    "STRONGLY_TYPED": has_strongly_typed_flag,
    "FP16": has_precision_flags,
    "IInt8EntropyCalibrator2": has_int8_calibrator,
    "int8_calibrator": has_int8_calibrator,
    "set_calibration_profile": has_int8_calibrator,
    "IProgressMonitor": has_progress_monitor,
    "progress_monitor": has_progress_monitor,
    "device_memory_size_v2": has_device_memory_size_v2,
    "device_memory_size": lambda v: not has_device_memory_size_v2(v),
}


# --------------------------------------------------------------------------------------------------------
# The installed TensorRT


def import_tensorrt(what_was_written: str | None = None):
    """``import tensorrt``, or MissingDependency (exit status 3) saying what to install.

    ``what_was_written`` names what the build produced before it needed TensorRT (e.g. the ONNX path),
    so that the one message says both what exists and what is missing.
    """
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: bindings present but libnvinfer missing
        reason = f" ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'not found'})"
        why = "TensorRT is not importable" + reason
        raise MissingDependency(_missing_message(what_was_written, why)) from e
    return trt


def _missing_message(what_was_written: str | None, why: str) -> str:
    head = f"wrote {what_was_written}; " if what_was_written else ""
    return f"{head}{why}; to build the engine {INSTALL_HINT}"


def version_of(trt) -> TrtVersion:
    return parse_version(getattr(trt, "__version__", "0.0"))


def installed_version() -> TrtVersion | None:
    """The installed TensorRT's version, or None where it cannot be imported (no exception)."""
    try:
        trt = import_tensorrt()
    except MissingDependency:
        return None
    return version_of(trt)


def require_supported(v) -> None:
    if not is_supported(v):
        major, minor = _rel(v)
        raise UserError(
            f"TensorRT {major}.{minor} is older than the oldest supported release "
            f"{OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]} (JetPack 5 / TensorRT 8.5 is out of scope); "
            "upgrade TensorRT (JetPack 6 on Jetson)"
        )


def resolve_int8_mode(requested: str, v, *, have_qdq_onnx: bool | None = None) -> str:
    """``--int8-mode qdq|calibrator|auto`` → the path this TensorRT takes, or UserError saying why not.

    ``auto``: the only path there is (8.6 → calibrator, 11.x → qdq); on 10.x, Q/DQ when a Q/DQ ONNX is at
    hand (``have_qdq_onnx``; None = not known yet, e.g. before the precision step, → qdq), else the
    calibrator, which needs no ModelOpt (the usual case on a Jetson).
    """
    modes = int8_modes(v)
    major, minor = _rel(v)
    if requested == "auto":
        if len(modes) == 1:
            return modes[0]
        return "calibrator" if have_qdq_onnx is False else "qdq"
    if requested not in ("qdq", "calibrator"):
        raise UserError(f"--int8-mode must be qdq, calibrator or auto, not {requested!r}")
    if requested not in modes:
        if requested == "qdq":
            why = (f"TensorRT {major}.{minor}'s ONNX parser reads opset ≤ {max_onnx_opset(v)} and ModelOpt's "
                   "Q/DQ ONNX is opset 19; use --int8-mode calibrator (or auto)")
        else:
            why = (f"TensorRT {major}.{minor} has no INT8 calibrator (removed in 11.0); use --int8-mode qdq "
                   "(or auto), which needs the Q/DQ ONNX from ModelOpt (pip install -e .[quant])")
        raise UserError(why)
    return requested
