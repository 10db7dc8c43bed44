"""NVIDIA's real TensorRT-RTX builder, ahead of time on this CPU-only machine: engines through build.py from a
reduced Res2Net (fp32, fp16, int8), the full res2net50_vd_26w_4s (fp32) and an external ONNX; manifests checked
against the files and against what was asked for; the builder's steps on the real library (the options in the real
IBuilderConfig, a parse failure, a build failure, the progress monitor and cancelling); Ctrl-C during a real build
(a real SIGINT, in-process and to a build.py process); the one-line refusals; the polygraphy equivalent.

Needs the ``rtx`` extra (``tensorrt-rtx-cu13``; CI installs it); fp16/int8 through build.py also need ModelOpt (the
``quant`` extra). No fake stands in for the library here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import pytest

from trt_res2net.cli.build import main as build_main
from trt_res2net.core import log
from trt_res2net.core.errors import UserError
from trt_res2net.engine import builder, trt_compat
from trt_res2net.engine import manifest as mf
from trt_res2net.engine import progress as build_progress
from trt_res2net.engine.build import build_engine
from trt_res2net.engine.options import EngineOptions, MiB
from trt_res2net.engine.precision_path import plan_build
from trt_res2net.model.contract import inspect_onnx

from trt_fakes import tiny_classifier_onnx, write_images  # isort: skip

if os.environ.get("TRT_RES2NET_REQUIRE_RTX"):  # CI: the real builder must run here, not be skipped
    import tensorrt_rtx as trt
else:
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed: pip install -e '.[rtx]'")
REPO = Path(__file__).resolve().parents[1]
# What TensorRT-RTX builds for without --compute-capability: Ampere (8.0, 8.6), Ada (8.9), Blackwell (12.0, 12.1)
# "and later" (the library's documentation; docs/tensorrt_rtx.md), never Turing (7.5) unless asked for.
DEFAULT_TARGETS = ["8.0", "8.6", "8.9", "12.0", "12.1"]


def _modelopt():
    pytest.importorskip("modelopt.onnx.quantization", reason="fp16/int8 ONNX need ModelOpt: pip install -e .[quant]")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # engines/ and calib/ are relative
    return tmp_path


def _build(capsys, *argv) -> tuple[int, str, str]:
    """build.py in this process at the normal log level (notes and warnings on stderr; --quiet would drop them)."""
    code = build_main(["--engine-family", "tensorrt-rtx", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _check_manifest_against_file(engine, targets: list[str] | None = None):
    """The manifest describes this very file, checked against sources other than the code that wrote it: size and
    SHA-256 computed here, the library's own ``__version__``, and the targets asked for (``targets``, as passed on
    the command line) or, for a default build, the library's documented default set and later."""
    m = mf.read_manifest(engine)
    data = engine.read_bytes()
    assert m.engine_bytes == len(data) and m.engine_sha256 == hashlib.sha256(data).hexdigest()
    assert m.engine_family == "tensorrt-rtx" and m.library_version == trt.__version__
    expected = (tuple(sorted(targets, key=lambda cc: tuple(map(int, cc.split("."))))), False) if targets else (
        tuple(DEFAULT_TARGETS), True)
    assert (m.compute_capabilities, m.compute_capabilities_and_later) == expected
    assert m.gpu is None  # built ahead of time, on no GPU
    return m


