"""Stream mode as a service (cli/streams.py, runtime/streams/capture.py, docs/streams.md): SIGTERM and SIGHUP stop it
as Ctrl-C does (the summary, --json, finished videos, whole JSONL lines, exit 143 / 129); a live source that does not
answer at start is waited for; a stream whose timestamps restart (where OpenCV hides a resolution change) is
reported; and the systemd unit in docs/ runs infer.py with real flags and takes its SIGTERM status as success."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import onnx_models
import pytest
import stream_tools as st

from trt_res2net.cli.infer import build_parser, main
from trt_res2net.cli.streams import EXIT_SIGHUP, EXIT_SIGTERM
from trt_res2net.runtime.stream import StreamOptions, open_streams

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "docs" / "trt-res2net-stream.service"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return onnx_models.make_classifier(tmp_path_factory.mktemp("m") / "tiny.onnx")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return st.write_video(tmp_path_factory.mktemp("v") / "v.mkv", st.frames(4), "FFV1", fps=30)


def _outputs_are_whole(tmp_path: Path, video: Path, code: int, name: str, err: str) -> None:
    assert "Traceback" not in err and err.rstrip().endswith(f"stopped by {name}"), err
    assert f"{video}" in err and "frames classified" in err and f"interrupted ({name})" in err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["interrupted"] and summary["stop_signal"] == name
    assert summary["sources"][0]["status"] == "stopped"
    lines = (tmp_path / "o.jsonl").read_text().splitlines()
    assert lines and all(json.loads(x)["source"] == str(video) for x in lines)  # no partial line
    videos = tmp_path / "videos"
    assert [p.name for p in videos.iterdir()] == ["v.mp4"]  # finished, no .partial.mp4


def test_sigterm_prints_the_summary_writes_the_json_and_exits_143(tiny, video, tmp_path):
    """A real SIGTERM, sent to infer.py's own process right after it wrote the 5th annotated frame."""
    argv = ["infer.py", str(tiny), str(video), "--realtime", "--loop", "--jsonl", str(tmp_path / "o.jsonl"), "-q",
            "--json", str(tmp_path / "s.json"), "--save-video", str(tmp_path / "videos")]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "signal_runner.py"), "TERM",
                           "trt_res2net.data.annotate:VideoFileWriter.write", "after:5", "--", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_SIGTERM == 143, proc.stderr
    _outputs_are_whole(tmp_path, video, proc.returncode, "SIGTERM", proc.stderr)


def test_sigterm_from_outside_at_any_moment_leaves_whole_outputs(tiny, video, tmp_path):
    """SIGTERM as systemd sends it: from another process, whenever infer.py happens to be."""
    out = tmp_path / "o.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "infer.py"), str(tiny), str(video), "--realtime", "--loop",
                             "--jsonl", str(out), "-q", "--json", str(tmp_path / "s.json"), "--save-video",
                             str(tmp_path / "videos")], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    _outputs_are_whole(tmp_path, video, proc.returncode, "SIGTERM", stderr)


def _signal_after(monkeypatch, signum: int, nth: int) -> None:
    from trt_res2net.data import annotate

    original, calls = annotate.VideoFileWriter.write, [0]

    def write(self, frame):
        original(self, frame)
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(annotate.VideoFileWriter, "write", write)


def test_sighup_is_handled_the_same_and_exits_129(tiny, video, tmp_path, monkeypatch, capsys):
    _signal_after(monkeypatch, signal.SIGHUP, 3)
    before = signal.getsignal(signal.SIGHUP)
    code = main([str(tiny), str(video), "--realtime", "--loop", "--jsonl", str(tmp_path / "o.jsonl"), "-q",
                 "--json", str(tmp_path / "s.json"), "--save-video", str(tmp_path / "videos")])
    assert code == EXIT_SIGHUP == 129
    _outputs_are_whole(tmp_path, video, code, "SIGHUP", capsys.readouterr().err)
    assert signal.getsignal(signal.SIGHUP) is before  # restored


