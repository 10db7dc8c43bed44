"""The precision step without ModelOpt: options and errors, the evaluation, the fallback search, histograms.

Everything here runs on the core install; the ModelOpt path itself is tested in test_quantize_modelopt.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_res2net.core.errors import EXIT_NO_TENSORRT, EXIT_SOME_FAILED, EXIT_USAGE, MissingDependency, UserError

# --------------------------------------------------------------------------------------------------------
# build.py options and their errors


def _build(argv, capsys):
    from trt_res2net.cli.build import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "extra, words",
    [
        ([], "INT8 needs calibration: pass --calib-dir DIR"),
        (["--opset", "17", "--calib-dir", "."], "INT8 Q/DQ needs ONNX opset ≥ 19"),
        (["--calib-dir", ".", "--auto-fallback"], "--auto-fallback needs a budget"),
        (["--calib-dir", ".", "--max-top1-drop", "1"], "--max-top1-drop needs held-out images"),
        (["--calib-dir", ".", "--data-root", "."], "--data-root goes with --eval LIST"),
        (["--calib-dir", ".", "--eval-dir", ".", "--eval", "x.txt"], "either --eval-dir DIR or --eval LIST"),
        (["--calib-images", "0"], "--calib-images must be at least 1"),
        (["--calib-method", "percentile", "--calib-percentile", "0"], "--calib-percentile must be in (0, 100]"),
    ],
)
def test_int8_usage_errors_are_one_line_exit_2(tiny_onnx, tmp_path, monkeypatch, capsys, extra, words):
    monkeypatch.chdir(tmp_path)  # the default cache calib/<model>.entropy.cache does not exist here
    code, out, err = _build(["--onnx", str(tiny_onnx), "--precision", "int8", "--onnx-only", "--quiet", *extra],
                            capsys)
    assert code == EXIT_USAGE, err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1


def test_auto_fallback_is_for_int8(tiny_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _build(["--onnx", str(tiny_onnx), "--precision", "fp16", "--onnx-only", "--auto-fallback",
                           "--eval-dir", ".", "--max-top1-drop", "1"], capsys)
    assert code == EXIT_USAGE and "--auto-fallback applies to --precision int8" in err


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_without_modelopt_one_install_command_exit_3(tiny_onnx, tmp_path, monkeypatch, capsys, precision):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "modelopt", None)  # as if not installed
    (tmp_path / "imgs").mkdir()
    from trt_res2net.data.synthetic import write_images

    write_images(tmp_path / "imgs", 2)
    code, _, err = _build(["--onnx", str(tiny_onnx), "--precision", precision, "--onnx-only", "--quiet",
                           "--calib-dir", "imgs"], capsys)
    assert code == EXIT_NO_TENSORRT
    assert f"--precision {precision} needs NVIDIA ModelOpt" in err and "pip install" in err and "[quant]" in err
    assert err.count("\n") == 1 and not list(tmp_path.glob("calib/*"))


def test_plan_precision_resolves_paths_and_makes_the_refusals(tiny_onnx, tmp_path, monkeypatch):
    """plan_precision: what run_precision will write, decided before any work (and nothing written); its refusals
    name the option fields."""
    from trt_res2net.data.calibration_set import CalibrationImages
    from trt_res2net.precision.convert import plan_precision
    from trt_res2net.precision.options import PrecisionOptions

    monkeypatch.chdir(tmp_path)
    fp32 = plan_precision(tiny_onnx, "fp32")
    assert fp32.out_path is None and fp32.source == tiny_onnx and fp32.note is None
    assert "ignored" in plan_precision(tiny_onnx, "fp32", PrecisionOptions(eval_dir=".", max_top1_drop=1)).note
    with pytest.raises(UserError, match=r"^INT8 needs calibration: pass CalibrationImages.directory=DIR .*"
                                        r"PrecisionOptions.calib_cache=PATH .* synthetic_calibration_images.n=N"):
        plan_precision(tiny_onnx, "int8")
    with pytest.raises(UserError, match=r"convert_precision.precision must be one of fp32, fp16, int8, not 'x'"):
        plan_precision(tiny_onnx, "x")
    (tmp_path / "imgs").mkdir()
    with pytest.raises(UserError, match=r"^no images in imgs"):  # the images are checked, not only named
        plan_precision(tiny_onnx, "int8", PrecisionOptions(calibration=CalibrationImages("imgs")))
    import cv2

    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    pytest.importorskip("modelopt.onnx", reason="a plan that converts needs ModelOpt (the quant extra)")
    plan = plan_precision(tiny_onnx, "int8", PrecisionOptions(calibration=CalibrationImages("imgs")),
                          model_name="m", out_path=tmp_path / "out" / "m_int8.onnx")
    assert plan.out_path == tmp_path / "out" / "m_int8.onnx" and plan.cache_path == Path("calib/m.entropy.cache")
    assert plan.opset >= 19 and plan.eval_set is None and plan.note is None
    assert plan_precision(tiny_onnx, "fp16").out_path == tiny_onnx.with_name(f"{tiny_onnx.stem}_fp16.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs"]  # the plan writes nothing


def test_plan_precision_refuses_an_onnx_that_is_already_another_precision(tiny_onnx, tmp_path):
    import onnx

    from trt_res2net.precision.convert import plan_precision

    model = onnx.load(str(tiny_onnx))
    model.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(
        onnx.numpy_helper.to_array(model.graph.initializer[0]).astype("float16"), model.graph.initializer[0].name))
    fp16 = tmp_path / "m_fp16.onnx"
    onnx.save(model, str(fp16))
    assert "already FP16" in plan_precision(fp16, "fp16").note and plan_precision(fp16, "fp16").out_path is None
    with pytest.raises(UserError, match=r"already FP16 \(FP16\): build it as build_engine.precision='fp16'"):
        plan_precision(fp16, "int8")


def test_plan_precision_without_modelopt_names_the_field(tiny_onnx, monkeypatch):
    from trt_res2net.precision.convert import plan_precision

    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(MissingDependency, match=r"^convert_precision.precision='fp16' needs NVIDIA ModelOpt"):
        plan_precision(tiny_onnx, "fp16")


def test_fp32_is_a_no_op(tiny_onnx):
    from quant_helpers import args, run_precision

    assert run_precision(args(precision="fp32"), tiny_onnx, "tiny") == tiny_onnx


def test_require_modelopt_raises_missing_dependency(monkeypatch):
    from trt_res2net.precision.modelopt import require_modelopt

    monkeypatch.setitem(sys.modules, "modelopt", None)
    with pytest.raises(MissingDependency) as e:
        require_modelopt("convert_precision.precision='int8'")
    assert e.value.exit_code == EXIT_NO_TENSORRT


def test_build_flags_map_onto_precision_options():
    from trt_res2net.cli.build import build_parser, precision_options
    from trt_res2net.data.calibration_set import CalibrationImages
    from trt_res2net.precision.options import PrecisionOptions

    ns = build_parser().parse_args(["--onnx", "m.onnx", "--calib-dir", "d", "--eval", "l.txt", "--max-top1-drop",
                                    "0.5"])
    opts = precision_options(ns)
    assert opts.calibration == CalibrationImages("d", 500, 0)
    assert (str(opts.eval_list), opts.max_top1_drop, opts.high_precision, opts.progress) == ("l.txt", 0.5, "fp16", True)
    assert precision_options(build_parser().parse_args(["--onnx", "m.onnx"])) == PrecisionOptions()
    with pytest.raises(UserError, match="PrecisionOptions.max_top1_drop needs held-out images"):
        PrecisionOptions(max_top1_drop=1.0)
    with pytest.raises(UserError, match="CalibrationImages.count must be at least 1"):
        CalibrationImages("d", 0)


# --------------------------------------------------------------------------------------------------------
# A hand-made Q/DQ model: input → Q/DQ → conv1 (Q/DQ weight) → relu → Q/DQ → conv2 (Q/DQ weight) → pool


def _qdq_model(scales=(0.02, 0.05), fp16=False, rng_seed=0):
    rng = np.random.default_rng(rng_seed)
    w1 = (rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32)
    npf = np.float16 if fp16 else np.float32
    inits, nodes = [], []

    def const(name, arr):
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def qdq(x, name, scale, axis=None):
        zp = np.zeros(np.shape(scale), np.int8)
        const(f"{name}_scale", np.asarray(scale, npf))
        const(f"{name}_zero_point", zp)
        kw = {"axis": axis} if axis is not None else {}
        sz = [f"{name}_scale", f"{name}_zero_point"]
        nodes.append(helper.make_node("QuantizeLinear", [x, *sz], [f"{name}_q"], **kw))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", *sz], [f"{name}_dq"], **kw))
        return f"{name}_dq"

    x = "input"
    if fp16:
        nodes.append(helper.make_node("Cast", ["input"], ["input_cast_to_fp16"], to=TensorProto.FLOAT16))
        x = "input_cast_to_fp16"
    a = qdq(x, "input", scales[0])
    const("w1", w1.astype(npf))
    wq = qdq("w1", "w1", np.abs(w1).reshape(16, -1).max(1) / 127, axis=0)
    nodes.append(helper.make_node("Conv", [a, wq], ["c1"], name="conv1", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"], name="relu1"))
    b = qdq("r1", "r1", scales[1])
    const("w2", w2.astype(npf))
    wq2 = qdq("w2", "w2", np.abs(w2).reshape(16, -1).max(1) / 127, axis=0)
    nodes.append(helper.make_node("Conv", [b, wq2], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("GlobalAveragePool", ["c2"], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    out = "flat"
    if fp16:
        nodes.append(helper.make_node("Cast", ["flat"], ["logits"], to=TensorProto.FLOAT))
        out = "logits"
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["n", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _run(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]


def _float_reference(model, x, bypass=()):
    """numpy evaluation of the hand-made model; layers in ``bypass`` see unquantized input and weight."""
    from trt_res2net.model.reference import conv2d

    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}

    def fq(v, s, axis=None):
        s = s.reshape(-1, *([1] * (v.ndim - 1))) if axis == 0 else s
        return np.clip(np.rint(v / s), -128, 127) * s

    a = x.astype(np.float64) if "conv1" in bypass else fq(x.astype(np.float64), init["input_scale"])
    w1 = init["w1"] if "conv1" in bypass else fq(init["w1"], init["w1_scale"], 0)
    r1 = np.maximum(conv2d(a, w1, 1, 1), 0)
    b = r1 if "conv2" in bypass else fq(r1, init["r1_scale"])
    w2 = init["w2"] if "conv2" in bypass else fq(init["w2"], init["w2_scale"], 0)
    return conv2d(b, w2, 1, 1).mean(axis=(2, 3))


def test_activation_scales_coverage_and_names():
    from quant_helpers import qdq_coverage

    from trt_res2net.precision.modelopt.int8 import _exclusion_patterns
    from trt_res2net.precision.modelopt.qdq import activation_scales, quantized_nodes

    m = _qdq_model()
    assert activation_scales(m) == {"input": pytest.approx(0.02), "r1": pytest.approx(0.05)}
    assert quantized_nodes(m) == ["conv1", "conv2"]
    assert qdq_coverage(m) == {"conv1": {"input": True, "weight": True}, "conv2": {"input": True, "weight": True}}
    # fp16 variants rename the scales T_scale_1 and quantize the input through a Cast: still keyed by T.
    m16 = _qdq_model(fp16=True)
    for t in m16.graph.initializer:
        if t.name.endswith("_scale"):
            t.name += "_1"
    for n in m16.graph.node:
        n.input[:] = [i + "_1" if i.endswith("_scale") else i for i in n.input]
    assert set(activation_scales(m16)) == {"input", "r1"}
    import re

    pats = _exclusion_patterns(["bb.conv", "a(b)"])
    assert re.match(pats[0], "bb.conv") and not re.match(pats[0], "bbxconv") and not re.match(pats[0], "bb.conv_2")
    assert re.match(pats[1], "a(b)")


def test_fp16_quantize_probe_and_fp32_twin():
    import onnxruntime as ort

    from trt_res2net.precision.accuracy import fp16_quantize_is_exact, fp32_twin, has_fp16_quantize, open_session

    exact = fp16_quantize_is_exact()
    major, minor = (int(v) for v in ort.__version__.split(".")[:2])
    if (major, minor) >= (1, 32):
        assert exact  # fixed upstream (PR #32452)
    if (major, minor) <= (1, 24):
        assert not exact  # microsoft/onnxruntime#18576
    m16 = _qdq_model(fp16=True)
    assert has_fp16_quantize(m16) and not has_fp16_quantize(_qdq_model())
    twin = fp32_twin(m16)
    assert not any(t.data_type == TensorProto.FLOAT16 for t in twin.graph.initializer)
    x = np.random.default_rng(3).uniform(-1, 2, (4, 3, 8, 8)).astype(np.float32)
    ref = _float_reference(twin, x)  # the FP16-rounded constants, exact quantization arithmetic
    np.testing.assert_allclose(_run(twin, x), ref, rtol=1e-4, atol=1e-4)
    session, note = open_session(m16)
    assert (note is None) == exact


def test_compare_predictions_and_accuracy_definitions():
    from trt_res2net.data.metrics import accuracy, compare_predictions

    a = np.array([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]])
    b = np.array([[3.0, 2.5, 1.0, 0.0, -1.0, -2.0], [0.0, 1.0, 2.0, 3.0, 6.0, 5.0]])
    r = compare_predictions(a, b)
    assert r["top1_agreement"] == 0.5 and r["mean_top5_overlap"] == 1.0 and r["max_abs_diff"] == 2.0
    assert 0.9 < r["cosine_similarity"] < 1
    acc = accuracy(a, np.array([0, 3]))
    assert acc["top1"] == 0.5 and acc["top5"] == 1.0


def test_budget_semantics_and_report_text():
    from trt_res2net.precision.accuracy import budget_measure_name, format_report, top1_drop_pp, within_budget

    unlabelled = {"images": 100, "source": "100 images from d", "top1_agreement": 0.97, "mean_top5_overlap": 0.9,
                  "cosine_similarity": 0.998, "max_abs_diff": 1.0}
    assert top1_drop_pp(unlabelled) == pytest.approx(3.0)
    assert budget_measure_name(unlabelled) == "top-1 disagreement"
    assert within_budget(unlabelled, 3.0) and not within_budget(unlabelled, 2.9) and within_budget(unlabelled, None)
    labelled = {**unlabelled, "fp32_top1": 0.80, "top1": 0.792, "fp32_top5": 0.95, "top5": 0.949}
    assert top1_drop_pp(labelled) == pytest.approx(0.8)
    text = format_report(labelled, "INT8 m_int8.onnx")
    assert "top-1 agreement          97.00 %" in text and "(FP32 80.00 %, -0.80 pp)" in text


def _sidecar(precision: str):
    from trt_res2net.precision.sidecar import PrecisionSidecar

    return PrecisionSidecar(precision=precision, model="m", quantization_source="calibrated",
                            source_onnx="m.onnx", source_onnx_sha256="a" * 64)


def test_a_model_that_misses_the_budget_is_published_as_rejected(tmp_path):
    """_publish: a model within the budget becomes ``out`` with its sidecar; one that misses it becomes
    ``*.rejected.onnx`` (with its sidecar) and the model already at ``out`` stays as it was."""
    from trt_res2net.precision.accuracy import AccuracyBudgetExceeded
    from trt_res2net.precision.convert import _publish
    from trt_res2net.precision.options import PrecisionOptions

    out = tmp_path / "m_int8.onnx"
    report = {"top1_agreement": 0.9}
    sidecar = _sidecar("int8")
    staged = tmp_path / ".m_int8.onnx.staged"
    staged.write_bytes(b"model")
    met = PrecisionOptions(eval_dir="held-out", max_top1_drop=10.0)
    assert _publish(met, staged, out, sidecar, report, "INT8", "int8") == out
    assert out.read_bytes() == b"model" and json.loads(out.with_name(out.name + ".json").read_text())["precision"]
    staged.write_bytes(b"worse model")
    missed = PrecisionOptions(eval_dir="held-out", max_top1_drop=5.0)
    with pytest.raises(AccuracyBudgetExceeded) as e:
        _publish(missed, staged, out, sidecar, report, "INT8 m_int8.onnx", "int8")
    assert e.value.exit_code == EXIT_SOME_FAILED
    assert "top-1 disagreement 10.00 pp > PrecisionOptions.max_top1_drop=5" in str(e.value)
    assert "(try PrecisionOptions.auto_fallback)" in str(e.value)
    assert out.read_bytes() == b"model" and (tmp_path / "m_int8.rejected.onnx").read_bytes() == b"worse model"
    assert (tmp_path / "m_int8.rejected.onnx.json").exists() and not staged.exists()


def test_eval_sets(tmp_path):
    from trt_res2net.data.synthetic import write_images
    from trt_res2net.precision.accuracy import load_eval_set, overlap_warning

    paths = write_images(tmp_path / "ev", 6)
    s = load_eval_set(eval_dir=tmp_path / "ev", limit=4)
    assert len(s) == 4 and s.labels is None and s == load_eval_set(eval_dir=tmp_path / "ev", limit=4)
    assert len(load_eval_set(eval_dir=tmp_path / "ev", limit=0)) == 6
    lst = tmp_path / "val.txt"
    lst.write_text("".join(f"{p.name} {i}\n" for i, p in enumerate(paths)))
    s = load_eval_set(eval_list=lst, data_root=tmp_path / "ev", limit=3)
    assert len(s) == 3 and len(s.labels) == 3 and all(p.parent == tmp_path / "ev" for p in s.paths)
    assert [paths.index(p) for p in s.paths] == s.labels  # labels stay with their images
    assert load_eval_set() is None
    assert overlap_warning(paths[:3], paths[2:]) == "1 of the 3 held-out images are also calibration images"
    assert overlap_warning(paths[:2], paths[4:]) is None
    bad = tmp_path / "bad.txt"
    bad.write_text("just-a-path.jpg\n")
    with pytest.raises(UserError, match="expected 'relative/path.jpg label'"):
        load_eval_set(eval_list=bad)


# --------------------------------------------------------------------------------------------------------
# Fallback: switches, sensitivity, search


def test_switchable_model_is_exact_at_zero_and_one():
    from trt_res2net.precision.fallback import switchable_model

    m = _qdq_model()
    x = np.random.default_rng(4).uniform(-1, 2, (3, 3, 8, 8)).astype(np.float32)
    sw_model, switches = switchable_model(m, ["conv1", "conv2"])
    assert len(switches) == 2

    def run(on):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        s = ort.InferenceSession(sw_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feed = {"input": x, **{k: np.array(float(k in on), np.float32) for k in switches}}
        return s.run(None, feed)[0]

    np.testing.assert_allclose(run(set()), _run(m, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run({switches[1]}), _float_reference(m, x, bypass={"conv2"}), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(run({switches[0]}), _float_reference(m, x, bypass={"conv1"}), rtol=1e-4, atol=1e-4)


def test_sensitivity_ranks_a_coarsely_quantized_layer_first():
    from trt_res2net.precision.fallback import layer_sensitivity

    x = np.random.default_rng(5).uniform(-1, 2, (6, 3, 8, 8)).astype(np.float32)
    fine = _qdq_model(scales=(0.02, 0.05))
    coarse_second = _qdq_model(scales=(0.02, 2.0))  # conv2's input quantized with steps 40× too big
    ref = _float_reference(fine, x, bypass={"conv1", "conv2"})
    ranking = layer_sensitivity(coarse_second, x, ref, progress=False)
    assert [n for n, _ in ranking] == ["conv2", "conv1"] and ranking[0][1] > 10 * abs(ranking[1][1])


def test_search_doubles_then_bisects_to_the_fewest_layers():
    from trt_res2net.precision.fallback import search_exclusions

    ranking = [f"l{i}" for i in range(20)]

    def needs(k):
        def attempt(layers):
            drop = max(0.0, 5 - len(layers)) + 0.5
            return {"excluded": len(layers)}, len(layers) >= k, drop
        return attempt

    r = search_exclusions(ranking, needs(5))
    assert r.excluded == ranking[:5] and [t["excluded"] for t in r.trials] == [1, 2, 4, 8, 6, 5]
    assert r.report == {"excluded": 5}
    assert search_exclusions(ranking, needs(1)).excluded == ["l0"]
    assert search_exclusions(ranking, needs(20)).excluded == ranking
    with pytest.raises(UserError, match="not met even with the 20 most sensitive layers"):
        search_exclusions(ranking, needs(21))
    with pytest.raises(UserError, match="not met even with the 3 most sensitive"):
        search_exclusions(ranking, needs(5), max_layers=3)


# --------------------------------------------------------------------------------------------------------
# Percentile histogram and the calibration reader


def test_abs_histogram_percentile():
    from trt_res2net.precision.modelopt.histogram import AbsHistogram

    rng = np.random.default_rng(6)
    h = AbsHistogram(bins=2048)
    h.add(np.zeros(1000))  # an all-zero batch before any scale is known
    h.add(rng.uniform(-1, 1, 100_000))
    h.add(rng.uniform(-4, 4, 100_000))  # a later, wider batch grows the histogram
    assert h.counts.sum() == 201_000
    # |x|: half the mass uniform on [0,1], half on [0,4] (+ 1000 zeros): the 99th percentile is ≈ 3.92.
    assert h.threshold(99.0) == pytest.approx(3.92, abs=0.01)
    assert h.threshold(100.0) == pytest.approx(4.0, abs=0.01)
    tiny = AbsHistogram(bins=4, max_bins=8)
    tiny.add(np.array([1.0]))
    tiny.add(np.array([100.0]))  # would need 400 bins: merged down to ≤ 8, nothing lost
    assert tiny.counts.sum() == 2 and tiny.counts.size <= 8 and tiny.threshold(100) >= 100
    assert AbsHistogram().threshold(99) == 0.0


def test_calibration_reader_peeks_and_streams():
    from trt_res2net.precision.modelopt.calibration_reader import make_reader

    seen = []
    batches = [np.full((2, 3, 4, 4), i, np.float32) for i in range(3)]
    r = make_reader(lambda: iter(batches), on_batch=seen.append)
    assert r.get_first()["input"][0, 0, 0, 0] == 0 and r.get_first()["input"][0, 0, 0, 0] == 0  # peek only
    got = []
    while (b := r.get_next()) is not None:
        got.append(float(b["input"][0, 0, 0, 0]))
    assert got == [0.0, 1.0, 2.0] and seen == [2, 2, 2]
    r.rewind()
    assert r.get_next()["input"][0, 0, 0, 0] == 0


def test_onnx_sidecar_json_is_written_atomically(tmp_path):
    from trt_res2net.precision.convert import _publish
    from trt_res2net.precision.options import PrecisionOptions

    out, staged = tmp_path / "m_fp16.onnx", tmp_path / "staged.onnx"
    staged.write_bytes(b"x")
    _publish(PrecisionOptions(), staged, out, _sidecar("fp16"), None, "FP16", "fp16")
    doc = json.loads((tmp_path / "m_fp16.onnx.json").read_text())
    assert doc["format"] == "trt_res2net.precision-onnx" and doc["precision"] == "fp16"
    assert len(doc["onnx_sha256"]) == 64 and not list(tmp_path.glob(".*"))


# ---------------------------------------------------------------------------------------------------------
# ort_calibration: numpy's histograms, faster; the calibration provider


def test_exact_histogram_is_numpys_bin_for_bin():
    """The same counts and edges as numpy.histogram for the ranges ModelOpt's collector asks (a Python float range,
    as the first batch; a float32 one, as merges), values exactly on the edges, zeros, NaN, an empty range."""
    from trt_res2net.precision.ort_calibration import HISTOGRAM_CHUNK, exact_histogram

    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.choice([1, 17, 5000, HISTOGRAM_CHUNK + 123]))
        bins = int(rng.choice([3, 128, 130, 2048]))
        x = (rng.standard_normal(n) * rng.uniform(1e-3, 50)).astype(np.float32)
        if trial % 3 == 0:
            x = np.maximum(x, 0)  # ReLU-like: most values zero
        t = max(abs(x.min()), abs(x.max()))
        ranges = [(-float(t), float(t)), (np.float32(-t), np.float32(t)), (np.float32(-1.5 * t), np.float32(1.5 * t))]
        for lo, hi in ranges:
            edges = np.histogram(x[:0], bins, range=(lo, hi))[1]
            data = np.concatenate([x, edges.astype(np.float32)[(edges >= lo) & (edges <= hi)]])  # exactly on edges
            want = np.histogram(data, bins, range=(lo, hi))
            got = exact_histogram(data, bins, range=(lo, hi))
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[0].dtype == want[0].dtype
    with_nan = np.array([0.5, np.nan, -0.25, 2.0], np.float32)  # outside the range and NaN: numpy's own path
    for data, r in ((with_nan, (-1.0, 1.0)), (np.zeros(5, np.float32), (0.0, 0.0))):
        assert all(np.array_equal(a, b) for a, b in zip(exact_histogram(data, 8, range=r),
                                                        np.histogram(data, 8, range=r), strict=True))


def test_min_max_is_numpys_min_and_max():
    """The two-thread min and max the collector reads each tensor with: numpy's values and types, NaN and ±inf
    included, for arrays below and above the size it splits at."""
    from trt_res2net.precision.ort_calibration import HISTOGRAM_CHUNK, min_max

    rng = np.random.default_rng(1)
    for n in (1, 1000, 2 * HISTOGRAM_CHUNK + 7):
        x = rng.standard_normal(n).astype(np.float32)
        cases = [x, np.maximum(x, 0)]
        for special in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[len(y) // 2] = special
            cases.append(y)
        for data in cases:
            got, want = min_max(data), (np.min(data), np.max(data))
            assert [type(v) for v in got] == [type(v) for v in want]
            np.testing.assert_array_equal(np.array(got), np.array(want))


def test_calibration_runs_on_cuda_where_onnx_runtime_has_it(monkeypatch):
    import onnxruntime as ort

    from trt_res2net.precision import modelopt as mb
    from trt_res2net.precision.modelopt.int8 import _calibration_eps
    from trt_res2net.precision.ort_calibration import available_providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert available_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert _calibration_eps(available_providers()) == ["cuda:0", "cpu"]
    assert mb.tool_versions(available_providers())["onnxruntime_provider"] == "CUDAExecutionProvider"
    monkeypatch.setenv("TRT_RES2NET_CALIB_PROVIDER", "cpu")
    assert available_providers() == ["CPUExecutionProvider"] and _calibration_eps(["CPUExecutionProvider"]) == [
        "cpu"]
    assert "onnxruntime_provider" not in mb.tool_versions(["CPUExecutionProvider"])  # CPU caches keep their key


def test_opset_relabel_only_where_the_converter_changes_nothing_else(tiny_onnx):
    import onnx
    from onnx import TensorProto, helper

    from trt_res2net.precision.modelopt.onnx_utils import opset_relabel_exact

    assert opset_relabel_exact(onnx.load(str(tiny_onnx)), 19)  # Res2Net's operators: the same at 17 and 19
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    reduce = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[1])], "g", [x], [y])
    model = helper.make_model(reduce, opset_imports=[helper.make_opsetid("", 17)])
    assert not opset_relabel_exact(model, 19)  # ReduceMean's axes become an input at 18: converted, not relabelled


def test_light_shape_inference_returns_what_onnx_returns(tiny_onnx):
    """modelopt.patches.light_infer_shapes (what ModelOpt's shape inference goes through here): the same bytes as
    onnx.shape_inference.infer_shapes for each of ModelOpt's argument sets, the model given left as it was."""
    import onnx

    from trt_res2net.precision.modelopt.patches import LIGHT_SHAPE_INFERENCE_MIN_ELEMENTS, light_infer_shapes

    original = onnx.shape_inference.infer_shapes
    light = light_infer_shapes(original)
    model = onnx.load(str(tiny_onnx))
    assert any(np.prod(t.dims) >= LIGHT_SHAPE_INFERENCE_MIN_ELEMENTS for t in model.graph.initializer)
    before = model.SerializeToString()
    for kwargs in ({}, {"strict_mode": True}, {"data_prop": True}, {"check_type": True, "strict_mode": True}):
        assert light(model, **kwargs).SerializeToString() == original(model, **kwargs).SerializeToString()
    assert model.SerializeToString() == before


def test_the_size_check_without_serializing_bounds_the_size_and_defers_near_the_limit(tiny_onnx, monkeypatch):
    """modelopt.patches.serialized_size_bound is never below ByteSize (data as raw bytes, as repeated numbers, as
    strings, as external references; doc strings and metadata), so the check it answers (False: far below the
    limit) is ModelOpt's; near the limit ModelOpt's own measure answers."""
    modelopt_utils = pytest.importorskip("modelopt.onnx.utils", reason="ModelOpt is the quant extra")

    from trt_res2net.precision.modelopt.patches import _too_large_for_protobuf, serialized_size_bound

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    inits = [helper.make_tensor("a", TensorProto.FLOAT, [4], [1.0, -2.0, 3.5, 1e30]),  # float_data
             numpy_helper.from_array(np.arange(4, dtype=np.int64), "b"),  # raw_data
             helper.make_tensor("c", TensorProto.STRING, [2], [b"x" * 300, b""]),
             helper.make_tensor("d", TensorProto.INT64, [3], [-1, 2**62, 0])]
    ext = helper.make_tensor("e", TensorProto.FLOAT, [4], [0.0] * 4)
    ext.ClearField("float_data")
    ext.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "weights.bin"), ("offset", str(1 << 40)), ("length", "16")):
        ext.external_data.add(key=key, value=value)
    graph = helper.make_graph([helper.make_node("Add", ["x", "a"], ["y"], doc_string="d" * 1000)], "g" * 200, [x],
                              [y], [*inits, ext], doc_string="graph " * 500)
    odd = helper.make_model(graph, doc_string="model " * 500, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(odd, {"k" * 50: "v" * 5000})
    asked = []
    check = _too_large_for_protobuf(lambda m: asked.append(m) or "modelopt's answer")
    for model in (onnx.load(str(tiny_onnx)), odd):
        assert serialized_size_bound(model) >= model.ByteSize()
        assert check(model) is False and not asked
        monkeypatch.setattr(onnx.checker, "MAXIMUM_PROTOBUF", 2 * serialized_size_bound(model))  # at the edge
        assert _too_large_for_protobuf(lambda m: "modelopt's answer")(model) == "modelopt's answer"
        monkeypatch.undo()
    assert modelopt_utils.is_model_too_large_for_protobuf(odd) is False  # what ModelOpt's own says of it


def test_layers_fed_through_dequantize_one_count_for_onnx_and_tensorrt():
    """precision.dequantized: any input through a dequantize (the ONNX graph's quantized_nodes) or every input at
    given positions (a TensorRT network's data and weights)."""
    from trt_res2net.precision.dequantized import GraphLayer, fed_through_dequantize

    layers = [GraphLayer("dq_x", "DQ", ["x_q"], ["x"]), GraphLayer("dq_w", "DQ", ["w_q"], ["w"]),
              GraphLayer("both", "CONV", ["x", "w"], ["a"]), GraphLayer("data_only", "CONV", ["x", "w_raw"], ["b"]),
              GraphLayer("none", "CONV", ["a", None], ["c"]), GraphLayer("other", "RELU", ["x"], ["d"])]
    assert fed_through_dequantize(layers, dequantize="DQ", weighted={"CONV"}) == ["both", "data_only"]
    assert fed_through_dequantize(layers, dequantize="DQ", weighted={"CONV"}, positions=(0, 1)) == ["both"]
    assert fed_through_dequantize(layers[:2] + [GraphLayer("short", "CONV", ["x"], ["e"])], dequantize="DQ",
                                  weighted={"CONV"}, positions=(0, 1)) == []
