"""The export stage in two steps: plan_export resolves the options and makes every refusal before any work (naming
the option fields, which build.py shows as its flags); run_export writes what the plan says; export_onnx is the two."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

import trt_res2net as tr
from trt_res2net.cli.build import FLAGS
from trt_res2net.core.errors import UserError
from trt_res2net.model import export
from trt_res2net.model import weights as W
from trt_res2net.model.export import ExportOptions, ExportPlan, WeightsSource, plan_export, run_export

MODEL = "res2net50_vd_26w_4s"


def test_the_stage_is_public():
    assert (tr.ExportOptions, tr.ExportPlan, tr.plan_export, tr.run_export) == (ExportOptions, ExportPlan,
                                                                                 plan_export, run_export)


def test_the_plan_resolves_the_model_the_weights_and_the_path_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRT_RES2NET_CACHE", str(tmp_path / "cache"))
    plan = plan_export(ExportOptions("Res2Net50-vd-26w-4s"))
    assert plan.spec.name == MODEL and plan.path == Path("engines") / f"{MODEL}.onnx" and plan.opset == 17
    assert plan.weights.kind == "published" and plan.weights.url == plan.spec.weights_url
    assert plan.weights.path == tmp_path / "cache" / "Res2Net50_vd_26w_4s_pretrained.pdparams"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the cache nor engines/ is made

    seeded = plan_export(ExportOptions(MODEL, random_weights=True, seed=3, path=tmp_path / "out" / "m.onnx"))
    assert seeded.weights == WeightsSource(seed=3) and seeded.weights.kind == "random"
    assert seeded.weights.name == "random (seed 3)" and seeded.path == tmp_path / "out" / "m.onnx"

    (tmp_path / "w.pdparams").write_bytes(b"not read while planning")
    given = plan_export(ExportOptions(MODEL, weights=str(tmp_path / "w.pdparams"), softmax=True, opset=13))
    assert given.weights == WeightsSource(tmp_path / "w.pdparams") and given.weights.kind == "file"
    assert given.weights.name == "w.pdparams" and given.softmax and given.opset == 13


def _refusals(tmp_path: Path):
    (tmp_path / "file").write_text("")
    missing = tmp_path / "missing.pdparams"
    return [
        (ExportOptions("res2net50_vd_26w_4z"), "unknown model 'res2net50_vd_26w_4z'. Did you mean res2net50_vd_26w_4s",
         None),
        (ExportOptions(MODEL, weights="w.pdparams", random_weights=True),
         "ExportOptions.weights and ExportOptions.random_weights=True exclude each other",
         "--weights and --random-weights exclude each other"),
        (ExportOptions(MODEL, random_weights=True, opset=11),
         "ExportOptions.opset=11 is too old: the graph needs opset 13 or newer (Split with sizes)",
         "--opset 11 is too old: the graph needs opset 13 or newer (Split with sizes)"),
        (ExportOptions(MODEL, weights=missing), f"ExportOptions.weights {missing}: no such file",
         f"--weights {missing}: no such file"),
        (ExportOptions(MODEL, random_weights=True, path=tmp_path / "file" / "m.onnx"),
         f"ExportOptions.path {tmp_path / 'file'}: not a folder", f"--onnx-out {tmp_path / 'file'}: not a folder"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_the_plan_refuses_in_the_options_fields_and_build_py_shows_its_flags(tmp_path, case):
    options, message, shown = _refusals(tmp_path)[case]
    with pytest.raises(UserError) as e:
        plan_export(options)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert FLAGS.message(str(e.value)) == (shown or str(e.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_model_without_published_weights_is_refused_when_planned():
    tiny = export.get_model(MODEL).reduced(width=4)
    with pytest.raises(UserError, match="has no published weights; pass ExportOptions.weights or "
                                        r"ExportOptions.random_weights=True") as e:
        W.published_weights(tiny)
    assert re.search(r"pass --weights or --random-weights$", FLAGS.message(str(e.value)))


def test_run_writes_what_the_plan_says(tmp_path, tiny_spec, tiny_weights):
    seeded = run_export(ExportPlan(tiny_spec, WeightsSource(seed=0), tmp_path / "a" / "seeded.onnx", 17,
                                   progress=False))
    assert seeded == tr.ExportedOnnx(tmp_path / "a" / "seeded.onnx", tiny_spec.name, "random (seed 0)",
                                     (tmp_path / "a" / "seeded.onnx").stat().st_size)
    W.write_pdparams(tmp_path / "tiny.pdparams", tiny_weights)
    given = run_export(ExportPlan(tiny_spec, WeightsSource(tmp_path / "tiny.pdparams"), tmp_path / "given.onnx", 17,
                                  softmax=True, progress=False))
    assert given.weights == "tiny.pdparams" and given.model == tiny_spec.name
    model = onnx.load(str(given.path))
    assert [o.name for o in model.graph.output] == ["probabilities"]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["weights"] == "tiny.pdparams"


def test_export_onnx_is_run_of_plan(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(export, "run_export", lambda plan: ran.append(plan) or "exported")
    out = tmp_path / "m.onnx"
    assert export.export_onnx(MODEL, out, random_weights=True, seed=2, opset=13, softmax=True,
                              progress=False) == "exported"
    assert ran == [plan_export(ExportOptions(MODEL, random_weights=True, seed=2, opset=13, softmax=True, path=out,
                                             progress=False))]