def _files_in(directory: Path) -> list[str]:
    """Every file under ``directory``, hidden ones (atomic writes' temporaries) included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) if directory.exists() else []


def test_fp32_reduced_res2net_through_build_py(workdir, capsys, tiny_onnx):
    code, out, err = _build(capsys, "--onnx", str(tiny_onnx))
    assert code == 0, err
    engine = workdir / "engines" / f"{tiny_onnx.stem}_fp32_b32.rtx.engine"
    assert f"engine ready: {engine.relative_to(workdir)}" in out
    m = _check_manifest_against_file(engine)
    assert m.precision == "fp32" and m.caveats == () and m.build_options.strongly_typed
    assert m.io.input.name == "input" and m.io.output.name == "logits"
    assert m.profiles == (mf.ProfileRecord("input", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)),)
    assert m.build_options.workspace_default and m.build_options.workspace_mib > 0
    assert "runs on GPUs of compute capability 8.0 (A100, A30)" in err and "and later" in err
    assert "Hopper GPUs (H100, H200) and Jetson need standard TensorRT" in err
    assert f"polygraphy equivalent: {m.build_options.equivalent_commands['polygraphy']}\n" in err
    assert list((workdir / "engines").glob(".*")) == []  # no temporary file left behind


def test_targets_are_written_into_the_plan(workdir, capsys, tiny_onnx):
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--compute-capability", "12.0,8.6", "--batch", "4")
    assert code == 0, err
    m = _check_manifest_against_file(workdir / "engines" / f"{tiny_onnx.stem}_fp32_b4.rtx.engine", ["12.0", "8.6"])
    assert m.build_options.compute_capabilities_requested == ("8.6", "12.0")
    poly = m.build_options.equivalent_commands["polygraphy"]
    assert poly.startswith("POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy convert ")
    assert poly.endswith("--compute-capabilities 8.6 12.0")
    assert "trtexec" not in m.build_options.equivalent_commands  # the RTX wheels ship none


def test_the_polygraphy_equivalent_builds_the_same_targets(workdir, capsys, tiny_onnx):
    """The recorded polygraphy line, run as printed, makes an RTX plan for the same compute capabilities."""
    import shutil

    if shutil.which("polygraphy") is None:
        pytest.skip("polygraphy is not installed (it comes with the quant extra)")
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--compute-capability", "8.9", "--max-batch", "4")
    assert code == 0, err
    engine = workdir / "engines" / f"{tiny_onnx.stem}_fp32_b4.rtx.engine"
    command = mf.read_manifest(engine).build_options.equivalent_commands["polygraphy"]
    theirs = workdir / "polygraphy.engine"
    parts = shlex.split(command)
    parts[parts.index("-o") + 1] = str(theirs)
    proc = subprocess.run(shlex.join(parts), shell=True, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    header = trt_compat.read_rtx_plan_header(theirs.read_bytes()[:64])
    assert header.compute_capabilities == ("8.9",) and not header.and_later


def test_fp16_engine_is_smaller_and_turing_takes_it(workdir, capsys, tiny_onnx):
    _modelopt()
    assert _build(capsys, "--onnx", str(tiny_onnx))[0] == 0
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--precision", "fp16")
    assert code == 0, err
    fp32 = workdir / "engines" / f"{tiny_onnx.stem}_fp32_b32.rtx.engine"
    fp16 = workdir / "engines" / f"{tiny_onnx.stem}_fp16_b32.rtx.engine"
    m = _check_manifest_against_file(fp16)
    assert m.precision == "fp16" and m.onnx.endswith("_fp16.onnx")
    assert fp16.stat().st_size < 0.75 * fp32.stat().st_size
    # Turing: no FP32 GEMM in TensorRT-RTX, but the AutoCast ONNX computes its head in FP16
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--precision", "fp16", "--compute-capability", "7.5",
                          "--save-engine", "engines/turing.rtx.engine")
    assert code == 0, err
    _check_manifest_against_file(workdir / "engines" / "turing.rtx.engine", ["7.5"])


def test_int8_qdq_engine_carries_the_weight_only_caveat(workdir, capsys, tiny_onnx, monkeypatch):
    monkeypatch.setattr(log, "_warned", set())  # said once per process: an earlier test may have said it
    _modelopt()
    write_images(workdir / "calib", n=8, seed=3, size=(260, 240))
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--precision", "int8", "--calib-dir",
                          str(workdir / "calib"), "--calib-method", "max", "--max-batch", "8")
    assert code == 0, err
    # named for what it is built from (INT8 Q/DQ), not for what TensorRT-RTX will compute in on the user's GPU
    m = _check_manifest_against_file(workdir / "engines" / f"{tiny_onnx.stem}_int8qdq_b8.rtx.engine")
    assert m.precision == "int8" and m.int8_mode == "qdq" and m.onnx.endswith("_int8.onnx")
    assert len(m.caveats) == 1 and "weight-only quantization of GEMMs" in m.caveats[0]
    assert err.count("warning: TensorRT-RTX documents INT8 only as weight-only quantization") == 1  # said once,
    assert err.index("warning: TensorRT-RTX documents INT8") < err.index("calibrat")  # before the long work
    assert m.quantization.source == "calibrated" and m.quantization.calibration_method == "max"
    compute = m.compute_precision
    assert compute.known is False and compute.label == "int8qdq" and "not known ahead of time" in compute.summary
    assert compute.requested.endswith("convolutions and matrix multiplies with INT8 Q/DQ on their data and weights")
    # what the build did see: TensorRT-RTX's own warnings, counted (also collapsed on stderr, one line each)
    assert any("Converting conv" in w for w in compute.build_log["warnings"])
    assert any(line.startswith("warning: TensorRT-RTX (") and "×): (foreignNode) Converting conv" in line
               for line in err.splitlines())


def test_full_res2net50_vd_fp32(workdir, capsys):
    code, out, err = _build(capsys, "--model", "res2net50_vd_26w_4s", "--random-weights")
    assert code == 0, err
    engine = workdir / "engines" / "res2net50_vd_26w_4s_fp32_b32.rtx.engine"
    m = _check_manifest_against_file(engine)
    assert m.model == "res2net50_vd_26w_4s" and m.fp32_onnx_sha256 == mf.sha256_file(
        workdir / "engines" / "res2net50_vd_26w_4s.onnx")
    assert engine.stat().st_size > 80 << 20  # 25.7 M float32 weights are in the plan


def test_external_paddle2onnx_style_onnx(workdir, capsys):
    """A fixed-batch ONNX with PaddleClas's inference-model names and a softmax at the end."""
    onnx_path = tiny_classifier_onnx(workdir / "inference.onnx", batch=4, input_name="x",
                                     output_name="save_infer_model/scale_0.tmp_1", softmax=True)
    code, _, err = _build(capsys, "--onnx", str(onnx_path))
    assert code == 0, err
    m = _check_manifest_against_file(workdir / "engines" / "inference_fp32_b4.rtx.engine")
    assert m.io.input.name == "x" and m.io.input.shape == (4, 3, 224, 224)
    assert m.io.output.name == "save_infer_model/scale_0.tmp_1" and m.outputs_probabilities


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--precision", "fp16", "--dla-core", "0"], "--dla-core: TensorRT-RTX has no DLA"),
        (["--precision", "int8", "--int8-mode", "calibrator"], "TensorRT-RTX 1.7 has no INT8 calibrator"),
        (["--timing-cache", "t.cache"], "--timing-cache: TensorRT-RTX times no tactics ahead of time"),
        (["--trt-calib-cache", "c.cache"], "--trt-calib-cache: only for TensorRT's INT8 calibrator"),
        (["--compute-capability", "9.0"], "TensorRT-RTX targets 7.5, 8.0, 8.6, 8.9, 12.0, 12.1 or current"),
        (["--compute-capability", "8.6,7.5"], "cannot compile FP32 GEMM for Turing (compute capability 7.5)"),
        (["--compute-capability", "current"], "--compute-capability current needs an NVIDIA GPU on this machine"),
    ],
)
def test_options_that_mean_nothing_here_are_refused_in_one_line(workdir, capsys, tiny_onnx, argv, message):
    if "current" in argv:
        from trt_res2net.cuda.device import device_count

        if device_count() > 0:
            pytest.skip("this machine has a GPU: --compute-capability current builds for it")
    code, out, err = _build(capsys, "--onnx", str(tiny_onnx), *argv)
    assert code in (2, 3) and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (workdir / "engines").exists() or not list((workdir / "engines").glob("*.engine"))


