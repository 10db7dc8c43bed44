"""TensorRTBackend's plumbing on a CPU, with a fake TensorRT and fake GPU memory (tests/fake_gpu_runtime.py):
chunking and padding, data types, CUDA-graph replay, manifest refusal, errors as one line."""

from __future__ import annotations

import dataclasses
import json
import sys

import fake_gpu_runtime
import numpy as np
import pytest
from fake_gpu_runtime import FakeGraph, FakeKernels, expected_outputs, install, write_engine

from trt_res2net.core.errors import EXIT_NO_TENSORRT, MissingDependency, UserError
from trt_res2net.data.preprocess import SPEC, preprocess_bgr
from trt_res2net.engine import manifest as mf
from trt_res2net.runtime.tensorrt_backend import TensorRTBackend, topk_numpy


@pytest.fixture
def fake_trt(monkeypatch):
    return install(monkeypatch)


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
    assert d["library"] == "TensorRT 10.3.0" and d["gpu"]["compute_capability"] == "9.0"
    assert d["engine_family"] == "tensorrt" and d["runtime_cache"] is None
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
    # the first run of each batch size runs uncaptured (timed apart, lazy initialisation); then the graph
    assert [g.launches for g in FakeGraph.instances] == [2, 2]
    assert sorted(graphed.first_run_ms) == [3, 8] and sorted(graphed.info()["first_run_ms"]) == ["3", "8"]
    assert graphed.info()["cuda_graph"] and "CUDA graphs" in graphed.describe()


@pytest.mark.parametrize("version", ["8.6.1", "10.3.0", "11.4.0"])
def test_each_cuda_graph_has_its_own_context_on_one_activation_buffer(tmp_path, monkeypatch, version):
    """Batch sizes in turn (8, 3, 4, 8, 3, ...) each replay their own graph: a graph holds its context's shapes and
    addresses from capture time, so each batch size has its own execution context (the fake graph fails a replay
    whose context changed since), and all of them run in one activation buffer of the engine's size, set as
    TensorRT 8.6 (device_memory) or 10.x / 11.x (USER_MANAGED, set_device_memory) take it."""
    trt = install(monkeypatch, version=version)
    path = write_engine(tmp_path / "m.engine", batch=(1, 4, 8))
    graphed = TensorRTBackend(path, check_manifest=False, cuda_graph=True)
    for seed, n in enumerate([11, 4, 11, 4, 1, 11]):
        x = _batch(n, seed)
        np.testing.assert_allclose(graphed.run(x), expected_outputs(x, 10), rtol=1e-5, atol=1e-6)
    contexts = trt.loaded[-1].contexts
    assert sorted(len(g.recorded) for g in FakeGraph.instances) == [1, 1, 1, 1]  # batch sizes 1, 3, 4, 8
    assert len({id(g.recorded[0][0]) for g in FakeGraph.instances}) == 4  # a context per graph
    memory = graphed._context_memory
    assert memory.nbytes == trt.loaded[-1].device_memory_size_v2
    assert all(c.user_managed and c.device_memory == memory.address for c in contexts)
    assert len(contexts) == 5  # the four graphs' and the one that answers the output shape
    graphed.close()
    assert memory.address == 0  # freed once the contexts are gone


def test_cuda_graph_failure_falls_back_with_a_warning(tmp_path, fake_trt, capsys):
    FakeGraph.fail = True
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine"), check_manifest=False, cuda_graph=True)
    x = _batch(2)
    np.testing.assert_allclose(backend.run(x), expected_outputs(x, 10), rtol=1e-5, atol=1e-6)
    backend.run(x)
    assert capsys.readouterr().err.count("CUDA graph capture is not possible") == 1
    assert not backend.info()["cuda_graph"]


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_time_compute_ms(tmp_path, fake_trt, cuda_graph):
    """The events enclose exactly one execution at the asked batch: the fake GPU's clock advances
    EXECUTE_MS_PER_IMAGE per image executed, so the first run (and the graph capture) kept outside the timed
    region, or a wrong batch, would show in the result."""
    backend = TensorRTBackend(write_engine(tmp_path / "m.engine", batch=(1, 4, 8)), check_manifest=False,
                              cuda_graph=cuda_graph)
    per_image = fake_gpu_runtime.EXECUTE_MS_PER_IMAGE
    assert backend.time_compute_ms(8) == 8 * per_image  # the first run at 8 happened before the events
    assert backend.time_compute_ms(8) == 8 * per_image
    assert backend.time_compute_ms(1) == 1 * per_image
    assert sum(c.executions for c in fake_trt.loaded[-1].contexts) == 5  # 2 first runs + 3 timed
    with pytest.raises(UserError, match="batch 9"):
        backend.time_compute_ms(9)


