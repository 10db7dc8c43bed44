"""A zoo model and its weights → the exact, checked ONNX: the first step of the pipeline.

:func:`plan_export` resolves the options (the zoo model, where the weights come from, the output path, the opset)
and makes every refusal before any work; :func:`run_export` loads the weights and writes the ONNX;
:func:`export_onnx` is the two as one call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..core import log
from ..core.errors import UserError
from ..core.files import check_input_file, check_writable_folder
from ..core.hashing import sha256_file
from . import weights as W
from .onnx_export import DEFAULT_OPSET, check_onnx, write_onnx
from .zoo import ModelSpec, get_model

DEFAULT_OUTPUT_DIR = Path("engines")
MIN_OPSET = 13  # Split with sizes as an input


@dataclass(frozen=True)
class ExportedOnnx:
    """The ONNX an export wrote: where, which zoo model, which weights, its size in bytes."""

    path: Path
    model: str
    weights: str  # the .pdparams file name, or "random (seed N)"
    bytes: int


@dataclass(frozen=True)
class ExportOptions:
    """What to export and where (the parameters of :func:`export_onnx`).

    ``weights``: a PaddleClas ``.pdparams`` file; None takes the published weights (downloaded once into
    ``~/.cache/trt_res2net``), or ``random_weights=True`` seeded random ones (``seed``; predictions mean nothing).
    ``path``: the ONNX to write, default ``engines/<model>.onnx``. ``softmax`` ends the graph with a Softmax
    (output ``probabilities``), as PaddleClas's exported inference models do."""

    model: str
    weights: str | os.PathLike | None = None
    random_weights: bool = False
    seed: int = 0
    opset: int = DEFAULT_OPSET
    softmax: bool = False
    path: str | os.PathLike | None = None
    progress: bool = True


@dataclass(frozen=True)
class WeightsSource:
    """Where the exported weights come from: a ``.pdparams`` file (``path``), the published weights (``url``, kept
    in the cache at ``path``), or seeded random weights (no ``path``; ``seed``)."""

    path: Path | None = None
    url: str | None = None
    seed: int = 0

    @property
    def kind(self) -> Literal["file", "published", "random"]:
        return "random" if self.path is None else "published" if self.url is not None else "file"

    @property
    def name(self) -> str:
        """How the ONNX's metadata names the weights: the file's name, or ``random (seed N)``."""
        return f"random (seed {self.seed})" if self.path is None else self.path.name


@dataclass(frozen=True)
class ExportPlan:
    """An export with everything resolved and checked: the zoo model, the weights' source, the output path."""

    spec: ModelSpec
    weights: WeightsSource
    path: Path
    opset: int
    softmax: bool = False
    progress: bool = True


def check_weight_options(weights: str | os.PathLike | None, random_weights: bool) -> None:
    if weights is not None and random_weights:
        raise UserError("ExportOptions.weights and ExportOptions.random_weights=True exclude each other")


def check_opset(opset: int) -> int:
    if opset < MIN_OPSET:
        raise UserError(f"ExportOptions.opset={opset} is too old: the graph needs opset {MIN_OPSET} or newer "
                        "(Split with sizes)")
    return opset


def default_onnx_path(model: str, directory: str | os.PathLike = DEFAULT_OUTPUT_DIR) -> Path:
    return Path(directory) / f"{model}.onnx"


def _weights_source(spec: ModelSpec, options: ExportOptions) -> WeightsSource:
    check_weight_options(options.weights, options.random_weights)
    if options.random_weights:
        return WeightsSource(seed=options.seed)
    if options.weights is not None:
        return WeightsSource(check_input_file(options.weights, "ExportOptions.weights"))
    url, cached = W.published_weights(spec)
    return WeightsSource(cached, url)


def plan_export(options: ExportOptions) -> ExportPlan:
    """Resolve and check an export before any work: the zoo model (an unknown name → the closest ones), the
    opset, where the weights come from (a readable file, the published ones, or random), and that the output's
    folder accepts a new file. Loads no weights and writes nothing."""
    spec = get_model(options.model)
    check_opset(options.opset)
    source = _weights_source(spec, options)
    out = Path(options.path) if options.path is not None else default_onnx_path(spec.name)
    check_writable_folder(out.parent, "ExportOptions.path" if options.path is not None else "the ONNX folder")
    return ExportPlan(spec, source, out, options.opset, options.softmax, options.progress)


def _load_weights(plan: ExportPlan) -> tuple[dict, dict]:
    """The weights to export and the metadata naming them."""
    source, spec = plan.weights, plan.spec
    if source.path is None:
        log.warn(f"ExportOptions.random_weights=True: {spec.name} gets seeded random weights (seed {source.seed}); "
                 "its predictions mean NOTHING — for smoke tests and benchmarks only")
        state = W.random_weights(spec, seed=source.seed)
        return state, {"weights": source.name, "weights_sha256": W.state_sha256(state)}
    if source.url is not None:
        W.fetch(source.url, source.path, progress=plan.progress)  # the published weights, downloaded once
    state = W.load_weights(source.path, spec)
    return state, {"weights": source.name, "weights_sha256": sha256_file(source.path)}


def run_export(plan: ExportPlan) -> ExportedOnnx:
    """Load the plan's weights (downloading the published ones once) and write the ONNX atomically, checked with
    ``onnx.checker``."""
    state, meta = _load_weights(plan)
    write_onnx(plan.spec, state, plan.path, opset=plan.opset, softmax=plan.softmax, metadata=meta,
               progress=plan.progress)
    del state
    check_onnx(plan.path)
    return ExportedOnnx(plan.path, plan.spec.name, plan.weights.name, plan.path.stat().st_size)


def export_onnx(model: str, path: str | os.PathLike | None = None, *, weights: str | os.PathLike | None = None,
                random_weights: bool = False, seed: int = 0, opset: int = DEFAULT_OPSET, softmax: bool = False,
                progress: bool = True) -> ExportedOnnx:
    """Export zoo model ``model`` (e.g. ``"res2net50_vd_26w_4s"``) to ``path`` (default
    ``engines/<model>.onnx``), written atomically and checked with ``onnx.checker``: ``run_export(plan_export(...))``.

    ``weights``: a PaddleClas ``.pdparams`` file; None downloads the published weights once (into
    ``~/.cache/trt_res2net``), or ``random_weights=True`` uses seeded random ones. ``softmax`` ends the graph with
    a Softmax (output ``probabilities``), as PaddleClas's exported inference models do."""
    options = ExportOptions(model, weights=weights, random_weights=random_weights, seed=seed, opset=opset,
                            softmax=softmax, path=path, progress=progress)
    return run_export(plan_export(options))