# ---------------------------------------------------------------------------------------------------------
# The builder's steps on the real library


def _rtx():
    return trt_compat.import_library("tensorrt-rtx")


def _plan(library, precision, onnx, fp32_onnx=None):
    return plan_build(precision, library.version, onnx_path=onnx, fp32_onnx_path=fp32_onnx or onnx,
                      onnx_io=inspect_onnx(onnx))


class _ProfileKeepingBuilder:
    """The real ``trt.Builder``, keeping the optimization profiles it creates (IBuilderConfig cannot hand them
    back, only count them)."""

    def __init__(self, real):
        self._real = real
        self.profiles = []

    def create_optimization_profile(self):
        profile = self._real.create_optimization_profile()
        self.profiles.append(profile)
        return profile

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_options_reach_the_real_builder_config(tiny_onnx):
    library = _rtx()
    options = EngineOptions(workspace_mib=300, builder_opt_level=5, compute_capabilities="8.6,12.0", max_batch=16)
    io, plan = inspect_onnx(tiny_onnx), _plan(library, "fp32", tiny_onnx)
    parsed = builder.parse_network(library, plan, options.log_level)
    parsed = dataclasses.replace(parsed, builder=_ProfileKeepingBuilder(parsed.builder))
    setup = builder.configure(library, parsed, plan, options.batch_profile(io.batch), options, chw=io.chw(),
                              targets=list(options.compute_capabilities))
    config = setup.config
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 300 * MiB == setup.workspace_bytes
    assert config.builder_optimization_level == 5
    assert config.num_compute_capabilities == 2
    assert [config.get_compute_capability(i) for i in range(2)] == [trt.ComputeCapability.SM86,
                                                                    trt.ComputeCapability.SM120]
    assert config.num_optimization_profiles == 1 and len(parsed.builder.profiles) == 1
    assert [tuple(d) for d in parsed.builder.profiles[0].get_shape("input")] == [(1, 3, 224, 224), (8, 3, 224, 224),
                                                                               (16, 3, 224, 224)]
    assert config.progress_monitor is not None and setup.use_monitor
    assert parsed.network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    # nothing asked for: the library's own defaults stay (no targets = its portable set)
    default = builder.configure(library, builder.parse_network(library, plan, "warning"), plan,
                                EngineOptions().batch_profile(io.batch), EngineOptions(), chw=io.chw())
    assert default.config.num_compute_capabilities == 0 and default.config.builder_optimization_level == 3
    assert default.workspace_bytes == default.config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) > 300 * MiB


