"""How FP16 / INT8 ONNX are made and judged, with every default stated once: :class:`PrecisionOptions`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import UserError
from ..data.calibration_set import CalibrationImages

PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("entropy", "max", "percentile")
HIGH_PRECISIONS = ("fp16", "fp32")
DEFAULT_HIGH_PRECISION = "fp16"
DEFAULT_EVAL_IMAGES = 500
MIN_QDQ_OPSET = 19  # ModelOpt's INT8 Q/DQ output (QuantizeLinear/DequantizeLinear of opset 19)
# Refusals the held-out set's loader (precision.accuracy) makes too
DATA_ROOT_ALONE = "PrecisionOptions.data_root goes with PrecisionOptions.eval_list=LIST"
TWO_HELD_OUT_SETS = ("pass either PrecisionOptions.eval_dir=DIR or PrecisionOptions.eval_list=LIST "
                      "PrecisionOptions.data_root=DIR, not both")


@dataclass(frozen=True)
class PrecisionOptions:
    """Options of ``trt_res2net.convert_precision``; build.py's precision flags map onto these.

    ``calibration``: the INT8 calibration images (a folder, how many, the sample's seed). ``calib_cache``: the
    calibration cache to reuse or write (default ``calib/<model>.<method>.cache``). ``high_precision``: what INT8
    leaves out (fp16 or fp32). Held-out images (``eval_dir``, or ``eval_list`` with ``data_root``) give the
    accuracy report against FP32; ``max_top1_drop`` (percentage points) turns it into a gate, and
    ``auto_fallback`` keeps the most sensitive layers out of INT8 until the gate holds.
    """

    calibration: CalibrationImages = field(default_factory=CalibrationImages)
    calib_method: str = "entropy"
    calib_percentile: float = 99.999
    calib_cache: Path | None = None
    high_precision: str = DEFAULT_HIGH_PRECISION
    eval_dir: Path | None = None
    eval_list: Path | None = None
    data_root: Path | None = None
    eval_images: int = DEFAULT_EVAL_IMAGES
    max_top1_drop: float | None = None
    auto_fallback: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("calib_cache", "eval_dir", "eval_list", "data_root"):
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else Path(value))
        if self.calib_method not in CALIB_METHODS:
            raise UserError(f"PrecisionOptions.calib_method must be one of {', '.join(CALIB_METHODS)}, not "
                            f"{self.calib_method!r}")
        if self.high_precision not in HIGH_PRECISIONS:
            raise UserError(f"PrecisionOptions.high_precision must be fp16 or fp32, not {self.high_precision!r}")
        if self.eval_images < 0:
            raise UserError(f"PrecisionOptions.eval_images must be 0 (all) or more, got {self.eval_images}")
        if not 0 < self.calib_percentile <= 100:
            raise UserError(f"PrecisionOptions.calib_percentile must be in (0, 100], got {self.calib_percentile}")
        if self.max_top1_drop is not None and self.max_top1_drop < 0:
            raise UserError(f"PrecisionOptions.max_top1_drop must be ≥ 0 percentage points, got {self.max_top1_drop}")
        if self.data_root and not self.eval_list:
            raise UserError(DATA_ROOT_ALONE)
        if self.eval_dir and self.eval_list:
            raise UserError(TWO_HELD_OUT_SETS)
        if self.max_top1_drop is not None and not self.has_held_out_images:
            raise UserError("PrecisionOptions.max_top1_drop needs held-out images: PrecisionOptions.eval_dir=DIR or "
                            "PrecisionOptions.eval_list=LIST PrecisionOptions.data_root=DIR")
        if self.auto_fallback and self.max_top1_drop is None:
            raise UserError("PrecisionOptions.auto_fallback needs a budget: PrecisionOptions.max_top1_drop=PP "
                            "(and held-out images)")

    @property
    def has_held_out_images(self) -> bool:
        return bool(self.eval_dir or self.eval_list)

    @property
    def method_tag(self) -> str:
        return f"percentile{self.calib_percentile:g}" if self.calib_method == "percentile" else self.calib_method


def check_precision_request(precision: str, options: PrecisionOptions) -> None:
    """What depends on the precision asked for."""
    if precision not in PRECISIONS:
        raise UserError(f"convert_precision.precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if options.auto_fallback and precision != "int8":
        raise UserError("PrecisionOptions.auto_fallback applies to convert_precision.precision='int8'")


def check_qdq_opset(precision: str, opset: int | None) -> None:
    """An opset asked for the export, which an INT8 Q/DQ ONNX cannot keep (it is written at opset 19)."""
    if precision == "int8" and opset is not None and opset < MIN_QDQ_OPSET:
        raise UserError(
            f"INT8 Q/DQ needs ONNX opset ≥ {MIN_QDQ_OPSET} (ModelOpt writes QuantizeLinear/DequantizeLinear "
            f"of opset 19), but ExportOptions.opset={opset} was asked; drop ExportOptions.opset (the Q/DQ ONNX is "
            f"written at {MIN_QDQ_OPSET}) or pass ExportOptions.opset={MIN_QDQ_OPSET}. TensorRT 8.6 (opset ≤ 17) "
            "calibrates the FP32 ONNX with its own calibrator instead"
        )
