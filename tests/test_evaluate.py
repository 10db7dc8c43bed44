"""Accuracy, model agreement, val lists, and infer.py --eval."""

from __future__ import annotations

import json
import shutil

import image_factory as imf
import numpy as np
import onnx_models
import pytest

from trt_res2net.cli.infer import main
from trt_res2net.core.errors import UserError
from trt_res2net.data.metrics import AccuracyMeter, AgreementMeter, accuracy, compare_predictions, read_val_list
from trt_res2net.data.preprocess import preprocess_batch
from trt_res2net.runtime.backend import open_backend
from trt_res2net.runtime.evaluate import evaluate


def test_accuracy_counts():
    logits = np.array([[0.9, 0.1, 0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [1, 2, 3, 4, 5, 6]])
    r = accuracy(logits, [0, 0, 1])
    assert r["images"] == 3 and r["top1_correct"] == 1 and r["top5_correct"] == 2
    assert r["top1"] == pytest.approx(1 / 3) and r["top5"] == pytest.approx(2 / 3)
    assert accuracy(np.zeros((0, 6)), [])["images"] == 0


def test_compare_predictions():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 100))
    same = compare_predictions(a, a)
    assert same["top1_agreement"] == 1 and same["mean_top5_overlap"] == 1
    assert same["cosine_similarity"] == pytest.approx(1) and same["max_abs_diff"] == 0
    b = a.copy()
    b[0] = -b[0]  # one image ranked completely differently
    r = compare_predictions(a, b)
    assert r["top1_agree"] == 49 and r["top1_agreement"] == pytest.approx(0.98)
    assert r["mean_top5_overlap"] == pytest.approx(49 / 50)
    # Rankings are what count: probabilities compare like their logits.
    e = np.exp(a - a.max(1, keepdims=True))
    p = compare_predictions(a, e / e.sum(1, keepdims=True))
    assert p["top1_agreement"] == 1 and p["mean_top5_overlap"] == 1
    partial = np.array([[5, 4, 3, 2, 1, 0, -1]]), np.array([[5, 4, 3, -5, -5, 2, 1]])
    assert compare_predictions(*partial)["mean_top5_overlap"] == pytest.approx(3 / 5)
    with pytest.raises(UserError):
        compare_predictions(a, a[:3])


def test_meters_add_up_to_one_shot():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 20)), rng.normal(size=(30, 20))
    labels = rng.integers(0, 20, 30)
    acc, agree = AccuracyMeter(), AgreementMeter()
    for s in (slice(0, 7), slice(7, 8), slice(8, 30)):
        acc.update(a[s], labels[s])
        agree.update(a[s], b[s])
    one = accuracy(a, labels)
    assert acc.summary()["top1"] == pytest.approx(one["top1"]) and acc.top5 == pytest.approx(one["top5"])
    whole = compare_predictions(a, b)
    for key in ("top1_agreement", "mean_top5_overlap", "cosine_similarity", "max_abs_diff"):
        assert agree.summary()[key] == pytest.approx(whole[key])