def test_real_parser_rejection_writes_nothing(tmp_path):
    """An operator the parser knows no importer or plugin for (a custom domain): one UserError, no file."""
    import onnx

    path = tiny_classifier_onnx(tmp_path / "custom_op.onnx")
    model = onnx.load(path)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "MysteryActivation", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(model, path)
    with pytest.raises(UserError, match=r"^TensorRT-RTX's ONNX parser rejected .*custom_op\.onnx: .*MysteryActivation"):
        build_engine(path, "fp32", EngineOptions(family="tensorrt-rtx", engine_dir=tmp_path / "engines",
                                                 progress=False))
    assert _files_in(tmp_path / "engines") == []


def test_real_build_failure_fp32_gemm_for_turing(tiny_onnx, tmp_path, capfd):
    """build_engine refuses 7.5 with an FP32 GEMM before building; past that check, the real library fails."""
    library = _rtx()
    options = EngineOptions(family="tensorrt-rtx", progress=False)
    io = inspect_onnx(tiny_onnx)
    engine = tmp_path / "engines" / "turing.rtx.engine"
    with pytest.raises(UserError, match=r"^building the engine from .* failed \(TensorRT-RTX's log above says why\)"):
        builder.build(library, _plan(library, "fp32", tiny_onnx), io, options.batch_profile(io.batch), options,
                      engine_path=engine, targets=["7.5"])
    log = "".join(capfd.readouterr())  # TensorRT-RTX's logger writes to the process's stdout
    assert "Cannot compile operation 'logits" in log and "FP32 GEMM is not supported" in log  # its own reason
    assert _files_in(tmp_path) == []


