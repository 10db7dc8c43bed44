"""TensorRTBackend's plumbing on a CPU, with a fake TensorRT and fake GPU memory (tests/fake_gpu_runtime.py):
chunking and padding, data types, CUDA-graph replay, manifest refusal, errors as one line."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
from fake_gpu_runtime import FakeGraph, FakeKernels, expected_outputs, install, write_engine

import trt_res2net
from trt_res2net.errors import EXIT_NO_TENSORRT, MissingDependency, UserError
from trt_res2net.preprocess import SPEC, preprocess_bgr
from trt_res2net.trt_runtime import TensorRTBackend, topk_numpy


@pytest.fixture
def fake_trt(monkeypatch):
    return install(monkeypatch)


@pytest.fixture
def fake_manifest(monkeypatch):
    """A stand-in for trt_res2net.manifest (the builder's module): compares TensorRT version and GPU."""
    module = types.ModuleType("trt_res2net.manifest")
    module.calls = []

    def check_engine_compatible(manifest, trt_version, gpu_name, cc):
        module.calls.append((trt_version, gpu_name, cc))
        if manifest["tensorrt_version"] != trt_version:
            built = manifest["tensorrt_version"]
            raise UserError(f"engine was built with TensorRT {built}, this is {trt_version}")
        if manifest["gpu"] != gpu_name:
            raise UserError(f"engine was built for {manifest['gpu']}, this GPU is {gpu_name}")

    module.check_engine_compatible = check_engine_compatible
    monkeypatch.setitem(sys.modules, "trt_res2net.manifest", module)
    monkeypatch.setattr(trt_res2net, "manifest", module, raising=False)
    return module


def _batch(n, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal((n, 3, 224, 224)).astype(dtype)


def _photos(n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(375, 500), (500, 375), (224, 224), (3, 2), (640, 480), (100, 900)]
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


def test_describes_a_dynamic_engine(tmp_path, fake_trt):
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine", batch=(1, 4, 8), classes=10),
                              check_manifest=False)
    assert (backend.input_name, backend.output_name, backend.num_classes) == ("input", "logits", 10)
    assert (backend.min_batch, backend.opt_batch, backend.max_batch) == (1, 4, 8)
    assert backend.outputs_probabilities is False and backend.gpu_preprocessing
    d = backend.info()
    assert d["tensorrt"] == "10.3.0" and d["gpu"]["compute_capability"] == "9.0"
    assert backend.describe() == ("TensorRT 10.3.0 on NVIDIA H200 (compute 9.0), batch 1..8, 10 classes, "
                                  "float32 input")
    assert backend.fixed_batch is False
    backend.close()


def test_run_splits_by_max_batch_and_allocates_once_per_batch_size(tmp_path, fake_trt):
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine", batch=(1, 4, 8)), check_manifest=False)
    x = _batch(11)
    np.testing.assert_allclose(backend.run(x), expected_outputs(x, 10), rtol=1e-5, atol=1e-6)
    assert sorted(backend._bindings) == [3, 8]
    before = {n: b.device_in.address for n, b in backend._bindings.items()}
    backend.run(_batch(8, 1))
    assert {n: b.device_in.address for n, b in backend._bindings.items()} == before
    assert backend.run(_batch(0)).shape == (0, 10)


def test_fixed_batch_engine_is_padded(tmp_path, fake_trt):
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine", fixed=4), check_manifest=False)
    assert (backend.min_batch, backend.max_batch) == (4, 4)
    x = _batch(6)
    np.testing.assert_allclose(backend.run(x), expected_outputs(x, 10), rtol=1e-5, atol=1e-6)
    assert list(backend._bindings) == [4]


def test_half_precision_io(tmp_path, fake_trt):
    path = write_engine(tmp_path / "m.engine", in_dtype="HALF", out_dtype="HALF")
    backend = TensorRTBackend(path, check_manifest=False)
    assert not backend.gpu_preprocessing
    x = _batch(3)
    out = backend.run(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected_outputs(x.astype(np.float16), 10), rtol=1e-2, atol=1e-2)
    # classify_bgr falls back to the CPU reference preprocessing
    images = _photos(3)
    top = backend.classify_bgr(images, k=3)
    ref = topk_numpy(backend.run(np.stack([preprocess_bgr(im) for im in images])), 3, True)
    np.testing.assert_array_equal(top.ids, ref.ids)
    assert not FakeKernels.instances


def test_classify_bgr_runs_preprocessing_and_topk_on_the_device(tmp_path, fake_trt):
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine", batch=(1, 4, 8), classes=20),
                              check_manifest=False)
    images = _photos(13)
    top = backend.classify_bgr(images, k=5)
    assert top.ids.shape == top.scores.shape == (13, 5) and top.ids.dtype == np.int32
    expected = topk_numpy(expected_outputs(np.stack([preprocess_bgr(im) for im in images]), 20), 5, True)
    np.testing.assert_array_equal(top.ids, expected.ids)
    np.testing.assert_allclose(top.scores, expected.scores, rtol=1e-5)
    (kernels,) = FakeKernels.instances
    assert kernels.batches == [8, 5]
    # nothing but the pixels went to the device (no float tensor from the host)
    assert all(kind == "dtoh" for kind, _ in backend.stream.copies)
    assert backend.classify_bgr([], k=5).ids.shape == (0, 5)


