"""infer.py end to end: generated models, real photographs, awkward and broken inputs, exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import image_factory as imf
import numpy as np
import onnx_models
import pytest

from trt_res2net.cli.infer import build_parser, main
from trt_res2net.data.postprocess import load_labels, softmax
from trt_res2net.data.preprocess import preprocess_batch
from trt_res2net.runtime.backend import open_backend

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return onnx_models.make_classifier(tmp_path_factory.mktemp("m") / "tiny.onnx")


@pytest.fixture(scope="module")
def paddle_like(tmp_path_factory):
    return onnx_models.make_paddle2onnx_like(tmp_path_factory.mktemp("p") / "inference.onnx", num_classes=10)


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    imf.write_all(d / "awkward", imf.AWKWARD)
    imf.write_all(d / "broken", imf.BROKEN)
    (d / "notes.txt").write_text("not an image, and not an image extension either")
    for p in imf.PHOTOS:
        (d / p.name.upper()).write_bytes(p.read_bytes())  # upper-case extensions are found too
    return d


def error_lines(err: str) -> list[str]:
    """stderr without infer.py's header: the model's line and the preprocessing's."""
    return [ln for ln in err.strip().splitlines()
            if "ONNX Runtime (" not in ln and not ln.startswith("preprocessing: ")]


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_photos_end_to_end_json(tiny, tmp_path, capsys):
    out_json = tmp_path / "out" / "results.json"
    code, out, err = run_main(capsys, tiny, *imf.PHOTOS, "--topk", 3, "--json", out_json)
    assert code == 0
    results = json.loads(out_json.read_text())
    assert isinstance(results, list) and {r.pop("preprocessing") for r in results} == {"cpu"}
    assert [r["image"] for r in results] == [str(p) for p in imf.PHOTOS]
    probs = softmax(open_backend(tiny).run(preprocess_batch(imf.PHOTOS)))
    labels = load_labels()
    for r, p in zip(results, probs, strict=True):
        assert set(r) == {"image", "topk"} and len(r["topk"]) == 3
        assert all(set(e) == {"class_id", "label", "score"} for e in r["topk"])
        ids = [e["class_id"] for e in r["topk"]]
        assert ids == list(np.argsort(-p, kind="stable")[:3])
        assert [e["label"] for e in r["topk"]] == [labels[i] for i in ids]
        np.testing.assert_allclose([e["score"] for e in r["topk"]], p[ids], atol=1e-6)
    # The readable table names each image and its best label.
    for r in results:
        assert r["image"] in out and r["topk"][0]["label"] in out


def test_directory_with_awkward_and_broken_images(tiny, mixed_dir, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run_main(capsys, tiny, mixed_dir, "--json", out_json, "--batch", 4, "--no-progress")
    assert code == 1  # some failed, the rest reported
    results = json.loads(out_json.read_text())
    assert sum("error" in r for r in results) == len(imf.BROKEN)
    assert all(set(r) == {"image", "error"} for r in results if "error" in r)
    by_name = {Path(r["image"]).name: r for r in results}
    assert "notes.txt" not in by_name
    assert set(by_name) == set(imf.AWKWARD) | set(imf.BROKEN) | {p.name.upper() for p in imf.PHOTOS}
    for name in imf.BROKEN:
        r = by_name[name]
        assert set(r) == {"image", "error"} and "\n" not in r["error"] and r["error"]
        assert f"skipped {r['image']}: {r['error']}" in err
    for name in set(by_name) - set(imf.BROKEN):
        assert len(by_name[name]["topk"]) == 5, name
    assert by_name["truncated.jpg"]["error"].startswith("truncated JPEG")
    assert by_name["empty.jpg"]["error"] == "empty file"
    n, bad = len(results), len(imf.BROKEN)
    assert f"classified {n - bad} of {n} images; {bad} could not be read" in err


def test_each_broken_file_alone_exits_1_without_traceback(tiny, tmp_path, capsys):
    for name, make in imf.BROKEN.items():
        p = tmp_path / name
        p.write_bytes(make())
        code, out, err = run_main(capsys, tiny, p, "--json", tmp_path / "x.json")
        assert code == 1, name
        assert json.loads((tmp_path / "x.json").read_text())[0]["image"] == str(p)


def test_foreign_onnx_uses_model_names_ids_and_labels_file(paddle_like, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run_main(capsys, paddle_like, imf.PHOTOS[0], "--json", out_json, "--topk", 20)
    assert code == 0
    (r,) = json.loads(out_json.read_text())
    assert len(r["topk"]) == 10  # only 10 classes
    assert all(e["label"] == str(e["class_id"]) for e in r["topk"])
    assert abs(sum(e["score"] for e in r["topk"]) - 1) < 1e-4  # its own softmax, not applied twice
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{i} flower {i}\n" for i in range(10)))
    code, out, err = run_main(capsys, paddle_like, imf.PHOTOS[0], "--json", out_json, "--labels", labels)
    (r,) = json.loads(out_json.read_text())
    assert code == 0 and all(e["label"] == f"flower {e['class_id']}" for e in r["topk"])


def test_quiet(tiny, capsys):
    code, out, err = run_main(capsys, tiny, *imf.PHOTOS, "-q")
    assert code == 0 and out == "" and "classified 4 of 4 images" in err


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["{tiny}"], 2, "no images given"),
        (["{tiny}", "{tmp}/missing.jpg"], 2, "missing.jpg: no such file or directory"),
        (["{tiny}", "{tmp}/emptydir"], 2, "no images found"),
        (["{tmp}/missing.onnx", "{photo}"], 2, "no such model file"),
        (["{tmp}/model.pt", "{photo}"], 2, "unsupported model file"),
        (["{tiny}", "{photo}", "--labels", "{tmp}/nolabels.txt"], 2, "labels file not found"),
        (["{tiny}", "{photo}", "--topk", "0"], 2, "positive integer"),
        (["{tiny}", "{photo}", "--batch", "x"], 2, "positive integers"),
        (["{tiny}", "{photo}", "--batch", "0"], 2, "positive integers"),
        (["{tiny}", "{photo}", "--bogus"], 2, "unrecognized arguments"),
        (["{tiny}", "{photo}", "--json", "{tmp}/emptydir"], 2, "cannot write the JSON"),
    ],
)
def test_usage_errors_are_one_line_exit_2(tiny, tmp_path, capsys, argv, code, message):
    (tmp_path / "emptydir").mkdir(exist_ok=True)
    (tmp_path / "model.pt").write_bytes(b"x")
    argv = [a.format(tiny=tiny, tmp=tmp_path, photo=imf.PHOTOS[0]) for a in argv]
    got, out, err = run_main(capsys, *argv)
    assert got == code and message in err
    if "error:" in err and "usage:" not in err:
        assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith("error:")


