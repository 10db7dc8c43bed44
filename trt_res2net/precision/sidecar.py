"""The precision sidecar ``<onnx>.json``: what a converted ONNX was made from and how — its
``quantization_source``, the calibration behind an INT8 one, the layers kept out of INT8, the accuracy report —
written beside it as one unit (``convert._publish``) and read by the engine stage (:func:`read_precision_sidecar`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from ..core.artifact import check_format, header
from ..core.errors import UserError
from .calib_cache import CacheKey

ONNX_SIDECAR_FORMAT = "trt_res2net.precision-onnx"

# The keys each precision's sidecar has, in the order written (the key names of the first release).
_COMMON = ("precision", "model", "quantization_source", "source_onnx", "source_onnx_sha256")
_KEYS = {
    "fp16": (*_COMMON, "tool", "tools", "autocast_reference", "calibration_synthetic", "accuracy"),
    "int8": (*_COMMON, "high_precision", "opset", "calibration_cache", "calibration_cache_reused", "calibration_key",
             "calibration_method", "calibration_images", "calibration_synthetic", "tools", "excluded_layers",
             "auto_fallback", "accuracy"),
}


def now() -> str:
    """The time a record is made, as the sidecars write it (UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PrecisionSidecar:
    """What an FP16 or INT8 ONNX was made from (``source_onnx``) and how: ``quantization_source``
    (``autocast-fp16``, ``calibrated``), the tools' versions, the accuracy report against FP32 when held-out images
    were given (``precision.accuracy``); for INT8 the calibration (cache, key, method, images, whether synthetic),
    the high precision elsewhere and the layers kept out of INT8 (``excluded_layers``, ``auto_fallback``); for
    FP16 what AutoCast judged the ranges on (``autocast_reference``). ``onnx_sha256``: of the ONNX it describes."""

    FORMAT: ClassVar[str] = ONNX_SIDECAR_FORMAT
    SCHEMA_VERSION: ClassVar[int] = 1

    precision: str  # "fp16" or "int8"
    model: str
    quantization_source: str
    source_onnx: str
    source_onnx_sha256: str
    tools: Mapping[str, str] = field(default_factory=dict)
    onnx_sha256: str = ""
    created: str = ""
    accuracy: Mapping | None = None
    calibration_synthetic: bool | None = None
    # FP16
    tool: str | None = None
    autocast_reference: str | None = None
    # INT8
    high_precision: str | None = None
    opset: int | None = None
    calibration_cache: str | None = None
    calibration_cache_reused: bool | None = None
    calibration_key: CacheKey | None = None
    calibration_method: str | None = None
    calibration_images: int | None = None
    excluded_layers: tuple[str, ...] | None = None
    auto_fallback: Mapping | None = None  # the ranking and the trials of precision.fallback

    def __post_init__(self):
        if self.precision not in _KEYS:
            raise ValueError(f"PrecisionSidecar.precision must be fp16 or int8, not {self.precision!r}")
        if self.excluded_layers is not None:
            object.__setattr__(self, "excluded_layers", tuple(self.excluded_layers))

    def to_json(self) -> dict:
        doc = {**header(self.FORMAT, self.SCHEMA_VERSION), "onnx_sha256": self.onnx_sha256, "created": self.created}
        for key in _KEYS[self.precision]:
            value = getattr(self, key)
            if isinstance(value, CacheKey):
                value = value.to_json()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            doc[key] = value
        return doc

    @classmethod
    def from_json(cls, data, where: str) -> PrecisionSidecar:
        check_format(data, cls.FORMAT, cls.SCHEMA_VERSION, where, "precision sidecar")
        if data.get("precision") not in _KEYS:
            raise UserError(f"{where}: its precision is {data.get('precision')!r}, not fp16 or int8")
        known = {f.name for f in fields(cls)} - {"calibration_key"}
        values = {k: v for k, v in data.items() if k in known}
        key = data.get("calibration_key")
        if key is not None:
            values["calibration_key"] = CacheKey.from_json(key, where)
        try:
            return cls(**values)
        except TypeError as e:  # a required field missing
            raise UserError(f"{where} is not a complete precision sidecar ({e})") from None


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """``m_int8.onnx`` → ``m_int8.onnx.json``."""
    return Path(str(onnx_path) + ".json")


def read_precision_sidecar(onnx_path: str | os.PathLike, onnx_sha256: str | None = None) -> PrecisionSidecar | None:
    """The sidecar the precision step wrote beside a converted ONNX, when it describes these very bytes
    (``onnx_sha256``), else None (no sidecar, another file's, unreadable, or of a newer release)."""
    side = sidecar_path(onnx_path)
    try:
        sidecar = PrecisionSidecar.from_json(json.loads(side.read_text()), str(side))
    except (OSError, ValueError, UserError):
        return None
    if onnx_sha256 is not None and sidecar.onnx_sha256 != onnx_sha256:
        return None
    return sidecar