def _with_manifest(tmp_path, name="m.engine", rtx=False, **fields):
    path = write_engine(tmp_path / name, rtx=rtx)
    manifest = {"format": mf.MANIFEST_FORMAT, "format_version": mf.MANIFEST_VERSION,
                "engine_family": "tensorrt-rtx" if rtx else "tensorrt",
                "library_version": "1.7.1.116" if rtx else "10.3.0",
                "gpu": None if rtx else {"name": "NVIDIA H200", "compute_capability": "9.0"},
                "compute_capabilities": ["8.0", "8.6", "8.9", "12.0", "12.1"] if rtx else ["9.0"],
                "engine_sha256": mf.sha256_file(path), **fields}
    mf.manifest_path_for(path).write_text(json.dumps(manifest))
    return path


def test_manifest_is_checked_before_loading(tmp_path, fake_trt):
    TensorRTBackend(_with_manifest(tmp_path))
    path = _with_manifest(tmp_path, library_version="8.6.1")
    with pytest.raises(UserError, match="built with TensorRT 8.6.1, but this machine has TensorRT 10.3.0"):
        TensorRTBackend(path)
    assert len(fake_trt.loaded) == 1  # the refused engine was never deserialized
    TensorRTBackend(path, check_manifest=False)


def test_manifest_file_check_and_the_preprocessing_it_records(tmp_path, fake_trt, capsys):
    backend = TensorRTBackend(_with_manifest(tmp_path, preprocess_sha256=SPEC.sha256(), preprocess=SPEC.to_dict()))
    assert capsys.readouterr().err == "" and backend.recipe.spec == SPEC
    with pytest.raises(UserError, match="does not match its manifest"):
        TensorRTBackend(_with_manifest(tmp_path, engine_sha256="other"))
    own = dataclasses.replace(SPEC, resize_short=240)  # an engine built for its model's own recipe is fed that
    backend = TensorRTBackend(_with_manifest(tmp_path, preprocess_sha256=own.sha256(), preprocess=own.to_dict()))
    assert backend.recipe.spec == own and backend.recipe.source == "as the model records it"


def test_manifest_can_say_the_output_is_probabilities(tmp_path, fake_trt):
    assert TensorRTBackend(_with_manifest(tmp_path, outputs_probabilities=True)).outputs_probabilities


def test_missing_manifest_is_refused_unless_the_user_says_so(tmp_path, fake_trt, capsys):
    engine = write_engine(tmp_path / "m.engine", manifest=False)
    with pytest.raises(UserError, match=r"^no manifest next to .*m.engine \(m.engine.json\): build.py writes the "
                                         r"engine and its manifest together.*run it unchecked with "
                                         r"TensorRTBackend.check_manifest=False$") as err:
        TensorRTBackend(engine)
    assert "\n" not in str(err.value) and fake_trt.loaded == []
    TensorRTBackend(engine, check_manifest=False)  # the user said so: loaded, with one warning
    assert "manifest not checked (TensorRTBackend.check_manifest=False)" in capsys.readouterr().err


def test_a_pair_a_killed_build_left_is_completed_before_loading(tmp_path, fake_trt):
    """A journal beside the engine (the build was killed between its renames): the runtime completes the new pair
    first (core.commit.ensure_complete), then checks it as usual."""
    import os

    from trt_res2net.core import commit

    old = _with_manifest(tmp_path)
    new_engine = write_engine(tmp_path / "new.engine", batch=(1, 2, 2))
    manifest = json.loads(mf.manifest_path_for(old).read_text())
    manifest["engine_sha256"] = mf.sha256_file(new_engine)
    real = commit._rename
    renames = []

    def killed_after_first(src, dst):  # stands for SIGKILL: nothing after the first rename runs
        renames.append(dst)
        if len(renames) == 2:
            raise SystemExit("killed")
        real(src, dst)

    commit._rename = killed_after_first
    try:
        with pytest.raises(SystemExit):
            commit.commit_files({old: new_engine.read_bytes(),
                                 mf.manifest_path_for(old): json.dumps(manifest).encode()}, lock=False)
    finally:
        commit._rename = real
    assert commit.journal_path_for(old).exists()  # half-replaced: the new engine, the old manifest
    backend = TensorRTBackend(old)  # completed, then checked: the new pair
    assert backend.max_batch == 2 and not commit.journal_path_for(old).exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inputs": {"a": {"shape": [-1, 3, 224, 224], "dtype": "FLOAT", "profile": [[1, 3, 224, 224]] * 3},
                     "b": {"shape": [-1, 3, 224, 224], "dtype": "FLOAT", "profile": [[1, 3, 224, 224]] * 3}}},
         "has 2 inputs"),
        ({"inputs": {"x": {"shape": [-1, 224, 224], "dtype": "FLOAT", "profile": [[1, 224, 224]] * 3}}},
         r"expected NCHW \[N, 3, H, W\]"),
        ({"out_dtype": "INT8"}, "is int8; expected float32 or float16"),
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
    assert str(err.value).startswith(f"cannot run {path}, a TensorRT engine: TensorRT is not importable")
    assert "pip install 'trt-res2net[trt]'" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# TensorRT-RTX engines (fake tensorrt_rtx: validity, runtime config and cache, graph strategy)


