"""The timing cache of a standard TensorRT build (``EngineOptions.timing_cache``), with the release and GPU it was
measured on beside it."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError
from ..core.files import write_bytes, write_json


class TimingCacheFile:
    """``EngineOptions.timing_cache`` plus ``<path>.json`` naming the TensorRT release and GPU it was measured on.

    TensorRT rejects or (with ignore_mismatch) silently misuses a timing cache from another device; a cache
    from another release or GPU is refused here with the difference named, instead of being overwritten.
    """

    def __init__(self, path: Path, trt_version: str, gpu_name: str, cc: str):
        self.path = Path(path)
        self.fields = {"tensorrt_version": str(trt_version), "gpu": gpu_name, "compute_capability": cc}

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    def load(self) -> bytes:
        if not self.path.exists():
            return b""
        if self.sidecar.exists():
            try:
                made = json.loads(self.sidecar.read_text())
            except (OSError, ValueError):
                made = {}
            for field_name, value in self.fields.items():
                if made.get(field_name) != value:
                    raise UserError(f"timing cache {self.path} was measured with {field_name}="
                                    f"{made.get(field_name)!r}, this build has {value!r}: pass another "
                                    "EngineOptions.timing_cache path or delete it")
        return self.path.read_bytes()

    def save(self, data: bytes) -> None:
        write_bytes(self.path, data)
        write_json(self.sidecar, self.fields)
