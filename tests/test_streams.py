"""The stream runner and infer.py on video (runtime/stream.py, cli/streams.py), on video files written here in
several containers and codecs: every frame's answer equals infer.py's on that frame saved as a PNG; many sources
batched give each source its own answers; a slow model on a fast live source drops frames with bounded latency;
bad input is one line. The live network streams are in tests/test_streams_live.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx_models
import pytest
import stream_tools as st

from trt_res2net.cli.infer import main
from trt_res2net.core.errors import UserError
from trt_res2net.runtime.classifier import Classifier
from trt_res2net.runtime.stream import StreamOptions, StreamRunner, open_streams

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return onnx_models.make_classifier(tmp_path_factory.mktemp("m") / "tiny.onnx")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def write_pngs(folder: Path, frames) -> list[Path]:
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, f in enumerate(frames):
        p = folder / f"frame{i:04d}.png"
        assert cv2.imwrite(str(p), f)
        paths.append(p)
    return paths


def assert_same_topk(got: list[dict], want: list[dict], atol: float = 1e-4) -> None:
    assert [e["class_id"] for e in got] == [e["class_id"] for e in want]
    np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], atol=atol, rtol=0)


def by_source(results) -> dict[int, list]:
    out: dict[int, list] = {}
    for r in results:
        out.setdefault(r.source_index, []).append(r)
    return out


# ------------------------------------------------------------------------------------------------- the proof


def test_infer_py_on_a_video_equals_infer_py_on_each_frame_as_png(tiny_onnx, tmp_path, capsys):
    """The issue's proof: `infer.py MODEL video.mp4 --jsonl out.jsonl --save-video annotated/` classifies every
    frame; each frame's top-5 equals infer.py's on that frame saved as a PNG (FFV1: lossless)."""
    import cv2

    frames = st.frames(18, seed=3, size=(352, 288))
    video = st.write_video(tmp_path / "video.mkv", frames, "FFV1")
    out_jsonl, annotated = tmp_path / "out.jsonl", tmp_path / "annotated"
    code, out, err = run_cli(capsys, tiny_onnx, video, "--jsonl", out_jsonl, "--save-video", annotated)
    assert code == 0, err
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(18)) and {r["source"] for r in records} == {str(video)}
    assert all(r["latency_ms"] > 0 and r["timestamp"] > 0 and len(r["topk"]) == 5 for r in records)
    # The same frames as PNG files through infer.py's image mode.
    pngs = write_pngs(tmp_path / "pngs", st.decode_all(video))
    assert all(np.array_equal(cv2.imread(str(p)), f) for p, f in zip(pngs, frames, strict=True))  # lossless
    code, _, _ = run_cli(capsys, tiny_onnx, *pngs, "--json", tmp_path / "ref.json")
    reference = json.loads((tmp_path / "ref.json").read_text())
    assert code == 0 and len(reference) == 18
    for record, ref in zip(records, reference, strict=True):
        assert_same_topk(record["topk"], ref["topk"])
        assert [e["label"] for e in record["topk"]] == [e["label"] for e in ref["topk"]]
    # The annotated video: one frame per classified frame, the source's size; the summary on stderr.
    saved = st.decode_all(annotated / "video.mp4")
    assert len(saved) == 18 and saved[0].shape == frames[0].shape
    assert not list(annotated.glob(".*partial*"))  # renamed when finished
    assert "18 frames classified" in err and "ended" in err
    assert out.count(f"{video} frame ") == 18  # one line per frame on stdout


@pytest.mark.parametrize("name, fourcc, lossless", [(*c, True) for c in st.LOSSLESS] + [(*c, False) for c in st.LOSSY])
def test_containers_and_codecs(tiny, tmp_path, name, fourcc, lossless):
    """Every container/codec: each frame's top-5 equals the Classifier's (infer.py's) on the decoded frame as PNG;
    for the lossless ones the decoded frames are the written ones."""
    frames = st.frames(10, seed=5)
    if not st.can_write(tmp_path / name, fourcc):
        import cv2

        pytest.skip(f"this OpenCV ({cv2.__version__}) cannot write {fourcc} to {Path(name).suffix}")
    video = st.write_video(tmp_path / name, frames, fourcc)
    decoded = st.decode_all(video)
    assert len(decoded) == 10
    if lossless:
        assert all(np.array_equal(a, b) for a, b in zip(decoded, frames, strict=True))
    pngs = write_pngs(tmp_path / "png", decoded)
    with Classifier(tiny) as clf:
        reference = list(clf.classify(pngs))
    with open_streams(tiny, [video], StreamOptions(batch=4)) as run:
        results = list(run)
    assert [r.frame_index for r in results] == list(range(10))
    for r, ref in zip(results, reference, strict=True):
        assert_same_topk(r.topk, ref["topk"])
    s = run.summary().sources[0]
    assert (s.read, s.classified, s.dropped, s.status) == (10, 10, 0, "ended") and s.fps == 25.0


def test_image_folders_and_globs_as_sources(tiny, tmp_path, capsys):
    pngs = write_pngs(tmp_path / "frames", st.frames(6, seed=8))
    code, _, _ = run_cli(capsys, tiny, tmp_path / "frames", "--json", tmp_path / "ref.json")  # image mode
    reference = json.loads((tmp_path / "ref.json").read_text())
    assert code == 0 and [r["image"] for r in reference] == [str(p) for p in pngs]
    for source in (tmp_path / "frames", str(tmp_path / "frames" / "*.png")):
        code, out, err = run_cli(capsys, tiny, source, "--jsonl", tmp_path / "s.jsonl")  # stream mode
        records = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
        assert code == 0 and [r["image"] for r in records] == [str(p) for p in pngs]
        for record, ref in zip(records, reference, strict=True):
            assert_same_topk(record["topk"], ref["topk"], atol=0)


# --------------------------------------------------------------------------------------------------- batching


class RecordingBackend:
    """An ONNX Runtime backend that records each batch size it runs, optionally taking ``seconds`` per batch."""

    def __init__(self, model, seconds: float = 0.0):
        from trt_res2net.runtime.backend import open_backend

        self.inner = open_backend(model)
        self.seconds = seconds
        self.batches: list[int] = []
        for name in ("input_name", "output_name", "num_classes", "max_batch", "fixed_batch", "outputs_probabilities",
                     "gpu_preprocessing", "metadata", "recipe", "describe", "close"):
            setattr(self, name, getattr(self.inner, name))

    def run(self, batch):
        started = time.perf_counter()
        out = self.inner.run(batch)
        self.batches.append(len(batch))
        rest = self.seconds - (time.perf_counter() - started)
        if rest > 0:
            time.sleep(rest)
        return out


def test_four_sources_batched_give_each_source_its_own_answers(tiny, tmp_path):
    videos = [st.write_video(tmp_path / f"cam{i}.mkv", st.frames(n, seed=10 + i), "FFV1")
              for i, n in enumerate((7, 12, 5, 9))]
    recorder = RecordingBackend(tiny)
    with open_streams(Classifier(tiny, backend=recorder), videos, StreamOptions(batch=8)) as run:
        together = by_source(run)
    assert max(recorder.batches) == 8 and sum(recorder.batches) == 33  # full batches across the sources
    for i, video in enumerate(videos):
        with open_streams(tiny, [video], StreamOptions(batch=1)) as alone_run:
            alone = list(alone_run)
        mine = together[i]
        assert [r.frame_index for r in mine] == [r.frame_index for r in alone] == list(range(len(alone)))
        assert all(r.source == str(video) for r in mine)
        for a, b in zip(mine, alone, strict=True):
            assert_same_topk(a.topk, b.topk, atol=1e-5)


def test_gpu_path_classify_bgr_is_used_and_agrees_with_the_cpu_path(tmp_path, monkeypatch):
    """A TensorRT engine (the fake TensorRT and GPU of tests/fake_gpu_runtime.py) takes decoded frames to
    ``classify_bgr``; the answers equal the CPU reference path's, with and without smoothing."""
    from fake_gpu_runtime import FakeKernels, install, write_engine

    install(monkeypatch)
    engine = write_engine(tmp_path / "m.engine", batch=(1, 4, 8), classes=1000)
    video = st.write_video(tmp_path / "v.mkv", st.frames(9, seed=2), "FFV1")
    for smooth in (1, 3):
        runs = {}
        for gpu in (True, False):
            with open_streams(engine, [video], StreamOptions(batch=4, smooth=smooth, gpu_preprocess=gpu)) as run:
                runs[gpu] = list(run)
            assert run.preprocessing == ("gpu" if gpu else "cpu")
        for g, c in zip(runs[True], runs[False], strict=True):
            assert g.preprocessing == "gpu" and c.preprocessing == "cpu"
            assert_same_topk(g.topk, c.topk, atol=2e-6)
    assert FakeKernels.instances and sum(FakeKernels.instances[0].batches) == 9


# ------------------------------------------------------------------------------------------------ live sources


def test_slow_model_on_a_fast_live_source_drops_frames_with_bounded_latency(tiny, tmp_path):
    """A 100 fps camera (a file replayed in real time) and a model taking ~0.15 s a batch: old frames are dropped,
    counted, and the capture-to-result latency stays bounded by the model's batch time: about two of them (one
    waiting while the previous batch runs, one running), asserted with a margin of one more for a busy machine."""
    video = st.write_video(tmp_path / "fast.mkv", st.frames(8, seed=4), "FFV1", fps=100)
    slow = RecordingBackend(tiny, seconds=0.15)
    batch = np.zeros((1, 3, 224, 224), np.float32)
    times = []
    for _ in range(3):  # the model's own batch time
        t = time.perf_counter()
        slow.run(batch)
        times.append(time.perf_counter() - t)
    model_s = float(np.median(times))
    options = StreamOptions(batch=4, realtime=True, loop=True, max_frames=250)
    with open_streams(Classifier(tiny, backend=slow), [video], options) as run:
        results = list(run)
    s = run.summary().sources[0]
    assert s.live and s.read == 250 and s.dropped > 150 and s.read == s.classified + s.dropped
    assert len(results) == s.classified and max(slow.batches) == 1  # one live source: its newest frame each step
    frames = [r.frame_index for r in results]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)
    latency = run.summary().latency()
    p50, p99 = latency["latency_p50_ms"] / 1e3, latency["latency_p99_ms"] / 1e3
    assert p50 <= 2 * model_s + 0.05 and p99 <= 3 * model_s, (p50, p99, model_s)
    assert run.summary().fps < 1 / model_s + 1


