"""A zoo model and its weights → the exact, checked ONNX: the first step of the pipeline, as one call."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core import log
from ..core.errors import UserError
from ..core.hashing import sha256_file
from . import weights as W
from .onnx_export import DEFAULT_OPSET, check_onnx, write_onnx
from .zoo import ModelSpec, get_model

DEFAULT_OUTPUT_DIR = Path("engines")
MIN_OPSET = 13  # Split with sizes as an input


@dataclass(frozen=True)
class ExportedOnnx:
    path: Path
    model: str
    weights: str  # the .pdparams file name, or "random (seed N)"
    bytes: int


def check_weight_options(weights, random_weights: bool) -> None:
    if weights is not None and random_weights:
        raise UserError("--weights and --random-weights exclude each other")


def load_model_weights(spec: ModelSpec, weights: str | os.PathLike | None = None, *, random_weights: bool = False,
                       seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """The weights to export and the metadata naming them: a ``.pdparams`` file, the published weights
    (downloaded once into the cache), or seeded random weights (predictions mean nothing)."""
    check_weight_options(weights, random_weights)
    if random_weights:
        log.warn(f"--random-weights: {spec.name} gets seeded random weights (seed {seed}); its predictions mean "
                 "NOTHING — for smoke tests and benchmarks only")
        state = W.random_weights(spec, seed=seed)
        return state, {"weights": f"random (seed {seed})", "weights_sha256": W.state_sha256(state)}
    path = Path(weights) if weights is not None else W.fetch_pretrained(spec, progress=progress)
    state = W.load_weights(path, spec)
    return state, {"weights": path.name, "weights_sha256": sha256_file(path)}


def default_onnx_path(model: str, directory: str | os.PathLike = DEFAULT_OUTPUT_DIR) -> Path:
    return Path(directory) / f"{model}.onnx"


def check_opset(opset: int) -> int:
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset} is too old: the graph needs opset {MIN_OPSET} or newer (Split with sizes)")
    return opset


def export_onnx(model: str, path: str | os.PathLike | None = None, *, weights: str | os.PathLike | None = None,
                 random_weights: bool = False, seed: int = 0, opset: int = DEFAULT_OPSET, softmax: bool = False,
                 progress: bool = True) -> ExportedOnnx:
    """Export zoo model ``model`` (e.g. ``"res2net50_vd_26w_4s"``) to ``path`` (default
    ``engines/<model>.onnx``), written atomically and checked with ``onnx.checker``.

    ``weights``: a PaddleClas ``.pdparams`` file; None downloads the published weights once (into
    ``~/.cache/trt_res2net``), or ``random_weights=True`` uses seeded random ones. ``softmax`` ends the graph with
    a Softmax (output ``probabilities``), as PaddleClas's exported inference models do."""
    spec = get_model(model)
    check_opset(opset)
    state, meta = load_model_weights(spec, weights, random_weights=random_weights, seed=seed, progress=progress)
    out = Path(path) if path is not None else default_onnx_path(spec.name)
    write_onnx(spec, state, out, opset=opset, softmax=softmax, metadata=meta, progress=progress)
    del state
    check_onnx(out)
    return ExportedOnnx(out, spec.name, meta["weights"], out.stat().st_size)
