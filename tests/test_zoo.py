import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.model import weights as W
from trt_res2net.model import zoo

# Key counts of PaddleClas's .pdparams (without the name table) and trainable parameters (README's table).
SPEC_TABLE = {
    "res2net50_26w_4s": (427, 25_699_120, 25_758_612),
    "res2net50_14w_8s": (747, 25_059_816, 25_122_612),
    "res2net50_vd_26w_4s": (437, 25_718_352, 25_777_972),
    "res2net101_vd_26w_4s": (862, 45_225_920, 45_345_108),
    "res2net200_vd_26w_4s": (1687, 76_215_536, 76_436_340),
}


def test_all_eight_models_are_in_the_zoo():
    assert len(zoo.MODELS) == 8
    for name in SPEC_TABLE:
        assert name in zoo.MODELS and name + "_ssld" in zoo.MODELS or name in (
            "res2net50_26w_4s", "res2net50_14w_8s")


@pytest.mark.parametrize("name", SPEC_TABLE)
def test_key_and_parameter_counts_match_the_spec(name):
    keys, trainable, everything = SPEC_TABLE[name]
    shapes = W.expected_shapes(zoo.get_model(name))
    size = {k: 1 for k in shapes}
    for k, s in shapes.items():
        for d in s:
            size[k] *= d
    assert len(shapes) == keys
    assert sum(v for k, v in size.items() if not k.endswith(("_mean", "_variance"))) == trainable
    assert sum(size.values()) == everything


def test_legacy_block_names_in_keys():
    keys = W.expected_shapes(zoo.get_model("res2net200_vd_26w_4s"))
    assert "bb_2_5.res4b5_branch2b_1._conv.weight" in keys
    assert "bb_2_47.res4b47_branch2b_3._conv.weight" in keys
    assert "bb_1_11.res3l_branch2b_1._conv.weight" in keys
    assert keys["out.weight"] == (2048, 1000)
    keys50 = W.expected_shapes(zoo.get_model("res2net50_vd_26w_4s"))
    assert "bb_2_5.res4f_branch2b_1._conv.weight" in keys50
    assert keys50["bb_1_0.short._conv.weight"] == (512, 256, 1, 1)


def test_ssld_urls_follow_paddleclas():
    assert zoo.get_model("res2net50_vd_26w_4s").weights_url.endswith("/dygraph/Res2Net50_vd_26w_4s_pretrained.pdparams")
    assert zoo.get_model("res2net200_vd_26w_4s_ssld").weights_url.endswith(
        "/dygraph/Res2Net200_vd_26w_4s_ssld_pretrained.pdparams")


def test_unknown_model_suggests_the_closest_names():
    with pytest.raises(UserError) as e:
        zoo.get_model("res2net50_vd_26w")
    msg = str(e.value)
    assert "Did you mean res2net50_vd_26w_4s" in msg and "res2net200_vd_26w_4s_ssld" in msg
    assert "\n" not in msg
    assert zoo.get_model("Res2Net50-vd-26w-4s").name == "res2net50_vd_26w_4s"


def test_reduced_models_keep_the_architecture_code():
    base = zoo.get_model("res2net101_vd_26w_4s")
    small = base.reduced(width=4, depths=(1, 2, 1, 1), num_classes=10)
    assert small.vd and small.layers == 101 and small.weights_url is None
    blocks = zoo.block_layouts(small)
    assert [b.shortcut for b in blocks] == ["conv", "pool_conv", "identity", "pool_conv", "pool_conv"]
    assert blocks[0].stride == 1 and blocks[1].stride == 2 and blocks[2].stride == 1 and blocks[0].split == 4
