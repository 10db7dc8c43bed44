"""The JSON manifest beside every engine (:class:`EngineManifest`), and the compatibility check that reads it.

A TensorRT engine only runs under the TensorRT release and on the GPU (compute capability) it was built for; a
TensorRT-RTX engine runs on the list of compute capabilities it was built for, under the same TensorRT-RTX release
(NVIDIA: "TensorRT-RTX engines are not compatible between different releases of TensorRT-RTX"). The libraries
notice some mismatches themselves, late and cryptically. The manifest ``<engine>.json`` records the engine family,
the library version and the compute capabilities, what the engine was quantized from (``quantization``) and, as
far as the library tells, what it computes in (``compute_precision``); :func:`check_engine_compatible` refuses
another family, release or GPU before anything is deserialized, naming the field that differs.

Schema versions: 1 (standard TensorRT only: ``tensorrt_version`` and the build GPU), 2 (the engine family, the
library version and the compute capabilities), 3 (the same keys, written from the typed manifest). Versions 1 and 2
are upgraded when read; a newer one is refused in one line.

The engine and its manifest are written as one unit (``core.commit``), the manifest hashing the serialized bytes.
``onnx_sha256`` / ``fp32_onnx_sha256`` hash the ONNX files with their external data files
(``core.hashing.sha256_onnx``): a data file changed alone changes them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.artifact import check_format, header
from ..core.errors import UserError
from ..core.files import read_json, write_text
from ..core.hashing import sha256_file
from .manifest_parts import (  # noqa: F401  (the parts: read as manifest.X too)
    BuildGpu,
    BuildOptions,
    CalibrationRecord,
    ComputePrecision,
    EngineTensors,
    ProfileRecord,
    Quantization,
    TensorRecord,
    optional,
    part,
)

# --------------------------------------------------------------------------------------------------------
# The manifest


@dataclass(frozen=True)
class EngineManifest:
    """What ``<engine>.json`` says of its engine. Fields are the JSON keys, in the file's order; a field a file
    written elsewhere leaves out takes its default (None: not recorded)."""

    FORMAT = "trt_res2net.engine-manifest"
    SCHEMA_VERSION = 3

    engine: str | None = None
    engine_sha256: str | None = None
    engine_bytes: int | None = None
    model: str | None = None
    precision: str | None = None
    int8_mode: str | None = None
    quantization: Quantization | None = None
    compute_precision: ComputePrecision | None = None
    engine_family: str = "tensorrt"
    library_version: str | None = None
    compute_capabilities: tuple[str, ...] = ()
    compute_capabilities_and_later: bool = False
    compute_capabilities_source: str | None = None
    gpu: BuildGpu | None = None  # None: a TensorRT-RTX engine built ahead of time, on no GPU
    caveats: tuple[str, ...] = ()
    onnx: str | None = None
    onnx_sha256: str | None = None  # core.hashing.sha256_onnx: the ONNX with its external data files, if any
    fp32_onnx_sha256: str | None = None
    io: EngineTensors | None = None
    outputs_probabilities: bool | None = None  # None: not recorded (the output's name decides)
    profiles: tuple[ProfileRecord, ...] = ()
    calibration: CalibrationRecord | None = None
    preprocess: dict | None = None  # data.preprocess.SPEC.to_dict()
    preprocess_sha256: str | None = None
    build_options: BuildOptions = field(default_factory=BuildOptions)
    build_time_s: float | None = None
    built_at: str | None = None
    host: dict | None = None
    trt_res2net_version: str | None = None
    command: str | None = None

    def to_json(self) -> dict:
        def record(value):
            return None if value is None else value.to_json()

        return {
            **header(self.FORMAT, self.SCHEMA_VERSION),
            "engine": self.engine, "engine_sha256": self.engine_sha256, "engine_bytes": self.engine_bytes,
            "model": self.model, "precision": self.precision, "int8_mode": self.int8_mode,
            "quantization": record(self.quantization), "compute_precision": record(self.compute_precision),
            "engine_family": self.engine_family, "library_version": self.library_version,
            "compute_capabilities": list(self.compute_capabilities),
            "compute_capabilities_and_later": self.compute_capabilities_and_later,
            "compute_capabilities_source": self.compute_capabilities_source, "gpu": record(self.gpu),
            "caveats": list(self.caveats), "onnx": self.onnx, "onnx_sha256": self.onnx_sha256,
            "fp32_onnx_sha256": self.fp32_onnx_sha256, "io": record(self.io),
            "outputs_probabilities": self.outputs_probabilities,
            "profiles": [p.to_json() for p in self.profiles], "calibration": record(self.calibration),
            "preprocess": self.preprocess, "preprocess_sha256": self.preprocess_sha256,
            "build_options": self.build_options.to_json(), "build_time_s": self.build_time_s,
            "built_at": self.built_at, "host": self.host, "trt_res2net_version": self.trt_res2net_version,
            "command": self.command,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> EngineManifest:
        """The manifest in ``data`` (a parsed ``<engine>.json``; ``where`` names it in messages), versions 1 and 2
        upgraded; UserError in one line for another format, a newer version or a damaged document."""
        version = check_format(data, cls.FORMAT, cls.SCHEMA_VERSION, where, "engine manifest")
        if version < 2:
            data = _upgrade_v1(data)
        try:
            return cls._parse(data)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UserError(f"{where} is a damaged engine manifest ({type(e).__name__}: {e}); rebuild the "
                            "engine") from None

    @classmethod
    def _parse(cls, data: dict) -> EngineManifest:
        probabilities = data.get("outputs_probabilities", data.get("softmax"))
        return cls(
            engine=data.get("engine"), engine_sha256=data.get("engine_sha256"),
            engine_bytes=optional(data.get("engine_bytes"), int), model=data.get("model"),
            precision=data.get("precision"), int8_mode=data.get("int8_mode"),
            quantization=part(data, "quantization", Quantization),
            compute_precision=part(data, "compute_precision", ComputePrecision),
            engine_family=str(data.get("engine_family") or "tensorrt"),
            library_version=optional(data.get("library_version"), str),
            compute_capabilities=tuple(normalize_cc(cc) for cc in data.get("compute_capabilities") or ()),
            compute_capabilities_and_later=bool(data.get("compute_capabilities_and_later", False)),
            compute_capabilities_source=data.get("compute_capabilities_source"),
            gpu=part(data, "gpu", BuildGpu), caveats=tuple(data.get("caveats") or ()), onnx=data.get("onnx"),
            onnx_sha256=data.get("onnx_sha256"), fp32_onnx_sha256=data.get("fp32_onnx_sha256"),
            io=part(data, "io", EngineTensors),
            outputs_probabilities=probabilities if isinstance(probabilities, bool) else None,
            profiles=tuple(ProfileRecord.from_json(p) for p in data.get("profiles") or ()),
            calibration=part(data, "calibration", CalibrationRecord), preprocess=data.get("preprocess"),
            preprocess_sha256=data.get("preprocess_sha256"),
            build_options=BuildOptions.from_json(data.get("build_options") or {}),
            build_time_s=optional(data.get("build_time_s"), float), built_at=data.get("built_at"),
            host=data.get("host"), trt_res2net_version=data.get("trt_res2net_version"), command=data.get("command"),
        )

    @property
    def gpu_name(self) -> str:
        """The build GPU's name, for messages (``?`` when none was recorded)."""
        return (self.gpu.name if self.gpu is not None else None) or "?"


