"""The exported ONNX computes what PaddleClas computes: logits recorded by running PaddlePaddle + PaddleClas
themselves (tests/fixtures/make_paddle_reference.py) for weights and inputs regenerated here
from seeds. Also: the safe .pdparams reader reads files written by paddle.save itself."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from trt_res2net.model import weights as W
from trt_res2net.model import zoo

FIXTURES = Path(__file__).parent / "fixtures"
META = json.loads((FIXTURES / "paddle_reference.json").read_text())
REGENERATE = "regenerate the fixture with tests/fixtures/make_paddle_reference.py (see its docstring)"
# max |ort - paddle| / max |paddle|; measured 1.0e-6 .. 2.4e-6 (onnxruntime 1.32, CPU)
TOLERANCE = 1e-5


def case_spec(case: str) -> zoo.ModelSpec:
    c = META["cases"][case]
    spec = zoo.get_model(c["model"])
    return spec.reduced(**c["reduced"]) if c["reduced"] else spec


def make_input(size: int) -> np.ndarray:
    """The recorded recipe, evaluated with the recorded seed (the fixture stores no inputs)."""
    seed, batch = META["input_seeds"][str(size)], META["batch"]
    return eval(META["input_recipe"], {"np": np}, {"seed": seed, "batch": batch, "size": size})


def case_weights(case: str) -> dict[str, np.ndarray]:
    spec = case_spec(case)
    w = W.random_weights(spec, seed=META["weights_seed"])
    if W.state_sha256(w) != META["cases"][case]["weights_sha256"]:
        pytest.fail(f"random_weights({spec.name}) no longer gives the weights the fixture was made with "
                    f"(weights.py or numpy's random streams changed): {REGENERATE}")
    return w


@pytest.mark.parametrize("case", list(META["cases"]))
def test_onnx_matches_paddleclas(case):
    ort = pytest.importorskip("onnxruntime")
    from trt_res2net.model.onnx_export import build_onnx

    spec = case_spec(case)
    assert spec.name == META["cases"][case]["spec_name"]
    model = build_onnx(spec, case_weights(case), opset=17, image_size=None)  # dynamic H, W: 224 and 225
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    del model
    reference = np.load(FIXTURES / "paddle_reference.npz")
    errors = {}
    for size in map(int, META["input_seeds"]):
        x = make_input(size)
        if hashlib.sha256(x.tobytes()).hexdigest() != META["cases"][case][f"input_sha256_{size}"]:
            pytest.fail(f"the input recipe no longer gives the recorded {size}x{size} input: {REGENERATE}")
        (logits,) = session.run(None, {"input": x})
        expected = reference[f"{case}/{size}"]
        assert logits.shape == expected.shape == (META["batch"], spec.num_classes)
        errors[size] = float(np.abs(logits - expected).max() / np.abs(expected).max())
    assert all(e <= TOLERANCE for e in errors.values()), f"{case}: relative error {errors} > {TOLERANCE}"


def test_fixture_keys_were_checked_against_paddleclas():
    """The generator compared PaddleClas's state_dict() with expected_shapes / param_attr_names; key counts still
    agree with today's expected_shapes."""
    for case, c in META["cases"].items():
        assert c["keys_match"] and c["key_order_match"] and c["param_attr_names_match"], case
        assert len(W.expected_shapes(case_spec(case))) == c["keys"], case


TINY = META["tiny_pdparams"]


@pytest.mark.parametrize("name", list(TINY["files"]))
def test_read_pdparams_reads_real_paddle_save_output(name):
    """paddle.save of a real state_dict() subset, protocols 4 and 2 (the latter pickles bytes via _codecs.encode)."""
    spec = case_spec(TINY["case"])
    expected = W.random_weights(spec, seed=TINY["seed"])
    state = W.read_pdparams(FIXTURES / name)
    assert list(state) == TINY["keys"]  # name table dropped, order kept
    for key in TINY["keys"]:
        assert state[key].dtype == np.float32 and state[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(state[key], expected[key], err_msg=key)


@pytest.mark.parametrize("name", list(TINY["files"]))
def test_paddle_name_table_matches_param_attr_names(name):
    """The StructuredToParameterName@@ table written by paddle.save is what param_attr_names predicts."""
    raw = pickle.loads((FIXTURES / name).read_bytes(), encoding="latin1")  # our own fixture: trusted
    table = raw[W.NAME_TABLE_KEY]
    assert table == TINY["files"][name]["name_table"]
    predicted = W.param_attr_names(case_spec(TINY["case"]))
    assert table == {k: predicted[k] for k in TINY["keys"]}
