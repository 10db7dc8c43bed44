"""GPU tests of the runtime (``pytest -m gpu``): the CUDA kernels against the CPU reference, and a tiny
TensorRT engine run through TensorRTBackend against ONNX Runtime. Skipped, with the reason, where
cuda-python, a GPU or TensorRT is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trt_res2net.data.preprocess import SPEC, preprocess_bgr

pytestmark = pytest.mark.gpu

DATA = Path(__file__).parent / "data"
ONE_STEP = 1.0 / 255.0 / min(SPEC.std)  # one 8-bit step after normalisation


def _gpu_or_skip():
    pytest.importorskip("cuda.bindings", reason="no cuda-python: pip install 'trt-res2net[trt]'")
    from trt_res2net.cuda import device as cu

    if cu.device_count() == 0:
        pytest.skip("no CUDA GPU (or no NVIDIA driver) on this machine")
    try:
        from trt_res2net.cuda.kernels import nvrtc_version

        nvrtc_version()
    except cu.CudaUnavailable as e:
        pytest.skip(f"NVRTC is not available: {e}")
    return cu, cu.init_device(0)


def _test_images():
    rng = np.random.default_rng(0)
    sizes = [(375, 500), (500, 375), (224, 224), (256, 256), (512, 512), (3, 2), (1, 1), (1, 300), (299, 1),
             (1080, 1920), (4000, 3000), (257, 255), (600, 333)]
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]
    import cv2

    for path in sorted(DATA.glob("*")) if DATA.is_dir() else []:
        if path.suffix.lower() in {".jpg", ".jpeg", ".png"}:
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is not None:
                images.append(img)
    return images


def _gpu_preprocess(cu, info, images, tmp_path):
    from trt_res2net.cuda.kernels import GpuKernels

    crop = SPEC.crop_size
    stream = cu.Stream()
    kernels = GpuKernels(stream, info.compute_capability, cache_directory=tmp_path)
    out = cu.DeviceBuffer(len(images) * 3 * crop * crop * 4)
    host = np.empty((len(images), 3, crop, crop), np.float32)
    try:
        kernels.preprocess(images, out.address)
        stream.copy_dtoh(host, out.address, host.nbytes)
        stream.synchronize()
    finally:
        kernels.close()
        out.free()
        stream.destroy()
    return host


def test_preprocessing_kernel_matches_the_cpu_reference(tmp_path):
    cu, info = _gpu_or_skip()
    from trt_res2net.cuda.kernels import emulate_preprocess

    images = _test_images()
    got = _gpu_preprocess(cu, info, images, tmp_path)
    for i, img in enumerate(images):
        # bit for bit what the kernel's numpy port computes, on any platform
        np.testing.assert_array_equal(got[i], emulate_preprocess(img), err_msg=f"image {i} {img.shape}")
        # within one 8-bit step of the CPU reference (equal where OpenCV is the x86 build)
        assert np.abs(got[i] - preprocess_bgr(img)).max() <= ONE_STEP * 1.001, f"image {i} {img.shape}"


def test_preprocessing_kernel_in_batches_of_mixed_sizes(tmp_path):
    cu, info = _gpu_or_skip()
    images = _test_images()[:6]
    one_by_one = np.concatenate([_gpu_preprocess(cu, info, [im], tmp_path) for im in images])
    np.testing.assert_array_equal(_gpu_preprocess(cu, info, images, tmp_path), one_by_one)


def test_topk_kernel_matches_numpy(tmp_path):
    cu, info = _gpu_or_skip()
    from trt_res2net.cuda.kernels import GpuKernels
    from trt_res2net.runtime.tensorrt_backend import topk_numpy

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((37, 1000)).astype(np.float32) * 4
    logits[0, [3, 500, 900]] = 50.0  # ties come out in class order
    logits[1, :] = 1.0
    stream = cu.Stream()
    kernels = GpuKernels(stream, info.compute_capability, cache_directory=tmp_path)
    buf = cu.DeviceBuffer(logits.nbytes)
    try:
        stream.copy_htod(buf.address, logits, logits.nbytes)
        for k, softmax in ((5, True), (1, True), (10, False), (1000, True)):
            kernels.topk(buf.address, len(logits), 1000, k, softmax)
            stream.synchronize()
            ids, scores = kernels.topk_result()
            ref = topk_numpy(logits, k, softmax)
            np.testing.assert_array_equal(ids, ref.ids)
            np.testing.assert_allclose(scores, ref.scores, rtol=1e-5, atol=1e-7)
    finally:
        kernels.close()
        buf.free()
        stream.destroy()


def test_topk_kernel_on_adversarial_cases(tmp_path):
    """benchmarks/check_gpu_topk.py's cases (ties, ±FLT_MAX, ±inf, NaN, 1..21841 classes, n = 1..64):
    ids equal to topk_numpy's, scores within its stated tolerance, every output written."""
    cu, info = _gpu_or_skip()
    from bench_scripts import load_benchmark

    from trt_res2net.cuda.kernels import GpuKernels

    check = load_benchmark("check_gpu_topk")
    cases = check.make_cases(0)
    stream = cu.Stream()
    kernels = GpuKernels(stream, info.compute_capability, cache_directory=tmp_path)
    buf = cu.DeviceBuffer(max(c.logits.nbytes for c in cases))
    try:
        results = check.run_cases(kernels, stream, cases, buf)
    finally:
        kernels.close()
        buf.free()
        stream.destroy()
    failed = [r for r in results if not r["passed"]]
    assert not failed, f"{len(failed)}/{len(results)} cases disagree; first: {failed[0]}"
    assert all(r["poisoned"] for r in results)


