"""A Triton Inference Server model repository from what build.py made (``build.py ... --triton-repo DIR``):
:func:`plan_repository` reads and checks what goes in and makes every refusal, :func:`run_repository` writes it;
:func:`write_triton_repository` is the two in one call.

For a model ``M`` (the zoo name, or the ONNX file's stem) the repository holds::

    M_preprocess/            python        image bytes (TYPE_STRING) → float32 [3,H,W]: trt_res2net.data.preprocess
    M_classifier_plan/       tensorrt_plan the TensorRT engine as 1/model.plan (only when a standard TensorRT
                                           engine was built; batch and dims from its manifest)
    M_classifier_onnx/       onnxruntime_onnx   the ONNX as 1/model.onnx (always: CPU nodes, and the fallback),
                                           its external data files beside it under their own names
    M_classifier_openvino/   openvino      the CPU model (build.py --engine-family cpu) as 1/model.xml + .bin (only
                                           when one was made)
    M_postprocess/           python        outputs → PROBABILITIES, TOPK_IDS, TOPK_SCORES, TOPK_LABELS
    M_plan, M_openvino, M_onnx ensemble    IMAGE → preprocess → that classifier → postprocess
    M                        ensemble      the same as M_plan when there is a plan, else M_openvino, else M_onnx
    M_python/                python        IMAGE → the same three steps in one process, the ONNX on ONNX Runtime
                                           (or the CPU model on OpenVINO, when there is one) inside the Python
                                           backend (any Triton with the Python backend)
    trt_res2net_repository.json            what was exported, from what (:class:`RepositoryRecord`)

Every classifier takes the ONNX's input name and gives its output name; the ensembles and ``M_python`` (the image
models) take ``IMAGE`` (encoded image bytes, any format OpenCV decodes, one per batch row) and give what
``infer.py`` prints. ``M_python`` needs nothing but Triton's Python backend (and numpy, OpenCV, ONNX Runtime in
its Python): its steps are the Python models' own (``triton_models/steps.py``), run back to back, which saves
each request two hand-offs (docs/triton.md).

What a public endpoint meets is bounded in the configs (docs/triton.md, "Hostile input and load"): the
preprocessing refuses an image over ``max_image_bytes`` or whose header declares more than ``max_image_pixels``
before decoding it (``INVALID_ARG``: HTTP 400 / gRPC ``INVALID_ARGUMENT``, as every undecodable image); every
model's queue is bounded and a request waiting longer than the queue timeout is rejected (HTTP 503 /
``UNAVAILABLE``); every model that initialises lazily is warmed up before it reports ready; the Python model's
instances split the serving machine's cores between them (``intra_op_threads``).

Every config is built as Triton's own ModelConfig message (``tritonclient``'s ``model_config_pb2``) from the ONNX
and the engine manifest, and written with ``text_format``; the repository is built in a temporary folder beside
DIR and renamed into place, so DIR is either the old repository or the complete new one.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core import log
from ..core.version import __version__
from ..data.recipe import FROM_MODEL, PreprocessOptions
from . import model_configs as mc
from .model_configs import ENSEMBLE_OUTPUTS, VENDORED_PACKAGE
from .repository_files import (
    VENDORED_MODULES,
    WARMUP_IMAGE,
    ModelFolder,
    template,
    vendored_files,
    warmup_image,
    write_atomically,
)
from .repository_plan import (
    ModelNames,
    RepositoryPlan,
    check_repository_target,
    data_location_clash,
    plan_repository,
)
from .repository_record import (
    REPOSITORY_FILE,
    RecordedCpuModel,
    RecordedEngine,
    RecordedEnsemble,
    RecordedOnnx,
    RepositoryRecord,
    read_record,
)
from .triton_options import (
    DEFAULT_MAX_BATCH,
    DEFAULT_QUEUE_DELAY_US,
    DEFAULT_QUEUE_TIMEOUT_MS,
    DEFAULT_TOPK,
    QUEUE_SIZE_PER_BATCH,
    TritonOptions,
)
from .triton_proto import INSTALL_HINT, model_config_pb2, parse_config

__all__ = [
    "DEFAULT_MAX_BATCH", "DEFAULT_QUEUE_DELAY_US", "DEFAULT_QUEUE_TIMEOUT_MS", "DEFAULT_TOPK", "ENSEMBLE_OUTPUTS",
    "INSTALL_HINT", "QUEUE_SIZE_PER_BATCH", "REPOSITORY_FILE", "VENDORED_MODULES", "VENDORED_PACKAGE",
    "ModelNames", "RepositoryPlan", "RepositoryRecord", "TritonOptions", "TritonRepository", "check_repository_target",
    "model_config_pb2", "parse_config", "plan_repository", "read_record", "run_repository", "write_triton_repository",
]


@dataclass(frozen=True)
class TritonRepository:
    """A Triton model repository as written: its folder, the models and ensembles in it, the models a client sends
    images to, the default one, why no TensorRT plan model is in it (if none is), each model's ModelConfig, and
    the record it carries."""

    path: Path
    models: list[str]
    ensembles: list[str]
    image_models: list[str]  # what a client sends images to: the ensembles and the pipeline
    default_ensemble: str
    engine_skipped: str | None = None
    configs: dict = field(default_factory=dict)
    record: RepositoryRecord | None = None


# --------------------------------------------------------------------------------------------------------
# Run


def _ensembles(plan: RepositoryPlan) -> dict[str, tuple[str, int, str]]:
    """Ensemble name → (classifier, max batch, variant): one per classifier, and ``M`` as the plan's (else the
    ONNX's)."""
    n = plan.names
    classifiers = {"onnx": (n.classifier_onnx, plan.max_batch)}
    if plan.cpu_model is not None:
        classifiers = {"openvino": (n.classifier_openvino, plan.max_batch), **classifiers}
    if plan.engine is not None:
        classifiers = {"plan": (n.classifier_plan, plan.engine.max_batch), **classifiers}
    ensembles = {f"{plan.model_name}_{variant}": (name, min(plan.max_batch, cmax), variant)
                 for variant, (name, cmax) in classifiers.items()}
    default_variant = next(iter(classifiers))  # the engine, else the CPU model, else the ONNX
    ensembles[plan.model_name] = ensembles[f"{plan.model_name}_{default_variant}"]
    return ensembles


