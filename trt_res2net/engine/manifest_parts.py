"""The parts of the engine manifest that its readers read (``manifest.EngineManifest``'s nested records): the
engine's tensors and profiles, the build GPU, where its precision came from and what it computes in, TensorRT's
calibrator and the builder's options. Each is frozen and has ``to_json`` / ``from_json`` (the manifest's JSON
keys)."""

from __future__ import annotations

from dataclasses import dataclass, field


def optional(value, kind):
    return None if value is None else kind(value)


def ints(values) -> tuple[int, ...]:
    return tuple(int(v) for v in values or ())


def _without_none(doc: dict, *keys: str) -> dict:
    """``doc`` less the ``keys`` whose value is None (optional parts the JSON leaves out)."""
    return {k: v for k, v in doc.items() if k not in keys or v is not None}


# --------------------------------------------------------------------------------------------------------
# The parts a reader reads


@dataclass(frozen=True)
class TensorRecord:
    """One engine tensor as built: name, shape (-1 for the dynamic batch) and data type."""

    name: str
    shape: tuple[int, ...] = ()
    dtype: str | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict) -> TensorRecord:
        return cls(str(data["name"]), ints(data.get("shape")), data.get("dtype"))


@dataclass(frozen=True)
class EngineTensors:
    """The engine's image input and class output (the ONNX contract's two tensors)."""

    input: TensorRecord
    output: TensorRecord | None = None

    def to_json(self) -> dict:
        return {"input": self.input.to_json(), **({"output": self.output.to_json()} if self.output else {})}

    @classmethod
    def from_json(cls, data: dict) -> EngineTensors:
        out = data.get("output")
        return cls(TensorRecord.from_json(data["input"]), TensorRecord.from_json(out) if out else None)


@dataclass(frozen=True)
class ProfileRecord:
    """One optimization profile: the input's min / opt / max shapes."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_json(self) -> dict:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> ProfileRecord:
        return cls(str(data["input"]), ints(data.get("min")), ints(data.get("opt")), ints(data.get("max")))


@dataclass(frozen=True)
class BuildGpu:
    """The GPU a standard TensorRT engine was built on (``DeviceInfo.to_manifest``)."""

    name: str | None = None
    compute_capability: str | None = None
    integrated: bool | None = None
    device: int | None = None
    jetson: dict | None = None
    total_memory_mib: int | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "compute_capability": self.compute_capability, "integrated": self.integrated,
                "device": self.device, "jetson": self.jetson, "total_memory_mib": self.total_memory_mib}

    @classmethod
    def from_json(cls, data: dict) -> BuildGpu:
        return cls(data.get("name"), optional(data.get("compute_capability"), str), data.get("integrated"),
                   data.get("device"), data.get("jetson"), data.get("total_memory_mib"))


@dataclass(frozen=True)
class Quantization:
    """Where the engine's precision came from: ``source`` (``describe.QUANTIZATION_SOURCES``), its ``label``, and
    what the precision step's sidecar says of its calibration when there is one."""

    source: str
    label: str
    calibration_method: str | None = None
    calibration_cache: str | None = None
    calibration_images: int | None = None
    calibration_synthetic: bool | None = None
    high_precision: str | None = None
    excluded_layers: tuple[str, ...] | None = None

    _OPTIONAL = ("calibration_method", "calibration_cache", "calibration_images", "calibration_synthetic",
                 "high_precision", "excluded_layers")

    def to_json(self) -> dict:
        doc = {"source": self.source, "calibration_method": self.calibration_method,
               "calibration_cache": self.calibration_cache, "calibration_images": self.calibration_images,
               "calibration_synthetic": self.calibration_synthetic, "high_precision": self.high_precision,
               "excluded_layers": None if self.excluded_layers is None else list(self.excluded_layers),
               "label": self.label}
        return _without_none(doc, *self._OPTIONAL)

    @classmethod
    def from_json(cls, data: dict) -> Quantization:
        layers = data.get("excluded_layers")
        return cls(str(data["source"]), str(data.get("label") or data["source"]), data.get("calibration_method"),
                   data.get("calibration_cache"), data.get("calibration_images"), data.get("calibration_synthetic"),
                   data.get("high_precision"), None if layers is None else tuple(layers))


@dataclass(frozen=True)
class ComputePrecision:
    """What the engine computes in, as far as the library lets a build find out (``known`` False: not ahead of time,
    with what the build did see)."""

    known: bool
    summary: str
    label: str | None = None
    requested: str | None = None
    build_log: dict | None = None
    engine_inspector: str | None = None

    def to_json(self) -> dict:
        doc = {"known": self.known, "label": self.label, "requested": self.requested, "summary": self.summary,
               "build_log": self.build_log, "engine_inspector": self.engine_inspector}
        return _without_none(doc, "label", "requested", "build_log", "engine_inspector")

    @classmethod
    def from_json(cls, data: dict) -> ComputePrecision:
        return cls(bool(data["known"]), str(data["summary"]), data.get("label"), data.get("requested"),
                   data.get("build_log"), data.get("engine_inspector"))


@dataclass(frozen=True)
class CalibrationRecord:
    """TensorRT's own INT8 calibrator in this build: its cache, whether it was reused, images, batch and key."""

    cache: str
    reused: bool
    images: int | None
    batch: int
    key: dict

    def to_json(self) -> dict:
        return {"cache": self.cache, "reused": self.reused, "images": self.images, "batch": self.batch,
                "key": self.key}

    @classmethod
    def from_json(cls, data: dict) -> CalibrationRecord:
        return cls(str(data["cache"]), bool(data["reused"]), data.get("images"), int(data["batch"]),
                   dict(data.get("key") or {}))


@dataclass(frozen=True)
class BuildOptions:
    """How the library was configured, and the NVIDIA tools' commands that build the same engine."""

    flags: tuple[str, ...] = ()
    strongly_typed: bool = False
    network_flags: int = 0
    workspace_mib: int | None = None
    workspace_default: bool = True
    compute_capabilities_requested: tuple[str, ...] | None = None
    builder_opt_level: int | None = None
    timing_cache: str | None = None
    dla_core: int | None = None
    calibration_profile: tuple[int, ...] | None = None
    progress: str | None = None
    equivalent_commands: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        ccs, calib = self.compute_capabilities_requested, self.calibration_profile
        return {"flags": list(self.flags), "strongly_typed": self.strongly_typed, "network_flags": self.network_flags,
                "workspace_mib": self.workspace_mib, "workspace_default": self.workspace_default,
                "compute_capabilities_requested": None if ccs is None else list(ccs),
                "builder_opt_level": self.builder_opt_level, "timing_cache": self.timing_cache,
                "dla_core": self.dla_core, "calibration_profile": None if calib is None else list(calib),
                "progress": self.progress, "equivalent_commands": dict(self.equivalent_commands)}

    @classmethod
    def from_json(cls, data: dict) -> BuildOptions:
        ccs, calib = data.get("compute_capabilities_requested"), data.get("calibration_profile")
        return cls(tuple(data.get("flags") or ()), bool(data.get("strongly_typed", False)),
                   int(data.get("network_flags") or 0), data.get("workspace_mib"),
                   bool(data.get("workspace_default", True)), None if ccs is None else tuple(map(str, ccs)),
                   data.get("builder_opt_level"), data.get("timing_cache"), data.get("dla_core"),
                   None if calib is None else ints(calib), data.get("progress"),
                   dict(data.get("equivalent_commands") or {}))


def part(data: dict, key: str, kind):
    value = data.get(key)
    return None if value is None else kind.from_json(value)