@pytest.fixture
def fake_rtx(monkeypatch):
    return install(monkeypatch, rtx=True)


def test_each_runtime_takes_only_its_own_family(tmp_path, monkeypatch, fake_trt):
    """An RTX engine needs tensorrt_rtx even where TensorRT is installed (and the other way round)."""
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    rtx_engine = write_engine(tmp_path / "m.rtx.engine", rtx=True, manifest=False)  # its first bytes tell
    with pytest.raises(MissingDependency, match=r"a TensorRT-RTX engine: TensorRT-RTX is not importable .*"
                                                r"trt-res2net\[rtx\]"):
        TensorRTBackend(rtx_engine)
    install(monkeypatch, rtx=True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependency, match="a TensorRT engine: TensorRT is not importable"):
        TensorRTBackend(write_engine(tmp_path / "m.engine", manifest=False))
    backend = TensorRTBackend(rtx_engine, check_manifest=False)
    assert backend.describe().startswith("TensorRT-RTX 1.7.1 on NVIDIA GeForce RTX 4090 (compute 8.9)")


def test_rtx_engine_runs_and_keeps_its_runtime_cache(tmp_path, fake_rtx):
    path = _with_manifest(tmp_path, "m.rtx.engine", rtx=True)
    backend = TensorRTBackend(path)
    x = _batch(11)
    np.testing.assert_allclose(backend.run(x), expected_outputs(x, 10), rtol=1e-5, atol=1e-6)
    assert sorted(backend.first_run_ms) == [3, 8] and "runtime cache" in backend.describe()
    cache = tmp_path / "m.rtx.engine.nvidia-geforce-rtx-4090-sm89.rtx-1.7.1.116.runtime-cache"
    assert backend.info()["runtime_cache"] == str(cache) and not cache.exists()
    backend.close()  # the kernels compiled for batch 3 and 8 are kept, atomically
    assert json.loads(cache.read_bytes()[6:]) == [[3, 3, 224, 224], [8, 3, 224, 224]]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    stamp = cache.stat().st_mtime_ns

    again = TensorRTBackend(path)
    assert again.loaded._runtime_config.cache.deserialized == [cache.read_bytes()]
    again.run(_batch(8))  # nothing new compiled → the file is not rewritten
    again.close()
    assert cache.stat().st_mtime_ns == stamp
    no_cache = TensorRTBackend(path, runtime_cache=False)
    assert no_cache.runtime_cache is None and no_cache.save_runtime_cache() is False


def test_rtx_runtime_cache_from_elsewhere_is_replaced(tmp_path, fake_rtx, capsys):
    path = write_engine(tmp_path / "m.rtx.engine", rtx=True)
    backend = TensorRTBackend(path, check_manifest=False)
    backend.runtime_cache.path.write_bytes(b"made on another GPU")
    backend = TensorRTBackend(path, check_manifest=False)
    assert "does not fit this GPU, driver or TensorRT-RTX" in capsys.readouterr().err
    backend.run(_batch(1))
    backend.close()
    assert backend.runtime_cache.path.read_bytes().startswith(b"CACHE:")