def test_realtime_pacing_and_loop(tiny, tmp_path):
    video = st.write_video(tmp_path / "v.mkv", st.frames(5, seed=6), "FFV1", fps=20)
    started = time.monotonic()
    with open_streams(tiny, [video], StreamOptions(realtime=True, loop=True, max_frames=12)) as run:
        results = list(run)
    assert time.monotonic() - started >= 11 / 20 - 0.02  # 12 frames at 20 fps
    s = run.summary().sources[0]
    assert s.read == 12 and s.classified + s.dropped == 12 and s.status == "ended"
    with open_streams(tiny, [video], StreamOptions(loop=True, max_frames=12)) as run:
        looped = list(run)
    assert [r.frame_index for r in looped] == list(range(12))  # indices go on across the loop
    for i in range(5, 12):
        assert_same_topk(looped[i].topk, looped[i - 5].topk, atol=0)
    assert results


def test_windowed_smoothing_and_threshold(tiny, tmp_path):
    from trt_res2net.data.postprocess import topk
    from trt_res2net.data.preprocess import preprocess_bgr

    frames = st.frames(7, seed=9)
    video = st.write_video(tmp_path / "v.mkv", frames, "FFV1")
    with Classifier(tiny) as clf:
        probs = clf.predict(np.stack([preprocess_bgr(f) for f in frames]))
    with open_streams(tiny, [video], StreamOptions(batch=3, smooth=3)) as run:
        smoothed = list(run)
    for i, r in enumerate(smoothed):
        mean = probs[max(0, i - 2): i + 1].mean(axis=0)  # the last 3 frames' probabilities
        ids, scores = topk(mean, 5)
        assert [e["class_id"] for e in r.topk] == ids.tolist()
        np.testing.assert_allclose([e["score"] for e in r.topk], scores, atol=2e-6)
    with open_streams(tiny, [video], StreamOptions(threshold=0.2)) as run:
        thresholded = list(run)
    assert all(e["score"] >= 0.2 for r in thresholded for e in r.topk)
    assert any(len(r.topk) < 5 for r in thresholded)