def test_model_that_fails_at_run_time_is_one_line(tmp_path, capsys):
    # Symbolic spatial size, but the graph only works at 256×256: ONNX Runtime fails inside run().
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["y"])],
        "fixed_inside",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(np.array([-1, 3 * 256 * 256], np.int64), "shape"),
         numpy_helper.from_array(np.zeros((3 * 256 * 256, 4), np.float32), "w")],
    )
    path = tmp_path / "m.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every supported ONNX Runtime reads (onnx 1.23 writes 12 by default)
    onnx.save(model, str(path))
    code, out, err = run_main(capsys, path, imf.PHOTOS[0])
    assert code == 2 and "inference failed" in err and len(error_lines(err)) == 1


def test_engine_without_tensorrt_exits_3(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    code, out, err = run_main(capsys, engine, imf.PHOTOS[0])
    assert code == 3 and err.startswith("error:") and "pip install" in err


def test_help_and_the_benchmark_options(tmp_path, capsys):
    assert main(["--help"]) == 0
    assert "--benchmark" in capsys.readouterr().out
    args = build_parser().parse_args(["m.engine", "--benchmark", "--batch", "8,1", "--iterations", "5"])
    assert args.benchmark and args.batch == [1, 8] and args.iterations == 5 and args.inputs == []
    try:
        import tensorrt  # noqa: F401
    except ImportError:  # the benchmark needs TensorRT: exit 3, one line
        engine = tmp_path / "m.engine"
        engine.write_bytes(b"\0" * 16)
        code, out, err = run_main(capsys, engine, "--benchmark", "--batch", "1,8")
        assert code == 3 and err.strip().splitlines()[-1].startswith("error:")


def test_batch_list_is_for_the_benchmark_only(tiny, capsys):
    code, out, err = run_main(capsys, tiny, imf.PHOTOS[0], "--batch", "1,8")
    assert code == 2 and "one size" in err


def test_top_level_script_runs(tiny):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), str(tiny), str(imf.PHOTOS[0]), "--topk", "2"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(imf.PHOTOS[0]) in proc.stdout and "rank" in proc.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(tiny), "/nonexistent/x.jpg"],
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "Traceback" not in bad.stderr


def test_tiny_res2net_end_to_end(tiny_onnx, tiny_spec, tiny_weights, tmp_path, capsys):
    """The exporter's tiny Res2Net through infer.py agrees with the independent numpy forward pass."""
    from trt_res2net.model.reference import forward

    out_json = tmp_path / "res2net.json"
    code, out, err = run_main(capsys, tiny_onnx, *imf.PHOTOS, "--json", out_json, "--batch", 3)
    assert code == 0 and "dynamic batch, 1000 classes" in err
    assert err.count("warning") == 1 and "predictions mean nothing" in err  # the fixture has random weights
    results = json.loads(out_json.read_text())
    probs = softmax(forward(tiny_spec, tiny_weights, preprocess_batch(imf.PHOTOS)))
    for r, p in zip(results, probs, strict=True):
        assert r["image"] in out
        scores = np.array([e["score"] for e in r["topk"]])
        np.testing.assert_allclose(scores, p[[e["class_id"] for e in r["topk"]]], atol=1e-5)
        np.testing.assert_allclose(scores, np.sort(p)[::-1][:5], atol=1e-5)
