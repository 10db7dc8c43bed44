"""What an engine build may be asked for, with every default stated once: :class:`EngineOptions`, and the batch
profile it resolves to (:class:`BatchProfile`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..data.calibration_set import CalibrationImages
from .rtx_targets import parse_compute_capabilities

PRECISIONS = ("fp32", "fp16", "int8")
INT8_MODES = ("auto", "qdq", "calibrator")
HIGH_PRECISIONS = ("fp16", "fp32")
LOG_LEVELS = ("error", "warning", "info", "verbose")
DEFAULT_MIN_BATCH, DEFAULT_OPT_BATCH, DEFAULT_MAX_BATCH = 1, 8, 32
DEFAULT_ENGINE_DIR = Path("engines")
DEFAULT_CALIB_BATCH = 8  # images per batch of TensorRT's INT8 calibrator
MiB = 1 << 20
GiB = 1 << 30


def _optional_path(value) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class EngineOptions:
    """How to build an engine from an ONNX (``trt_res2net.build_engine``); build.py's engine flags map onto these.

    ``family``: ``"auto"`` (TensorRT when importable, else TensorRT-RTX), ``"tensorrt"`` or ``"tensorrt-rtx"``.
    ``compute_capabilities``: TensorRT-RTX targets such as ``("8.6", "8.9")`` or ``("current",)``; None = the
    library's portable default. ``batch`` fixes the batch; else ``min/opt/max_batch`` make one profile (defaults
    1/8/32). ``workspace_mib`` None = half the free GPU memory (a quarter on Jetson), or TensorRT-RTX's own default
    without a GPU. ``calibration`` and the ``calib_*`` fields feed TensorRT's own INT8 calibrator
    (``int8_mode="calibrator"``, 8.6 and 10.x); ModelOpt's Q/DQ path takes its images from
    :class:`~trt_res2net.precision.options.PrecisionOptions` (build.py gives both the same images).
    """

    family: str = "auto"
    int8_mode: str = "auto"
    high_precision: str = "fp16"  # what the calibrator path leaves out of INT8 (BuilderFlag.FP16 or not)
    compute_capabilities: tuple[str, ...] | str | None = None
    batch: int | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    builder_opt_level: int | None = None
    calibration: CalibrationImages = field(default_factory=CalibrationImages)
    calib_batch: int | None = None  # None: DEFAULT_CALIB_BATCH (a fixed-batch ONNX calibrates at its own batch)
    calib_cache: Path | None = None  # TensorRT's cache; None: calib/<model>.trt<version>.cache
    engine_dir: Path = DEFAULT_ENGINE_DIR
    engine_path: Path | None = None  # None: <engine_dir>/<model>_<precision>_b<max>[.rtx].engine
    device: int = 0
    log_level: str = "warning"
    progress: bool = True

    def __post_init__(self):
        for name in ("timing_cache", "calib_cache", "engine_path"):
            object.__setattr__(self, name, _optional_path(getattr(self, name)))
        object.__setattr__(self, "engine_dir", Path(self.engine_dir))
        if self.compute_capabilities is not None:  # "8.6,8.9" or ("8.6", "8.9"): checked, sorted, "current" alone
            ccs = self.compute_capabilities
            text = ccs if isinstance(ccs, str) else ",".join(map(str, ccs))
            object.__setattr__(self, "compute_capabilities", tuple(parse_compute_capabilities(text)))
        if self.int8_mode not in INT8_MODES:
            raise UserError(f"EngineOptions.int8_mode must be one of {', '.join(INT8_MODES)}, not {self.int8_mode!r}")
        if self.high_precision not in HIGH_PRECISIONS:
            raise UserError(f"EngineOptions.high_precision must be fp16 or fp32, not {self.high_precision!r}")
        if self.log_level not in LOG_LEVELS:
            raise UserError(f"EngineOptions.log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.workspace_mib is not None and self.workspace_mib < 1:
            raise UserError(f"EngineOptions.workspace_mib must be ≥ 1 MiB, not {self.workspace_mib}")
        if self.dla_core is not None and self.dla_core < 0:
            raise UserError(f"EngineOptions.dla_core must be ≥ 0, not {self.dla_core}")

    @property
    def workspace_bytes(self) -> int | None:
        return None if self.workspace_mib is None else int(self.workspace_mib) * MiB

    @property
    def calibrator_batch(self) -> int:
        return self.calib_batch or DEFAULT_CALIB_BATCH

    @property
    def calibrator_options_given(self) -> tuple[str, ...]:
        """The options that only TensorRT's INT8 calibrator reads, as their fields (refused where none exists)."""
        given = (("EngineOptions.calib_batch", self.calib_batch), ("EngineOptions.calib_cache", self.calib_cache))
        return tuple(flag for flag, value in given if value is not None)

    def batch_profile(self, onnx_batch: int | None = None) -> BatchProfile:
        return resolve_batch_profile(batch=self.batch, min_batch=self.min_batch, opt_batch=self.opt_batch,
                                     max_batch=self.max_batch, onnx_batch=onnx_batch)


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
    """``batch`` (a fixed-batch engine) or ``min/opt/max_batch`` (one optimization profile);
    defaults 1/8/32. A fixed batch written in the ONNX file (``onnx_batch``) is the only batch there is."""
    ranged = {"EngineOptions.min_batch": min_batch, "EngineOptions.opt_batch": opt_batch,
              "EngineOptions.max_batch": max_batch}
    given = {k: v for k, v in ranged.items() if v is not None}
    for name, value in [("EngineOptions.batch", batch), *given.items()]:
        if value is not None and int(value) < 1:
            raise UserError(f"{name} must be ≥ 1, not {value}")
    if batch is not None and given:
        raise UserError(f"EngineOptions.batch and {', '.join(given)} exclude each other: EngineOptions.batch=N "
                        "builds a fixed batch N")
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
        raise UserError(f"batch profile needs min ≤ opt ≤ max, got EngineOptions.min_batch={mn} "
                        f"EngineOptions.opt_batch={opt} EngineOptions.max_batch={mx}")
    return BatchProfile(mn, opt, mx)


def engine_path_for(model: str, precision: str, max_batch: int,
                    engine_dir: str | os.PathLike = DEFAULT_ENGINE_DIR, family: str = "tensorrt") -> Path:
    """``engines/<model>_<precision>_b<max>.engine``; a TensorRT-RTX engine ends ``.rtx.engine``, so that the
    file name tells the two families apart (neither runtime loads the other's plans)."""
    kind = ".rtx" if family == "tensorrt-rtx" else ""
    return Path(engine_dir) / f"{model}_{precision}_b{max_batch}{kind}.engine"