def _models(plan: RepositoryPlan, ensembles: dict) -> dict[str, ModelFolder]:
    """Every model folder of the repository, by model name."""
    n, labels = plan.names, "".join(f"{label}\n" for label in plan.labels)
    vendored, image = vendored_files(), warmup_image()
    models = {
        n.preprocess: ModelFolder(*mc.preprocess_config(plan),
                                  [("1/model.py", template("preprocess")), (WARMUP_IMAGE, image), *vendored]),
        n.postprocess: ModelFolder(*mc.postprocess_config(plan),
                                   [("1/model.py", template("postprocess")), ("labels.txt", labels), *vendored]),
    }
    if plan.engine is not None:
        models[n.classifier_plan] = ModelFolder(*mc.plan_classifier_config(plan, plan.engine),
                                                [("1/model.plan", plan.engine.engine_path)])
    for location in plan.onnx_data:  # (the plan checked the other names of the folder)
        if location.replace("\\", "/").split("/")[0] == VENDORED_PACKAGE:
            raise data_location_clash(plan.onnx_path, location)
    onnx_files = [("1/model.onnx", plan.onnx_path),  # its data files beside it, where its locations say
                  *((f"1/{location}", plan.onnx_path.parent / location) for location in plan.onnx_data)]
    models[n.classifier_onnx] = ModelFolder(*mc.onnx_classifier_config(plan), onnx_files)
    cpu_files = []
    if plan.cpu_model is not None:  # Triton's OpenVINO backend reads 1/model.xml and 1/model.bin
        cpu_files = [("1/model.xml", plan.cpu_model), ("1/model.bin", plan.cpu_model.with_suffix(".bin"))]
        models[n.classifier_openvino] = ModelFolder(*mc.openvino_classifier_config(plan), cpu_files)
    for name, (classifier, max_batch, variant) in ensembles.items():
        models[name] = ModelFolder(*mc.ensemble_config(plan, name, classifier, max_batch, variant),
                                   [("1/.keep", ""), ("labels.txt", labels)])
    models[n.python] = ModelFolder(*mc.pipeline_config(plan),
                                   [("1/model.py", template("pipeline")), *onnx_files, *cpu_files,
                                    (WARMUP_IMAGE, image), ("labels.txt", labels), *vendored])
    return models


