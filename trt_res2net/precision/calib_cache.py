"""TensorRT's calibration-cache text format, and the sidecar JSON that says what a cache is valid for.

The cache is what INT8 calibration computed — one scale per activation tensor —
in the form TensorRT's calibrators write and read and ModelOpt's ``calibration_cache_path`` imports::

    TRT-<version tag>-<algorithm>
    <tensor name>: <scale as the hex of its float32 bits, big-endian>

* ``<version tag>`` is NV_TENSORRT_VERSION of the TensorRT that wrote it (:func:`trt_version_tag`).
  TensorRT compares the whole header line with the one it would write and silently ignores (recalibrates,
  or with no data builds without ranges) a cache whose header differs.
* Caches made here through ModelOpt / ONNX Runtime carry the tag ``modelopt`` (:data:`MODELOPT_VERSION_TAG`)
  and the calibration method as algorithm, e.g. ``TRT-modelopt-entropy``: no TensorRT mistakes them for its
  own calibration (their ranges come from another algorithm and cover only the tensors the Q/DQ placement
  needs), while ModelOpt skips the header line entirely.
* TensorRT prints hex without zero padding and ``0`` for a zero scale; ModelOpt's reader needs all eight
  digits (``bytes.fromhex``). :meth:`CalibrationCache.to_bytes` always writes eight digits, so any cache
  that passes through :func:`read_cache` / :func:`write_cache` is readable by both.

Validity is not in the cache but in its sidecar ``<cache>.json`` (:class:`CacheKeyFile`, written by
:func:`write_cache_key`): ONNX SHA-256, preprocessing spec, calibration-image manifest hash, method, tool versions
(:class:`CacheKey`), and how the cache was made (:class:`CacheInfo`). :func:`check_cache_key` refuses a cache whose
key differs from the build's, naming the first field that differs.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

from ..core.artifact import check_format, header
from ..core.errors import UserError
from ..core.files import read_json, write_bytes, write_json

MODELOPT_VERSION_TAG = "modelopt"
SIDECAR_FORMAT = "trt_res2net.calibration-cache-key"
SIDECAR_VERSION = 1
RECALIBRATE_HINT = "; delete it or pass CalibrationImages.directory to recalibrate"  # ends a stale cache's refusal
# The order in which keys are compared (so the message names the most fundamental difference first).
KEY_FIELDS = (
    "onnx_sha256",
    "preprocess_sha256",
    "calibration_manifest_sha256",
    "method",
    "tools",
)


def trt_version_tag(version: str) -> str:
    """NV_TENSORRT_VERSION as TensorRT writes it into a cache header: ``"8.6.1"`` → ``"8601"``,
    ``"10.3.0"`` → ``"100300"`` (major·1000 + minor·100 + patch before 10, major·10000 + … from 10 on)."""
    parts = str(version).strip().split(".")
    try:
        nums = [int(p) for p in parts[:3]]
    except ValueError:
        raise ValueError(f"not a TensorRT version: {version!r}") from None
    if not nums or any(n < 0 for n in nums):
        raise ValueError(f"not a TensorRT version: {version!r}")
    major, minor, patch = (nums + [0, 0])[:3]
    if minor > 99 or patch > 99:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return str(major * (10000 if major >= 10 else 1000) + minor * 100 + patch)


def scale_to_hex(scale: float) -> str:
    """float32 bit pattern, big-endian, as eight lowercase hex digits (``1/127`` → ``3c010204``)."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    """Inverse of :func:`scale_to_hex`; also accepts TensorRT's unpadded form and ``0``."""
    value = int(text, 16)
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{text!r} is not a 32-bit value")
    return struct.unpack(">f", value.to_bytes(4, "big"))[0]