def _recording_progress(monkeypatch, **hooks):
    """Wrap the BuildProgress the builder makes (the real methods still run): keeps every instance and what
    on_step answered; ``hooks`` (e.g. ``on_start=f``) are called with the instance after the real method."""
    made = []

    class Recording(build_progress.BuildProgress):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.answers = []
            made.append(self)

        def on_start(self, phase, parent, num_steps):
            super().on_start(phase, parent, num_steps)
            if "on_start" in hooks:
                hooks["on_start"](self)

        def on_step(self, phase, step):
            answer = super().on_step(phase, step)
            self.answers.append(answer)
            return answer

    monkeypatch.setattr(build_progress, "BuildProgress", Recording)
    return made


def _check_nesting(events):
    """Phases finish in the reverse order they started (a stack), and every started phase finishes."""
    open_phases = []
    for kind, phase, _ in events:
        if kind == "start":
            open_phases.append(phase)
        else:
            assert open_phases and open_phases.pop() == phase, events
    assert open_phases == []


def test_real_progress_monitor_drives_build_progress(workdir, capsys, tiny_onnx, monkeypatch):
    made = _recording_progress(monkeypatch)
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--max-batch", "4")
    assert code == 0, err
    events = made[-1].events
    assert events[0][:2] == ("start", "Building engine") and events[0][2] > 0
    assert events[-1] == ("finish", "Building engine", None)
    assert len(events) > 4 and made[-1].answers and all(made[-1].answers)
    _check_nesting(events)
    assert mf.read_manifest(workdir / "engines" / f"{tiny_onnx.stem}_fp32_b4.rtx.engine").build_options.progress \
        == "monitor"


def test_on_step_false_stops_the_real_build(tiny_onnx, monkeypatch, capfd):
    """An interrupt recorded when the first phase starts: on_step answers False, TensorRT-RTX cancels (its log
    says so, and it unwinds its phases at once), and build_serialized raises KeyboardInterrupt."""
    made = _recording_progress(monkeypatch, on_start=lambda p: p.interrupt() if len(p.events) == 1 else None)
    library = _rtx()
    options = EngineOptions(family="tensorrt-rtx", progress=False)
    io, plan = inspect_onnx(tiny_onnx), _plan(library, "fp32", tiny_onnx)
    parsed = builder.parse_network(library, plan, options.log_level)
    setup = builder.configure(library, parsed, plan, options.batch_profile(io.batch), options, chw=io.chw())
    with pytest.raises(KeyboardInterrupt):
        builder.build_serialized(parsed, setup, library, plan, "building x")
    progress = made[-1]
    assert progress is setup.progress and progress.cancelled
    assert progress.answers == [False]  # TensorRT asked at its next step, heard False, and stopped
    _check_nesting(progress.events)
    assert "BuildCanceled" in "".join(capfd.readouterr())  # TensorRT-RTX's log
    assert setup.keep_alive == []