def _record(plan: RepositoryPlan, models: dict, ensembles: dict) -> RepositoryRecord:
    o, engine, io = plan.options, plan.engine, plan.io
    return RepositoryRecord(
        model=plan.model_name, default_ensemble=plan.model_name,
        ensembles={name: RecordedEnsemble(classifier=e[0], variant=e[2]) for name, e in ensembles.items()},
        pipeline=plan.names.python, models=tuple(sorted(models)),
        onnx=RecordedOnnx(file=plan.onnx_path.name, sha256=plan.onnx_sha256, input=io.input_name,
                          output=io.output_name, outputs_probabilities=io.outputs_probabilities,
                          data_files=plan.onnx_data),
        engine=None if engine is None else RecordedEngine(
            file=engine.engine_path.name, sha256=engine.manifest.engine_sha256,
            tensorrt_version=engine.manifest.library_version, precision=engine.manifest.precision,
            gpu=None if engine.manifest.gpu is None else engine.manifest.gpu.to_json(), max_batch=engine.max_batch),
        engine_skipped=plan.engine_skipped, max_batch_size=plan.max_batch, queue_delay_us=o.queue_delay_us,
        instances=o.instances, preprocess_instances=o.preprocess_instances, intra_op_threads=o.intra_op_threads,
        max_queue_size=o.queue_size(plan.max_batch), queue_timeout_ms=o.queue_timeout_ms,
        max_image_pixels=o.max_image_pixels, max_image_bytes=o.max_image_bytes, topk=plan.topk,
        num_classes=plan.num_classes, preprocess=plan.recipe.spec.to_dict(),
        preprocess_sha256=plan.recipe.spec.sha256(),
        trt_res2net_version=__version__, cpu_model=None if plan.cpu_model is None else RecordedCpuModel(
            file=plan.cpu_model.name, sha256=plan.cpu_manifest.files[plan.cpu_model.name],
            precision=plan.cpu_manifest.precision, openvino_version=plan.cpu_manifest.library_version),
        written_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def run_repository(plan: RepositoryPlan) -> TritonRepository:
    """Write the repository ``plan`` describes (module docstring) to ``plan.out_dir``, atomically; what it holds."""
    if plan.engine_skipped:
        log.warn(f"Triton repository: {plan.engine_skipped}")
    ensembles = _ensembles(plan)
    models = _models(plan, ensembles)
    record = _record(plan, models, ensembles)
    write_atomically(plan.out_dir, models, record.to_json())
    return TritonRepository(path=plan.out_dir, models=sorted(models), ensembles=sorted(ensembles),
                            image_models=sorted([*ensembles, plan.names.python]),
                            default_ensemble=plan.model_name, engine_skipped=plan.engine_skipped,
                            configs={name: folder.config for name, folder in models.items()}, record=record)


def write_triton_repository(out_dir: str | os.PathLike, onnx_path: str | os.PathLike, *,
                            model_name: str | None = None, engine_path: str | os.PathLike | None = None,
                            options: TritonOptions | None = None,
                            preprocess: PreprocessOptions = FROM_MODEL,
                            cpu_model_path: str | os.PathLike | None = None) -> TritonRepository:
    """Write the repository (module docstring) to ``out_dir``, atomically; returns what it holds.

    ``onnx_path`` is the FP32 ONNX (the ONNX models are the exact graph); ``engine_path`` a built engine with its
    manifest (None: ONNX models only) — a TensorRT-RTX engine, or one Triton's dynamic batcher cannot drive, is
    left out with a one-line warning. ``model_name`` (default: the ONNX's stem) names the models; ``preprocess``:
    the model's recipe where its user states it (``data.recipe``); ``cpu_model_path``: the CPU model made from
    the ONNX (``engine.cpu_build``), served by Triton's OpenVINO backend and run in process by the pipeline model."""
    return run_repository(plan_repository(out_dir, onnx_path, model_name=model_name, engine_path=engine_path,
                                          options=options, preprocess=preprocess, cpu_model_path=cpu_model_path))
