"""TensorRT-RTX engines on a GPU (``pytest -m gpu``): built by NVIDIA's real builder from a small Res2Net with
fitted BN statistics, run through TensorRTBackend with tensorrt_rtx, checked against ONNX Runtime; the runtime
cache beside the engine; the library's CUDA-graph strategy; the GPU preprocessing path.

Needs tensorrt_rtx (the ``rtx`` extra), cuda-python and an NVIDIA GPU that TensorRT-RTX targets (compute
capability 7.5, 8.x, 12.x — not Hopper, not Jetson); everything is skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from trt_res2net.cli.build import build_parser, engine_options
from trt_res2net.engine import manifest
from trt_res2net.engine.build import build_engine

pytestmark = pytest.mark.gpu  # fixtures rtx_gpu, fitted_onnx and gpu_images: tests/conftest.py


def _ort(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _build(tmp_path, onnx_path, *argv):
    args = build_parser().parse_args(["--onnx", str(onnx_path), "--quiet", "--engine-family", "tensorrt-rtx",
                                      "--engine-dir", str(tmp_path), "--max-batch", "8", *argv])
    return build_engine(onnx_path, "fp32", engine_options(args), model_name="tiny").path


def test_portable_engine_matches_onnxruntime_and_keeps_its_runtime_cache(rtx_gpu, fitted_onnx, gpu_images, tmp_path):
    from trt_res2net.runtime.tensorrt_backend import TensorRTBackend

    engine = _build(tmp_path, fitted_onnx)  # the default, portable targets
    x = gpu_images["eval"][:8]
    ref = _ort(fitted_onnx, x)
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


def test_library_cuda_graphs_give_the_same_answers(rtx_gpu, fitted_onnx, gpu_images, tmp_path):
    from trt_res2net.runtime.tensorrt_backend import TensorRTBackend

    engine = _build(tmp_path, fitted_onnx)
    x = gpu_images["eval"][:4]
    plain = TensorRTBackend(engine, runtime_cache=False)
    graphed = TensorRTBackend(engine, runtime_cache=False, cuda_graph=True)
    expected = plain.run(x)
    for _ in range(3):
        np.testing.assert_allclose(graphed.run(x), expected, rtol=1e-5, atol=1e-5)
    assert graphed.time_compute_ms(4) > 0
    plain.close()
    graphed.close()


def test_gpu_preprocessing_top5_equals_the_cpu_path(rtx_gpu, fitted_onnx, gpu_images, tmp_path):
    from trt_res2net.runtime.classifier import Classifier

    engine = _build(tmp_path, fitted_onnx)
    gpu = list(Classifier(engine, topk=5, gpu_preprocess=True).classify(gpu_images["eval_paths"]))
    cpu = list(Classifier(engine, topk=5, gpu_preprocess=False).classify(gpu_images["eval_paths"]))
    for a, b in zip(gpu, cpu, strict=True):
        assert [e["class_id"] for e in a["topk"]] == [e["class_id"] for e in b["topk"]]


def test_engine_for_this_gpu_alone(rtx_gpu, fitted_onnx, tmp_path):
    _, gpu = rtx_gpu
    engine = _build(tmp_path, fitted_onnx, "--compute-capability", "current")
    m = manifest.read_manifest(engine)
    assert m.gpu.name == gpu.name and gpu.cc in m.compute_capabilities