def _upgrade_v1(data: dict) -> dict:
    """A format-1 manifest (standard TensorRT only, one build GPU) in format 2's keys."""
    data = dict(data)
    data.setdefault("engine_family", "tensorrt")
    data.setdefault("library_version", data.pop("tensorrt_version", None))
    cc = (data.get("gpu") or {}).get("compute_capability")
    data.setdefault("compute_capabilities", [normalize_cc(cc)] if cc else [])
    return data


# Module-level names for the format, as other readers and writers of manifests spell them.
MANIFEST_FORMAT = EngineManifest.FORMAT
MANIFEST_VERSION = EngineManifest.SCHEMA_VERSION


# --------------------------------------------------------------------------------------------------------
# Paths and I/O


def manifest_path_for(engine_path: str | os.PathLike) -> Path:
    """``engines/x_int8_b32.engine`` → ``engines/x_int8_b32.engine.json``."""
    p = Path(engine_path)
    return p if p.name.endswith(".json") else p.with_name(p.name + ".json")


def manifest_bytes(manifest: EngineManifest) -> bytes:
    """The manifest as written beside its engine."""
    return (json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n").encode()


def write_manifest(engine_path: str | os.PathLike, manifest: EngineManifest) -> Path:
    """Write ``<engine>.json`` atomically; returns its path (the build writes it with its engine, as one unit)."""
    return write_text(manifest_path_for(engine_path), manifest_bytes(manifest).decode())


def read_manifest(path: str | os.PathLike) -> EngineManifest:
    """Read a manifest, given the engine's path or the manifest's own; UserError when missing or damaged."""
    mpath = manifest_path_for(path)
    data = read_json(mpath, "engine manifest",
                     missing=f"engine manifest {mpath} not found (build.py writes it beside the engine)")
    return EngineManifest.from_json(data, str(mpath))


def find_manifest(engine_path: str | os.PathLike) -> EngineManifest | None:
    """The engine's manifest, or None when there is none (an engine built elsewhere, e.g. by trtexec)."""
    if not manifest_path_for(engine_path).exists():
        return None
    return read_manifest(engine_path)


# --------------------------------------------------------------------------------------------------------
# Compatibility


def normalize_cc(cc) -> str:
    """(8, 7) / "8.7" / "sm_87" / 8.7 → "8.7"."""
    if isinstance(cc, (tuple, list)):
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip()
    m = re.fullmatch(r"(?:sm_|compute_)?(\d)(\d)", text)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"(\d+)\.(\d+)", text)
    if m:
        return f"{int(m.group(1))}.{int(m.group(2))}"
    raise ValueError(f"not a compute capability: {cc!r}")


