"""TensorRT-RTX engines on a GPU (``pytest -m gpu``): built by NVIDIA's real builder from a small Res2Net with
fitted BN statistics, run through TensorRTBackend with tensorrt_rtx, checked against ONNX Runtime; the runtime
cache beside the engine; the library's CUDA-graph strategy; the GPU preprocessing path.

Needs tensorrt_rtx (the ``rtx`` extra), cuda-python and an NVIDIA GPU that TensorRT-RTX targets (compute
capability 7.5, 8.x, 12.x — not Hopper, not Jetson); everything is skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from trt_res2net import builder, manifest, trt_compat
from trt_res2net.errors import MissingDependency

from trt_fakes import write_images  # isort: skip

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def rtx_gpu():
    try:
        library = trt_compat.import_library("tensorrt-rtx")
    except MissingDependency as e:
        pytest.skip(str(e).split(";")[0])
    try:
        gpu = manifest.detect_gpu()
    except MissingDependency as e:
        pytest.skip(str(e).split(";")[0])
    cc = gpu.compute_capability
    if cc not in trt_compat.RTX_TARGETS and trt_compat.cc_key(cc) < trt_compat.cc_key("12.1"):
        pytest.skip(f"{gpu.name} (compute capability {cc}) is not a TensorRT-RTX target")
    return library, gpu


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_spec, tiny_weights):
    """The tiny Res2Net with BN statistics fitted to generated images (realistic activations), its ONNX, and
    preprocessed held-out images."""
    import cv2

    from trt_res2net.onnx_export import export_onnx
    from trt_res2net.preprocess import preprocess_bgr
    from trt_res2net.reference import fit_bn_statistics

    root = tmp_path_factory.mktemp("gpu_rtx")
    calib = write_images(root / "calib", n=16, seed=1, size=(300, 240))
    held = write_images(root / "eval", n=8, seed=2, size=(280, 260))

    def arr(paths):
        return np.stack([preprocess_bgr(cv2.imread(str(p))) for p in paths])

    state = fit_bn_statistics(tiny_spec, tiny_weights, arr(calib))
    onnx_path = export_onnx(tiny_spec, state, root / "tiny_fitted.onnx")
    return {"onnx": onnx_path, "eval": arr(held), "eval_paths": held}


def _ort(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _build(tmp_path, onnx_path, *argv):
    p = argparse.ArgumentParser()
    p.add_argument("--quiet", action="store_true")
    builder.add_cli_arguments(p)
    args = p.parse_args(["--quiet", "--engine-family", "tensorrt-rtx", "--engine-dir", str(tmp_path), "--max-batch",
                         "8", *argv])
    return builder.run_engine_step(args, onnx_path, "tiny", "fp32", onnx_path)


def test_portable_engine_matches_onnxruntime_and_keeps_its_runtime_cache(rtx_gpu, fitted, tmp_path):
    from trt_res2net.trt_runtime import TensorRTBackend

    engine = _build(tmp_path, fitted["onnx"])  # the default, portable targets
    x = fitted["eval"]
    ref = _ort(fitted["onnx"], x)
    backend = TensorRTBackend(engine)
    got = backend.run(x)
    first = dict(backend.first_run_ms)
    backend.close()
    # TF32 is on by default (as in TensorRT): allow its ~1e-3 relative error on the logits
    assert np.abs(got - ref).max() <= 2e-3 * np.abs(ref).max() + 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    cache = backend.runtime_cache.path
    assert cache.is_file() and cache.stat().st_size > 0
    again = TensorRTBackend(engine)
    np.testing.assert_allclose(again.run(x), got, rtol=1e-5, atol=1e-5)
    print(f"first run, batch 8: {first[8]:.1f} ms compiling, {again.first_run_ms[8]:.1f} ms from the runtime cache")
    again.close()


def test_library_cuda_graphs_give_the_same_answers(rtx_gpu, fitted, tmp_path):
    from trt_res2net.trt_runtime import TensorRTBackend

    engine = _build(tmp_path, fitted["onnx"])
    x = fitted["eval"][:4]
    plain = TensorRTBackend(engine, runtime_cache=False)
    graphed = TensorRTBackend(engine, runtime_cache=False, cuda_graph=True)
    expected = plain.run(x)
    for _ in range(3):
        np.testing.assert_allclose(graphed.run(x), expected, rtol=1e-5, atol=1e-5)
    assert graphed.time_compute_ms(4) > 0
    plain.close()
    graphed.close()


def test_gpu_preprocessing_top5_equals_the_cpu_path(rtx_gpu, fitted, tmp_path):
    from trt_res2net.runtime import Classifier

    engine = _build(tmp_path, fitted["onnx"])
    gpu = list(Classifier(engine, topk=5, gpu_preprocess=True).classify(fitted["eval_paths"]))
    cpu = list(Classifier(engine, topk=5, gpu_preprocess=False).classify(fitted["eval_paths"]))
    for a, b in zip(gpu, cpu, strict=True):
        assert [e["class_id"] for e in a["topk"]] == [e["class_id"] for e in b["topk"]]


def test_engine_for_this_gpu_alone(rtx_gpu, fitted, tmp_path):
    _, gpu = rtx_gpu
    engine = _build(tmp_path, fitted["onnx"], "--compute-capability", "current")
    m = manifest.read_manifest(engine)
    assert m["gpu"]["name"] == gpu.name and gpu.compute_capability in m["compute_capabilities"]