def test_all_precisions_build_without_the_removed_names(tmp_path):
    """The strongly typed API (TensorRT 11.x's, TensorRT-RTX's) has no EXPLICIT_BATCH, no FP16/INT8 builder flags
    and no calibrator: touching any of them would raise AttributeError on the real module. fp32 from the FP32
    ONNX, fp16 from an AutoCast-style FP16 ONNX, int8 from a Q/DQ ONNX all build."""
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert not hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")
    assert not any(hasattr(trt.BuilderFlag, name) for name in ("FP16", "INT8"))
    assert not hasattr(trt, "IInt8EntropyCalibrator2")
    assert not any(hasattr(config, name) for name in ("int8_calibrator", "set_calibration_profile"))

    fp32 = tiny_classifier_onnx(tmp_path / "tiny.onnx")
    converted = {"fp32": fp32, "fp16": tiny_classifier_onnx(tmp_path / "tiny_fp16.onnx", fp16=True),
                 "int8": tiny_classifier_onnx(tmp_path / "tiny_int8.onnx", qdq=True, opset=19)}
    options = EngineOptions(family="tensorrt-rtx", engine_dir=tmp_path / "engines", max_batch=4, progress=False)
    for precision, onnx in converted.items():
        built = build_engine(onnx, precision, options, fp32_onnx_path=fp32)
        label = "int8qdq" if precision == "int8" else precision
        assert built.path == tmp_path / "engines" / f"tiny_{label}_b4.rtx.engine"
        m = _check_manifest_against_file(built.path)
        assert m.precision == precision and m.onnx == str(onnx) and m.calibration is None
        assert m.build_options.flags == () and m.build_options.network_flags == 0
        assert m.build_options.strongly_typed and m.int8_mode == ("qdq" if precision == "int8" else None)


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C during a real build: a real SIGINT, exit status 130, nothing written


def test_sigint_during_the_real_build_exits_130_and_writes_nothing(workdir, capsys, tiny_onnx, monkeypatch):
    """SIGINT to this very process when TensorRT-RTX starts its first phase (inside its callback): recorded, the
    build cancelled, KeyboardInterrupt once TensorRT has returned; the CLI says `interrupted` and exits 130."""
    before = signal.getsignal(signal.SIGINT)
    made = _recording_progress(
        monkeypatch, on_start=lambda p: os.kill(os.getpid(), signal.SIGINT) if len(p.events) == 1 else None)
    for _ in range(3):  # the same every time
        code, out, err = _build(capsys, "--onnx", str(tiny_onnx))
        assert code == 130 and err.strip().splitlines()[-1] == "interrupted", err
        assert "engine ready" not in out and "Traceback" not in err and "error:" not in err
        assert made[-1].cancelled and made[-1].answers[-1] is False  # TensorRT was told to stop
        _check_nesting(made[-1].events)
        assert signal.getsignal(signal.SIGINT) is before  # Python's own handler is back
        assert _files_in(workdir / "engines") == []  # no engine, manifest or temporary file


@pytest.fixture(scope="module")
def res2net50_onnx(tmp_path_factory):
    """The full res2net50_vd_26w_4s with seeded random weights: its real build lasts about a second here."""
    from trt_res2net.model import weights as W
    from trt_res2net.model import zoo
    from trt_res2net.model.onnx_export import write_onnx

    spec = zoo.get_model("res2net50_vd_26w_4s")
    path = tmp_path_factory.mktemp("res2net50") / f"{spec.name}.onnx"
    return write_onnx(spec, W.random_weights(spec, seed=0), path, metadata={"weights": "random (seed 0)"})


def _build_py(onnx: Path, engine_dir: Path, interrupt_after: float | None = None) -> tuple[int, list[str]]:
    """``python build.py`` from the repository root; with ``interrupt_after``, SIGINT that many seconds after its
    stderr shows the `build: ... →` line (printed just before TensorRT starts building)."""
    command = [sys.executable, "build.py", "--engine-family", "tensorrt-rtx", "--onnx", str(onnx),
               "--builder-opt-level", "5", "--engine-dir", str(engine_dir)]
    lines, timer = [], None
    with subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        try:
            for line in proc.stderr:
                lines.append(line.rstrip("\n"))
                if interrupt_after is not None and timer is None and line.startswith("build: ") and "→" in line:
                    timer = threading.Timer(interrupt_after, proc.send_signal, (signal.SIGINT,))
                    timer.start()
            proc.wait(timeout=300)
        finally:
            if timer is not None:
                timer.join()
            if proc.poll() is None:
                proc.kill()
    assert interrupt_after is None or timer is not None, lines
    return proc.returncode, lines


