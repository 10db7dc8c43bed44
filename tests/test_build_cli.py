"""build.py as a user runs it: one-line errors, exit statuses, the ONNX written without TensorRT."""

import json
import subprocess
import sys
from pathlib import Path

import onnx

from trt_res2net.cli.build import main
from trt_res2net.model import weights as W

ROOT = Path(__file__).resolve().parents[1]


def test_list_models_table_and_json(capsys):
    assert main(["--list-models"]) == 0
    out = capsys.readouterr().out
    assert "res2net50_vd_26w_4s" in out and "25,718,352" in out and "8.990" in out
    assert main(["--list-models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["model"]: r["params"] for r in rows}["res2net50_14w_8s"] == 25_059_816
    assert len(rows) == 8


def test_unknown_model_is_one_line_with_suggestions(capsys):
    assert main(["--model", "res2net101_vd", "--onnx-only", "--random-weights"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Did you mean res2net101_vd_26w_4s" in err


def test_wrong_weights_name_the_keys(tmp_path, capsys):
    other = W.write_pdparams(tmp_path / "x.pdparams", {"conv1._conv.weight": W.np.zeros((64, 3, 7, 7), "f4")})
    assert main(["--model", "res2net50_vd_26w_4s", "--weights", str(other), "--onnx-out",
                 str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: weights") and "missing 437 keys: conv1_1._conv.weight" in err
    assert not (tmp_path / "m.onnx").exists()


# build.py as on a machine with the core install alone: neither TensorRT nor TensorRT-RTX importable.
WITHOUT_LIBRARIES = ("import sys; sys.modules['tensorrt'] = sys.modules['tensorrt_rtx'] = None; "
                     "from trt_res2net.cli.build import main; raise SystemExit(main(sys.argv[1:]))")


def test_without_either_library_the_onnx_is_written_and_exit_status_is_3(tmp_path):
    out = tmp_path / "engines" / "m.onnx"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_LIBRARIES, "--model", "res2net50_26w_4s", "--random-weights",
                           "--onnx-out", str(out)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "wrote" in proc.stdout and out.exists()
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: wrote {out}; neither TensorRT nor TensorRT-RTX is importable")
    assert "pip install 'trt-res2net[trt]'" in last and "trt-res2net[rtx]" in last
    assert not list((tmp_path / "engines").glob("*.engine"))
    assert "random weights" in proc.stderr
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["weights"] == "random (seed 0)" and len(meta["weights_sha256"]) == 64


def _bad_onnx(path: Path, kind: str) -> Path:
    """Classification-like ONNX files that neither runtime can run (what the contract refuses)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(W.np.ones((4, 3, 3, 3), "f4"), "w")
    x_shape = {"nhwc": [1, 224, 224, 3], "one_channel": [1, 1, 224, 224]}.get(kind, [1, 3, 224, 224])
    c = 1 if kind == "one_channel" else 3
    if kind == "nhwc":
        w = numpy_helper.from_array(W.np.ones((4, 224, 3, 3), "f4"), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if kind == "one_channel":
        w = numpy_helper.from_array(W.np.ones((4, c, 3, 3), "f4"), "w")
    if kind == "two_outputs":
        nodes.append(helper.make_node("Relu", ["y"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    if kind == "image_output":
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 224, 224])]
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)], outputs,
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


import pytest  # noqa: E402


@pytest.mark.parametrize("kind", ["two_outputs", "nhwc", "one_channel", "image_output"])
def test_an_onnx_the_runtimes_cannot_run_is_refused_before_any_work_in_their_words(tmp_path, kind, monkeypatch,
                                                                                     capsys):
    from trt_res2net.cli.infer import main as infer_main

    bad = _bad_onnx(tmp_path / f"{kind}.onnx", kind)
    photo = sorted((ROOT / "tests" / "data").glob("*.jpg"))[0]
    assert infer_main([str(bad), str(photo)]) == 2
    runtime_says = _one_error_line(capsys.readouterr().err)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for extra in ([], ["--precision", "fp16"], ["--precision", "int8", "--calib-dir", "nowhere"]):
        assert main(["--onnx", str(bad), "--engine-family", "tensorrt-rtx", "--quiet", *extra]) == 2
        assert _one_error_line(capsys.readouterr().err) == runtime_says
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [bad.name, "work"]


def test_onnx_naming_a_folder_or_nothing(tmp_path, capsys):
    assert main(["--onnx", str(tmp_path / "missing.onnx")]) == 2
    assert "no such file" in _one_error_line(capsys.readouterr().err)
    assert main(["--onnx", str(tmp_path)]) == 2
    assert "is a folder, not an ONNX file" in _one_error_line(capsys.readouterr().err)


def test_the_build_command_imports_no_numpy_nor_urllib_until_a_step_needs_them():
    """``build.py --onnx`` is compared with ``polygraphy convert`` (docs/build_safety.md): numpy, ONNX's package and
    urllib are imported by the steps that use them, not by the command line."""
    code = ("import sys, trt_res2net.cli.build; "
            "print(sorted(m for m in ('numpy', 'onnx', 'urllib.request', 'cv2', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
