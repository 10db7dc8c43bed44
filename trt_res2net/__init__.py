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
    from .data.sources import parse_source
    from .engine.build import BuiltEngine, build_engine
    from .engine.options import EngineOptions
    from .model.export import ExportedOnnx, export_onnx
    from .model.zoo import list_models
    from .precision.convert import ConvertedOnnx, convert_precision
    from .precision.options import PrecisionOptions
    from .runtime.backend import open_backend
    from .runtime.benchmark import BenchmarkOptions, BenchmarkReport, benchmark_engine
    from .runtime.classifier import Classifier
    from .runtime.stream import StreamOptions, StreamResult, StreamRunner, StreamSummary, open_streams
    from .serving.repository import TritonOptions, TritonRepository, write_triton_repository

# name → the module that defines it (loaded on first access: PEP 562)
_API = {
    # errors every call may raise: UserError (one line, exit 2), MissingDependency (what to install, exit 3)
    "UserError": "core.errors",
    "MissingDependency": "core.errors",
    # model
    "list_models": "model.zoo",
    "export_onnx": "model.export",
    "ExportedOnnx": "model.export",
    # data
    "SPEC": "data.preprocess",
    "preprocess": "data.preprocess",
    "ImageLimits": "data.preprocess",
    "load_labels": "data.postprocess",
    # precision
    "convert_precision": "precision.convert",
    "ConvertedOnnx": "precision.convert",
    "PrecisionOptions": "precision.options",
    "CalibrationImages": "data.calibration_set",
    # engine
    "build_engine": "engine.build",
    "BuiltEngine": "engine.build",
    "EngineOptions": "engine.options",
    # runtime
    "Classifier": "runtime.classifier",
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
    "parse_source": "data.sources",
    # serving
    "write_triton_repository": "serving.repository",
    "TritonOptions": "serving.repository",
    "TritonRepository": "serving.repository",
}

__all__ = [  # the public API: the TYPE_CHECKING imports above and _API below name the same
    "__version__",
    "UserError", "MissingDependency", "list_models", "export_onnx", "ExportedOnnx", "SPEC", "preprocess",
    "ImageLimits", "load_labels", "convert_precision", "ConvertedOnnx", "PrecisionOptions", "CalibrationImages",
    "build_engine", "BuiltEngine", "EngineOptions", "Classifier", "open_backend", "benchmark_engine",
    "BenchmarkOptions", "BenchmarkReport", "open_streams", "StreamOptions", "StreamRunner", "StreamResult",
    "StreamSummary", "parse_source", "write_triton_repository", "TritonOptions", "TritonRepository",
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
