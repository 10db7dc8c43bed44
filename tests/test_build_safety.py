"""What build.py leaves when it is stopped, raced or refused — with NVIDIA's real TensorRT-RTX builder and ModelOpt,
in real processes, with real signals:

- Ctrl-C (a real SIGINT) during each step — export, calibration, quantization, the engine build (inside TensorRT's
  progress callback), the write (just after the engine's rename): exit status 130, one line, every previous output
  as it was (bytes compared), no temporary file;
- SIGKILL at several moments: the previous pair or the new one (once a reader or the next build has completed what
  the journal says), and nothing a later run does not clean;
- two builds of one engine: one is refused in one line, or both finish; the engine and its manifest always match;
- the OS errors a user can cause (read-only folder, a file where a folder should be, a FIFO, a symbolic link loop,
  a full disk, an image in a folder it may not enter): one line, the documented exit status, nothing written;
- Q/DQ and FP16 ONNX built as what they are; ``--quiet`` prints results only, and TensorRT never on stdout.

Signals are sent by the process to itself at an exact moment (tests/signal_runner.py wraps one function).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trt_res2net.core import commit
from trt_res2net.core.files import stale_temps
from trt_res2net.engine import manifest as mf

from trt_fakes import tiny_classifier_onnx  # isort: skip

if os.environ.get("TRT_RES2NET_REQUIRE_RTX"):  # CI: the real builder must run here, not be skipped
    import tensorrt_rtx  # noqa: F401
else:
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed: pip install -e '.[rtx]'")

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("signal_runner.py")
RTX = ["--engine-family", "tensorrt-rtx"]


def _modelopt():
    pytest.importorskip("modelopt.onnx.quantization", reason="int8 needs ModelOpt: pip install -e .[quant]")


def _run(args: list[str], cwd: Path, signal_at: tuple | None = None, timeout: float = 240,
         preexec_fn=None) -> subprocess.CompletedProcess:
    """``python build.py ARGS`` in ``cwd``; with ``signal_at`` = (SIGNAL, TARGET, WHEN[, MATCH]) through the runner."""
    if signal_at:
        command = [sys.executable, str(RUNNER), *signal_at, "--", *args]
    else:
        command = [sys.executable, str(REPO / "build.py"), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=preexec_fn)


def _snapshot(*folders: Path) -> dict[str, str]:
    """Every file under the folders (hidden ones included) → SHA-256 of its bytes."""
    out = {}
    for folder in folders:
        if folder.exists():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _hidden(*folders: Path) -> list[str]:
    return [str(p) for folder in folders if folder.exists() for p in folder.rglob(".*")]


def _pair_matches(engine: Path) -> mf.EngineManifest:
    """The manifest describes these very bytes (what the runtime checks before running an engine)."""
    m = mf.read_manifest(engine)
    assert m.engine_sha256 == hashlib.sha256(engine.read_bytes()).hexdigest()
    assert m.engine_bytes == engine.stat().st_size
    return m


def _interrupted(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr == "interrupted\n", proc.stderr[-3000:]  # --quiet: the one line, nothing else
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C at each step: exit 130, one line, the previous outputs as they were


@pytest.fixture(scope="module")
def int8_workspace(tmp_path_factory, tiny_onnx):
    """A finished INT8 build (the previous outputs), and the inputs of a second one that differs from it."""
    _modelopt()
    root = tmp_path_factory.mktemp("int8_steps")
    onnx = Path(shutil.copy(tiny_onnx, root / "tiny.onnx"))
    first = ["--onnx", str(onnx), "--precision", "int8", "--calib-synthetic", "8", "--max-batch", "4",
             "--save-engine", "engines/tiny.rtx.engine", "--quiet", *RTX]
    proc = _run(first, root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the second build calibrates on other images (its cache key differs), so every step runs again
    second = [a if a != "8" else "9" for a in first]
    (root / "calib" / "synthetic_9_seed0").mkdir(exist_ok=True)
    from trt_res2net.data.calibration_set import write_synthetic_images

    write_synthetic_images(root / "calib" / "synthetic_9_seed0", 9)
    return {"root": root, "second": second, "engine": root / "engines" / "tiny.rtx.engine"}


@pytest.mark.parametrize("step, signal_at", [
    ("calibration", ("INT", "trt_res2net.precision.ort_calibration:collect_value", "before:3")),
    ("quantization", ("INT", "trt_res2net.precision.modelopt.int8:check_scales_from", "before:1")),
    ("build, inside TensorRT's progress callback", ("INT", "trt_res2net.engine.progress:BuildProgress.on_start",
                                                     "after:1")),
    ("write, just after the engine's rename", ("INT", "trt_res2net.core.commit:_rename", "after:1", ".rtx.engine")),
])
def test_ctrl_c_at_each_step_keeps_the_previous_outputs(int8_workspace, step, signal_at):
    """The interrupted step's outputs are as they were, byte for byte (the steps before it finished: theirs are
    complete and new — a later run reuses them, e.g. the calibration cache)."""
    ws = int8_workspace
    root = ws["root"]
    before = _snapshot(root / "engines", root / "calib")
    proc = _run(ws["second"], root, signal_at)
    _interrupted(proc)
    after = _snapshot(root / "engines", root / "calib")
    if step in ("calibration", "quantization"):
        assert after == before, step  # the cache, its key and manifest, the INT8 ONNX and its sidecar, the engine
    else:
        pair = [str(ws["engine"]), str(mf.manifest_path_for(ws["engine"]))]
        assert [after[k] for k in pair] == [before[k] for k in pair], step  # the engine and its manifest
        from trt_res2net.precision.sidecar import read_precision_sidecar

        int8 = root / "engines" / "tiny_int8.onnx"  # the finished precision step's new output, complete
        assert read_precision_sidecar(int8, hashlib.sha256(int8.read_bytes()).hexdigest()) is not None
    assert _hidden(root / "engines", root / "calib") == [], step
    _pair_matches(ws["engine"])


def test_ctrl_c_during_the_export_keeps_the_previous_onnx(tmp_path):
    """SIGINT while the ONNX is being written (at its fsync, before its rename): the previous ONNX stays."""
    args = ["--model", "res2net50_vd_26w_4s", "--random-weights", "--onnx-only", "--quiet"]
    assert _run(args, tmp_path).returncode == 0
    onnx = tmp_path / "engines" / "res2net50_vd_26w_4s.onnx"
    before = _snapshot(tmp_path / "engines")
    proc = _run([*args, "--seed", "1"], tmp_path, ("INT", "os:fsync", "before:1"))
    _interrupted(proc)
    assert _snapshot(tmp_path / "engines") == before and onnx.exists() and _hidden(tmp_path / "engines") == []


# ---------------------------------------------------------------------------------------------------------
# SIGKILL: the old pair or the new one, and nothing a later run does not clean


def _fp32_args(onnx: Path, max_batch: int) -> list[str]:
    return ["--onnx", str(onnx), "--max-batch", str(max_batch), "--save-engine", "engines/tiny.rtx.engine",
            "--quiet", *RTX]


@pytest.fixture
def fp32_pair(tmp_path, tiny_onnx):
    onnx = Path(shutil.copy(tiny_onnx, tmp_path / "tiny.onnx"))
    assert _run(_fp32_args(onnx, 4), tmp_path).returncode == 0
    engine = tmp_path / "engines" / "tiny.rtx.engine"
    return {"root": tmp_path, "onnx": onnx, "engine": engine, "old": _snapshot(tmp_path / "engines")}


@pytest.mark.parametrize("moment, signal_at, outcome", [
    ("inside TensorRT's build", ("KILL", "trt_res2net.engine.progress:BuildProgress.on_start", "after:1"), "old"),
    ("after both temporaries, before the journal", ("KILL", "trt_res2net.core.commit:_write_temp", "after:2"), "old"),
    ("just after the engine's rename", ("KILL", "trt_res2net.core.commit:_rename", "after:1", ".rtx.engine"), "new"),
    ("after the manifest's rename", ("KILL", "trt_res2net.core.commit:_rename", "after:1", ".json"), "new"),
])
def test_sigkill_leaves_the_old_pair_or_the_new(fp32_pair, moment, signal_at, outcome):
    root, engine = fp32_pair["root"], fp32_pair["engine"]
    proc = _run(_fp32_args(fp32_pair["onnx"], 8), root, signal_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # what a reader does first (runtime/trt_engine.py): complete the pair the journal says, if there is one
    commit.ensure_complete(engine)
    m = _pair_matches(engine)
    assert m.profiles[0].max[0] == (4 if outcome == "old" else 8), moment
    if outcome == "old":
        assert {k: v for k, v in _snapshot(root / "engines").items() if "/." not in k} == fp32_pair["old"]
    # what is left is only what a killed process leaves (pid-tagged temporaries, its unlocked lock file) ...
    left = _hidden(root / "engines")
    assert all(p.endswith(".lock") or Path(p) in stale_temps(engine) or Path(p) in stale_temps(
        mf.manifest_path_for(engine)) for p in left), left
    # ... and the next build removes it
    assert _run(_fp32_args(fp32_pair["onnx"], 2), root).returncode == 0
    assert _hidden(root / "engines") == [] and _pair_matches(engine).profiles[0].max[0] == 2


def test_sigkill_at_random_moments_never_leaves_a_mismatched_pair(fp32_pair):
    """Killed 0.05-1.5 s after start (imports, parse, build, write): after a reader's check the pair always
    matches; the next build leaves no hidden file."""
    root, engine = fp32_pair["root"], fp32_pair["engine"]
    command = [sys.executable, str(REPO / "build.py"), *_fp32_args(fp32_pair["onnx"], 8)]
    for delay in (0.05, 0.6, 1.0, 1.5):
        proc = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=60)
        commit.ensure_complete(engine)
        assert _pair_matches(engine).profiles[0].max[0] in (4, 8), delay
    assert _run(_fp32_args(fp32_pair["onnx"], 4), root).returncode == 0
    assert _hidden(root / "engines") == []


# ---------------------------------------------------------------------------------------------------------
# Two builds of one engine


def test_a_second_build_of_the_same_engine_is_refused_in_one_line(fp32_pair):
    root, engine = fp32_pair["root"], fp32_pair["engine"]
    with commit.PathLock(engine, "test"):  # as if another build.py held it
        proc = _run(_fp32_args(fp32_pair["onnx"], 8), root)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: another process (pid {os.getpid()}) is writing engines/tiny.rtx.engine")
    assert _snapshot(root / "engines") == fp32_pair["old"]


def test_concurrent_builds_of_one_engine_leave_a_matching_pair(fp32_pair):
    root, engine = fp32_pair["root"], fp32_pair["engine"]
    command = [sys.executable, str(REPO / "build.py")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(2):
        procs = [subprocess.Popen([*command, *_fp32_args(fp32_pair["onnx"], b)], cwd=root, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for b in (16, 32)]
        results = [(p.wait(timeout=240), p.stderr.read()) for p in procs]
        for code, err in results:
            assert code == 0 or (code == 2 and "is writing engines/tiny.rtx.engine" in err and err.count("\n") == 1), \
                results
        assert any(code == 0 for code, _ in results)
        assert _pair_matches(engine).profiles[0].max[0] in (16, 32)
        assert _hidden(root / "engines") == []


# ---------------------------------------------------------------------------------------------------------
# OS errors the user can cause: one line, exit status 2 (1 for an image skipped), nothing written


def _without_permission_override():
    """A child that obeys file permissions even as root: CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from its
    bounding set before it starts (no-op for other users, whom chmod already stops)."""
    if os.geteuid() != 0:
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def drop():
        for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    try:  # probe it once here
        probe = subprocess.run([sys.executable, "-c", "pass"], preexec_fn=drop, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot drop root's permission override here (no CAP_SETPCAP)")
    if probe.returncode != 0:
        pytest.skip("cannot drop root's permission override here")
    return drop


def _one_error_line(proc, code: int = 2, start: str = "error: ") -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert proc.stderr.startswith(start), proc.stderr
    return proc.stderr.strip()


def test_engine_dir_read_only(tmp_path, tiny_onnx):
    preexec = _without_permission_override()
    engines = tmp_path / "ro"
    engines.mkdir()
    engines.chmod(0o555)
    try:
        proc = _run(["--onnx", str(tiny_onnx), "--engine-dir", str(engines), *RTX], tmp_path, preexec_fn=preexec)
        line = _one_error_line(proc)
        assert f"--engine-dir {engines}: cannot write in {engines}: Permission denied" in line
        assert list(engines.iterdir()) == []
    finally:
        engines.chmod(0o755)


def test_engine_dir_naming_a_file_a_loop_and_onnx_naming_a_fifo_or_a_loop(tmp_path, tiny_onnx):
    (tmp_path / "afile").write_text("x")
    line = _one_error_line(_run(["--onnx", str(tiny_onnx), "--engine-dir", "afile", *RTX], tmp_path))
    assert line == "error: --engine-dir afile: not a folder"
    os.symlink("loop_b", tmp_path / "loop_a")
    os.symlink("loop_a", tmp_path / "loop_b")
    line = _one_error_line(_run(["--onnx", str(tiny_onnx), "--engine-dir", "loop_a", *RTX], tmp_path))
    assert line.startswith("error: --engine-dir loop_a:") and "symbolic link loop" in line
    line = _one_error_line(_run(["--onnx", "loop_a", *RTX], tmp_path))
    assert line.startswith("error: --onnx loop_a:") and "symbolic link loop" in line
    os.mkfifo(tmp_path / "pipe.onnx")
    line = _one_error_line(_run(["--onnx", "pipe.onnx", *RTX], tmp_path))  # read, it would wait forever
    assert line == "error: --onnx pipe.onnx: is a FIFO (named pipe), not an ONNX file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "loop_a", "loop_b", "pipe.onnx"]


def test_disk_full(tmp_path, tiny_onnx):
    """A small tmpfs as the engine folder (root only): the engine does not fit — one line naming the engine (not a
    hidden temporary), no temporary left."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small file system needs root")
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = _run(["--onnx", str(tiny_onnx), "--engine-dir", str(disk), "--quiet", *RTX], tmp_path)
        line = _one_error_line(proc)
        assert line.startswith(f"error: cannot write the engine {disk}{os.sep}") and \
            line.endswith(".rtx.engine: No space left on device (the disk is full)"), line
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_an_image_in_a_folder_it_may_not_enter_is_named_and_skipped(tmp_path, tiny_onnx):
    import cv2
    import numpy as np

    preexec = _without_permission_override()
    locked = tmp_path / "locked"
    locked.mkdir()
    cv2.imwrite(str(locked / "a.jpg"), np.full((40, 40, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "b.jpg"), np.full((40, 40, 3), 64, np.uint8))
    locked.chmod(0o000)
    try:
        proc = subprocess.run([sys.executable, str(REPO / "infer.py"), str(tiny_onnx), str(locked / "a.jpg"),
                               str(tmp_path / "b.jpg"), "-q"], capture_output=True, text=True, cwd=tmp_path,
                              preexec_fn=preexec, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"skipped {locked / 'a.jpg'}: Permission denied" in proc.stderr
        assert "classified 1 of 2 images; 1 could not be read" in proc.stderr
    finally:
        locked.chmod(0o755)
    os.mkfifo(tmp_path / "c.jpg")
    proc = subprocess.run([sys.executable, str(REPO / "infer.py"), str(tiny_onnx), str(tmp_path / "c.jpg")],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert _one_error_line(proc) == f"error: {tmp_path / 'c.jpg'}: is a FIFO (named pipe), not an image file"


# ---------------------------------------------------------------------------------------------------------
# What was made, named and recorded as what it is; --quiet


def test_a_qdq_onnx_is_built_as_int8_without_calibration_nor_writing_beside_it(tmp_path):
    given = tmp_path / "given"
    given.mkdir()
    onnx = tiny_classifier_onnx(given / "tiny_qdq.onnx", qdq=True, opset=19)
    proc = _run(["--onnx", str(onnx), "--max-batch", "4", *RTX], tmp_path)  # no --precision, no --calib-dir
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is already INT8 (Q/DQ nodes): building it as --precision int8" in proc.stderr
    engine = tmp_path / "engines" / "tiny_qdq_int8qdq_b4.rtx.engine"
    m = _pair_matches(engine)
    assert m.precision == "int8" and m.int8_mode == "qdq" and m.onnx == str(onnx)
    assert m.quantization.source == "external-qdq" and "not calibrated here" in m.quantization.label
    assert m.compute_precision.known is False and m.calibration is None
    assert sorted(p.name for p in given.iterdir()) == ["tiny_qdq.onnx"] and not (tmp_path / "calib").exists()
    # and it cannot be turned into something else
    line = _one_error_line(_run(["--onnx", str(onnx), "--precision", "fp16", *RTX], tmp_path))
    assert "is already INT8 (Q/DQ nodes: quantized elsewhere), so --precision fp16 cannot be made from it" in line


def test_an_fp16_onnx_is_built_as_fp16_and_an_fp32_one_converted_into_the_engine_folder(tmp_path, tiny_onnx):
    given = tmp_path / "given"
    given.mkdir()
    onnx = tiny_classifier_onnx(given / "tiny16.onnx", fp16=True)
    proc = _run(["--onnx", str(onnx), "--max-batch", "4", *RTX], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = _pair_matches(tmp_path / "engines" / "tiny16_fp16_b4.rtx.engine")
    assert m.precision == "fp16" and m.quantization.source == "external-fp16"
    assert m.compute_precision.known is True
    assert sorted(p.name for p in given.iterdir()) == ["tiny16.onnx"]
    _modelopt()
    fp32 = Path(shutil.copy(tiny_onnx, given / "tiny32.onnx"))
    proc = _run(["--onnx", str(fp32), "--precision", "fp16", "--max-batch", "4", *RTX], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "engines" / "tiny32_fp16.onnx").is_file()  # the converted ONNX goes with the engine
    assert sorted(p.name for p in given.iterdir()) == ["tiny16.onnx", "tiny32.onnx"]  # nothing beside the input
    m = _pair_matches(tmp_path / "engines" / "tiny32_fp16_b4.rtx.engine")
    assert m.quantization.source == "autocast-fp16"


def test_a_precision_already_in_the_onnx_name_is_not_repeated_in_the_engine_name(tmp_path):
    """``X_fp16.onnx`` (as build.py names its FP16 ONNX) builds ``X_fp16_b4``, not ``X_fp16_fp16_b4``."""
    fp16 = tiny_classifier_onnx(tmp_path / "tiny_fp16.onnx", fp16=True)
    proc = _run(["--onnx", str(fp16), "--max-batch", "4", *RTX], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "engines").glob("*.engine")) == ["tiny_fp16_b4.rtx.engine"]


def test_quiet_prints_only_results_on_stdout_and_nothing_from_tensorrt(tmp_path, tiny_onnx):
    """An INT8 build whose TensorRT-RTX log has hundreds of warnings: --quiet's stdout is the result lines, its
    stderr empty; without --quiet the warnings are on stderr, once each with their count."""
    _modelopt()
    args = ["--onnx", str(tiny_onnx), "--precision", "int8", "--calib-synthetic", "8", "--calib-method", "max",
            "--max-batch", "4", *RTX]
    proc = _run([*args, "--quiet"], tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines and all(line.startswith(("calibrated on ", "wrote ", "engine ready: ")) for line in lines), lines
    assert "[TRT]" not in proc.stdout and "TensorRT-RTX" not in proc.stdout and "Converting" not in proc.stdout
    proc = _run(args, tmp_path)
    assert proc.returncode == 0
    assert "[TRT]" not in proc.stdout and "Converting" not in proc.stdout
    collapsed = [line for line in proc.stderr.splitlines() if "Converting conv" in line]
    assert collapsed and all(line.startswith("warning: TensorRT-RTX (") for line in collapsed), collapsed
    assert len(collapsed) == len(set(collapsed))  # one line per distinct message
    assert "only for trying the pipeline" in proc.stderr  # the synthetic images' warning


def test_int8_without_images_fails_before_the_export(tmp_path):
    """The headline command without calibration images stops before writing the 305 MB ONNX, and says how to get
    images (real ones, or --calib-synthetic to try the pipeline)."""
    started = time.perf_counter()
    proc = _run(["--model", "res2net200_vd_26w_4s", "--precision", "int8", "--random-weights", *RTX], tmp_path)
    line = _one_error_line(proc)
    assert "INT8 needs calibration: pass --calib-dir DIR" in line and "--calib-synthetic N" in line
    assert not (tmp_path / "engines").exists() and time.perf_counter() - started < 30


def test_compute_capability_current_without_a_gpu_fails_before_the_export(tmp_path):
    from trt_res2net.cuda.device import device_count

    if device_count() > 0:
        pytest.skip("this machine has a GPU: --compute-capability current builds for it")
    proc = _run(["--model", "res2net50_vd_26w_4s", "--random-weights", "--compute-capability", "current", *RTX],
                tmp_path)
    line = _one_error_line(proc, code=3)
    assert "--compute-capability current needs an NVIDIA GPU on this machine" in line and "wrote" not in line
    assert not (tmp_path / "engines").exists()


def test_stale_temporaries_of_killed_writers_are_removed_by_the_next_writer(tmp_path):
    """core.files: temporaries carry their writer's pid; the next write of the same file removes those of dead
    processes (a live writer's stay)."""
    from trt_res2net.core.files import temp_name, write_bytes

    target = tmp_path / "x.engine"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = target.with_name(f".{target.name}.{pid}-0123abcd.part")
    stale.write_bytes(b"half")
    stale_dir = target.with_name(f".{target.name}.{pid}-89abcdef.tmpdir")
    stale_dir.mkdir()
    live = temp_name(target)  # this process's: not removed
    live.write_bytes(b"mine")
    write_bytes(target, b"new")
    assert not stale.exists() and not stale_dir.exists() and live.exists() and target.read_bytes() == b"new"


def test_ctrl_c_between_the_renames_in_process_puts_the_previous_pair_back(tmp_path):
    """commit_files itself: a real SIGINT right after the first rename is held until both are done, then both are
    put back — the previous files, byte for byte, and KeyboardInterrupt."""
    a, b = tmp_path / "x.engine", tmp_path / "x.engine.json"
    commit.commit_files({a: b"old engine", b: b"old manifest"})
    real = commit._rename
    calls = []

    def rename(src, dst):
        real(src, dst)
        calls.append(dst)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)

    commit._rename = rename
    try:
        with pytest.raises(KeyboardInterrupt):
            commit.commit_files({a: b"new engine", b: b"new manifest"})
    finally:
        commit._rename = real
    assert (a.read_bytes(), b.read_bytes()) == (b"old engine", b"old manifest")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.engine", "x.engine.json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_unexpected_os_error_is_one_line_exit_2(capsys):
    """cli/common.run_main, the one place that maps errors to exit statuses: an OSError no check caught (a disk
    that fills up, permissions that change under the run) is one line and exit status 2, never a traceback."""
    import errno

    from trt_res2net.cli.common import run_main

    def body():
        raise OSError(errno.ENOSPC, "No space left on device", "engines/x.engine")

    assert run_main(body) == 2
    assert capsys.readouterr().err == "error: engines/x.engine: No space left on device (the disk is full)\n"

    def interrupted():
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130 and capsys.readouterr().err == "interrupted\n"


def test_the_lock_is_reentrant_in_one_process_and_leaves_no_file(tmp_path):
    target = tmp_path / "sub" / "x.engine"
    with commit.PathLock(target):
        assert _holds_lock(target) and commit.lock_path_for(target).exists()
        with commit.PathLock(target):  # build.py takes it early, build_engine again
            pass
        assert _holds_lock(target)
    assert not _holds_lock(target) and not (tmp_path / "sub").exists()  # nothing left, not even the folder


@pytest.mark.parametrize("state, expected", [("prepared", b"new"), ("rollback", b"old")])
def test_recover_finishes_what_the_journal_says(tmp_path, state, expected):
    final = tmp_path / "x.engine"
    final.write_bytes(b"old")
    temp = tmp_path / f".x.engine.{os.getpid()}-0123abcd.part"
    temp.write_bytes(b"new")
    backup = tmp_path / f".x.engine.{os.getpid()}-4567abcd.old"
    os.link(final, backup)
    entries = [commit._Entry(final, temp, backup, True)]
    commit._write_journal(commit.journal_path_for(final), state, entries)
    assert commit.ensure_complete(final) == ("completed" if state == "prepared" else "rolled back")
    assert final.read_bytes() == expected and sorted(p.name for p in tmp_path.iterdir()) == ["x.engine"]
    assert commit.ensure_complete(final) is None  # nothing left to do


def _holds_lock(path) -> bool:
    """Whether this process holds the build lock of ``path`` (core.commit's table of held locks)."""
    with commit._HELD_GUARD:
        return commit.lock_path_for(path).absolute() in commit._HELD
