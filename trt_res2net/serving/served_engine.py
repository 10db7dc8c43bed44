"""The built engine as Triton's TensorRT backend serves it (a ``tensorrt_plan`` model), read from its manifest.

An engine Triton cannot drive (a TensorRT-RTX engine, one whose profile does not start at batch 1, one with
non-float32 I/O or a profile that varies an image dimension) is left out, with the reason; a manifest that
contradicts the ONNX, or an engine file that is not the one it describes, is refused: that repository would be
wrong, not merely without a plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import UserError

if TYPE_CHECKING:
    from ..engine.manifest import EngineManifest, ProfileRecord, TensorRecord
    from ..model.contract import OnnxIO

FLOAT32_NAMES = {"float32", "float", "fp32"}


def dims(shape) -> list[int]:
    """A shape with every symbolic or negative dimension as -1 (Triton's variable dimension)."""
    return [-1 if d is None or (isinstance(d, int) and d < 0) else int(d) for d in shape]


@dataclass(frozen=True)
class ServedEngine:
    """The standard TensorRT engine as Triton sees it: batch 1..max_batch, dims without the batch, and what its
    manifest says of its build (for the config's comment and the repository record)."""

    engine_path: Path
    max_batch: int
    opt_batch: int
    input_dims: tuple[int, ...]
    output_dims: tuple[int, ...]
    manifest: EngineManifest

    @property
    def gpu_name(self) -> str:
        """The build GPU, for people: its name and compute capability."""
        gpu = self.manifest.gpu
        cc = gpu.compute_capability if gpu is not None else None
        return self.manifest.gpu_name + (f", compute capability {cc}" if cc else "")


def read_served_engine(engine_path, io: OnnxIO,
                       onnx_sha256: str | None = None) -> tuple[ServedEngine | None, str | None]:
    """The engine at ``engine_path`` as a Triton plan for the ONNX of ``io`` (``model.contract.OnnxIO``), or
    (None, why not) when Triton cannot use it as one."""
    from ..engine.manifest import check_engine_file, read_manifest

    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    if manifest.engine_family != "tensorrt":
        return None, (f"{engine_path.name} is a {manifest.engine_family} engine, which Triton's TensorRT backend "
                      "(standard TensorRT) cannot load: the repository serves the ONNX model instead")
    if not engine_path.is_file():
        raise UserError(f"{engine_path}: no such engine file")
    check_engine_file(manifest, engine_path)
    where = f"engine manifest of {engine_path.name}"
    built_from = {manifest.onnx_sha256, manifest.fp32_onnx_sha256} - {None}
    if onnx_sha256 is not None and built_from and onnx_sha256 not in built_from:
        raise UserError(f"{where}: the engine was built from another ONNX than the one exported (onnx_sha256 "
                        "differs); build both in one build.py run")
    if manifest.io is None or manifest.io.output is None:
        raise UserError(f"{where}: no input and output recorded (\"io\")")
    tensors = (manifest.io.input, manifest.io.output)
    _check_io_matches_onnx(where, tensors, io)
    if not manifest.profiles:
        raise UserError(f"{where}: no optimization profile recorded (\"profiles\")")
    profile = manifest.profiles[0]
    if len(profile.min) != 4 or len(profile.max) != 4:
        raise UserError(f"{where}: profile {profile.to_json()} is not NCHW min/opt/max shapes")
    why_not = _why_not_servable(engine_path.name, tensors, profile)
    if why_not:
        return None, why_not
    pmax = profile.max
    opt = int((profile.opt or pmax)[0])
    return ServedEngine(engine_path=engine_path, max_batch=int(pmax[0]), opt_batch=min(max(1, opt), int(pmax[0])),
                        input_dims=tuple(int(d) for d in pmax[1:]),
                        output_dims=tuple(dims(tensors[1].shape)[1:]), manifest=manifest), None


def _check_io_matches_onnx(where: str, tensors: tuple[TensorRecord, TensorRecord], io: OnnxIO) -> None:
    for role, recorded, name, shape in (("input", tensors[0], io.input_name, io.input_shape),
                                        ("output", tensors[1], io.output_name, io.output_shape)):
        if recorded.name != name:
            raise UserError(f"{where}: {role} is named {recorded.name!r}, the ONNX's is {name!r}")
        if len(recorded.shape) != len(shape):
            raise UserError(f"{where}: {role} shape {list(recorded.shape)} does not have the ONNX's rank {len(shape)}")
        for i, (a, b) in enumerate(zip(dims(recorded.shape)[1:], dims(shape)[1:], strict=True), 1):
            if a != -1 and b != -1 and a != b:
                raise UserError(f"{where}: {role} dimension {i} is {a}, the ONNX's is {b}")


def _why_not_servable(name: str, tensors: tuple[TensorRecord, TensorRecord], profile: ProfileRecord) -> str | None:
    """Why Triton's dynamic batcher cannot drive the engine through the ensembles (None: it can)."""
    dtypes = {str(t.dtype or "float32").lower() for t in tensors}
    if not dtypes <= FLOAT32_NAMES:
        return (f"{name} has {'/'.join(sorted(dtypes))} I/O; the ensemble feeds float32 (build with float32 I/O, as "
                "build.py does): the repository serves the ONNX model instead")
    if int(profile.min[0]) != 1:
        return (f"{name}'s profile starts at batch {profile.min[0]}, but Triton's dynamic batcher sends any batch "
                "from 1 (rebuild with EngineOptions.min_batch=1): the repository serves the ONNX model instead")
    in_dims = dims(tensors[0].shape)[1:]
    for i, (lo, hi) in enumerate(zip(profile.min[1:], profile.max[1:], strict=True)):
        if lo != hi:
            return (f"{name}'s profile varies dimension {i + 1} ({lo}..{hi}); the ensemble sends {in_dims}: the "
                    "repository serves the ONNX model instead")
    return None