def test_probability_outputs_are_not_softmaxed_again(tmp_path, fake_trt):
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine", out_name="probabilities"),
                              check_manifest=False)
    assert backend.outputs_probabilities
    images = _photos(2)
    top = backend.classify_bgr(images, k=2)
    raw = expected_outputs(np.stack([preprocess_bgr(im) for im in images]), 10)
    np.testing.assert_allclose(top.scores, np.sort(raw, axis=1)[:, ::-1][:, :2], rtol=1e-5)
    forced = TensorRTBackend(write_engine(tmp_path / "n.engine", out_name="probabilities"),
                             check_manifest=False, outputs_probabilities=False)
    assert not forced.outputs_probabilities


def test_cuda_graph_is_captured_once_per_batch_size_and_replayed(tmp_path, fake_trt):
    path = write_engine(tmp_path / "m.engine", batch=(1, 4, 8))
    plain = TensorRTBackend(path, check_manifest=False)
    graphed = TensorRTBackend(path, check_manifest=False, cuda_graph=True)
    for seed in range(3):
        x = _batch(11, seed)
        np.testing.assert_allclose(graphed.run(x), plain.run(x), rtol=1e-6)
    assert sorted(g.state[0]["input"][0] for g in FakeGraph.instances) == [3, 8]
    assert [g.launches for g in FakeGraph.instances] == [3, 3]
    assert graphed.info()["cuda_graph"] and "CUDA graphs" in graphed.describe()


def test_cuda_graph_failure_falls_back_with_a_warning(tmp_path, fake_trt, capsys):
    FakeGraph.fail = True
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine"), check_manifest=False, cuda_graph=True)
    x = _batch(2)
    np.testing.assert_allclose(backend.run(x), expected_outputs(x, 10), rtol=1e-5, atol=1e-6)
    backend.run(x)
    assert capsys.readouterr().err.count("CUDA graph capture is not possible") == 1
    assert not backend.info()["cuda_graph"]


def test_time_compute_ms(tmp_path, fake_trt):
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine", batch=(1, 4, 8)), check_manifest=False,
                              cuda_graph=True)
    assert backend.time_compute_ms(8) >= 0.0
    assert backend.time_compute_ms(8) >= 0.0
    with pytest.raises(UserError, match="batch 9"):
        backend.time_compute_ms(9)


def _with_manifest(tmp_path, **fields):
    path = write_engine(tmp_path / "m.engine")
    manifest = {"tensorrt_version": "10.3.0", "gpu": "NVIDIA H200", **fields}
    (tmp_path / "m.engine.json").write_text(json.dumps(manifest))
    return path


def test_manifest_is_checked_before_loading(tmp_path, fake_trt, fake_manifest):
    TensorRTBackend(_with_manifest(tmp_path))
    assert fake_manifest.calls == [("10.3.0", "NVIDIA H200", "9.0")]
    path = _with_manifest(tmp_path, tensorrt_version="8.6.1")
    with pytest.raises(UserError, match="TensorRT 8.6.1, this is 10.3.0"):
        TensorRTBackend(path)
    assert len(fake_trt.loaded) == 1  # the refused engine was never deserialized
    TensorRTBackend(path, check_manifest=False)


