import pickle
import pickletools

import numpy as np
import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.model import weights as W
from trt_res2net.model import zoo


def test_roundtrip_with_name_table_protocol_2_and_4(tmp_path, tiny_spec, tiny_weights):
    names = W.param_attr_names(tiny_spec)
    for protocol in (2, 4):
        path = tmp_path / f"w{protocol}.pdparams"
        W.write_pdparams(path, {**tiny_weights, W.NAME_TABLE_KEY: names}, protocol=protocol)
        loaded = W.load_weights(path, tiny_spec)
        assert list(loaded) == list(tiny_weights)
        for k in tiny_weights:
            np.testing.assert_array_equal(loaded[k], tiny_weights[k])


def test_files_keyed_by_param_attr_names_are_accepted(tmp_path, tiny_spec, tiny_weights):
    names = W.param_attr_names(tiny_spec)
    assert names["conv1_1._batch_norm.weight"] == "bnv1_1_scale"
    assert names["bb_0_0.conv0._conv.weight"] == "res2a_branch2a_weights"
    assert names["bb_1_0.res3a_branch2b_2._batch_norm._variance"] == "bn3a_branch2b_2_variance"
    assert names["bb_2_0.short._batch_norm.bias"] == "bn4a_branch1_offset"
    assert names["out.weight"] == "fc_weights"
    path = W.write_pdparams(tmp_path / "attr.pdparams", {names[k]: v for k, v in tiny_weights.items()})
    loaded = W.load_weights(path, tiny_spec)
    np.testing.assert_array_equal(loaded["bb_0_0.conv2._conv.weight"], tiny_weights["bb_0_0.conv2._conv.weight"])


def test_non_vd_stem_param_attr_quirk():
    names = W.param_attr_names(zoo.get_model("res2net50_26w_4s"))
    assert names["conv1._conv.weight"] == "conv1_weights"
    assert names["conv1._batch_norm._mean"] == "bn_conv1_mean"


def test_weights_of_another_model_name_the_first_mismatched_keys(tmp_path, tiny_spec):
    other = zoo.get_model("res2net50_26w_4s").reduced(width=4, depths=(1, 1, 1, 1))
    path = W.write_pdparams(tmp_path / "other.pdparams", W.random_weights(other))
    with pytest.raises(UserError) as e:
        W.load_weights(path, tiny_spec)
    msg = str(e.value)
    assert "missing" in msg and "conv1_1._conv.weight" in msg and "unexpected" in msg and "conv1._conv.weight" in msg
    assert "\n" not in msg


def test_shape_mismatch_is_named(tmp_path, tiny_spec, tiny_weights):
    wider = zoo.get_model("res2net50_vd_26w_4s").reduced(width=6, depths=(1, 1, 1, 1))
    path = W.write_pdparams(tmp_path / "wide.pdparams", W.random_weights(wider))
    with pytest.raises(UserError, match=r"shape mismatches: bb_0_0.conv0._conv.weight is \(24, 64, 1, 1\)"):
        W.load_weights(path, tiny_spec)


def test_truncated_empty_and_garbage_files(tmp_path, tiny_spec, tiny_weights):
    good = pickle.dumps(tiny_weights, protocol=4)
    (tmp_path / "t.pdparams").write_bytes(good[: len(good) // 2])
    (tmp_path / "e.pdparams").write_bytes(b"")
    (tmp_path / "g.pdparams").write_bytes(np.random.default_rng(0).bytes(4096))
    for name, pattern in [("t", "truncated or corrupt"), ("e", "is empty"), ("g", "PaddleClas .pdparams|corrupt")]:
        with pytest.raises(UserError, match=pattern) as e:
            W.load_weights(tmp_path / f"{name}.pdparams", tiny_spec)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="cannot read"):
        W.load_weights(tmp_path / "missing.pdparams", tiny_spec)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_restricted_unpickler_refuses_code(tmp_path, tiny_spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pdparams").write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(UserError, match="refusing to load posix.system|refusing to load os.system"):
        W.load_weights(tmp_path / "evil.pdparams", tiny_spec)
    assert not (tmp_path / "PWNED").exists()


def test_pickles_reference_only_numpy_reconstruction(tiny_weights):
    data = pickle.dumps(tiny_weights, protocol=2)
    globals_ = {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}
    assert globals_ <= {"numpy._core.multiarray _reconstruct", "numpy ndarray", "numpy dtype",
                        "numpy.core.multiarray _reconstruct", "_codecs encode"}


def test_tuple_values_split_params_and_nan(tmp_path, tiny_spec, tiny_weights):
    state = dict(tiny_weights)
    state["out.bias"] = ("fc_offset", state["out.bias"])
    big = state.pop("out.weight")
    flat = big.ravel()
    state["out.weight@@.0"], state["out.weight@@.1"] = flat[:100], flat[100:]
    state[W.BIG_PARAM_KEY] = {"out.weight": {"OriginShape": big.shape, "slices": ["out.weight@@.0", "out.weight@@.1"]}}
    loaded = W.load_weights(W.write_pdparams(tmp_path / "s.pdparams", state), tiny_spec)
    np.testing.assert_array_equal(loaded["out.weight"], big)
    bad = dict(tiny_weights)
    bad["out.bias"] = bad["out.bias"].copy()
    bad["out.bias"][3] = np.nan
    with pytest.raises(UserError, match="out.bias.*NaN"):
        W.load_weights(W.write_pdparams(tmp_path / "n.pdparams", bad), tiny_spec)


def test_random_weights_are_deterministic_per_key(tiny_spec):
    a, b = W.random_weights(tiny_spec, seed=3), W.random_weights(tiny_spec, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["out.bias"], W.random_weights(tiny_spec, seed=4)["out.bias"])
    assert all(v.dtype == np.float32 for v in a.values())
    assert (a["conv1_1._batch_norm._variance"] > 0).all()
