"""trt_res2net: PaddleClas Res2Net classifiers → exact ONNX → FP16/INT8 → TensorRT / TensorRT-RTX engines → Triton.

The public API, one call per pipeline step (README "Use from Python")::

    import trt_res2net as tr

    fp32 = tr.export_onnx("res2net50_vd_26w_4s", "engines/r50.onnx", random_weights=True).path
    fp16 = tr.convert_precision(fp32, "fp16")                       # ModelOpt AutoCast (the quant extra)
    built = tr.build_engine(fp16, options=tr.EngineOptions(family="tensorrt-rtx"))
    with tr.Classifier(fp32) as clf:                                # .onnx or .engine
        print(clf.classify_image("cat.jpg"))
    tr.write_triton_repository("repo", fp32, engine_path=None)

Importing the package is light (numpy only): the names below are loaded on first use, and onnx, onnxruntime,
OpenCV, TensorRT, cuda-python and ModelOpt only inside the functions that need them. Everything not listed in
``__all__`` is internal and may move.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .core.version import __version__

if TYPE_CHECKING:  # what editors and type checkers see; at run time each name loads on first use (below)
    from .core.errors import MissingDependency, UserError
    from .data.calibration_set import CalibrationImages
    from .data.postprocess import load_labels
    from .data.preprocess import SPEC, ImageLimits, preprocess
    from .data.preprocess_spec import PreprocessSpec, spec_for_input
    from .data.recipe import InputRecipe, PreprocessOptions, choose_recipe
    from .data.sources import parse_source
    from .engine.build import BuiltEngine, build_engine, run_engine
    from .engine.cpu_build import CpuModel, CpuModelPlan, build_cpu_model, plan_cpu_model, run_cpu_model
    from .engine.cpu_manifest import CpuModelManifest
    from .engine.manifest import EngineManifest
    from .engine.options import EngineOptions
    from .engine.plan import EnginePlan, plan_engine
    from .model.export import ExportedOnnx, ExportOptions, ExportPlan, export_onnx, plan_export, run_export
    from .model.zoo import list_models
    from .precision.convert import ConvertedOnnx, PrecisionPlan, convert_precision, plan_precision, run_precision
    from .precision.options import PrecisionOptions
    from .precision.sidecar import PrecisionSidecar
    from .runtime.backend import open_backend
    from .runtime.benchmark import BenchmarkOptions, BenchmarkReport, benchmark_engine
    from .runtime.classifier import Classifier
    from .runtime.stream import (
        StreamOptions,
        StreamPlan,
        StreamResult,
        StreamRunner,
        StreamSummary,
        open_streams,
        plan_streams,
        run_streams,
    )
    from .runtime.tensorrt_backend import TensorRTBackend
    from .serving.client import TritonClassifier
    from .serving.repository import (
        RepositoryPlan,
        RepositoryRecord,
        TritonOptions,
        TritonRepository,
        plan_repository,
        run_repository,
        write_triton_repository,
    )
    from .serving.server import ServerOptions

# name → the module that defines it (loaded on first access: PEP 562)
_API = {
    # errors every call may raise: UserError (one line, exit 2), MissingDependency (what to install, exit 3)
    "UserError": "core.errors",
    "MissingDependency": "core.errors",
    # model
    "list_models": "model.zoo",
    "export_onnx": "model.export",
    "ExportedOnnx": "model.export",
    "ExportOptions": "model.export",
    "ExportPlan": "model.export",
    "plan_export": "model.export",
    "run_export": "model.export",
    # data
    "SPEC": "data.preprocess",
    "PreprocessSpec": "data.preprocess_spec",
    "spec_for_input": "data.preprocess_spec",
    "PreprocessOptions": "data.recipe",
    "InputRecipe": "data.recipe",
    "choose_recipe": "data.recipe",
    "preprocess": "data.preprocess",
    "ImageLimits": "data.preprocess",
    "load_labels": "data.postprocess",
    # precision
    "convert_precision": "precision.convert",
    "ConvertedOnnx": "precision.convert",
    "PrecisionPlan": "precision.convert",
    "plan_precision": "precision.convert",
    "run_precision": "precision.convert",
    "PrecisionSidecar": "precision.sidecar",
    "PrecisionOptions": "precision.options",
    "CalibrationImages": "data.calibration_set",
    # engine
    "build_engine": "engine.build",
    "BuiltEngine": "engine.build",
    "plan_engine": "engine.plan",
    "run_engine": "engine.build",
    "EnginePlan": "engine.plan",
    "EngineManifest": "engine.manifest",
    "EngineOptions": "engine.options",
    "plan_cpu_model": "engine.cpu_build",
    "run_cpu_model": "engine.cpu_build",
    "build_cpu_model": "engine.cpu_build",
    "CpuModelPlan": "engine.cpu_build",
    "CpuModel": "engine.cpu_build",
    "CpuModelManifest": "engine.cpu_manifest",
    # runtime
    "Classifier": "runtime.classifier",
    "TensorRTBackend": "runtime.tensorrt_backend",
    "open_backend": "runtime.backend",
    "benchmark_engine": "runtime.benchmark",
    "BenchmarkOptions": "runtime.benchmark",
    "BenchmarkReport": "runtime.benchmark",
    # video: files, cameras and network streams, batched (docs/streams.md)
    "open_streams": "runtime.stream",
    "StreamOptions": "runtime.stream",
    "StreamRunner": "runtime.stream",
    "StreamResult": "runtime.stream",
    "StreamSummary": "runtime.stream",
    "StreamPlan": "runtime.stream",
    "plan_streams": "runtime.stream",
    "run_streams": "runtime.stream",
    "parse_source": "data.sources",
    # serving
    "write_triton_repository": "serving.repository",
    "TritonOptions": "serving.repository",
    "TritonRepository": "serving.repository",
    "plan_repository": "serving.repository",
    "run_repository": "serving.repository",
    "RepositoryPlan": "serving.repository",
    "RepositoryRecord": "serving.repository",
    "ServerOptions": "serving.server",
    "TritonClassifier": "serving.client",
}

__all__ = [  # the public API: the TYPE_CHECKING imports above and _API below name the same
    "__version__",
    "UserError", "MissingDependency", "list_models",
    # each stage: plan_<stage> (every refusal, no work) → run_<stage> (the work) → its artefact; the one-call form
    "plan_export", "run_export", "ExportOptions", "ExportPlan", "ExportedOnnx", "export_onnx",
    "plan_precision", "run_precision", "PrecisionOptions", "PrecisionPlan", "ConvertedOnnx", "PrecisionSidecar",
    "CalibrationImages", "convert_precision",
    "plan_engine", "run_engine", "EngineOptions", "EnginePlan", "BuiltEngine", "EngineManifest", "build_engine",
    "plan_cpu_model", "run_cpu_model", "CpuModelPlan", "CpuModel", "CpuModelManifest", "build_cpu_model",
    "plan_repository", "run_repository", "TritonOptions", "RepositoryPlan", "TritonRepository", "RepositoryRecord",
    "write_triton_repository",
    "plan_streams", "run_streams", "StreamOptions", "StreamPlan", "StreamRunner", "StreamResult", "StreamSummary",
    "open_streams", "parse_source",
    # running models
    "SPEC", "PreprocessSpec", "spec_for_input", "PreprocessOptions", "InputRecipe", "choose_recipe",
    "preprocess", "ImageLimits", "load_labels", "Classifier", "TensorRTBackend", "open_backend",
    "benchmark_engine", "BenchmarkOptions", "BenchmarkReport", "ServerOptions", "TritonClassifier",
]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'trt_res2net' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