def _built_version(manifest: EngineManifest):
    from . import trt_compat as tc

    try:
        return tc.parse_version(str(manifest.library_version or "?"), manifest.engine_family)
    except ValueError:
        return None


def check_engine_compatible(manifest: EngineManifest, version, gpu_name: str, cc, *,
                            engine: str | None = None) -> None:
    """Refuse an engine of another family, built under another release, or not built for this GPU, naming what
    differs. ``version`` is the running library's ``trt_compat.TrtVersion`` (its family included).

    TensorRT: the release must be the same major.minor.patch (plans are not portable across releases), the
    compute capability the build GPU's (kernels are compiled for it), and the GPU name the same (tactics are
    tuned per device). TensorRT-RTX: the same release (major.minor.patch: NVIDIA documents that TensorRT-RTX
    engines are not compatible between releases), and this GPU's compute capability one of the engine's targets (a
    portable engine is not tied to one GPU).
    """
    from . import trt_compat as tc

    what = engine or manifest.engine or "the engine"
    built_family = manifest.engine_family
    if built_family not in tc.FAMILIES:
        raise UserError(f"{what} has an unknown engine family {built_family!r}")
    if built_family != version.family:
        raise UserError(f"{what} is a {tc.FAMILIES[built_family].label} engine; {version.label} cannot run it (each "
                        f"family runs only its own engines): install {tc.FAMILIES[built_family].install}")
    cc = normalize_cc(cc)
    built = str(manifest.library_version or "?")
    built_v = _built_version(manifest)
    if built_family == tc.TENSORRT_RTX.key:
        if built_v is None or tuple(built_v[:3]) != tuple(version[:3]):
            raise UserError(f"{what} was built with TensorRT-RTX {built}, but this machine has TensorRT-RTX "
                            f"{version}, and TensorRT-RTX engines run only on the release that built them: rebuild "
                            f"it here with this TensorRT-RTX (or install TensorRT-RTX {built})")
        targets = list(manifest.compute_capabilities)
        later = manifest.compute_capabilities_and_later
        if targets and not tc.rtx_runs_on(cc, targets, later):
            fix = (f"rebuild it for compute capability {cc}" if cc in tc.RTX_TARGETS else
                   "this GPU is not a TensorRT-RTX target: build the engine with TensorRT (engine family tensorrt)")
            raise UserError(f"{what} runs on GPUs of {tc.rtx_targets_sentence(targets, later)}, but this GPU "
                            f"({gpu_name}) is {cc}; {fix}")
        return
    rebuild = "; rebuild it on this machine with build.py"
    if built_v is None or tuple(built_v[:3]) != tuple(version[:3]):
        raise UserError(f"{what} was built with TensorRT {built}, but this machine has TensorRT "
                        f"{version}{rebuild}")
    gpu = manifest.gpu or BuildGpu()
    if gpu.compute_capability is not None and normalize_cc(gpu.compute_capability) != cc:
        raise UserError(f"{what} was built for compute capability {normalize_cc(gpu.compute_capability)} "
                        f"({manifest.gpu_name}), but this GPU ({gpu_name}) is {cc}{rebuild}")
    if gpu.name is not None and gpu.name.strip() != str(gpu_name).strip():
        raise UserError(f"{what} was built on GPU {gpu.name!r}, but this GPU is {gpu_name!r}{rebuild}")


def check_engine_file(manifest: EngineManifest, engine_path: str | os.PathLike) -> None:
    """Refuse an engine file that is not the one the manifest describes (replaced or truncated)."""
    expected = manifest.engine_sha256
    if expected and sha256_file(engine_path) != expected:
        raise UserError(f"{engine_path} does not match its manifest {manifest_path_for(engine_path)} "
                        "(engine_sha256 differs); rebuild it with build.py")
