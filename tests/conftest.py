"""Shared fixtures: small Res2Nets built by the same code as the full-size ones."""

from __future__ import annotations

import numpy as np
import pytest

from trt_res2net.model import weights as W
from trt_res2net.model import zoo


@pytest.fixture(scope="session")
def tiny_spec() -> zoo.ModelSpec:
    """res2net50_vd_26w_4s reduced to width 4 and one block per stage: every code path, a tiny graph."""
    return zoo.get_model("res2net50_vd_26w_4s").reduced(width=4, depths=(1, 1, 1, 1))


@pytest.fixture(scope="session")
def tiny_weights(tiny_spec) -> dict[str, np.ndarray]:
    return W.random_weights(tiny_spec, seed=0)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_spec, tiny_weights):
    """Path of the tiny model's FP32 ONNX (input 'input' [N,3,224,224], output 'logits' [N,1000])."""
    from trt_res2net.model.onnx_export import write_onnx

    path = tmp_path_factory.mktemp("tiny") / f"{tiny_spec.name}.onnx"
    return write_onnx(tiny_spec, tiny_weights, path, metadata={"weights": "random (seed 0)"})


# ---------------------------------------------------------------------------------------------------------
# GPU tests (pytest -m gpu): a library of one family with a GPU, or a skip saying what is missing


def _library_and_gpu(family: str):
    from trt_res2net.core.errors import MissingDependency
    from trt_res2net.cuda.device import detect_gpu
    from trt_res2net.engine import trt_compat

    try:
        library = trt_compat.import_library(family)
        gpu = detect_gpu()
    except MissingDependency as e:
        pytest.skip(str(e).split(";")[0])  # e.g. "TensorRT is not importable (...)", "no usable NVIDIA GPU: ..."
    return library, gpu


@pytest.fixture(scope="session")
def trt_gpu():
    """(TensorRT's version, the GPU) for standard TensorRT engines."""
    library, gpu = _library_and_gpu("tensorrt")
    return library.version, gpu


@pytest.fixture(scope="session")
def rtx_gpu():
    """(TensorRT-RTX, the GPU), skipped on a GPU that TensorRT-RTX does not target (Hopper, Jetson)."""
    from trt_res2net.engine import trt_compat

    library, gpu = _library_and_gpu("tensorrt-rtx")
    cc = gpu.cc
    if not trt_compat.rtx_runs_on(cc, trt_compat.RTX_TARGETS, and_later=True):
        pytest.skip(f"{gpu.name} (compute capability {cc}) is not a TensorRT-RTX target")
    return library, gpu


@pytest.fixture(scope="session")
def gpu_images(tmp_path_factory):
    """Calibration and evaluation images (generated, disjoint), their paths and preprocessed arrays."""
    import cv2
    from trt_fakes import write_images

    from trt_res2net.data.preprocess import preprocess_bgr

    root = tmp_path_factory.mktemp("gpu_images")
    calib = write_images(root / "calib", n=32, seed=1, size=(300, 240))
    held = write_images(root / "eval", n=12, seed=2, size=(280, 260))

    def arr(paths):
        return np.stack([preprocess_bgr(cv2.imread(str(p))) for p in paths])

    return {"calib_dir": root / "calib", "calib": arr(calib), "eval": arr(held), "eval_paths": held}


@pytest.fixture(scope="session")
def fitted_onnx(tmp_path_factory, tiny_spec, tiny_weights, gpu_images):
    """The tiny Res2Net with BN statistics fitted to generated images (realistically scaled activations)."""
    from trt_res2net.model.onnx_export import write_onnx
    from trt_res2net.model.reference import fit_bn_statistics

    fitted = fit_bn_statistics(tiny_spec, tiny_weights, gpu_images["calib"])
    return write_onnx(tiny_spec, fitted, tmp_path_factory.mktemp("gpu_onnx") / "tiny_fitted.onnx")


@pytest.fixture(autouse=True)
def _normal_log_level():
    """build.py --quiet/--verbose set the project's log level for the process: each test starts at the default."""
    from trt_res2net.core import log

    log.configure("normal")
    yield
    log.configure("normal")
