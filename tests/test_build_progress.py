"""Build progress (TensorRT's phase callbacks → bars) and the spinner used where there are no callbacks."""

from __future__ import annotations

import io
import time

import pytest

from trt_res2net.engine.progress import BuildProgress, Spinner, format_elapsed


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
