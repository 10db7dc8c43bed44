"""The plan of a Triton repository (:func:`plan_repository`): what goes in, read and checked before anything is
written — the target folder, tritonclient, the model name, the FP32 ONNX, its labels and the engine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import UserError
from ..data.recipe import FROM_MODEL, PADDLECLAS_RECIPE, InputRecipe, PreprocessOptions
from ..engine.cpu_manifest import CpuModelManifest
from .repository_record import REPOSITORY_FILE
from .served_engine import ServedEngine, dims, read_served_engine
from .triton_options import DEFAULT_MAX_BATCH, TritonOptions
from .triton_proto import model_config_pb2

if TYPE_CHECKING:
    from ..model.contract import OnnxIO


@dataclass(frozen=True)
class ModelNames:
    """The repository's model names, each ``<model>_<step>``."""

    model: str

    @property
    def preprocess(self) -> str:
        return f"{self.model}_preprocess"

    @property
    def postprocess(self) -> str:
        return f"{self.model}_postprocess"

    @property
    def classifier_plan(self) -> str:
        return f"{self.model}_classifier_plan"

    @property
    def classifier_onnx(self) -> str:
        return f"{self.model}_classifier_onnx"

    @property
    def classifier_openvino(self) -> str:
        return f"{self.model}_classifier_openvino"

    @property
    def python(self) -> str:
        return f"{self.model}_python"


@dataclass(frozen=True)
class RepositoryPlan:
    """What :func:`run_repository` writes, checked: the target folder, the model name, the FP32 ONNX (its I/O,
    classes and labels, its external data files), the engine when Triton can serve it (else why not), the batch and
    the top-k."""

    out_dir: Path
    onnx_path: Path
    model_name: str
    options: TritonOptions
    onnx_sha256: str
    io: OnnxIO
    num_classes: int
    labels: tuple[str, ...]
    engine: ServedEngine | None
    engine_skipped: str | None
    max_batch: int
    topk: int
    onnx_data: tuple[str, ...] = ()  # the ONNX's external data files, relative to its folder (copied beside it)
    recipe: InputRecipe = PADDLECLAS_RECIPE  # the preprocessing the served models feed it (data.recipe)
    cpu_model: Path | None = None  # the CPU model (an OpenVINO .xml) made from the ONNX, served beside it
    cpu_manifest: CpuModelManifest | None = None

    @property
    def names(self) -> ModelNames:
        return ModelNames(self.model_name)

    @property
    def classifier_dims(self) -> tuple[list[int], list[int]]:
        """The classifiers' input and output dims without the batch (a symbolic class dimension: the classes)."""
        out_dims = dims(self.io.output_shape)[1:]
        return dims(self.io.input_shape)[1:], [self.num_classes if d == -1 and i == 0 else d
                                               for i, d in enumerate(out_dims)]



def check_repository_target(path: str | os.PathLike) -> Path:
    """Before any work: tritonclient (for the proto) is here and ``path`` can become a repository."""
    path = Path(path)
    model_config_pb2()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    return path


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"plan_repository.out_dir='{out_dir}' exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / REPOSITORY_FILE).is_file():
            raise UserError(f"plan_repository.out_dir='{out_dir}' is a folder that build.py did not write (no "
                            f"{REPOSITORY_FILE}); name a new or empty folder")


def _safe_name(name: str) -> bool:
    return bool(name) and all(ch.isalnum() or ch in "_-." for ch in name) and not name.startswith(".")


def _num_classes(onnx_path: Path, io, preprocess: PreprocessOptions) -> int:
    if io.io.num_classes:
        return int(io.io.num_classes)
    from ..runtime.onnx_runtime import OnnxRuntimeBackend  # a symbolic class dimension: one probe batch tells

    return int(OnnxRuntimeBackend(onnx_path, preprocess=preprocess).num_classes)


# What a model's version folder holds besides the ONNX's data files (repository.py): no location may be one of them.
_VERSION_FOLDER_FILES = ("model.onnx", "model.py", "model.plan")


