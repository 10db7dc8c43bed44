"""infer.py and the Classifier on a TensorRT engine take the GPU preprocessing path (decode on the CPU,
``classify_bgr`` on the GPU), shown on a CPU with the fake TensorRT and GPU of tests/fake_gpu_runtime.py:
the same results and the same skipped images as the CPU path, and ``--cpu-preprocess`` to force that."""

from __future__ import annotations

import json

import image_factory as imf
import numpy as np
import pytest
from fake_gpu_runtime import FakeKernels, expected_outputs, install, write_engine

from trt_res2net.cli.infer import main
from trt_res2net.data import images as images_module
from trt_res2net.data.postprocess import load_labels, softmax, topk
from trt_res2net.data.preprocess import ImageDecodeError, decode_for_preprocessing, preprocess, preprocess_batch
from trt_res2net.runtime.classifier import Classifier


@pytest.fixture
def engine(tmp_path, monkeypatch):
    install(monkeypatch)
    return write_engine(tmp_path / "m.engine", batch=(1, 4, 8), classes=1000)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Photos, awkward images, broken files and an image too narrow to resize, in one mixed order."""
    d = tmp_path_factory.mktemp("inputs")
    awkward = imf.write_all(d / "awkward", imf.AWKWARD)
    broken = imf.write_all(d / "broken", imf.BROKEN)
    narrow = imf.write_all(d, {"narrow.png": lambda: imf.tiny_png(3000, 1)})
    mixed = [*imf.PHOTOS[:2], broken[0], *awkward[:7], *narrow, *imf.PHOTOS[2:], *broken[1:], *awkward[7:]]
    return {"all": mixed, "bad": {str(p) for p in (*broken, *narrow)}}


def _by_image(results):
    return {r["image"]: r for r in results}


def test_engine_classifier_decodes_only_and_matches_the_cpu_path(engine, inputs, monkeypatch):
    cpu = Classifier(engine, topk=5, batch=4, gpu_preprocess=False)
    assert cpu.preprocessing == "cpu"
    cpu_results = list(cpu.classify(inputs["all"]))
    assert not FakeKernels.instances  # the CPU path never touched the kernels

    def no_cpu_preprocessing(*args, **kwargs):
        raise AssertionError("the GPU path must not preprocess on the CPU")

    monkeypatch.setattr(images_module, "preprocess", no_cpu_preprocessing)
    gpu = Classifier(engine, topk=5, batch=4)
    assert gpu.preprocessing == "gpu"
    gpu_results = list(gpu.classify(inputs["all"]))

    assert [r["image"] for r in gpu_results] == [str(p) for p in inputs["all"]]  # input order, all named
    assert {r["image"] for r in gpu_results if "error" in r} == inputs["bad"]
    for g, c in zip(gpu_results, cpu_results, strict=True):
        assert g.keys() == c.keys() and g["image"] == c["image"]
        if "error" in c:
            assert g["error"] == c["error"]  # the same one-line reason
            continue
        assert [e["class_id"] for e in g["topk"]] == [e["class_id"] for e in c["topk"]]
        assert [e["label"] for e in g["topk"]] == [e["label"] for e in c["topk"]]
        np.testing.assert_allclose([e["score"] for e in g["topk"]], [e["score"] for e in c["topk"]], atol=2e-6)
    (kernels,) = FakeKernels.instances
    good = len(inputs["all"]) - len(inputs["bad"])
    assert sum(kernels.batches) == good and max(kernels.batches) <= 4
    # only the top-k came back from the device: no float batch went up, no full output came down
    assert all(kind == "dtoh" for kind, _ in gpu.backend.stream.copies)
    assert gpu.backend.context.executions == len(kernels.batches)


def test_gpu_path_results_are_the_engines_topk(engine):
    clf = Classifier(engine, topk=3, batch=8)
    results = list(clf.classify(imf.PHOTOS))
    probs = softmax(expected_outputs(preprocess_batch(imf.PHOTOS), 1000))
    ids, scores = topk(probs, 3)
    labels = load_labels()
    for r, row_ids, row_scores in zip(results, ids, scores, strict=True):
        assert [e["class_id"] for e in r["topk"]] == row_ids.tolist()
        assert [e["label"] for e in r["topk"]] == [labels[i] for i in row_ids]
        np.testing.assert_allclose([e["score"] for e in r["topk"]], row_scores, atol=2e-6)


def test_engines_without_gpu_preprocessing_and_onnx_stay_on_the_cpu(tmp_path, monkeypatch, tiny_onnx):
    install(monkeypatch)
    half = Classifier(write_engine(tmp_path / "h.engine", in_dtype="HALF", classes=1000))
    assert not half.backend.gpu_preprocessing and half.preprocessing == "cpu"
    (r,) = list(half.classify(imf.PHOTOS[:1]))
    assert len(r["topk"]) == 5 and not FakeKernels.instances
    assert Classifier(tiny_onnx).preprocessing == "cpu"


def test_decode_for_preprocessing_refuses_what_preprocess_refuses(inputs):
    for item in inputs["all"]:
        try:
            preprocess(item)
        except ImageDecodeError as e:
            with pytest.raises(ImageDecodeError) as err:
                decode_for_preprocessing(item)
            assert str(err.value) == str(e)
        else:
            image = decode_for_preprocessing(item)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_decode_only_batcher_keeps_images_and_failures(inputs):
    batcher = images_module.ImageBatcher(inputs["all"], 4, decode_only=True)
    batches = list(batcher)
    assert all(b.array is None and len(b.images) == len(b.paths) <= 4 for b in batches)
    assert {p for p, _ in batcher.failures} == inputs["bad"]
    assert sum(len(b) for b in batches) == len(inputs["all"]) - len(inputs["bad"])


def test_infer_cli_on_an_engine_says_which_preprocessing_ran(engine, inputs, tmp_path, capsys):
    gpu_json, cpu_json = tmp_path / "gpu.json", tmp_path / "cpu.json"
    argv = [str(engine), *map(str, inputs["all"]), "--batch", "4", "--no-progress", "--json"]
    assert main([*argv, str(gpu_json)]) == 1  # the broken files are named and skipped, the rest classified
    err = capsys.readouterr().err
    assert "TensorRT 10.3.0 on NVIDIA H200" in err and "preprocessing on the GPU" in err
    assert main([*argv, str(cpu_json), "--cpu-preprocess"]) == 1
    err_cpu = capsys.readouterr().err
    assert "preprocessing on the CPU" in err_cpu and "Traceback" not in err + err_cpu
    gpu, cpu = json.loads(gpu_json.read_text()), json.loads(cpu_json.read_text())
    assert len(gpu) == len(cpu) == len(inputs["all"])  # a list, infer.py's JSON form
    assert {r["preprocessing"] for r in gpu if "topk" in r} == {"gpu"}
    assert {r["preprocessing"] for r in cpu if "topk" in r} == {"cpu"}
    assert [("error" in r) for r in gpu] == [("error" in r) for r in cpu]
    for name in inputs["bad"]:
        assert f"skipped {name}: {_by_image(gpu)[name]['error']}" in err
    for g, c in zip(gpu, cpu, strict=True):
        assert [e["class_id"] for e in g.get("topk", [])] == [e["class_id"] for e in c.get("topk", [])]


def test_infer_py_on_a_tensorrt_rtx_engine_keeps_the_runtime_cache(tmp_path, monkeypatch, capsys):
    """infer.py on an RTX engine (fake tensorrt_rtx): the first runs reported apart, the runtime cache written
    beside the engine when infer.py closes it, and read by the next run."""
    install(monkeypatch, rtx=True)
    engine = write_engine(tmp_path / "m.rtx.engine", batch=(1, 4, 8), classes=1000, rtx=True)
    photos = [str(p) for p in imf.PHOTOS[:3]]
    assert main([str(engine), *photos, "--batch", "4"]) == 0
    err = capsys.readouterr().err
    assert f"{engine}: TensorRT-RTX 1.7.1 on NVIDIA GeForce RTX 4090 (compute 8.9)" in err  # after "no manifest"
    assert "first runs (lazy initialisation, kernel compilation):" in err and "ms at batch 3" in err
    cache = tmp_path / "m.rtx.engine.nvidia-geforce-rtx-4090-sm89.rtx-1.7.1.116.runtime-cache"
    assert f"runtime cache {cache}" in err and cache.read_bytes().startswith(b"CACHE:")
    assert main([str(engine), *photos, "--batch", "4", "--quiet"]) == 0
    assert "does not fit" not in capsys.readouterr().err  # the cache was taken by the second process
