"""build.py --triton-repo: the model repository, every config.pbtxt parsed by Triton's ModelConfig proto and
cross-checked against the ONNX and a (synthesized) engine manifest; serve.py's user errors. No server here:
tests/test_triton_server.py serves a repository with the real tritonserver."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tritonclient", reason="the Triton tests need tritonclient (the triton/dev extra)")

from trt_res2net.core.artifact import header  # noqa: E402
from trt_res2net.core.errors import UserError  # noqa: E402
from trt_res2net.core.hashing import sha256_file  # noqa: E402
from trt_res2net.data.postprocess import load_labels  # noqa: E402
from trt_res2net.data.preprocess import SPEC  # noqa: E402
from trt_res2net.engine import manifest as M  # noqa: E402
from trt_res2net.serving import repository as T  # noqa: E402
from trt_res2net.serving import repository_files, repository_plan  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "tiny"


def export(tmp_path, onnx, *, out=None, model_name=NAME, engine_path=None, **options):
    """The export with ``options`` as TritonOptions fields (build.py's --triton-* flags)."""
    return T.write_triton_repository(out or tmp_path / "repo", onnx, model_name=model_name, engine_path=engine_path,
                               options=T.TritonOptions(**options))


def fake_engine(tmp_path, onnx, *, max_batch=16, min_batch=1, family=None, tweak=None, name="tiny_fp16_b16.engine"):
    """A dummy plan file and the manifest (its JSON document) build.py writes beside a standard TensorRT engine;
    ``tweak`` edits the document."""
    engine = tmp_path / name
    engine.write_bytes(b"not really a TensorRT plan " + os.urandom(64))
    m = {**header(M.EngineManifest.FORMAT, M.EngineManifest.SCHEMA_VERSION),
         "engine": engine.name, "engine_sha256": sha256_file(engine), "engine_bytes": engine.stat().st_size,
         "model": NAME, "precision": "fp16", "engine_family": family or "tensorrt", "library_version": "10.3.0",
         "compute_capabilities": ["8.6"], "gpu": {"name": "NVIDIA A10", "compute_capability": "8.6"},
         "onnx": str(onnx), "onnx_sha256": sha256_file(onnx), "io": {
             "input": {"name": "input", "shape": [-1, 3, 224, 224], "dtype": "float32"},
             "output": {"name": "logits", "shape": [-1, 1000], "dtype": "float32"}},
         "profiles": [{"input": "input", "min": [min_batch, 3, 224, 224], "opt": [8, 3, 224, 224],
                       "max": [max_batch, 3, 224, 224]}]}
    if tweak is not None:
        tweak(m)
    M.manifest_path_for(engine).write_text(json.dumps(m))
    return engine


def configs(repo: Path) -> dict:
    """Every ``*/config.pbtxt`` under ``repo`` parsed by Triton's ModelConfig proto, each ensemble's wiring checked
    (:func:`check_wiring`); name → ModelConfig."""
    parsed = {path.parent.name: T.parse_config(path.read_text(encoding="utf-8"), str(path))
              for path in sorted(Path(repo).glob("*/config.pbtxt"))}
    assert parsed, f"{repo}: no models"
    check_wiring(parsed)
    return parsed


def _dims_fit(produced, accepted) -> bool:
    return len(produced) == len(accepted) and all(a in (-1, p) or p == -1 for p, a in zip(produced, accepted,
                                                                                           strict=True))


def check_wiring(cfgs: dict) -> None:
    """What Triton would refuse at load time, asserted on the written configs: each model named as its folder and
    batched, each non-ensemble with a bounded queue, each image model taking IMAGE and giving infer.py's answer,
    and each ensemble step reading what an earlier step (or the ensemble's input) gives, in its type and dims."""
    for name, cfg in cfgs.items():
        assert cfg.name == name and cfg.max_batch_size >= 1, name
        if cfg.platform != "ensemble":
            assert cfg.dynamic_batching.default_queue_policy.max_queue_size >= 1, f"{name}: an unbounded queue"
        if [t.name for t in cfg.input] == ["IMAGE"] and [t.name for t in cfg.output] != ["PIXELS"]:
            assert list(cfg.input[0].dims) == [1] and sorted(t.name for t in cfg.output) == sorted(
                T.ENSEMBLE_OUTPUTS), name
        if cfg.platform != "ensemble":
            continue
        tensors = {t.name: (t.data_type, list(t.dims)) for t in cfg.input}
        assert cfg.ensemble_scheduling.step, name
        for step in cfg.ensemble_scheduling.step:
            model = cfgs[step.model_name]
            assert model.max_batch_size >= cfg.max_batch_size, (name, step.model_name)
            inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
            assert set(step.input_map) == set(inputs), (name, step.model_name)
            for key, source in step.input_map.items():
                (have_type, have_dims), (want_type, want_dims) = tensors[source], inputs[key]
                assert have_type == want_type and _dims_fit(have_dims, want_dims), (name, step.model_name, key)
            outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
            for key, target in step.output_map.items():
                tensors[target] = outputs[key]
        for out in cfg.output:
            assert tensors[out.name] == (out.data_type, list(out.dims)), (name, out.name)


# ------------------------------------------------------------------------------------------ the repository


def test_onnx_only_repository(tiny_onnx, tmp_path):
    result = export(tmp_path, tiny_onnx)
    repo = tmp_path / "repo"
    assert result.default_ensemble == NAME and result.engine_skipped is None
    assert sorted(p.name for p in repo.iterdir()) == sorted(
        [NAME, f"{NAME}_onnx", f"{NAME}_python", f"{NAME}_preprocess", f"{NAME}_postprocess",
         f"{NAME}_classifier_onnx", T.REPOSITORY_FILE])
    assert result.image_models == sorted([NAME, f"{NAME}_onnx", f"{NAME}_python"])
    cfg = configs(repo)  # every config.pbtxt parses against model_config_pb2 and passes the cross-checks
    pb2 = T.model_config_pb2()
    for name in (NAME, f"{NAME}_onnx", f"{NAME}_python"):
        e = cfg[name]
        assert e.max_batch_size == 32
        (inp,) = e.input
        assert (inp.name, pb2.DataType.Name(inp.data_type), list(inp.dims)) == ("IMAGE", "TYPE_STRING", [1])
        assert {o.name for o in e.output} == set(T.ENSEMBLE_OUTPUTS)
        if name != f"{NAME}_python":
            assert e.platform == "ensemble"
            assert [s.model_name for s in e.ensemble_scheduling.step] == [
                f"{NAME}_preprocess", f"{NAME}_classifier_onnx", f"{NAME}_postprocess"]
    onnx_cfg = cfg[f"{NAME}_classifier_onnx"]
    assert onnx_cfg.platform == "onnxruntime_onnx" and onnx_cfg.max_batch_size == 32
    assert onnx_cfg.dynamic_batching.max_queue_delay_microseconds == T.DEFAULT_QUEUE_DELAY_US
    assert [(t.name, list(t.dims)) for t in onnx_cfg.input] == [("input", [3, 224, 224])]
    assert [(t.name, list(t.dims)) for t in onnx_cfg.output] == [("logits", [1000])]
    # The pipeline: one Python model, the three steps in one process, warmed up with a real image.
    py_cfg = cfg[f"{NAME}_python"]
    assert py_cfg.backend == "python" and py_cfg.HasField("dynamic_batching")
    assert pb2.ModelInstanceGroup.Kind.Name(py_cfg.instance_group[0].kind) == "KIND_CPU"
    assert [w.batch_size for w in py_cfg.model_warmup] == [1, 2]
    assert py_cfg.parameters["preprocess_sha256"].string_value == SPEC.sha256()
    assert py_cfg.parameters["outputs_probabilities"].string_value == "false"
    assert (repo / f"{NAME}_python/warmup/image.bin").read_bytes() == (
        repo / f"{NAME}_preprocess/warmup/image.bin").read_bytes()
    assert (repo / f"{NAME}_python/labels.txt").read_text(encoding="utf-8").splitlines() == load_labels()
    # The files: the same ONNX bytes twice, the templates, the vendored modules byte for byte, the labels.
    for model in ("classifier_onnx", "python"):
        assert (repo / f"{NAME}_{model}/1/model.onnx").read_bytes() == Path(tiny_onnx).read_bytes()
    for model in ("preprocess", "postprocess", "python"):
        vendored = repo / f"{NAME}_{model}/1/{T.VENDORED_PACKAGE}"
        for module in T.VENDORED_MODULES:
            assert (vendored / module).read_bytes() == (ROOT / "trt_res2net" / module).read_bytes()
        assert (repo / f"{NAME}_{model}/1/model.py").is_file()
        # what the models import of it imports with nothing but the vendored copy (each module's own imports too)
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import importlib; "
                f"[importlib.import_module('{T.VENDORED_PACKAGE}.' + m[:-3].replace('/', '.')) for m in sys.argv[2:]]")
        proc = subprocess.run([sys.executable, "-c", code, str(vendored.parent), *T.VENDORED_MODULES],
                              capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-1500:]
    pre = cfg[f"{NAME}_preprocess"]
    assert pre.parameters["preprocess_sha256"].string_value == SPEC.sha256()
    labels = (repo / f"{NAME}_postprocess/labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == load_labels() and len(labels) == 1000
    assert cfg[f"{NAME}_postprocess"].parameters["outputs_probabilities"].string_value == "false"
    record = T.read_record(repo)
    assert record.engine is None and record.onnx.sha256 == sha256_file(tiny_onnx)
    assert record.ensembles[NAME].classifier == f"{NAME}_classifier_onnx"
    assert record.pipeline == f"{NAME}_python" and f"{NAME}_python" not in record.ensembles
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo.")]  # no temporary folder left


def test_standard_engine_becomes_a_tensorrt_plan(tiny_onnx, tmp_path):
    engine = fake_engine(tmp_path, tiny_onnx, max_batch=16)
    result = export(tmp_path, tiny_onnx, engine_path=engine, queue_delay_us=500, instances=2)
    repo = tmp_path / "repo"
    cfg = configs(repo)
    plan = cfg[f"{NAME}_classifier_plan"]
    pb2 = T.model_config_pb2()
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 16
    assert [(t.name, list(t.dims), pb2.DataType.Name(t.data_type)) for t in plan.input] == [
        ("input", [3, 224, 224], "TYPE_FP32")]
    assert [(t.name, list(t.dims)) for t in plan.output] == [("logits", [1000])]
    assert plan.dynamic_batching.max_queue_delay_microseconds == 500
    group = plan.instance_group[0]
    assert pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU" and group.count == 2
    assert (repo / f"{NAME}_classifier_plan/1/model.plan").read_bytes() == engine.read_bytes()
    assert "NVIDIA A10" in (repo / f"{NAME}_classifier_plan/config.pbtxt").read_text()
    # The default ensemble runs the plan; batch sizes follow the engine's profile.
    assert [s.model_name for s in cfg[NAME].ensemble_scheduling.step][1] == f"{NAME}_classifier_plan"
    assert cfg[NAME].max_batch_size == cfg[f"{NAME}_plan"].max_batch_size == 16
    assert cfg[f"{NAME}_classifier_onnx"].max_batch_size == 16  # --triton-max-batch defaults to the engine's
    assert set(result.ensembles) == {NAME, f"{NAME}_plan", f"{NAME}_onnx"}
    assert set(result.image_models) == {NAME, f"{NAME}_plan", f"{NAME}_onnx", f"{NAME}_python"}
    record = T.read_record(repo)
    assert record.engine.max_batch == 16 and record.engine.tensorrt_version == "10.3.0"


def test_a_tensorrt_rtx_engine_is_not_a_triton_plan(tiny_onnx, tmp_path, capsys):
    engine = fake_engine(tmp_path, tiny_onnx, family="tensorrt-rtx")
    result = export(tmp_path, tiny_onnx, engine_path=engine)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorrt-rtx" in err[0] and "ONNX" in err[0]
    assert f"{NAME}_classifier_plan" not in result.models and "tensorrt-rtx" in result.engine_skipped
    assert configs(tmp_path / "repo")[NAME].ensemble_scheduling.step[1].model_name == f"{NAME}_classifier_onnx"


@pytest.mark.parametrize("kind, tweak, expect", [
    ("min batch 4", dict(min_batch=4), "starts at batch 4"),
    ("fp16 I/O", dict(tweak=lambda m: m["io"]["input"].update(dtype="float16")), "float16"),
])
def test_engines_triton_cannot_batch_are_left_out_with_a_warning(tiny_onnx, tmp_path, capsys, kind, tweak, expect):
    engine = fake_engine(tmp_path, tiny_onnx, **tweak)
    result = export(tmp_path, tiny_onnx, engine_path=engine)
    assert f"{NAME}_classifier_plan" not in result.models
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expect in err


@pytest.mark.parametrize("tweak, expect", [
    (lambda m: m["io"]["output"].update(name="prob"), "output is named 'prob'"),
    (lambda m: m["io"]["input"].update(shape=[-1, 3, 256, 256]), "input dimension 2 is 256"),
    (lambda m: m.update(onnx_sha256="0" * 64, fp32_onnx_sha256=None), "another ONNX"),
    (lambda m: m.update(engine_sha256="0" * 64), "does not match its manifest"),
    (lambda m: m.update(profiles=[]), "no optimization profile"),
])
def test_a_manifest_that_contradicts_the_onnx_is_refused(tiny_onnx, tmp_path, tweak, expect):
    engine = fake_engine(tmp_path, tiny_onnx, tweak=tweak)
    with pytest.raises(UserError, match=expect):
        export(tmp_path, tiny_onnx, engine_path=engine)
    assert not (tmp_path / "repo").exists()


def test_configs_are_read_by_the_proto_and_wired_to_the_onnx(tiny_onnx, tmp_path):
    engine = fake_engine(tmp_path, tiny_onnx)
    export(tmp_path, tiny_onnx, engine_path=engine)
    with pytest.raises(UserError, match=r"not a valid Triton ModelConfig .*max_batch"):
        T.parse_config('name: "x"\nmax_batch: 4\n', "x/config.pbtxt")  # a misspelt field: the proto's own message
    cfg = configs(tmp_path / "repo")
    for variant in ("plan", "onnx"):  # each ensemble feeds its classifier the ONNX's tensors
        pixels, classify, scores = cfg[f"{NAME}_{variant}"].ensemble_scheduling.step
        assert classify.model_name == f"{NAME}_classifier_{variant}"
        assert (dict(classify.input_map), dict(classify.output_map)) == ({"input": "pixels"}, {"logits": "scores"})
        assert (dict(pixels.output_map), dict(scores.input_map)) == ({"PIXELS": "pixels"}, {"SCORES": "scores"})
    text = (tmp_path / "repo" / f"{NAME}_onnx" / "config.pbtxt").read_text()
    assert text.startswith(f"# Image bytes → {NAME}_preprocess → {NAME}_classifier_onnx (onnx)")


def test_the_record_round_trips_and_reads_the_previous_release(tiny_onnx, tmp_path):
    from trt_res2net.serving.repository_record import RepositoryRecord, read_record

    result = export(tmp_path, tiny_onnx, engine_path=fake_engine(tmp_path, tiny_onnx))
    record = read_record(result.path)
    assert record == result.record and RepositoryRecord.from_json(record.to_json(), "x") == record
    assert record.ensembles[NAME].classifier == f"{NAME}_classifier_plan" and record.engine.max_batch == 16
    assert list(record.to_json())[:2] == ["format", "format_version"]
    old = json.loads((ROOT / "tests" / "fixtures" / "triton_repository_v1.json").read_text())
    previous = RepositoryRecord.from_json(old, "triton_repository_v1.json")  # written by the previous release
    assert previous.engine.tensorrt_version == "10.3.0" and previous.pipeline == "tiny_python"
    assert previous.models == tuple(old["models"]) and previous.to_json() == old
    with pytest.raises(UserError, match=r"^\S+ has Triton repository record format 99; .* upgrade trt_res2net$"):
        RepositoryRecord.from_json({**old, "format_version": 99}, "new.json")


def test_the_plan_refuses_before_anything_is_written(tiny_onnx, tmp_path):
    engine = fake_engine(tmp_path, tiny_onnx, max_batch=16)
    plan = T.plan_repository(tmp_path / "repo", tiny_onnx, model_name=NAME, engine_path=engine,
                             options=T.TritonOptions(topk=3))
    assert (plan.max_batch, plan.topk, plan.engine.max_batch, plan.engine.opt_batch) == (16, 3, 16, 8)
    assert plan.engine_skipped is None and plan.labels[:1] == tuple(load_labels()[:1])
    assert not (tmp_path / "repo").exists()  # planning writes nothing
    assert T.run_repository(plan).models == sorted(T.run_repository(plan).record.models)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^plan_repository.out_dir='.*file' exists and is not a folder$"):
        T.plan_repository(tmp_path / "file", tiny_onnx)
    with pytest.raises(UserError, match="not a Triton model name"):
        T.plan_repository(tmp_path / "r", tiny_onnx, model_name="../x")
    with pytest.raises(UserError, match=r"^TritonOptions.instances and|TritonOptions.queue_delay_us must be"):
        T.TritonOptions(instances=0)
    with pytest.raises(UserError, match=r"^TritonOptions.max_queue_size must be ≥ 1, not 0$"):
        T.TritonOptions(max_queue_size=0)


def test_writes_are_atomic(tiny_onnx, tmp_path, monkeypatch):
    out = tmp_path / "repo"
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "a.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="did not write"):
        export(tmp_path, tiny_onnx, out=foreign)
    assert (foreign / "a.jpg").exists()
    export(tmp_path, tiny_onnx)
    before = hashlib.sha256((out / T.REPOSITORY_FILE).read_bytes()).hexdigest()

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repository_files, "link_or_copy", fail)
    with pytest.raises(OSError):
        export(tmp_path, tiny_onnx, topk=3)
    assert hashlib.sha256((out / T.REPOSITORY_FILE).read_bytes()).hexdigest() == before  # the old one, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["repo", "photos"])  # no temporary folder
    monkeypatch.undo()
    export(tmp_path, tiny_onnx, topk=3)  # a repository written before is replaced
    assert T.read_record(out).topk == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["repo", "photos"])