# ------------------------------------------------------------------------------------------------- bad input


def test_a_source_that_cannot_be_opened_is_reported_and_the_others_go_on(tiny, tmp_path, capsys):
    video = st.write_video(tmp_path / "ok.mkv", st.frames(4), "FFV1")
    dead = f"rtsp://127.0.0.1:{st.free_port()}/nothing"  # nothing listens: refused at once, each try
    code, out, err = run_cli(capsys, tiny, video, dead, "--jsonl", tmp_path / "o.jsonl", "--reconnect-timeout", 1)
    assert code == 1
    assert f"waiting for {dead} … cannot open with OpenCV's FFmpeg backend" in err
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 4
    # alone: waited for too (a camera may boot after the classifier), then given up: exit 1, the summary says so
    code, out, err = run_cli(capsys, tiny, dead, "--jsonl", tmp_path / "n.jsonl", "--reconnect-timeout", 1)
    assert code == 1 and f"{dead}: gave up waiting after 1 s" in err
    assert (tmp_path / "n.jsonl").read_text() == ""


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/missing.mp4"], "error: {tmp}/missing.mp4: no such file or directory"),
    (["csi://0"], "error: csi://0: needs OpenCV built with GStreamer"),
    (["{tmp}/v.mkv", "--display"], "error: --display needs"),
    (["{tmp}/v.mkv", "--threshold", "1.5"], "expected a probability in [0, 1]"),
    (["{tmp}/v.mkv", "--smooth", "0"], "positive integer"),
    (["{tmp}/v.mkv", "--reconnect-timeout", "-1"], "positive number of seconds"),
    (["{tmp}/v.mkv", "--decoder", "vaapi"], "invalid choice"),
    (["ftp://x/y.mp4"], "error: ftp://x/y.mp4: unknown source scheme"),
])
def test_usage_errors_are_one_line_exit_2(tiny, tmp_path, capsys, argv, message):
    from trt_res2net.data.sources import opencv_has_gstreamer

    if "csi://0" in argv and opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer")
    st.write_video(tmp_path / "v.mkv", st.frames(2), "FFV1")
    code, out, err = run_cli(capsys, tiny, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2 and message.format(tmp=tmp_path) in err
    if "usage:" not in err:
        assert len(err.strip().splitlines()) == 1


def test_truncated_video_and_bad_images_are_reported_and_the_rest_classified(tiny, tmp_path, capsys):
    video = st.write_video(tmp_path / "cut.avi", st.frames(20, seed=1), "FFV1")
    data = video.read_bytes()
    video.write_bytes(data[: int(len(data) * 0.6)])
    folder = tmp_path / "imgs"
    write_pngs(folder, st.frames(3, seed=2))
    (folder / "frame0001.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    code, out, err = run_cli(capsys, tiny, video, folder, "--jsonl", tmp_path / "o.jsonl")
    assert code == 1
    records = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    cut = [r["frame"] for r in records if r["source"] == str(video)]
    assert 0 < len(cut) < 20 and cut == list(range(len(cut)))
    assert f"{video}: ended early: {len(cut)} of the 20 frames its header announces (truncated or corrupt)" in err
    assert f"{folder}: skipped frame 1: {folder / 'frame0001.png'}: truncated PNG" in err
    assert [r["frame"] for r in records if r["source"] == str(folder)] == [0, 2]


def test_image_limits_apply_to_image_sources(tiny, tmp_path, capsys):
    write_pngs(tmp_path / "frames", st.frames(2))  # 320×240 = 76,800 pixels each
    code, out, err = run_cli(capsys, tiny, tmp_path / "frames", "--jsonl", tmp_path / "o.jsonl",
                             "--max-image-pixels", "50000")
    assert code == 1 and (tmp_path / "o.jsonl").read_text() == ""
    assert err.count("(--max-image-pixels raises it)") == 2 and "skipped frame 0" in err


def test_a_looped_folder_of_unreadable_images_ends(tiny, tmp_path):
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    events = []
    with open_streams(tiny, [tmp_path], StreamOptions(loop=True), on_event=events.append) as run:
        assert list(run) == []
    s = run.summary().sources[0]
    assert s.errors == 2 and s.status == "ended" and len(events) == 2


def test_options_are_checked():
    for bad in ({"threshold": 1.5}, {"batch": 0}, {"smooth": 0}, {"reconnect_timeout": 0}, {"queue_size": -1}):
        with pytest.raises(UserError):
            StreamOptions(**bad)


# -------------------------------------------------------------------------------------------- stopping cleanly


def test_leaving_the_block_joins_every_thread_and_releases_every_capture(tiny, tmp_path):
    video = st.write_video(tmp_path / "v.mkv", st.frames(4), "FFV1", fps=50)
    runner = StreamRunner(tiny, [video, video], StreamOptions(realtime=True, loop=True))
    with pytest.raises(KeyboardInterrupt):
        with runner:
            for n, _ in enumerate(runner):
                if n == 5:
                    raise KeyboardInterrupt  # what Ctrl-C does in the consumer
    assert runner._threads and not any(t.is_alive() for t in runner._threads)
    assert all(not s.cap.cap.isOpened() for s in runner._states)
    summary = runner.summary()
    assert summary.interrupted and {s.status for s in summary.sources} == {"stopped"}
    assert "interrupted" in summary.format()


def test_ctrl_c_prints_the_summary_and_exits_130(tiny, tmp_path):
    video = st.write_video(tmp_path / "v.mkv", st.frames(4), "FFV1", fps=30)
    out = tmp_path / "o.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "infer.py"), str(tiny), str(video), "--realtime", "--loop",
                             "--jsonl", str(out), "-q"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 10):
        time.sleep(0.1)  # flushed per line: readable while it runs
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.rstrip().endswith("interrupted")
    assert f"{video}" in stderr and "frames classified" in stderr and "stopped" in stderr
    assert all(json.loads(line)["source"] == str(video) for line in out.read_text().splitlines())


def test_python_api_is_exported_lazily():
    code = ("import sys, trt_res2net as tr\n"
            "assert 'cv2' not in sys.modules and 'trt_res2net.runtime.stream' not in sys.modules\n"
            "names = ['open_streams', 'StreamOptions', 'StreamRunner', 'StreamResult', 'StreamSummary', "
            "'parse_source']\n"
            "assert all(n in tr.__all__ for n in names)\n"
            "assert tr.open_streams.__module__ == 'trt_res2net.runtime.stream'\n"
            "assert 'cv2' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_results_and_summary_serialise(tiny, tmp_path):
    video = st.write_video(tmp_path / "v.mkv", st.frames(3), "FFV1")
    with open_streams(tiny, [video], StreamOptions(keep_frames=True)) as run:
        results = list(run)
    assert results[0].frame_bgr.shape == (240, 320, 3)
    record = results[0].to_dict()
    assert set(record) == {"source", "frame", "timestamp", "latency_ms", "topk", "preprocessing"}
    summary = json.loads(json.dumps(run.summary().to_dict()))
    assert summary["classified"] == 3 and summary["sources"][0]["read"] == 3
    assert summary["latency_p99_ms"] >= summary["latency_p50_ms"] > 0
    assert threading.active_count() >= 1


def test_bench_streams_runs_every_case(tiny):
    """benchmarks/bench_streams.py end to end on the tiny model and small frames (its figures: docs/streams.md)."""
    import argparse

    from bench_scripts import load_benchmark

    bench = load_benchmark("bench_streams")
    args = argparse.Namespace(model=None, model_file=str(tiny), batch=4, frames=8, size="160x120", runs=1,
                              live_seconds=0.5, live_fps=20.0, json=None)
    report = bench.bench(args)
    cases = report["cases"]
    assert list(cases) == ["decode only", "model alone, batch 1", "model alone, batch 4", "serial loop (batch 1)",
                           "runner, 1 source, batch 1", "runner, 1 source, batch 4", "runner, 4 sources, batch 4",
                           "live, 1 camera, batch 4", "live, 4 cameras, batch 4"]
    assert all(c["fps"] > 0 and c["frames"] > 0 for c in cases.values())
    assert cases["runner, 1 source, batch 4"]["frames"] == 8 and cases["runner, 4 sources, batch 4"]["frames"] == 8
    assert cases["live, 4 cameras, batch 4"]["read"] == 40
    text = bench.table(report)
    assert text.count("\n") == len(cases) + 1 and "latency p99 ms" in text