def _onnx_data(onnx_path: Path) -> tuple[str, ...]:
    """The ONNX's external data files (relative locations), which go beside ``1/model.onnx`` under the same
    names, so that its ``location`` fields hold there; checked to exist and to clash with no file of the folder."""
    from ..core.onnx_files import check_onnx_files, external_data_locations

    check_onnx_files(onnx_path)
    locations = external_data_locations(onnx_path)
    for location in locations:
        if location in _VERSION_FOLDER_FILES:
            raise data_location_clash(onnx_path, location)
    return locations


def data_location_clash(onnx_path: Path, location: str) -> UserError:
    return UserError(f"{onnx_path} keeps its weights in {location!r}, a name the Triton model folder uses for its "
                     "own file: save the ONNX with another external data location")


def plan_repository(out_dir: str | os.PathLike, onnx_path: str | os.PathLike, *, model_name: str | None = None,
                    engine_path: str | os.PathLike | None = None,
                    options: TritonOptions | None = None,
                    preprocess: PreprocessOptions = FROM_MODEL,
                    cpu_model_path: str | os.PathLike | None = None) -> RepositoryPlan:
    """Check what :func:`write_triton_repository` gets, before anything is written: tritonclient is here, ``out_dir``
    is new, empty or a repository written before, the model name is a Triton name, the ONNX has a dynamic batch,
    the labels fit, the engine's manifest agrees with the ONNX (an engine Triton cannot drive is left out, why
    in ``engine_skipped``)."""
    from ..core.hashing import sha256_onnx
    from ..data.postprocess import load_labels
    from ..model.contract import inspect_onnx, onnx_recipe

    options = options or TritonOptions()
    model_config_pb2()  # a missing tritonclient stops here
    out_dir, onnx_path = Path(out_dir), Path(onnx_path)
    model_name = model_name or onnx_path.stem
    _check_replaceable(out_dir)
    if not _safe_name(model_name):
        raise UserError(f"model name {model_name!r} is not a Triton model name (letters, digits, '_', '-', '.')")
    io = inspect_onnx(onnx_path, dtypes=("float32",))  # the ensembles feed float32
    if io.batch is not None:
        raise UserError(f"{onnx_path}: input {io.input_name!r} has a fixed batch of {io.batch}; Triton's dynamic "
                        "batching needs a dynamic batch dimension (export it with one)")
    recipe = onnx_recipe(onnx_path, preprocess)
    num_classes = _num_classes(onnx_path, io, preprocess)
    labels = load_labels(options.labels, num_classes)
    if any("\n" in label or "\r" in label for label in labels):
        raise UserError("a class label contains a line break; Triton's label files hold one label per line")
    onnx_data = _onnx_data(onnx_path)
    onnx_sha = sha256_onnx(onnx_path)
    engine, skipped = (None, None) if engine_path is None else read_served_engine(engine_path, io, onnx_sha)
    cpu_model, cpu_manifest = _served_cpu_model(cpu_model_path, onnx_path, onnx_sha)
    return RepositoryPlan(out_dir=out_dir, onnx_path=onnx_path, model_name=model_name, options=options,
                          onnx_sha256=onnx_sha, io=io, num_classes=num_classes, labels=tuple(labels), engine=engine,
                          engine_skipped=skipped,
                          max_batch=options.max_batch or (engine.max_batch if engine else DEFAULT_MAX_BATCH),
                          topk=min(options.topk, num_classes), onnx_data=onnx_data, recipe=recipe,
                          cpu_model=cpu_model, cpu_manifest=cpu_manifest)


def _served_cpu_model(path, onnx_path: Path, onnx_sha: str):
    """The CPU model and its manifest, which must be of this ONNX; (None, None) without one."""
    if path is None:
        return None, None
    from ..engine.cpu_manifest import read_manifest

    path = Path(path)
    manifest = read_manifest(path)
    if manifest.source_onnx_sha256 != onnx_sha:
        raise UserError(f"{path} was made from another ONNX than {onnx_path} (its manifest's source_onnx_sha256 "
                        "differs): make it again from this one")
    return path, manifest