def test_read_val_list(tmp_path):
    lst = tmp_path / "val_list.txt"
    lst.write_text("# comment\nimgs/a.jpg 3\n\nmy photos/b c.JPEG 0\r\n")
    assert read_val_list(lst) == [(tmp_path / "imgs/a.jpg", 3), (tmp_path / "my photos/b c.JPEG", 0)]
    assert read_val_list(lst, "/data")[0][0].as_posix() == "/data/imgs/a.jpg"
    for text, match in [("a.jpg\n", ":1: expected"), ("a.jpg x\n", "expected"), ("a.jpg -1\n", "expected"),
                        ("\n# only\n", "no images")]:
        lst.write_text(text)
        with pytest.raises(UserError, match=match):
            read_val_list(lst)
    with pytest.raises(UserError, match="no such list"):
        read_val_list(tmp_path / "nope.txt")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    model_a = onnx_models.make_classifier(d / "a.onnx", seed=0)
    model_b = onnx_models.make_classifier(d / "b.onnx", seed=5)
    root = d / "data"
    (root / "val").mkdir(parents=True)
    for p in imf.PHOTOS:
        shutil.copy(p, root / "val" / p.name)
    logits = open_backend(model_a).run(preprocess_batch(imf.PHOTOS))
    top = np.argsort(-logits, axis=1, kind="stable")
    # Labels: the model's top-1 for the first two photos, its 3rd choice for the third, and a class
    # outside its top 5 for the fourth → top-1 50%, top-5 75%.
    labels = [int(top[0, 0]), int(top[1, 0]), int(top[2, 2]), int(top[3, 10])]
    lst = root / "val_list.txt"  # paths relative to the list's folder, the default data root
    lst.write_text("".join(f"val/{p.name} {lab}\n" for p, lab in zip(imf.PHOTOS, labels, strict=True)))
    return {"a": model_a, "b": model_b, "root": root, "list": lst, "dir": d}


def test_evaluate_accuracy_and_agreement(setup):
    ev = evaluate([setup["a"], setup["b"]], setup["list"], setup["root"], batch=3, progress=False)
    d = ev.to_dict()
    assert d["listed"] == 4 and d["evaluated"] == 4 and d["failed"] == 0
    a, b = d["models"]
    assert (a["top1"], a["top5"]) == (0.5, 0.75)
    xa = open_backend(setup["a"]).run(preprocess_batch(imf.PHOTOS))
    xb = open_backend(setup["b"]).run(preprocess_batch(imf.PHOTOS))
    (agree,) = d["agreement"]
    expect = compare_predictions(xa, xb)
    assert agree["top1_agreement"] == pytest.approx(expect["top1_agreement"])
    assert agree["mean_top5_overlap"] == pytest.approx(expect["mean_top5_overlap"])
    assert "top-1 agreement" in ev.format() and "50.00%" in ev.format()


def test_eval_cli_two_models_json_and_a_broken_image(setup, tmp_path, capsys):
    lst = tmp_path / "list.txt"
    lst.write_text(setup["list"].read_text() + "val/missing.jpg 1\n")
    out_json = tmp_path / "eval.json"
    code = main([str(setup["a"]), str(setup["a"]), "--eval", str(lst), "--data-root", str(setup["root"]),
                 "--json", str(out_json), "--batch", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and "skipped" in err and "missing.jpg" in err and "Traceback" not in err
    d = json.loads(out_json.read_text())
    assert d["listed"] == 5 and d["evaluated"] == 4 and d["failed"] == 1 and d["preprocessing"] == "cpu"
    assert d["failures"][0]["error"] == "no such file"
    assert d["agreement"][0]["top1_agreement"] == 1.0 and d["agreement"][0]["mean_top5_overlap"] == 1.0
    assert "top-1" in out and "agreement 100.00%" in out


def test_eval_cli_limit_and_errors(setup, tmp_path, capsys):
    argv = [str(setup["a"]), "--eval", str(setup["list"]), "--limit", "2", "--json", str(tmp_path / "e.json")]
    code = main(argv)
    assert code == 0
    d = json.loads((tmp_path / "e.json").read_text())
    assert d["evaluated"] == 2 and d["models"][0]["top1"] == 1.0
    capsys.readouterr()
    assert main([str(setup["a"]), str(imf.PHOTOS[0]), "--eval", str(setup["list"])]) == 2
    assert "positional arguments are model files" in capsys.readouterr().err
    bad = tmp_path / "bad.txt"
    bad.write_text("val/x.jpg 1000\n")
    assert main([str(setup["a"]), "--eval", str(bad)]) == 2
    assert "out of range" in capsys.readouterr().err
    ten = onnx_models.make_classifier(tmp_path / "ten.onnx", num_classes=10)
    assert main([str(setup["a"]), str(ten), "--eval", str(setup["list"])]) == 2
    assert "different class counts" in capsys.readouterr().err