def test_sigint_to_a_build_py_process_at_several_moments(res2net50_onnx, tmp_path):
    """Ctrl-C to build.py at the start, a fifth and half-way through the real build (measured first, on this
    machine: about 1-1.8 s at --builder-opt-level 5 on 2 CPU cores, and the process lives ~0.3 s longer to write the
    engine): exit 130, `interrupted`, and no engine, manifest or temporary file, every time."""
    code, lines = _build_py(res2net50_onnx, tmp_path / "measured")
    assert code == 0, "\n".join(lines)
    build_s = mf.read_manifest(tmp_path / "measured" / "res2net50_vd_26w_4s_fp32_b32.rtx.engine").build_time_s
    assert build_s > 0.2, build_s
    for fraction in (0.0, 0.2, 0.5):
        engines = tmp_path / f"interrupted_at_{fraction}"
        code, lines = _build_py(res2net50_onnx, engines, interrupt_after=fraction * build_s)
        finished = any(line.startswith("wrote ") for line in lines) or _files_in(engines) != []
        if finished and fraction > 0:
            # this build outran the signal (much faster than the measured one): what Ctrl-C after a build may
            # leave is a complete engine, never a temporary file or a manifest without its engine
            warnings.warn(f"build.py finished before SIGINT at {fraction * build_s:.2f}s; not counted", stacklevel=1)
            left = _files_in(engines)
            assert not any(name.startswith(".") for name in left), left
            assert not any(name.endswith(".json") for name in left) or _check_manifest_against_file(
                engines / "res2net50_vd_26w_4s_fp32_b32.rtx.engine")
            continue
        assert code == 130 and lines[-1] == "interrupted", (fraction, code, lines[-5:])
        assert not any(line.startswith(("Traceback", "error:", "wrote ")) for line in lines), lines
        assert _files_in(engines) == [], fraction


def test_the_plan_of_a_tensorrt_rtx_build(workdir, tiny_onnx, monkeypatch):
    """What the engine stage decides before building, on the real library: targets, precision path, profile, path;
    the Turing refusal for a zoo model's FP32 head before it is exported; the INT8 caveat said before the work."""
    from trt_res2net.engine import plan as engine_plan
    from trt_res2net.engine.plan import RTX_INT8_CAVEAT, plan_engine, plan_target

    monkeypatch.setattr(engine_plan, "nvidia_driver_present", lambda: False)  # an ahead-of-time build
    options = EngineOptions(family="tensorrt-rtx", compute_capabilities="12.0,8.6", max_batch=4, progress=False)
    plan = plan_engine(tiny_onnx, options)
    assert plan.targets == ("8.6", "12.0") and plan.gpu is None and plan.options.workspace_mib is None
    assert plan.build.strongly_typed and plan.build.flags == () and not plan.build.explicit_batch
    assert plan.profile.max == 4 and plan.engine_path.name == f"{tiny_onnx.stem}_fp32_b4.rtx.engine"
    assert plan.version.family == "tensorrt-rtx" and not plan.engine_path.parent.exists()  # nothing written
    turing = EngineOptions(family="tensorrt-rtx", compute_capabilities="7.5,8.6")
    with pytest.raises(UserError, match=r"the zoo model computes its classifier head \(Gemm\) in FP32: build "
                                         r"build_engine.precision='fp16' for 7.5"):
        plan_target(turing, "fp32", model_name="res2net50_vd_26w_4s")  # before the export
    assert plan_target(turing, "int8", model_name="m").caveats == (RTX_INT8_CAVEAT,)
