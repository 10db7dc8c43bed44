"""benchmarks/check_gpu_topk.py on a CPU: its cases against a numpy transcription of the kernel's ranking and
summation, its verdicts, and the whole script on the fake GPU (its real run needs a GPU: tests/test_gpu_runtime.py
and benchmarks/gpu_suite.sh)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bench_scripts import load_benchmark
from fake_gpu_runtime import FakeKernels, install

from trt_res2net.runtime.tensorrt_backend import topk_numpy

check = load_benchmark("check_gpu_topk")


def kernel_ranking(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """res2net_softmax_topk's selection, transcribed: round r takes the best (value, index) ranking below
    round r-1's pick — higher value first, then lower index; NaN never ranks; id -1 when none is left."""
    n, classes = x.shape
    ids = np.full((n, k), -1, np.int32)
    raw = np.full((n, k), np.nan, np.float32)
    idx = np.arange(classes)
    for row in range(n):
        v = x[row]
        prev_v, prev_i = np.float32(np.inf), -1
        for r in range(k):
            below = (v < prev_v) | ((v == prev_v) & (idx > prev_i))
            if not below.any():
                break
            best = v[below].max()
            i = int(idx[below & (v == best)].min())
            ids[row, r], raw[row, r] = i, v[i]
            prev_v, prev_i = v[i], i
    return ids, raw


def strided_softmax(x: np.ndarray, ids: np.ndarray, threads: int = 256) -> np.ndarray:
    """Softmax scores summed as the kernel sums: one float32 partial sum per thread, then a tree."""
    with np.errstate(over="ignore", invalid="ignore"):
        m = x.max(axis=1, keepdims=True)
        e = np.exp(x - m).astype(np.float32)
    classes = x.shape[1]
    pad = np.zeros((x.shape[0], -(-classes // threads) * threads), np.float32)
    pad[:, :classes] = e
    partial = np.zeros((x.shape[0], threads), np.float32)
    for j in range(pad.shape[1] // threads):
        partial += pad[:, j * threads:(j + 1) * threads]
    while partial.shape[1] > 1:
        half = partial.shape[1] // 2
        partial = partial[:, :half] + partial[:, half:]
    return (np.take_along_axis(e, ids.astype(np.int64), axis=1) / partial).astype(np.float32)


def test_topk_cases_ask_only_what_the_kernel_promises():
    cases = check.make_cases(0)
    assert len(cases) > 150
    shapes = {c.shape for c in cases}
    assert {s[1] for s in shapes} >= set(check.CLASS_COUNTS) and {s[0] for s in shapes} >= {1, 64}
    assert {c.k for c in cases} == {1, 2, 3, 4, 5, 6, 10} and {c.apply_softmax for c in cases} == {True, False}
    for case in cases:
        ids, raw = kernel_ranking(case.logits, case.k)
        with np.errstate(over="ignore", invalid="ignore"):
            ref = topk_numpy(case.logits, case.k, case.apply_softmax)
        np.testing.assert_array_equal(ids, ref.ids, err_msg=case.name)  # the kernel's order is numpy's
        scores = strided_softmax(case.logits, ids) if case.apply_softmax else raw
        result = check.compare(case, ids, scores)
        assert result["passed"], result  # the tolerance holds for another summation order
        assert check.compare(case, ids[:, ::-1].copy(), scores)["passed"] == (case.k == 1)


def test_compare_catches_unwritten_outputs_and_wrong_scores():
    case = check.make_cases(0)[0]
    ref = topk_numpy(case.logits, case.k, case.apply_softmax)
    assert check.compare(case, ref.ids, ref.scores)["passed"]
    poisoned = ref.ids.copy()
    poisoned[-1, -1] = -1
    assert not check.compare(case, poisoned, ref.scores)["written"]
    off = ref.scores * np.float32(1 + 3 * check.RTOL)
    r = check.compare(case, ref.ids, off)
    assert r["ids_equal"] and not r["scores_ok"] and not r["passed"]


def test_check_gpu_topk_on_the_fake_gpu(tmp_path, monkeypatch, capsys):
    install(monkeypatch)
    out = tmp_path / "topk.json"
    assert check.main(["--iterations", "2", "--warmup", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    doc = json.loads(out.read_text())
    n = len(check.make_cases(0))
    assert f"{n}/{n} cases agree with topk_numpy" in text
    assert doc["summary"]["passed"] == doc["summary"]["cases"] == n
    assert [(t["n"], t["classes"], t["k"]) for t in doc["timing"]] == list(check.TIMED)
    assert all(r["passed"] and not r["poisoned"] for r in doc["cases"])  # the fakes have no buffer to poison


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the reference topk_numpy on ±FLT_MAX rows
def test_check_gpu_topk_catches_ties_in_the_wrong_order(tmp_path, monkeypatch, capsys):
    install(monkeypatch)

    def last_index_first(self, logits_ptr, n, num_classes, k, apply_softmax):
        from fake_gpu_runtime import array_at

        x = array_at(logits_ptr, np.float32, (n, num_classes)).copy()
        flipped = topk_numpy(x[:, ::-1].copy(), k, apply_softmax)
        self._result = type(flipped)((num_classes - 1 - flipped.ids).astype(np.int32), flipped.scores)

    monkeypatch.setattr(FakeKernels, "topk", last_index_first)
    out = tmp_path / "topk.json"
    assert check.main(["--iterations", "1", "--warmup", "0", "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "FAILED constant rows" in text and "FAILED normal x4, 1000 classes" not in text
    doc = json.loads(out.read_text())
    assert 0 < doc["summary"]["passed"] < doc["summary"]["cases"]
