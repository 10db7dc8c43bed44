"""``trt_res2net_repository.json``: what a Triton repository was written from and with which settings (Triton
ignores files at the top of a repository). :class:`RepositoryRecord` is its type; the JSON keys are its fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.artifact import check_format, header
from ..core.errors import UserError

REPOSITORY_FILE = "trt_res2net_repository.json"
KIND = "Triton repository record"


@dataclass(frozen=True)
class RecordedEnsemble:
    """An ensemble: the classifier it runs and that classifier's variant (``plan`` or ``onnx``)."""

    classifier: str
    variant: str


@dataclass(frozen=True)
class RecordedOnnx:
    """The FP32 ONNX the classifiers and the pipeline run: ``sha256`` covers its external data files
    (``core.hashing.sha256_onnx``), which ``data_files`` names (copied beside each ``1/model.onnx``)."""

    file: str
    sha256: str
    input: str
    output: str
    outputs_probabilities: bool
    data_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordedEngine:
    """The TensorRT engine served as a ``tensorrt_plan`` model."""

    file: str
    sha256: str | None
    tensorrt_version: str | None
    precision: str | None
    gpu: dict | None
    max_batch: int


@dataclass(frozen=True)
class RecordedCpuModel:
    """The CPU model (OpenVINO IR) served by Triton's OpenVINO backend and run in process by the pipeline model."""

    file: str
    sha256: str
    precision: str
    openvino_version: str


@dataclass(frozen=True)
class RepositoryRecord:
    """What the repository holds and was written from: the models, the ensembles and the pipeline model, the ONNX
    and the engine (None, with ``engine_skipped`` saying why, when none is served), the serving settings, the
    preprocessing, and the release that wrote it."""

    FORMAT = "trt_res2net.triton-repository"
    SCHEMA_VERSION = 1

    model: str
    default_ensemble: str
    ensembles: dict[str, RecordedEnsemble]
    pipeline: str
    models: tuple[str, ...]
    onnx: RecordedOnnx
    engine: RecordedEngine | None
    engine_skipped: str | None
    max_batch_size: int
    queue_delay_us: int
    instances: int
    preprocess_instances: int
    intra_op_threads: int
    max_queue_size: int
    queue_timeout_ms: int
    max_image_pixels: int
    max_image_bytes: int
    topk: int
    num_classes: int
    preprocess: dict
    preprocess_sha256: str
    trt_res2net_version: str
    written_at: str
    cpu_model: RecordedCpuModel | None = None  # left out of the JSON when None: records before it read the same

    def to_json(self) -> dict:
        data = header(self.FORMAT, self.SCHEMA_VERSION)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "ensembles":
                value = {name: dataclasses.asdict(e) for name, e in value.items()}
            elif f.name == "models":
                value = list(value)
            elif isinstance(value, RecordedOnnx):
                value = dataclasses.asdict(value)
                value["data_files"] = list(value["data_files"])
                if not value["data_files"]:  # a one-file ONNX: the record as releases before data files wrote it
                    del value["data_files"]
            elif isinstance(value, (RecordedEngine, RecordedCpuModel)):
                value = dataclasses.asdict(value)
            elif f.name == "cpu_model":  # None
                continue
            data[f.name] = value
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> RepositoryRecord:
        check_format(data, cls.FORMAT, cls.SCHEMA_VERSION, where, KIND)
        try:
            values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name != "cpu_model"}
            if "cpu_model" in data:
                values["cpu_model"] = RecordedCpuModel(**data["cpu_model"])
            values["ensembles"] = {name: RecordedEnsemble(**e) for name, e in values["ensembles"].items()}
            values["models"] = tuple(values["models"])
            onnx = values["onnx"]
            values["onnx"] = RecordedOnnx(**{**onnx, "data_files": tuple(onnx.get("data_files") or ())})
            values["engine"] = None if values["engine"] is None else RecordedEngine(**values["engine"])
        except (KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{where}: not a complete {KIND} ({type(e).__name__}: {e})") from None
        return cls(**values)


def read_record(repo: str | Path) -> RepositoryRecord:
    """The record of the repository ``repo`` (a folder build.py wrote)."""
    from ..core.files import read_json

    path = Path(repo) / REPOSITORY_FILE
    return RepositoryRecord.from_json(read_json(path, KIND, missing=f"{path} not found: {repo} is not a "
                                                "repository trt_res2net wrote"), str(path))
