"""The exported graph against the independent numpy reference, and the file's properties."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trt_res2net.data.preprocess import SPEC
from trt_res2net.model import onnx_export, reference, zoo
from trt_res2net.model import weights as W

FIVE = ["res2net50_26w_4s", "res2net50_14w_8s", "res2net50_vd_26w_4s", "res2net101_vd_26w_4s",
        "res2net200_vd_26w_4s"]


def _run(model_or_path, x):
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _rel_err(y, ref):
    return float(np.abs(y - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", FIVE)
def test_full_size_architectures_match_the_numpy_reference_at_224(name):
    spec = zoo.get_model(name)
    w = W.random_weights(spec, seed=1)
    x = np.random.default_rng(7).standard_normal((2, 3, 224, 224)).astype(np.float32)
    y = _run(onnx_export.build_onnx(spec, w), x)
    assert y.shape == (2, 1000)
    assert _rel_err(y, reference.forward(spec, w, x)) < 2e-6


@pytest.mark.parametrize("name", FIVE)
@pytest.mark.parametrize("size", [225, 231])
def test_odd_input_sizes_exercise_exclusive_and_ceil_pooling(name, size):
    spec = zoo.get_model(name).reduced(width=4, depths=(1, 2, 1, 1))
    w = W.random_weights(spec, seed=2)
    x = np.random.default_rng(size).standard_normal((2, 3, size, size)).astype(np.float32)
    y = _run(onnx_export.build_onnx(spec, w, image_size=size), x)
    assert _rel_err(y, reference.forward(spec, w, x)) < 2e-6


def test_reference_detects_the_pooling_details(tiny_spec, tiny_weights):
    """The comparison is sharp enough to see count_include_pad and ceil_mode mistakes."""
    x = np.random.default_rng(0).standard_normal((1, 3, 225, 225)).astype(np.float32)
    model = onnx_export.build_onnx(tiny_spec, tiny_weights, image_size=225)
    ref = reference.forward(tiny_spec, tiny_weights, x)
    for node in model.graph.node:
        if node.name.endswith("split_pool"):
            for a in node.attribute:
                if a.name == "count_include_pad":
                    a.i = 1
    assert _rel_err(_run(model, x), ref) > 1e-3


def test_export_is_checked_deterministic_and_streams_the_same_bytes(tmp_path, tiny_spec, tiny_weights):
    a = onnx_export.write_onnx(tiny_spec, tiny_weights, tmp_path / "a.onnx", metadata={"weights_sha256": "ab"})
    b = onnx_export.write_onnx(tiny_spec, tiny_weights, tmp_path / "b.onnx", metadata={"weights_sha256": "ab"})
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() == onnx_export.build_onnx(
        tiny_spec, tiny_weights, metadata={"weights_sha256": "ab"}).SerializeToString()
    onnx_export.check_onnx(a)
    model = onnx.load(str(a))
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert model.opset_import[0].version == 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model_name"] == tiny_spec.name and meta["weights_sha256"] == "ab"
    assert meta["preprocessing"] == SPEC.to_json() and meta["exporter"].startswith("trt_res2net")
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    inp, out = model.graph.input[0], model.graph.output[0]
    assert inp.name == "input" and out.name == "logits"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, 224, 224]
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 1000]


def test_dynamic_batch_softmax_and_opset_19(tmp_path, tiny_spec, tiny_weights):
    path = onnx_export.write_onnx(tiny_spec, tiny_weights, tmp_path / "s.onnx", softmax=True, opset=19)
    onnx_export.check_onnx(path)
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224)).astype(np.float32)
    p = _run(path, x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
    logits = reference.forward(tiny_spec, tiny_weights, x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=1, keepdims=True), atol=1e-6)
    assert _run(path, x[:1]).shape == (1, 1000)
    model = onnx.load(str(path))
    assert model.graph.output[0].name == "probabilities" and model.opset_import[0].version == 19


def test_interrupted_export_leaves_no_file(tmp_path, tiny_spec, tiny_weights):
    broken = dict(tiny_weights)
    del broken["out.bias"]  # the exporter fails at the last tensor, after writing most of the file
    with pytest.raises(KeyError):
        onnx_export.write_onnx(tiny_spec, broken, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name,params,gflops", [
    ("res2net50_14w_8s", 25_059_816, 8.358), ("res2net50_26w_4s", 25_699_120, 8.510),
    ("res2net50_vd_26w_4s", 25_718_352, 8.990), ("res2net101_vd_26w_4s", 45_225_920, 16.613),
    ("res2net200_vd_26w_4s", 76_215_536, 31.412)])
def test_graph_statistics_match_the_spec(name, params, gflops):
    stats = onnx_export.graph_statistics(zoo.get_model(name))
    assert stats["params"] == params
    assert round(stats["gflops"], 3) == gflops


def test_fitted_bn_statistics_normalise_activations(tiny_spec, tiny_weights):
    x = np.random.default_rng(3).uniform(-2, 2, (4, 3, 224, 224)).astype(np.float32)
    fitted = reference.fit_bn_statistics(tiny_spec, tiny_weights, x)
    conv = reference.conv2d(x, tiny_weights["conv1_1._conv.weight"], 2, 1)
    np.testing.assert_allclose(fitted["conv1_1._batch_norm._mean"], conv.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fitted["conv1_1._batch_norm._variance"], conv.var(axis=(0, 2, 3)), rtol=1e-4)
    # the caller's weights are untouched; deeper layers are fitted too (their inputs depend on earlier fits)
    assert not np.allclose(tiny_weights["conv1_1._batch_norm._mean"], fitted["conv1_1._batch_norm._mean"])
    assert not np.allclose(tiny_weights["bb_3_0.conv2._batch_norm._variance"],
                           fitted["bb_3_0.conv2._batch_norm._variance"])
    assert np.isfinite(reference.forward(tiny_spec, fitted, x)).all()