# -- TensorRT -------------------------------------------------------------------------------------------


def _tiny_onnx(path: Path, classes: int = 1000) -> Path:
    """conv 3→8 (stride 4) → ReLU → global average pool → flatten → dense; dynamic batch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(rng.standard_normal((8, classes)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32) * 0.1, "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _build_engine(onnx_path: Path, engine_path: Path, batch=(1, 4, 8)) -> Path:
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed: pip install tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    version = str(trt.__version__)
    flags = 0
    if int(version.split(".")[0]) < 10:  # ONNX needs explicit batch on 8.x; the flag is gone in 11
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        pytest.fail("; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", *[(b, 3, 224, 224) for b in batch])
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None, "TensorRT could not build the tiny engine"
    engine_path.write_bytes(bytes(plan))
    return engine_path


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory):
    _gpu_or_skip()
    pytest.importorskip("tensorrt", reason="TensorRT is not installed: pip install tensorrt")
    d = tmp_path_factory.mktemp("engine")
    onnx_path = _tiny_onnx(d / "tiny.onnx")
    return onnx_path, _build_engine(onnx_path, d / "tiny_fp32_b8.engine")


def test_engine_matches_onnxruntime(tiny_engine):
    import onnxruntime as ort

    from trt_res2net.runtime.tensorrt_backend import TensorRTBackend

    onnx_path, engine_path = tiny_engine
    x = np.random.default_rng(2).standard_normal((11, 3, 224, 224)).astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": x})[0]
    with TensorRTBackend(engine_path, check_manifest=False) as backend:
        assert (backend.input_name, backend.output_name, backend.num_classes) == ("input", "logits", 1000)
        assert (backend.min_batch, backend.max_batch) == (1, 8)
        np.testing.assert_allclose(backend.run(x), expected, rtol=1e-3, atol=1e-3)


def test_cuda_graph_gives_the_same_outputs(tiny_engine):
    from trt_res2net.runtime.tensorrt_backend import TensorRTBackend

    _, engine_path = tiny_engine
    x = np.random.default_rng(3).standard_normal((13, 3, 224, 224)).astype(np.float32)
    with TensorRTBackend(engine_path, check_manifest=False) as plain, \
            TensorRTBackend(engine_path, check_manifest=False, cuda_graph=True) as graphed:
        expected = plain.run(x)
        for _ in range(2):
            np.testing.assert_allclose(graphed.run(x), expected, rtol=1e-5, atol=1e-5)


def test_classify_bgr_on_the_gpu_matches_the_cpu_path(tiny_engine):
    from trt_res2net.cuda.kernels import emulate_preprocess
    from trt_res2net.runtime.tensorrt_backend import TensorRTBackend, topk_numpy

    _, engine_path = tiny_engine
    images = _test_images()[:10]
    with TensorRTBackend(engine_path, check_manifest=False) as backend:
        assert backend.gpu_preprocessing
        top = backend.classify_bgr(images, k=5)
        # the same inputs through run(): emulate_preprocess is bit-exact with the kernel on every platform
        ref = topk_numpy(backend.run(np.stack([emulate_preprocess(im) for im in images])), 5, True)
    np.testing.assert_array_equal(top.ids, ref.ids)
    np.testing.assert_allclose(top.scores, ref.scores, rtol=1e-4, atol=1e-6)


def test_benchmark_runs_briefly(tiny_engine, tmp_path, capsys):
    from trt_res2net.runtime import benchmark

    _, engine_path = tiny_engine
    out = tmp_path / "bench.json"
    code = benchmark.main([str(engine_path), "--batch", "1,8", "--iterations", "5", "--warmup", "2",
                           "--json", str(out), "--cuda-graph"])
    assert code == 0
    import json

    doc = json.loads(out.read_text())
    assert [r["batch"] for r in doc["results"]] == [1, 8]
    assert all(r["gpu_compute_ms"]["mean"] > 0 and r["end_to_end_ms"]["mean"] > 0 for r in doc["results"])