@pytest.mark.parametrize(
    "validity, message",
    [(("INVALID", 2), r"cannot run here \(UNSUPPORTED_CC\) — UNSUPPORTED_CC: rebuild it for this GPU's compute "
                      r"capability \(build.py --compute-capability\)$"),
     (("INVALID", 5), r"cannot run here \(VERSION_MISMATCH, OLD_CUDA_DRIVER\) — VERSION_MISMATCH: rebuild it with "
                      r"this TensorRT-RTX .*; OLD_CUDA_DRIVER: update the NVIDIA driver$")],
)
def test_rtx_engine_validity_is_asked_before_loading(tmp_path, fake_rtx, validity, message):
    fake_rtx.validity = validity
    with pytest.raises(UserError, match=message) as err:
        TensorRTBackend(write_engine(tmp_path / "m.rtx.engine", rtx=True), check_manifest=False)
    assert fake_rtx.loaded == [] and len(fake_rtx.validity_asked) == 64 and "\n" not in str(err.value)


def test_rtx_suboptimal_engine_is_a_warning(tmp_path, fake_rtx, capsys):
    fake_rtx.validity = ("SUBOPTIMAL", 0)
    TensorRTBackend(write_engine(tmp_path / "m.rtx.engine", rtx=True), check_manifest=False)
    assert "runs suboptimally on this GPU" in capsys.readouterr().err


def test_rtx_manifest_targets_are_checked_by_compute_capability(tmp_path, fake_rtx):
    path = _with_manifest(tmp_path, "m.rtx.engine", rtx=True, compute_capabilities=["8.6", "12.0"])
    with pytest.raises(UserError, match=r"this GPU \(NVIDIA GeForce RTX 4090\) is 8.9; rebuild it for compute "
                                         r"capability 8.9$"):
        TensorRTBackend(path)
    assert fake_rtx.loaded == []


def test_rtx_cuda_graphs_are_the_library_s(tmp_path, fake_rtx, capsys, monkeypatch):
    path = write_engine(tmp_path / "m.rtx.engine", rtx=True)
    backend = TensorRTBackend(path, check_manifest=False, cuda_graph=True)
    assert backend.loaded._runtime_config.cuda_graph_strategy == fake_rtx.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    for _ in range(3):
        backend.run(_batch(4))
    assert FakeGraph.instances == [] and backend.info()["cuda_graph"]
    plain = TensorRTBackend(path, check_manifest=False)
    assert plain.loaded._runtime_config.cuda_graph_strategy == fake_rtx.CudaGraphStrategy.DISABLED
    assert plain.loaded._runtime_config.dynamic_shapes_kernel_specialization_strategy.name == "LAZY"  # untouched
    eager = TensorRTBackend(path, check_manifest=False, kernel_specialization="eager")  # what --benchmark asks
    assert eager.loaded._runtime_config.dynamic_shapes_kernel_specialization_strategy.name == "EAGER"
    with pytest.raises(UserError, match="kernel specialisation must be one of lazy, eager, none"):
        TensorRTBackend(path, check_manifest=False, kernel_specialization="sometimes")
    monkeypatch.setattr(fake_gpu_runtime.FakeEngine, "capturable", False)
    backend = TensorRTBackend(path, check_manifest=False, cuda_graph=True)
    capsys.readouterr()
    np.testing.assert_allclose(backend.run(_batch(4)), expected_outputs(_batch(4), 10), rtol=1e-5, atol=1e-6)
    backend.run(_batch(4))
    # Asked once, after the batch size's first run (its shapes and addresses set), on the stream it runs on.
    assert backend.context.capturable_asked == [(backend.stream.handle, (4, 3, 224, 224))]
    err = capsys.readouterr().err
    assert err.count("TensorRT-RTX cannot capture this engine's enqueue at batch 4") == 1
    assert not backend.info()["cuda_graph"] and "CUDA graphs" not in backend.describe()



def test_infer_py_refuses_an_engine_without_manifest_unless_told(tmp_path, fake_trt, capsys):
    """infer.py: one line and exit status 2 for an engine without its manifest; --no-manifest-check runs it."""
    import cv2

    from trt_res2net.cli.infer import main

    engine = write_engine(tmp_path / "m.engine", classes=1000, manifest=False)
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.full((60, 80, 3), 90, np.uint8))
    assert main([str(engine), str(image), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no manifest next to {engine}") and err.count("\n") == 1
    assert err.endswith("rebuild it, or run it unchecked with --no-manifest-check\n")  # infer.py's flag
    assert main([str(engine), str(image), "-q", "--no-manifest-check"]) == 0
    err = capsys.readouterr().err
    assert "manifest not checked (--no-manifest-check)" in err and "classified 1 of 1 images" in err