def test_a_video_whose_writer_was_being_opened_is_removed(tmp_path):
    from trt_res2net.data.annotate import VideoFileWriter

    writer = VideoFileWriter(tmp_path / "v.mp4", 25)
    writer.partial.write_bytes(b"")  # what an interrupted cv2.VideoWriter(...) leaves before it is kept
    assert writer.close() is None and not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ late live sources


def test_a_live_source_that_never_answers_is_waited_for_then_given_up(tiny, video, tmp_path, capsys):
    dead = f"rtsp://127.0.0.1:{st.free_port()}/nothing"  # nothing listens: refused at once, each try
    code = main([str(tiny), str(video), dead, "--reconnect-timeout", "1", "--jsonl", str(tmp_path / "o.jsonl"),
                 "-q", "--json", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert f"waiting for {dead} … cannot open with OpenCV's FFmpeg backend" in err
    assert "retrying with backoff for up to 1 s (--reconnect-timeout)" in err
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 4  # the file beside it is classified
    file_stats, dead_stats = json.loads((tmp_path / "s.json").read_text())["sources"]
    assert file_stats["status"] == "ended" and dead_stats["status"] == "gave up waiting after 1 s"


def test_a_wrong_scheme_or_a_missing_file_is_still_refused_at_once(tiny, tmp_path, capsys):
    for source, message in ((f"{tmp_path}/missing.mp4", "no such file or directory"),
                            ("ftp://x/y.ts", "unknown source scheme")):
        code = main([str(tiny), source, "--reconnect-timeout", "30"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "waiting" not in err, err


# ------------------------------------------------------------------------------------------ resolution change


def _two_sizes_ts(path: Path) -> Path:
    ffmpeg = st.require_ffmpeg()
    parts = []
    for i, size in enumerate(("320x240", "1280x720")):
        part = path.with_name(f"part{i}.ts")
        subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=25",
                        "-t", "0.4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "mpegts",
                        str(part)], check=True, timeout=60)
        parts.append(part.read_bytes())
    path.write_bytes(b"".join(parts))
    return path


def test_a_resolution_change_in_a_file_is_reported_not_silent(tiny, tmp_path):
    ts = _two_sizes_ts(tmp_path / "two.ts")
    events: list[str] = []
    with open_streams(tiny, [ts], StreamOptions(), on_event=events.append) as run:
        results = list(run)
    assert len(results) == 20
    (event,) = [e for e in events if "timestamps restart" in e]
    assert event.startswith(f"{ts}: timestamps restart at frame 10 (a new stream segment)") and "320×240" in event
    assert "scaled" in event and event in run.summary().events


# ------------------------------------------------------------------------------------------ systemd


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read_string(UNIT.read_text())
    return unit


def test_the_systemd_unit_runs_infer_py_with_real_flags():
    service = _unit()["Service"]
    argv = shlex.split(service["ExecStart"].replace("\\\n", " "))
    assert Path(argv[0]).is_absolute() and argv[1].endswith("infer.py"), argv
    parser = build_parser()
    known = {s for a in parser._actions for s in a.option_strings}
    flags = [a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")]
    assert flags and set(flags) <= known, set(flags) - known
    args = parser.parse_args(argv[2:])  # the whole command line parses
    assert args.reconnect_timeout and args.json


def test_the_systemd_unit_stops_with_sigterm_and_counts_its_status_as_success():
    service = _unit()["Service"]
    assert service["KillSignal"] == "SIGTERM" and service["Restart"] == "on-failure"
    assert str(EXIT_SIGTERM) in service["SuccessExitStatus"].split()
    assert int(service["TimeoutStopSec"]) >= 20  # the clean-up may wait for a blocked capture (about 17 s)
    docs = (ROOT / "docs" / "streams.md").read_text()
    assert "trt-res2net-stream.service" in docs and "143" in docs and "129" in docs
