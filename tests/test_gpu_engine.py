"""Real TensorRT engines from a small Res2Net, checked against ONNX Runtime (``pytest -m gpu``).

Needs TensorRT, cuda-python and an NVIDIA GPU; everything is skipped, with the reason, where one is missing.
A user with a GPU runs this first (README). The model is the tiny Res2Net of tests/conftest.py (the same
architecture code as the zoo models) with BN statistics fitted to generated images, so that activations —
and therefore FP16/INT8 errors — are realistically scaled.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trt_res2net.cli.build import build_parser, engine_options
from trt_res2net.core.errors import UserError
from trt_res2net.engine import manifest, trt_compat
from trt_res2net.engine.build import build_engine

from trt_fakes import tiny_classifier_onnx  # isort: skip

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def runtime():
    return pytest.importorskip("trt_res2net.runtime.tensorrt_backend", reason="the TensorRT runtime")


def _ort(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _args(tmp_path, *argv):
    """build.py's engine flags, mapped by the CLI onto EngineOptions."""
    return engine_options(build_parser().parse_args(["--onnx", "m.onnx", "--quiet", "--engine-family", "tensorrt",
                                                     "--engine-dir", str(tmp_path / "engines"), *argv]))


def _step(options, onnx, model, precision, fp32):
    return build_engine(onnx, precision, options, fp32_onnx_path=fp32, model_name=model).path


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _run(runtime, engine, x):
    backend = runtime.TensorRTBackend(engine)
    return np.asarray(backend.run(x), np.float32)


def test_fp32_engine_matches_onnxruntime(trt_gpu, runtime, fitted_onnx, gpu_images, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    engine = _step(_args(tmp_path, "--max-batch", "8"), fitted_onnx, "tiny", "fp32", fitted_onnx)
    m = manifest.read_manifest(engine)
    version, gpu = trt_gpu
    manifest.check_engine_compatible(m, version, gpu.name, gpu.cc)
    x = gpu_images["eval"][:8]
    ref = _ort(fitted_onnx, x)
    got = _run(runtime, engine, x)
    # TF32 is on by default in TensorRT (as in trtexec): allow its ~1e-3 relative error on the logits.
    assert np.abs(got - ref).max() <= 2e-3 * np.abs(ref).max() + 1e-4
    assert (got.argmax(1) == ref.argmax(1)).all()
    for n in (1, 3):  # inside the dynamic profile
        assert np.abs(_run(runtime, engine, x[:n]) - ref[:n]).max() <= 2e-3 * np.abs(ref).max() + 1e-4


def test_fp16_engine_agrees(trt_gpu, runtime, fitted_onnx, gpu_images, tmp_path, monkeypatch):
    version, _ = trt_gpu
    if trt_compat.fp16_source(version) == "onnx":
        pytest.skip(f"TensorRT {version}: FP16 comes from the AutoCast ONNX (precision step, needs ModelOpt)")
    monkeypatch.chdir(tmp_path)
    engine = _step(_args(tmp_path, "--max-batch", "8"), fitted_onnx, "tiny", "fp16", fitted_onnx)
    assert manifest.read_manifest(engine).build_options.flags == ("FP16",)
    x = gpu_images["eval"][:8]
    ref, got = _ort(fitted_onnx, x), _run(runtime, engine, x)
    assert _cosine(got, ref) > 0.999
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75


def test_int8_calibrator_engine_agrees_and_cache_is_reused(trt_gpu, runtime, fitted_onnx, gpu_images, tmp_path,
                                                           monkeypatch):
    version, _ = trt_gpu
    if "calibrator" not in trt_compat.int8_modes(version):
        pytest.skip(f"TensorRT {version} has no INT8 calibrator")
    monkeypatch.chdir(tmp_path)
    args = _args(tmp_path, "--int8-mode", "calibrator", "--calib-dir", str(gpu_images["calib_dir"]), "--calib-batch",
                 "8", "--max-batch", "8")
    engine = _step(args, fitted_onnx, "tiny", "int8", fitted_onnx)
    m = manifest.read_manifest(engine)
    assert m.int8_mode == "calibrator" and m.calibration.reused is False
    from trt_res2net.precision.calib_cache import read_cache, trt_version_tag

    cache = read_cache(m.calibration.cache)
    assert cache.version_tag == trt_version_tag(str(version)) and cache.algorithm == "EntropyCalibration2"
    assert len(cache.scales) > 10
    x = gpu_images["eval"][:8]
    ref, got = _ort(fitted_onnx, x), _run(runtime, engine, x)
    assert _cosine(got, ref) > 0.95

    again = _step(_args(tmp_path, "--int8-mode", "calibrator", "--max-batch", "8"), fitted_onnx,
                                    "tiny", "int8", fitted_onnx)
    assert manifest.read_manifest(again).calibration.reused is True


def test_int8_qdq_engine_matches_onnxruntime_on_the_qdq_graph(trt_gpu, runtime, gpu_images, tmp_path, monkeypatch):
    """Explicit quantization: TensorRT runs the Q/DQ graph as written (strongly typed); ONNX Runtime runs the
    same graph on the CPU."""
    version, _ = trt_gpu
    if "qdq" not in trt_compat.int8_modes(version):
        pytest.skip(f"TensorRT {version} cannot parse opset-19 Q/DQ ONNX")
    monkeypatch.chdir(tmp_path)
    fp32 = tiny_classifier_onnx(tmp_path / "toy.onnx", opset=19)
    qdq = tiny_classifier_onnx(tmp_path / "toy_qdq.onnx", qdq=True, opset=19)
    engine = _step(_args(tmp_path, "--int8-mode", "qdq", "--max-batch", "4"), qdq, "toy", "int8",
                                     fp32)
    m = manifest.read_manifest(engine)
    assert m.int8_mode == "qdq" and m.build_options.strongly_typed and m.build_options.flags == ()
    x = gpu_images["eval"][:4]
    ref, got = _ort(qdq, x), _run(runtime, engine, x)
    assert _cosine(got, ref) > 0.99


def test_timing_cache_reuse_and_manifest_refusal(trt_gpu, fitted_onnx, tmp_path, monkeypatch):
    version, gpu = trt_gpu
    monkeypatch.chdir(tmp_path)
    tc = tmp_path / "timing.cache"
    first = _step(_args(tmp_path, "--batch", "2", "--timing-cache", str(tc)), fitted_onnx, "t",
                                    "fp32", fitted_onnx)
    assert tc.stat().st_size > 0
    _step(_args(tmp_path, "--batch", "2", "--timing-cache", str(tc)), fitted_onnx, "t", "fp32",
                            fitted_onnx)
    m = dataclasses.replace(manifest.read_manifest(first), library_version="7.0.0")
    with pytest.raises(UserError, match="built with TensorRT 7.0.0"):
        manifest.check_engine_compatible(m, version, gpu.name, gpu.cc)
