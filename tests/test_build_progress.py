"""Build progress (TensorRT's phase callbacks → bars), the spinner used where there are no callbacks, and Ctrl-C
during a build (a real SIGINT; the fake TensorRT 8.6/10.x of tests/trt_fakes.py for what only they have: the
INT8 calibrator, a build without a progress monitor)."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time

import pytest

from trt_res2net.engine.progress import BuildProgress, Spinner, format_elapsed, sigint_recorded

from trt_fakes import FakeDeviceBuffer, fake_gpu, make_fake_tensorrt, tiny_classifier_onnx, write_images  # isort: skip


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (59.9, "59s"), (61, "1m01s"), (3725, "1h02m05s")])
def test_format_elapsed(seconds, text):
    assert format_elapsed(seconds) == text


def test_build_progress_nested_bars():
    out = io.StringIO()
    p = BuildProgress(file=out, max_depth=2)
    p.on_start("Building engine", None, 2)
    p.on_start("Tactics", "Building engine", 3)
    p.on_start("Too deep", "Tactics", 5)  # depth 2: tracked, not drawn
    assert set(p._bars) == {"Building engine", "Tactics"}
    assert all(p.on_step("Tactics", s) for s in range(3))
    assert p.on_step("Too deep", 0)
    p.on_finish("Too deep")
    p.on_finish("Tactics")
    assert p.on_step("Building engine", 0)
    p.on_finish("Building engine")
    p.close()
    assert "Building engine" in out.getvalue() and "Tactics" in out.getvalue()
    assert [e[0] for e in p.events] == ["start", "start", "start", "finish", "finish", "finish"]


def test_build_progress_ctrl_c_cancels_instead_of_raising(monkeypatch):
    p = BuildProgress(enabled=True, file=io.StringIO())
    p.on_start("Building engine", None, 10)

    class Bar:
        n = 0
        total = 10

        def update(self, n):
            raise KeyboardInterrupt

        def close(self):
            pass

    p._bars["Building engine"] = Bar()
    assert p.on_step("Building engine", 1) is False  # TensorRT cancels the build on False
    assert p.cancelled
    assert p.on_step("Other", 0) is False


def test_disabled_progress_draws_nothing():
    out = io.StringIO()
    p = BuildProgress(enabled=False, file=out)
    p.on_start("Building engine", None, 1)
    p.on_step("Building engine", 0)
    p.on_finish("Building engine")
    assert out.getvalue() == "" and p.events


def test_spinner_logs_lines_when_not_a_terminal():
    out = io.StringIO()
    with Spinner("building x.engine", file=out, log_interval=0.05) as s:
        time.sleep(0.18)
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("building x.engine… ") for line in lines)
    assert s.elapsed >= 0.18


def test_spinner_redraws_one_line_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with Spinner("building", file=out, interval=0.02):
        time.sleep(0.1)
    text = out.getvalue()
    assert "\n" not in text and text.count("\r") >= 3 and text.endswith("\r")


def test_spinner_disabled_is_silent():
    out = io.StringIO()
    with Spinner("building", file=out, log_interval=0.01, enabled=False):
        time.sleep(0.05)
    assert out.getvalue() == ""


# ---------------------------------------------------------------------------------------------------------
# Ctrl-C during a build: SIGINT is recorded, TensorRT is asked to cancel, KeyboardInterrupt comes after it


def _sigint_and_wait(seen) -> None:
    """A real SIGINT to this process; Python runs the handler in the main thread at its next instruction."""
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 5
    while not seen() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_sigint_is_recorded_not_raised_and_the_handler_restored():
    before = signal.getsignal(signal.SIGINT)
    p = BuildProgress(enabled=False)
    p.on_start("Building engine", None, 3)
    with sigint_recorded(p.interrupt) as installed:
        assert installed and signal.getsignal(signal.SIGINT) is not before
        assert p.on_step("Building engine", 0)
        _sigint_and_wait(lambda: p.cancelled)  # no KeyboardInterrupt here
        assert p.cancelled and p.on_step("Building engine", 1) is False
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):  # outside, Ctrl-C is Python's again
        _sigint_and_wait(lambda: False)


def test_sigint_handler_is_restored_when_the_body_raises():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="build broke"), sigint_recorded(lambda: None):
        raise RuntimeError("build broke")
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_recorded_outside_the_main_thread_changes_nothing():
    before = signal.getsignal(signal.SIGINT)
    seen = []

    def body():
        with sigint_recorded(lambda: None) as installed:
            seen.append((installed, signal.getsignal(signal.SIGINT)))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [(False, before)] and signal.getsignal(signal.SIGINT) is before


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """A fake TensorRT of the given release, a fake GPU and device buffers; engines/ and calib/ under tmp_path."""
    from trt_res2net.cuda import device
    from trt_res2net.engine import calibrator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(device, "detect_gpu", lambda device=0: fake_gpu())
    monkeypatch.setattr(calibrator, "CudaDeviceBuffer", FakeDeviceBuffer)

    def use(release, **kw):
        trt = make_fake_tensorrt(release, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    return use


def _ctrl_c_in(monkeypatch, cls, method, when):
    """Wrap ``cls.method`` (not replace it): after the real call, send a real SIGINT when ``when(self)``."""
    original = getattr(cls, method)

    def wrapped(self, *args):
        result = original(self, *args)
        if when(self):
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(cls, method, wrapped)


def test_ctrl_c_in_the_progress_monitor_cancels_the_build(fake_trt, monkeypatch, tmp_path):
    from trt_res2net.engine.build import build_engine
    from trt_res2net.engine.options import EngineOptions

    trt = fake_trt("10.3.0")
    onnx = tiny_classifier_onnx(tmp_path / "m.onnx")
    _ctrl_c_in(monkeypatch, BuildProgress, "on_start", lambda self: len(self.events) == 1)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        build_engine(onnx, "fp32", EngineOptions(family="tensorrt", progress=False))
    assert signal.getsignal(signal.SIGINT) is before
    assert ("build", None) in trt.log and not (tmp_path / "engines").exists()


def test_ctrl_c_during_calibration_writes_no_cache_and_discards_the_plan(fake_trt, monkeypatch, tmp_path):
    """8.6 has no progress monitor, so TensorRT cannot be told to cancel: calibration stops at the next batch, the
    build runs to its end and its plan is thrown away; the interrupt wins over the build's own failure."""
    from trt_res2net.data.calibration_set import CalibrationImages
    from trt_res2net.engine import calibrator
    from trt_res2net.engine.build import build_engine
    from trt_res2net.engine.options import EngineOptions

    onnx = tiny_classifier_onnx(tmp_path / "m.onnx")
    images = write_images(tmp_path / "images", n=12)
    fed = []
    _ctrl_c_in(monkeypatch, calibrator.CalibrationFeed, "next_batch",
               lambda self: fed.append(self.batches_fed) or self.batches_fed == 1)
    options = EngineOptions(family="tensorrt", int8_mode="calibrator", calib_batch=4, max_batch=8, progress=False,
                            calibration=CalibrationImages(directory=images[0].parent))
    for fail_build in (False, True):
        fed.clear()
        trt = fake_trt("8.6.1", fail_build=fail_build)
        with pytest.raises(KeyboardInterrupt):
            build_engine(onnx, "int8", options)
        assert fed == [1, 1]  # the call after Ctrl-C fed nothing: calibration ended there
        assert ("calibrated", (4, 1)) in trt.log  # TensorRT got one batch of 4 and handed over a cache ...
        assert not (tmp_path / "calib").exists() and not (tmp_path / "engines").exists()  # ... that was not kept