@dataclass
class CalibrationCache:
    """A parsed calibration cache: header fields and per-tensor scales (amax / 127), in file order."""

    version_tag: str
    algorithm: str
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def header(self) -> str:
        return f"TRT-{self.version_tag}-{self.algorithm}"

    @property
    def made_by_tensorrt(self) -> bool:
        """True when a TensorRT calibrator wrote it (numeric version tag)."""
        return self.version_tag.isdigit()

    def to_bytes(self) -> bytes:
        lines = [self.header]
        for name, scale in self.scales.items():
            if not name or "\n" in name or ": " in name:
                raise ValueError(f"tensor name {name!r} cannot be written to a calibration cache")
            lines.append(f"{name}: {scale_to_hex(scale)}")
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "calibration cache") -> CalibrationCache:
        """Parse a cache; ``source`` names it in errors. Tolerates CRLF, blank lines, unpadded hex, ``0``."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{source} is not a TensorRT calibration cache (not text)") from None
        lines = [ln.rstrip("\r") for ln in text.split("\n")]
        while lines and not lines[-1].strip():
            lines.pop()
        if not lines:
            raise UserError(f"{source} is empty")
        header = lines[0].strip()
        head = header.split("-", 2)
        if len(head) != 3 or head[0] != "TRT" or not head[1] or not head[2]:
            raise UserError(
                f"{source} does not start with a TRT-<version>-<algorithm> line (got {header[:60]!r})"
            )
        scales: dict[str, float] = {}
        for lineno, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            name, sep, value = line.rpartition(":")
            name, value = name.strip(), value.strip()
            try:
                if not sep or not name:
                    raise ValueError
                scales[name] = hex_to_scale(value)
            except ValueError:
                raise UserError(
                    f"{source} line {lineno} is not '<tensor>: <hex scale>': {line[:80]!r}"
                ) from None
        return cls(version_tag=head[1], algorithm=head[2], scales=scales)


def write_cache(path: str | os.PathLike, cache: CalibrationCache) -> Path:
    """Write the cache atomically (eight-digit hex, readable by TensorRT and ModelOpt)."""
    return write_bytes(path, cache.to_bytes())


def read_cache(path: str | os.PathLike) -> CalibrationCache:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"calibration cache {path} not found") from None
    except OSError as e:
        raise UserError(f"calibration cache {path} cannot be read: {e.strerror or e}") from None
    return CalibrationCache.from_bytes(data, source=f"calibration cache {path}")


# --------------------------------------------------------------------------------------------------------
# The sidecar: what a cache was made for


@dataclass(frozen=True)
class CacheKey:
    """What calibration ranges depend on. Any difference makes a cache invalid for a build; a field left None is
    not known to the build (a cache reused without its images: the manifest hash) and not compared."""

    onnx_sha256: str
    preprocess_sha256: str
    calibration_manifest_sha256: str | None = None
    method: str | None = None
    tools: Mapping[str, str] = field(default_factory=dict)  # e.g. {"modelopt": "0.47.0", "onnxruntime": ...}
    preprocess: Mapping | None = None  # the spec itself, for people reading the file (keyed by its sha)

    def to_json(self) -> dict:
        d = {k: getattr(self, k) for k in KEY_FIELDS}
        d["tools"] = dict(self.tools)
        if self.preprocess is not None:
            d["preprocess"] = dict(self.preprocess)
        return d

    def expected(self) -> dict:
        """The fields a cache must match (:func:`check_cache_key`): those this key knows."""
        return {k: v for k, v in self.to_json().items() if k in KEY_FIELDS and v is not None}

    @classmethod
    def from_json(cls, data, where: str) -> CacheKey:
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in KEY_FIELDS[:2]):
            raise UserError(f"{where} is not a trt_res2net calibration-cache sidecar")
        return cls(data["onnx_sha256"], data["preprocess_sha256"], data.get("calibration_manifest_sha256"),
                   data.get("method"), dict(data.get("tools") or {}), data.get("preprocess"))


@dataclass(frozen=True)
class CacheInfo:
    """How a cache was made — what does not decide its validity: by ModelOpt here (``model`` ... ``activation_scales``)
    or by TensorRT's calibrator (``tool`` ... ``batches``). Fields left None are not written."""

    model: str | None = None
    source_onnx: str | None = None
    images: int | None = None
    unreadable_images: int | None = None
    manifest: str | None = None  # the image manifest's file name, beside the cache
    synthetic: bool | None = None  # calibrated on generated images (scales only for trying the pipeline)
    calibration_seconds: float | None = None
    activation_scales: int | None = None
    tool: str | None = None  # "tensorrt": written by TensorRT's calibrator
    algorithm: str | None = None
    cache_header_tag: str | None = None
    calibration_batch: int | None = None
    batches: int | None = None
    created: str | None = None

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, data) -> CacheInfo:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass(frozen=True)
class CacheKeyFile:
    """The sidecar ``<cache>.json``: the key that decides validity and how the cache was made."""

    FORMAT: ClassVar[str] = SIDECAR_FORMAT
    SCHEMA_VERSION: ClassVar[int] = SIDECAR_VERSION

    key: CacheKey
    info: CacheInfo = field(default_factory=CacheInfo)

    def to_json(self) -> dict:
        return {**header(self.FORMAT, self.SCHEMA_VERSION), "key": self.key.to_json(), "info": self.info.to_json()}

    @classmethod
    def from_json(cls, data, where: str) -> CacheKeyFile:
        check_format(data, cls.FORMAT, cls.SCHEMA_VERSION, where, "calibration-cache sidecar")
        return cls(CacheKey.from_json(data.get("key"), where), CacheInfo.from_json(data.get("info")))


