"""The runtime interface: a Backend runs NCHW float32 batches; :func:`open_backend` picks one for a model file.

ONNX Runtime runs ``.onnx`` files on every machine (CUDA execution provider when present, else CPU); TensorRT
engines (``.engine`` / ``.plan``) are run by ``trt_res2net.runtime.tensorrt_backend.TensorRTBackend``, imported only
when such a file is opened. Any classification model that meets the contract of ``trt_res2net.model.contract`` runs,
whatever its tensor names (e.g. a paddle2onnx export of a fine-tuned PaddleClas model).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..core import log
from ..core.errors import MissingDependency, UserError
from ..data.recipe import InputRecipe, recorded_spec

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")
CPU_MODEL_SUFFIXES = (".xml",)  # the CPU model (engine.cpu_build): OpenVINO IR with its manifest
TRT_INSTALL_HINT = (
    "running engines needs cuda-python, an NVIDIA GPU and the engine's library: TensorRT (pip install "
    "'trt-res2net[trt]' on x86, JetPack's python3-libnvinfer on Jetson) or TensorRT-RTX (pip install "
    "'trt-res2net[rtx,nvrtc]'); .onnx files run anywhere with ONNX Runtime"
)


@runtime_checkable
class Backend(Protocol):
    """What a Classifier needs from an inference engine.

    ``max_batch`` is None for a dynamic batch dimension, else the most images one ``run`` takes; ``fixed_batch``:
    it must get exactly ``max_batch`` images. ``run`` takes float32 [n, 3, H, W] and returns float32
    [n, num_classes]; ``recipe`` (``data.recipe.InputRecipe``) is the preprocessing that makes its H×W inputs.
    ``gpu_preprocessing``: whether ``classify_bgr`` (a :class:`GpuBackend`) takes decoded images
    straight to the GPU. ``describe`` is one line for people; ``close`` releases what the backend holds;
    ``metadata``: the model's metadata properties (an ONNX's; empty for an engine, whose manifest is checked).
    """

    input_name: str
    output_name: str
    num_classes: int
    max_batch: int | None
    fixed_batch: bool
    outputs_probabilities: bool
    gpu_preprocessing: bool
    metadata: dict[str, str]
    recipe: InputRecipe

    def run(self, batch_nchw_float32: np.ndarray) -> np.ndarray: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


@runtime_checkable
class GpuBackend(Backend, Protocol):
    """A backend that preprocesses decoded BGR images and takes their top-k on the GPU; ``first_run_ms``: the host
    time of each batch size's first run (TensorRT-RTX compiles its kernels then), ``runtime_cache`` the file that
    keeps them (or None)."""

    first_run_ms: dict[int, float]
    runtime_cache: object

    def classify_bgr(self, images: Sequence[np.ndarray], k: int = 5): ...


def open_backend(path: str | os.PathLike, **kwargs) -> Backend:
    """The backend for a model file: ``.onnx`` → ONNX Runtime, ``.engine``/``.plan`` → TensorRT or TensorRT-RTX
    (the engine's family decides), ``.xml`` → the CPU model on OpenVINO."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in ONNX_SUFFIXES + ENGINE_SUFFIXES + CPU_MODEL_SUFFIXES:
        raise UserError(f"{p}: unsupported model file; expected .onnx, .engine or .plan, or a CPU model's .xml")
    if not p.is_file():
        raise UserError(f"{p}: no such model file")
    if suffix in CPU_MODEL_SUFFIXES:
        from .openvino_backend import OpenVinoBackend

        return OpenVinoBackend(p, **kwargs)
    if suffix in ONNX_SUFFIXES:
        from .onnx_runtime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(p, **kwargs)
    try:
        from .tensorrt_backend import TensorRTBackend
    except ImportError as e:
        raise MissingDependency(f"{p}: {TRT_INSTALL_HINT} ({e})") from None
    return TensorRTBackend(p, **kwargs)


def backend_preprocesses_on_gpu(backend: Backend) -> bool:
    """Whether ``backend`` takes decoded images and preprocesses them on the GPU (``classify_bgr``)."""
    return isinstance(backend, GpuBackend) and backend.gpu_preprocessing


def warn_about_metadata(backend: Backend, model: str | os.PathLike) -> None:
    """Warn when the model's metadata says its predictions are not to be trusted here: our exporter records the
    preprocessing spec (fed unless the user states another: then it is said) and random weights."""
    metadata = backend.metadata  # an ONNX's metadata properties (strings)
    recorded = recorded_spec(metadata.get("preprocessing"), str(model))
    if recorded is not None and recorded != backend.recipe.spec:
        log.warn(f"{model} records the preprocessing {recorded.describe()}; fed {backend.recipe.describe()}")
    if str(metadata.get("weights", "")).startswith("random"):
        log.warn(f"{model} was built with {metadata['weights']} weights: its predictions mean nothing")
