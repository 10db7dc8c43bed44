"""The ONNX Runtime backend on any classifier ONNX, backend dispatch, and the Classifier."""

from __future__ import annotations

import image_factory as imf
import numpy as np
import onnx_models
import pytest

from trt_res2net.core.errors import EXIT_NO_TENSORRT, EXIT_USAGE, MissingDependency, UserError
from trt_res2net.data.postprocess import load_labels, softmax
from trt_res2net.data.preprocess import SPEC, preprocess_batch
from trt_res2net.data.recipe import InputRecipe, PreprocessOptions
from trt_res2net.runtime.backend import Backend, open_backend
from trt_res2net.runtime.classifier import Classifier
from trt_res2net.runtime.onnx_runtime import OnnxRuntimeBackend


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "dynamic": onnx_models.make_classifier(d / "tiny.onnx"),
        "paddle": onnx_models.make_paddle2onnx_like(d / "inference.onnx", num_classes=10, batch=1),
        "fixed4": onnx_models.make_classifier(d / "fixed4.onnx", batch=4, seed=3),
        "symbolic": onnx_models.make_classifier(d / "sym.onnx", num_classes=20, classes_dim="classes"),
        "fp16": onnx_models.make_classifier(d / "fp16.onnx", input_dtype="float16"),
    }


@pytest.fixture(scope="module")
def photos_nchw():
    return preprocess_batch(imf.PHOTOS)


def test_dynamic_model(models, photos_nchw):
    import onnxruntime as ort

    b = open_backend(models["dynamic"])
    assert isinstance(b, OnnxRuntimeBackend) and isinstance(b, Backend)
    assert (b.input_name, b.output_name, b.num_classes, b.max_batch) == ("input", "logits", 1000, None)
    assert not b.outputs_probabilities and not b.fixed_batch
    assert b.provider == "CPUExecutionProvider" and "ONNX Runtime" in b.describe()
    direct = ort.InferenceSession(str(models["dynamic"])).run(None, {"input": photos_nchw})[0]
    np.testing.assert_array_equal(b.run(photos_nchw), direct)


def test_foreign_names_fixed_batch_and_softmax_output(models):
    b = open_backend(models["paddle"])
    assert (b.input_name, b.output_name) == ("x", "save_infer_model/scale_0.tmp_1")
    assert (b.num_classes, b.max_batch, b.fixed_batch, b.outputs_probabilities) == (10, 1, True, True)


def test_symbolic_class_dimension_is_probed(models):
    assert open_backend(models["symbolic"]).num_classes == 20


def test_float16_input(models, photos_nchw):
    y = open_backend(models["fp16"]).run(photos_nchw)
    assert y.dtype == np.float32 and y.shape == (len(photos_nchw), 1000)


def test_bad_model_files(tmp_path, models):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all" * 10)
    for path, match in [
        (garbage, "not a loadable ONNX model"),
        (tmp_path / "missing.onnx", "no such model file"),
        (models["dynamic"].with_suffix(".txt"), "unsupported model file"),
    ]:
        with pytest.raises(UserError, match=match) as e:
            open_backend(path)
        assert "\n" not in str(e.value) and e.value.exit_code == EXIT_USAGE
    other_size = onnx_models.make_classifier(tmp_path / "other.onnx", hw=256)
    recipe = open_backend(other_size).recipe  # fed at its own size, with the recipe's ratio
    assert recipe.spec.crop_hw == (256, 256) and recipe.spec.resize_short == 292
    with pytest.raises(UserError, match=r"takes 256×256 inputs \(H×W\), but the preprocessing \(the crop as given"):
        open_backend(other_size, preprocess=PreprocessOptions(crop=(224, 224)))


def test_two_input_model_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 224, 224]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 3, 224, 224])],
    )
    path = tmp_path / "two.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every supported ONNX Runtime reads (onnx 1.23 writes 12 by default)
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="2 inputs"):
        open_backend(path)


def test_engine_without_tensorrt_is_exit_3(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(MissingDependency) as e:
        open_backend(engine)
    assert e.value.exit_code == EXIT_NO_TENSORRT and "pip install" in str(e.value)


def test_fixed_batch_models_are_fed_in_padded_chunks(models, photos_nchw):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(models["fixed4"]))
    x = np.concatenate([photos_nchw, photos_nchw[:2]])  # 6 images: one chunk of 4, one padded chunk of 2
    expect = np.concatenate([sess.run(None, {"input": x[i : i + 1].repeat(4, 0)})[0][:1] for i in range(6)])
    clf = Classifier(models["fixed4"], batch=8)
    np.testing.assert_allclose(clf.infer(x), expect, rtol=1e-5, atol=1e-5)
    assert clf.infer(x[:0]).shape == (0, 1000)