def test_manifest_found_by_the_manifest_module_when_it_says_where(tmp_path, fake_trt, fake_manifest):
    fake_manifest.manifest_path = lambda engine: engine.with_suffix(".engine.meta")
    path = write_engine(tmp_path / "m.engine")
    (tmp_path / "m.engine.meta").write_text(json.dumps({"tensorrt_version": "11.4.0", "gpu": "NVIDIA H200"}))
    with pytest.raises(UserError, match="11.4.0"):
        TensorRTBackend(path)


def test_manifest_file_check_and_preprocessing_warning(tmp_path, fake_trt, fake_manifest, capsys):
    checked = []

    def check_engine_file(manifest, engine_path):
        checked.append(engine_path)
        if manifest.get("engine_sha256") == "other":
            raise UserError(f"{engine_path} does not match its manifest")

    fake_manifest.check_engine_file = check_engine_file
    TensorRTBackend(_with_manifest(tmp_path, preprocess_sha256=SPEC.sha256()))
    assert checked == [tmp_path / "m.engine"] and capsys.readouterr().err == ""
    with pytest.raises(UserError, match="does not match"):
        TensorRTBackend(_with_manifest(tmp_path, engine_sha256="other"))
    TensorRTBackend(_with_manifest(tmp_path, preprocess_sha256="0" * 64))
    assert "built for other preprocessing" in capsys.readouterr().err


def test_manifest_can_say_the_output_is_probabilities(tmp_path, fake_trt, fake_manifest):
    assert TensorRTBackend(_with_manifest(tmp_path, outputs_probabilities=True)).outputs_probabilities


def test_missing_manifest_is_a_warning(tmp_path, fake_trt, fake_manifest, capsys):
    TensorRTBackend(write_engine(tmp_path / "m.engine"))
    assert "no manifest next to" in capsys.readouterr().err
    assert fake_manifest.calls == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inputs": {"a": {"shape": [-1, 3, 224, 224], "dtype": "FLOAT", "profile": [[1, 3, 224, 224]] * 3},
                     "b": {"shape": [-1, 3, 224, 224], "dtype": "FLOAT", "profile": [[1, 3, 224, 224]] * 3}}},
         "one input and one output"),
        ({"inputs": {"x": {"shape": [-1, 224, 224], "dtype": "FLOAT", "profile": [[1, 224, 224]] * 3}}},
         r"expected \[N, 3, H, W\]"),
        ({"out_dtype": "INT8"}, "data type INT8"),
        ({"outputs": {"y": {"shape": [-1, 10, 7], "dtype": "FLOAT"}}}, r"expected \[N, classes\]"),
    ],
)
def test_unsupported_engines_are_refused_in_one_line(tmp_path, fake_trt, kwargs, message):
    with pytest.raises(UserError, match=message) as err:
        TensorRTBackend(write_engine(tmp_path / "m.engine", **kwargs), check_manifest=False)
    assert "\n" not in str(err.value)


def test_unloadable_engine_and_bad_input(tmp_path, fake_trt):
    bad = tmp_path / "bad.engine"
    bad.write_bytes(b"\x00not a plan")
    with pytest.raises(UserError, match="could not load"):
        TensorRTBackend(bad, check_manifest=False)
    with pytest.raises(UserError, match="engine not found"):
        TensorRTBackend(tmp_path / "missing.engine")
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine"), check_manifest=False)
    with pytest.raises(UserError, match="shape"):
        backend.run(np.zeros((2, 3, 112, 112), np.float32))
    backend.context.fail_execute = True
    with pytest.raises(UserError, match="could not run"):
        backend.run(_batch(1))


def test_without_tensorrt_the_backend_is_a_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt → ImportError
    path = write_engine(tmp_path / "m.engine")
    with pytest.raises(MissingDependency) as err:
        TensorRTBackend(path)
    assert err.value.exit_code == EXIT_NO_TENSORRT
    assert "pip install tensorrt" in str(err.value) and "\n" not in str(err.value)