def sidecar_path(cache_path: str | os.PathLike) -> Path:
    """``calib/x.cache`` → ``calib/x.cache.json``."""
    p = Path(cache_path)
    return p.with_name(p.name + ".json")


def _as_key(key: CacheKey | Mapping) -> CacheKey:
    return key if isinstance(key, CacheKey) else CacheKey(**key)


def _as_info(info: CacheInfo | Mapping | None) -> CacheInfo:
    return info if isinstance(info, CacheInfo) else CacheInfo(**(info or {}))


def key_document(key: CacheKey | Mapping, info: CacheInfo | Mapping | None = None) -> dict:
    """The sidecar's content: ``{"format", "format_version", "key": {...}, "info": {...}}``."""
    return CacheKeyFile(_as_key(key), _as_info(info)).to_json()


def write_cache_key(cache_path: str | os.PathLike, key: CacheKey | Mapping,
                    info: CacheInfo | Mapping | None = None) -> Path:
    """Write ``<cache>.json`` atomically (:func:`key_document`).

    ``info`` holds what does not decide validity (model name, image count, timings ...)."""
    return write_json(sidecar_path(cache_path), key_document(key, info))


def read_cache_key(cache_path: str | os.PathLike) -> CacheKeyFile:
    """The sidecar of a cache; UserError when it is missing, damaged or of a newer release."""
    cache_path = Path(cache_path)
    side = sidecar_path(cache_path)
    doc = read_json(side, "calibration cache sidecar", missing=(
        f"calibration cache {cache_path} has no sidecar {side.name}, so what it was made for is unknown; "
        f"{RECALIBRATE_HINT[2:]}"))
    return CacheKeyFile.from_json(doc, str(side))


def _short(value) -> str:
    if value is None:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12] + "…"  # a SHA-256: the first 12 digits identify it for people
    return text if len(text) <= 80 else text[:77] + "…"


def _first_difference(stored: Mapping, expected: Mapping, prefix: str = "") -> tuple[str, object, object] | None:
    order = [k for k in KEY_FIELDS if k in expected] + sorted(k for k in expected if k not in KEY_FIELDS)
    for name in order:
        want = expected[name]
        have = stored.get(name)
        if isinstance(want, Mapping):
            sub = _first_difference(have if isinstance(have, Mapping) else {}, want, f"{prefix}{name}.")
            if sub:
                return sub
        elif have != want:
            return f"{prefix}{name}", have, want
    return None


def cache_key_mismatch(cache_path: str | os.PathLike, expected: CacheKey | Mapping) -> str | None:
    """Why the cache's sidecar does not match ``expected`` (its first differing field), None when it matches.

    Only the fields ``expected`` names are compared (a :class:`CacheKey`: those it knows), e.g. not the
    calibration manifest hash when a build reuses a cache without having the images. Nested mappings (``tools``)
    are compared per entry, so a cache made by ModelOpt is not refused for lacking a TensorRT version, but one made
    by TensorRT 8.6.1 is refused by a build that expects ``tools.tensorrt = 10.3.0``. UserError when the sidecar
    is missing or damaged."""
    stored = read_cache_key(cache_path).key.to_json()
    diff = _first_difference(stored, expected.expected() if isinstance(expected, CacheKey) else expected)
    if diff is None:
        return None
    name, have, want = diff
    return f"calibration cache {cache_path} was made for {name}={_short(have)}, this build has {_short(want)}"


def check_cache_key(cache_path: str | os.PathLike, expected: CacheKey | Mapping) -> None:
    """Raise UserError unless the cache's sidecar matches ``expected`` (:func:`cache_key_mismatch`)."""
    reason = cache_key_mismatch(cache_path, expected)
    if reason:
        raise UserError(f"{reason}{RECALIBRATE_HINT}")