def test_classifier_results_in_input_order_with_failures(models, tmp_path):
    bad = imf.write_all(tmp_path, {"empty.jpg": imf.BROKEN["empty.jpg"], "text.png": imf.BROKEN["text.png"]})
    items = [imf.PHOTOS[0], bad[0], *imf.PHOTOS[1:], bad[1]]
    clf = Classifier(models["dynamic"], topk=3, batch=2)
    results = list(clf.classify(items))
    assert [r["image"] for r in results] == [str(p) for p in items]
    assert [("error" in r) for r in results] == [False, True, False, False, False, True]
    assert results[1]["error"] == "empty file"
    logits = clf.backend.run(preprocess_batch(imf.PHOTOS))
    probs = softmax(logits)
    labels = load_labels()
    good = [r for r in results if "topk" in r]
    for r, p in zip(good, probs, strict=True):
        ids = [e["class_id"] for e in r["topk"]]
        assert ids == list(np.argsort(-p, kind="stable")[:3])
        assert [e["label"] for e in r["topk"]] == [labels[i] for i in ids]
        np.testing.assert_allclose([e["score"] for e in r["topk"]], p[ids], atol=1e-6)
    assert len({r["topk"][0]["class_id"] for r in good}) > 1  # the photos are told apart


def test_probabilities_are_not_softmaxed_twice(models):
    clf = Classifier(models["paddle"], topk=10, batch=3)
    assert clf.labels == [str(i) for i in range(10)]
    (r,) = list(clf.classify(imf.PHOTOS[:1]))
    raw = clf.backend.run(preprocess_batch(imf.PHOTOS[:1]))[0]
    scores = [e["score"] for e in r["topk"]]
    np.testing.assert_allclose(scores, np.sort(raw)[::-1], atol=1e-6)
    assert abs(sum(e["score"] for e in r["topk"]) - 1) < 1e-4


def test_probability_heuristic_when_the_graph_does_not_say(models):
    class ProbBackend:
        input_name, output_name, num_classes, max_batch, outputs_probabilities = "i", "o", 4, None, False
        fixed_batch = gpu_preprocessing = False
        metadata: dict = {}
        recipe = InputRecipe(SPEC, "PaddleClas's recipe")

        def run(self, x):
            return np.tile(np.array([[0.1, 0.6, 0.2, 0.1]], np.float32), (len(x), 1))

        def describe(self):
            return "probabilities without a softmax in the graph"

        def close(self):
            pass

    assert isinstance(ProbBackend(), Backend)

    clf = Classifier("unused.onnx", backend=ProbBackend(), topk=2, batch=2)
    (r,) = list(clf.classify(imf.PHOTOS[:1]))
    assert [e["class_id"] for e in r["topk"]] == [1, 2]
    assert r["topk"][0]["score"] == pytest.approx(0.6)


def test_labels_override_and_mismatch(models, tmp_path):
    lab = tmp_path / "labels.txt"
    lab.write_text("".join(f"{i} class number {i}\n" for i in range(10)))
    clf = Classifier(models["paddle"], labels=lab)
    assert clf.labels[3] == "class number 3"
    with pytest.raises(UserError, match="1000 classes"):
        Classifier(models["dynamic"], labels=lab)
    with pytest.raises(UserError):
        Classifier(models["dynamic"], batch=0)


def test_one_batch_top_k_and_every_class_from_the_same_path(models, photos_nchw):
    from trt_res2net.data.postprocess import topk

    with Classifier(models["dynamic"], topk=3) as clf:
        probabilities = clf.predict(photos_nchw)
        ids, scores = clf.classify_batch(photos_nchw, 3)
        expected_ids, expected_scores = topk(probabilities, 3)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_array_equal(scores, expected_scores)
        np.testing.assert_array_equal(clf.batch_probabilities(photos_nchw), probabilities)


def test_classifier_refusals_name_its_parameters(models):
    with pytest.raises(UserError, match=r"^Classifier\.topk must be at least 1, not 0$"):
        Classifier(models["dynamic"], topk=0)
