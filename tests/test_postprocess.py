"""softmax, the probability heuristic, top-k, labels (package, file override, ids) and the table."""

from __future__ import annotations

import numpy as np
import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.data.postprocess import format_topk, is_probability, load_labels, softmax, topk, topk_entries


def test_softmax_is_stable_and_normalised():
    x = np.array([[1000.0, 1001.0, 999.0], [-5, 0, 5]], np.float32)
    p = softmax(x)
    assert p.dtype == np.float32 and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(p[0], np.exp([0, 1, -1]) / np.exp([0, 1, -1]).sum(), rtol=1e-6)
    assert softmax(x.astype(np.float16)).dtype == np.float32


def test_is_probability():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 1000)).astype(np.float32)
    assert not is_probability(logits)
    assert is_probability(softmax(logits))
    assert is_probability(softmax(logits).astype(np.float16))  # fp16 sums are off by ~1e-3
    assert not is_probability(np.abs(logits))  # non-negative but not summing to one
    assert not is_probability(np.full((2, 4), 0.25) - np.array([0.3, 0, 0, -0.3]))  # negative entry
    assert not is_probability(np.zeros((0, 10)))


def test_topk_order_ties_and_small_class_counts():
    s = np.array([[0.1, 0.5, 0.2, 0.5, 0.0], [3, 2, 1, 0, -1]], np.float32)
    ids, vals = topk(s, 3)
    assert ids.tolist() == [[1, 3, 2], [0, 1, 2]] and ids.dtype == np.int64
    np.testing.assert_array_equal(vals, np.array([[0.5, 0.5, 0.2], [3, 2, 1]], np.float32))
    ids, vals = topk(s, 10)  # k larger than the class count
    assert ids.shape == (2, 5)
    ids1, vals1 = topk(s[0], 2)  # a single row
    assert ids1.tolist() == [1, 3]
    rng = np.random.default_rng(1)
    big = rng.normal(size=(8, 1000))
    ids, vals = topk(big, 5)
    np.testing.assert_array_equal(ids, np.argsort(-big, axis=1)[:, :5])


def test_package_labels():
    labels = load_labels()
    assert len(labels) == 1000
    assert labels[0] == "tench, Tinca tinca" and labels[999].startswith("toilet tissue")
    assert load_labels(None, 10) == [str(i) for i in range(10)]  # not ImageNet: ids


def test_labels_file_formats(tmp_path):
    paddle = tmp_path / "paddle.txt"
    paddle.write_text("0 cat\n1 dog, puppy\n2 bird\n\n", encoding="utf-8")
    assert load_labels(paddle, 3) == ["cat", "dog, puppy", "bird"]
    plain = tmp_path / "plain.txt"
    plain.write_text("\ufeffcat\ndog\nbird\n", encoding="utf-8")  # BOM and plain lines
    assert load_labels(plain, 3) == ["cat", "dog", "bird"]
    assert load_labels(plain, None) == ["cat", "dog", "bird"]


@pytest.mark.parametrize(
    "text, classes, match",
    [
        ("cat\ndog\n", 3, "2 labels, but the model has 3"),
        ("0 cat\n1 dog\n5 x\n", 3, "class 5"),
        ("0 cat\n2 bird\n", 3, "1 of the model's 3 classes have no label"),
        ("0 cat\n0 dog\n", 2, "appears twice"),
        ("\n\n", 2, "empty"),
    ],
)
def test_bad_labels_files(tmp_path, text, classes, match):
    p = tmp_path / "labels.txt"
    p.write_text(text)
    with pytest.raises(UserError, match=match):
        load_labels(p, classes)


def test_missing_labels_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_labels(tmp_path / "nope.txt")


def test_entries_and_table():
    entries = topk_entries(np.array([2, 0]), np.array([0.7, 0.2], np.float32), ["a", "b", "c"])
    assert entries == [
        {"class_id": 2, "label": "c", "score": pytest.approx(0.7)},
        {"class_id": 0, "label": "a", "score": pytest.approx(0.2)},
    ]
    table = format_topk(entries, title="img.jpg")
    lines = table.splitlines()
    assert lines[0] == "img.jpg" and "rank" in lines[1] and len(lines) == 4
    assert lines[2].split() == ["1", "2", "0.70000", "c"]
    assert topk_entries(np.array([5]), np.array([1.0]), None)[0]["label"] == "5"