# ------------------------------------------------------------------------------------------ build.py


# build.py with neither TensorRT nor TensorRT-RTX importable (the core install alone)
WITHOUT_LIBRARIES = ("import sys; sys.modules['tensorrt'] = sys.modules['tensorrt_rtx'] = None; "
                     "from trt_res2net.cli.build import main; raise SystemExit(main(sys.argv[1:]))")


def run_build(*argv, cwd, without_libraries=False):
    entry = ["-c", WITHOUT_LIBRARIES] if without_libraries else [str(ROOT / "build.py")]
    return subprocess.run([sys.executable, *entry, *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_build_onnx_only_with_triton_repo(tiny_onnx, tmp_path):
    proc = run_build("--onnx", tiny_onnx, "--onnx-only", "--triton-repo", tmp_path / "repo", "--triton-topk", 3,
                     "--triton-max-batch", 8, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote Triton model repository" in proc.stdout and "Traceback" not in proc.stderr
    cfg = configs(tmp_path / "repo")
    stem = Path(tiny_onnx).stem
    assert cfg[stem].max_batch_size == 8 and list(cfg[stem].output[1].dims) == [3]


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt") is not None, reason="TensorRT is installed")
def test_build_without_tensorrt_writes_the_onnx_repository_then_exits_3(tiny_onnx, tmp_path):
    proc = run_build("--onnx", tiny_onnx, "--triton-repo", tmp_path / "repo", "--quiet", cwd=tmp_path,
                     without_libraries=True)
    assert proc.returncode == 3, proc.stderr
    assert "wrote Triton model repository" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert f"{Path(tiny_onnx).stem}_classifier_plan" not in configs(tmp_path / "repo")


def test_build_with_tensorrt_rtx_serves_the_onnx_and_says_why(tiny_onnx, tmp_path):
    """A real TensorRT-RTX engine is built, and is not a Triton plan: one line, and the ONNX models."""
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed: pip install -e '.[rtx]'")
    proc = run_build("--onnx", tiny_onnx, "--engine-family", "tensorrt-rtx", "--triton-repo", tmp_path / "repo",
                     cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    why = "is a tensorrt-rtx engine, which Triton's TensorRT backend (standard TensorRT) cannot load"
    assert proc.stderr.count(why) == 1, proc.stderr  # a warning, through the log: --quiet silences it
    cfg = configs(tmp_path / "repo")
    stem = Path(tiny_onnx).stem
    assert f"{stem}_classifier_plan" not in cfg and f"{stem}_classifier_onnx" in cfg


def test_build_without_tritonclient_stops_before_any_work(tmp_path, monkeypatch, capsys):
    from trt_res2net.cli import build
    from trt_res2net.core.errors import MissingDependency

    def missing():
        raise MissingDependency(f"writing a Triton model repository needs it: {T.INSTALL_HINT}")

    monkeypatch.setattr(repository_plan, "model_config_pb2", missing)  # what the plan checks first
    with pytest.raises(SystemExit) as e:
        build.main(["--model", "res2net50_vd_26w_4s", "--random-weights", "--onnx-only",
                    "--onnx-out", str(tmp_path / "m.onnx"), "--triton-repo", str(tmp_path / "repo")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "pip install 'trt-res2net[triton]'" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "repo").exists()


# ------------------------------------------------------------------------------------------ serve.py, no server


def run_serve(*argv, **env):
    return subprocess.run([sys.executable, str(ROOT / "serve.py"), *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=60)


def test_serve_user_errors_are_one_line(tiny_onnx, tmp_path):
    proc = run_serve(tmp_path / "nowhere")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such model repository"
    (tmp_path / "empty").mkdir()
    proc = run_serve(tmp_path / "empty")
    assert proc.returncode == 2 and "no models" in proc.stderr and proc.stderr.count("\n") == 1
    export(tmp_path, tiny_onnx)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        proc = run_serve(tmp_path / "repo", "--http-port", busy)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: HTTP port {busy} on 127.0.0.1 is in use; choose another with --http-port")
    proc = run_serve(tmp_path / "repo", "--tritonserver", tmp_path / "nothing")
    assert proc.returncode == 2 and "not an executable file" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_without_any_tritonserver_says_what_to_install(tiny_onnx, tmp_path, monkeypatch, capsys):
    from trt_res2net.cli import serve as serve_cli
    from trt_res2net.serving import server_setup as serve

    export(tmp_path, tiny_onnx)
    monkeypatch.setattr(serve.shutil, "which", lambda name: None)
    monkeypatch.setattr(serve, "_pytriton_dist", lambda: None)
    real_is_file = serve.Path.is_file
    monkeypatch.setattr(serve.Path, "is_file", lambda self: "tritonserver" not in str(self) and real_is_file(self))
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    argv = [str(tmp_path / "repo")] + [x for flag, p in zip(("--http-port", "--grpc-port", "--metrics-port"), ports,
                                                            strict=True) for x in (flag, str(p))]
    assert serve_cli.main(argv) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no tritonserver found" in err and "pip install -e '.[serve]'" in err


def test_serve_loads_what_the_server_can_run(tiny_onnx, tmp_path):
    from trt_res2net.serving.server import choose_models, read_repository

    export(tmp_path, tiny_onnx, engine_path=fake_engine(tmp_path, tiny_onnx))
    models = read_repository(tmp_path / "repo")
    chosen, skipped = choose_models(models, {"python"}, None)
    assert chosen == [f"{NAME}_python"]  # the steps serve only ensembles that cannot load here
    assert skipped[f"{NAME}_preprocess"] == (f"a step of {NAME}, {NAME}_onnx, {NAME}_plan, which cannot load "
                                             "here")
    assert skipped[f"{NAME}_classifier_plan"] == "this tritonserver has no tensorrt backend"
    assert skipped[NAME].startswith("needs ") and f"{NAME}_onnx" in skipped
    chosen, skipped = choose_models(models, {"python", "onnxruntime", "tensorrt"}, None)
    assert len(chosen) == len(models) and not skipped
    chosen, _ = choose_models(models, {"python", "onnxruntime"}, [f"{NAME}_onnx"])
    assert chosen == sorted([f"{NAME}_onnx", f"{NAME}_preprocess", f"{NAME}_classifier_onnx", f"{NAME}_postprocess"])
    with pytest.raises(UserError, match="no tensorrt backend"):
        choose_models(models, {"python"}, [NAME])


# ------------------------------------------------------------------------------------------ hostile input and load


def test_configs_bound_input_queues_and_warm_up(tiny_onnx, tmp_path):
    export(tmp_path, tiny_onnx, engine_path=fake_engine(tmp_path, tiny_onnx, max_batch=16))
    repo = tmp_path / "repo"
    cfg = configs(repo)
    pb2 = T.model_config_pb2()
    for name, c in cfg.items():
        if c.platform == "ensemble":
            continue
        policy = c.dynamic_batching.default_queue_policy  # a bounded queue; waiting too long is a rejection
        assert policy.max_queue_size == T.QUEUE_SIZE_PER_BATCH * c.max_batch_size, name
        assert policy.default_timeout_microseconds == T.DEFAULT_QUEUE_TIMEOUT_MS * 1000
        assert policy.allow_timeout_override
        assert pb2.ModelQueuePolicy.TimeoutAction.Name(policy.timeout_action) == "REJECT"
        assert c.dynamic_batching.max_queue_delay_microseconds == T.DEFAULT_QUEUE_DELAY_US == 0
        assert c.model_warmup, f"{name} reports ready before its first run"  # ready only when warm
    plan = cfg[f"{NAME}_classifier_plan"]
    assert list(plan.dynamic_batching.preferred_batch_size) == [8]  # the engine's opt batch
    assert [w.batch_size for w in plan.model_warmup] == [1, 8]
    pre = cfg[f"{NAME}_preprocess"]
    (warm,) = pre.model_warmup
    sample = (repo / f"{NAME}_preprocess" / "warmup" / warm.inputs["IMAGE"].input_data_file).read_bytes()
    assert int.from_bytes(sample[:4], "little") == len(sample) - 4  # Triton's serialized BYTES element
    from trt_res2net.data.preprocess import preprocess

    assert preprocess(sample[4:]).shape == (3, 224, 224)  # a real image: OpenCV's first decode happens at load
    assert pre.parameters["max_image_pixels"].string_value == "64000000"
    assert pre.parameters["max_image_bytes"].string_value == "50000000"
    assert cfg[f"{NAME}_python"].parameters["intra_op_threads"].string_value == "0"  # cores ÷ instances
    assert cfg[f"{NAME}_python"].parameters["max_image_pixels"].string_value == "64000000"
    assert "intra_op_thread_count" not in cfg[f"{NAME}_classifier_onnx"].parameters  # one instance: ORT's default


def test_build_maps_the_serving_flags(tiny_onnx, tmp_path):
    proc = run_build("--onnx", tiny_onnx, "--onnx-only", "--triton-repo", tmp_path / "repo", "--triton-instances", 2,
                     "--triton-preprocess-instances", 3, "--triton-intra-op-threads", 1, "--triton-max-queue-size", 7,
                     "--triton-queue-timeout-ms", 250, "--triton-max-image-pixels", 1000000,
                     "--triton-max-image-bytes", 123456, "--triton-queue-delay-us", 100,
                     "--triton-costly-image-pixels", 5000000, "--triton-decode-deadline-ms", 750, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = configs(tmp_path / "repo")
    stem = Path(tiny_onnx).stem
    pre, py, ort = cfg[f"{stem}_preprocess"], cfg[f"{stem}_python"], cfg[f"{stem}_classifier_onnx"]
    assert pre.instance_group[0].count == 3 and py.instance_group[0].count == 2
    assert py.parameters["intra_op_threads"].string_value == "1"
    assert ort.parameters["intra_op_thread_count"].string_value == "1"
    for c in (pre, py, ort):
        assert c.dynamic_batching.default_queue_policy.max_queue_size == 7
        assert c.dynamic_batching.default_queue_policy.default_timeout_microseconds == 250_000
    assert py.dynamic_batching.max_queue_delay_microseconds == 100
    for c in (pre, py):
        assert c.parameters["max_image_pixels"].string_value == "1000000"
        assert c.parameters["max_image_bytes"].string_value == "123456"
        assert c.parameters["costly_pixels"].string_value == "5000000"
        assert c.parameters["decode_deadline_ms"].string_value == "750"
    proc = run_build("--onnx", tiny_onnx, "--onnx-only", "--triton-repo", tmp_path / "r2", "--triton-max-queue-size",
                     0, cwd=tmp_path)
    assert proc.returncode == 2 and "--triton-max-queue-size" in proc.stderr and "Traceback" not in proc.stderr


def test_serve_reads_configs_with_the_proto_and_sizes_shared_memory(tiny_onnx, tmp_path):
    from trt_res2net.serving.server import python_shm_bytes, python_shm_growth_bytes, read_repository

    export(tmp_path, tiny_onnx)
    models = read_repository(tmp_path / "repo")
    assert models[f"{NAME}_onnx"].steps == (f"{NAME}_preprocess", f"{NAME}_classifier_onnx", f"{NAME}_postprocess")
    assert (models[f"{NAME}_python"].backend, models[f"{NAME}_python"].steps) == ("python", ())
    assert models[f"{NAME}_classifier_onnx"].backend == "onnxruntime"
    # The largest batch a Python model holds: the preprocessing's 32 × 3×224×224 float32 out, plus a MiB.
    per_batch = 32 * 3 * 224 * 224 * 4
    assert python_shm_bytes(info.config for info in models.values()) == (-(-per_batch // (1 << 20)) + 1) << 20
    # It grows in one step by enough for the largest image a model accepts (max_image_bytes, 50 MB), plus a MiB.
    configs = [info.config for info in models.values()]
    assert python_shm_growth_bytes(configs, 2 << 20) == (-(-50_000_000 // (1 << 20)) + 1) << 20
    assert python_shm_growth_bytes(configs, 100 << 20) == 100 << 20
    bad = tmp_path / "repo" / f"{NAME}_postprocess" / "config.pbtxt"
    bad.write_text(bad.read_text().replace("max_batch_size", "max_batch"))
    with pytest.raises(UserError, match=r"postprocess/config.pbtxt: not a valid Triton ModelConfig .*max_batch"):
        read_repository(tmp_path / "repo")


def test_the_next_start_removes_what_a_killed_run_left(tmp_path, monkeypatch):
    """A run folder whose serve.py is gone, its shared-memory regions and a process still running from it."""
    from trt_res2net.serving import server_processes as server

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(server.tempfile, "tempdir", None)
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(server, "SHM_DIR", shm)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{server.TMP_PREFIX}stale"
    stale.mkdir()
    (stale / "serve.pid").write_text(str(dead.pid))
    # a process naming the folder in its command line, as a Python stub does
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(stale)])
    live = tmp_path / f"{server.TMP_PREFIX}live"
    live.mkdir()
    (live / "serve.pid").write_text(str(os.getpid()))
    for name in (f"{server.SHM_PREFIX}{dead.pid}_a", f"{server.SHM_PREFIX}{dead.pid}_b",
                 f"{server.SHM_PREFIX}{os.getpid()}_c", "triton_python_backend_shm_region_x"):
        (shm / name).write_bytes(b"")
    try:
        server.remove_stale_runs()
        assert orphan.wait(10) == -9
        assert not stale.exists() and live.exists()  # a running serve.py's folder stays
        assert sorted(p.name for p in shm.iterdir()) == sorted([f"{server.SHM_PREFIX}{os.getpid()}_c",
                                                                "triton_python_backend_shm_region_x"])
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()
