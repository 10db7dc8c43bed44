"""The manifest of a CPU model (``EngineOptions.family='cpu'``: an OpenVINO IR, ``<name>.xml`` + ``.bin``), beside it
as ``<name>.xml.json``: what it is, which libraries made it, the CPU it was tuned for, the preprocessing it is fed
and its accuracy against FP32. The runtime refuses a model whose files or machine do not match it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.artifact import check_format, header
from ..core.errors import UserError

KIND = "CPU model manifest"


@dataclass(frozen=True)
class CpuModelManifest:
    """``precision``: int8 (NNCF post-training quantization), bf16 (FP32 weights, BF16 inference) or fp32;
    ``inference_precision``: OpenVINO's ``INFERENCE_PRECISION_HINT`` the runtime compiles with; ``files``: file name
    → sha256 of the IR; ``instruction_sets``: OpenVINO's ``OPTIMIZATION_CAPABILITIES`` of the CPU it was made on,
    ``requires``: those it cannot run without (BF16 for bf16); ``calibration``: the images and method (int8);
    ``accuracy``: the report against FP32 on the held-out images (None without them)."""

    FORMAT = "trt_res2net.cpu_model_manifest"
    SCHEMA_VERSION = 1

    model: str
    precision: str
    inference_precision: str
    library: str
    library_version: str
    quantizer_version: str | None
    files: dict[str, str]
    source_onnx: str
    source_onnx_sha256: str
    input_name: str
    output_name: str
    num_classes: int
    outputs_probabilities: bool
    cpu: str
    instruction_sets: tuple[str, ...]
    requires: tuple[str, ...]
    preprocess: dict
    preprocess_sha256: str
    calibration: dict | None
    accuracy: dict | None
    build_time_s: float
    built_at: str
    trt_res2net_version: str

    def to_json(self) -> dict:
        data = header(self.FORMAT, self.SCHEMA_VERSION)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> CpuModelManifest:
        check_format(data, cls.FORMAT, cls.SCHEMA_VERSION, where, KIND)
        try:
            values = {f.name: data[f.name] for f in dataclasses.fields(cls)}
        except KeyError as e:
            raise UserError(f"{where}: {KIND} without {e.args[0]!r}: make the model again") from None
        for name in ("instruction_sets", "requires"):
            values[name] = tuple(values[name])
        return cls(**values)


def manifest_path_for(model_xml: str | Path) -> Path:
    p = Path(model_xml)
    return p.with_name(p.name + ".json")


def read_manifest(model_xml: str | Path) -> CpuModelManifest:
    import json

    path = manifest_path_for(model_xml)
    try:
        return CpuModelManifest.from_json(json.loads(path.read_text(encoding="utf-8")), str(path))
    except FileNotFoundError:
        raise UserError(f"{model_xml}: no manifest {path.name} beside it (a CPU model is written with one by "
                        "build.py with the cpu engine family)") from None
    except ValueError as e:
        raise UserError(f"{path}: not JSON ({e})") from None
