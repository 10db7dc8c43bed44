#!/usr/bin/env python3
"""The stream runner (runtime/stream.py) against a plain serial loop and against the model alone, in one run.

    python benchmarks/bench_streams.py [--model res2net50_vd_26w_4s | --model-file PATH] [--batch 8]
                                       [--frames 32] [--size 1920x1080] [--runs 3] [--live-seconds 4]
                                       [--live-fps 30] [--json out.json]

The model is the zoo model exported with seeded random weights (speed does not depend on the weights) unless
--model-file names an .onnx or an engine. The videos are --frames photograph-like frames at --size, MPEG-4 Part 2
in MP4 (what a camera recording looks like to the decoder), written to a temporary folder. Cases, taking turns in
each of --runs rounds (medians reported), all on the same frames:

- decode only: ``cv2.VideoCapture.read`` over the file, one thread (where decoding becomes the limit);
- model alone at batch 1 and at --batch: ``backend.run`` on the already preprocessed frames;
- serial loop: read → ``preprocess_bgr`` → ``backend.run`` on one frame → top-k, one frame at a time;
- runner, one file source, at batch 1 and at --batch; runner, four file sources (a quarter of the frames each);
- live: one and four cameras (the video replayed in real time at --live-fps for --live-seconds, as
  ``--realtime`` does), at --batch: frames classified per second, dropped frames, capture-to-result latency.

Frames per second are wall time; each is also given per CPU-second (this process's CPU time over all its
threads), which a machine shared with other jobs disturbs far less. The 1-minute load average is recorded
before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_videos(directory: Path, frames: int, size: tuple[int, int], fps: float = 30.0) -> dict:
    """One video of ``frames`` frames and four of a quarter each, photograph-like scenes."""
    import cv2

    from trt_res2net.data.synthetic import make_image

    rng = np.random.default_rng(0)
    images = [cv2.resize(make_image(rng, size_range=(400, 800)), size, interpolation=cv2.INTER_LINEAR)
              for _ in range(frames)]

    def write(path: Path, chunk) -> Path:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        for im in chunk:
            writer.write(im)
        writer.release()
        return path

    quarter = max(1, frames // 4)
    return {"one": write(directory / "one.mp4", images),
            "four": [write(directory / f"cam{i}.mp4", images[i * quarter:(i + 1) * quarter]) for i in range(4)]}


def export(model: str, directory: Path) -> Path:
    from trt_res2net.model import weights, zoo
    from trt_res2net.model.onnx_export import write_onnx

    spec = zoo.get_model(model)
    return write_onnx(spec, weights.random_weights(spec, seed=0), directory / f"{model}.onnx")


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of ``fn()``."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def decode_all(path: Path) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def model_alone(backend, batch_array: np.ndarray, batch: int) -> int:
    for start in range(0, len(batch_array), batch):
        backend.run(batch_array[start:start + batch])
    return len(batch_array)


def serial_loop(backend, video: Path, topk_k: int = 5) -> int:
    """What an application without the runner writes: one frame at a time, each step waiting for the last."""
    import cv2

    from trt_res2net.data.postprocess import softmax, topk
    from trt_res2net.data.preprocess import preprocess_bgr

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG)
    n = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        x = preprocess_bgr(frame)[None]
        topk(softmax(backend.run(x)), topk_k)
        n += 1
    cap.release()
    return n


def runner(clf, sources, options):
    from trt_res2net.runtime.stream import open_streams

    with open_streams(clf, sources, options) as run:
        n = sum(1 for _ in run)
    return n, run.summary()


def bench(args) -> dict:
    from trt_res2net.data.preprocess import preprocess_bgr
    from trt_res2net.runtime.classifier import Classifier
    from trt_res2net.runtime.stream import StreamOptions

    w, h = (int(v) for v in args.size.lower().split("x"))
    B = args.batch
    report = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "batch": B, "frames": args.frames, "size": args.size, "runs": args.runs,
              "live_fps": args.live_fps, "live_seconds": args.live_seconds,
              "loadavg_1min_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory(prefix="bench_streams_") as tmp:
        tmp = Path(tmp)
        model_file = Path(args.model_file) if args.model_file else export(args.model, tmp)
        report["model"] = args.model_file or args.model
        videos = make_videos(tmp, args.frames, (w, h))
        decoded = decode_all(videos["one"])
        assert len(decoded) == args.frames, f"wrote {args.frames} frames, decoded {len(decoded)}"
        batch_array = np.stack([preprocess_bgr(f) for f in decoded])
        with Classifier(model_file, batch=B) as clf:
            backend = clf.backend
            report["backend"] = getattr(backend, "describe", lambda: type(backend).__name__)()
            report["preprocessing"] = clf.preprocessing
            report["runtime"] = _versions()
            model_alone(backend, batch_array[:B], B)  # warm-up: sessions, allocations, both batch sizes
            model_alone(backend, batch_array[:1], 1)
            n_live = int(args.live_fps * args.live_seconds)
            live = StreamOptions(batch=B, realtime=True, realtime_fps=args.live_fps, loop=True, max_frames=n_live)
            cases = {
                "decode only": lambda: len(decode_all(videos["one"])),
                "model alone, batch 1": lambda: model_alone(backend, batch_array, 1),
                f"model alone, batch {B}": lambda: model_alone(backend, batch_array, B),
                "serial loop (batch 1)": lambda: serial_loop(backend, videos["one"]),
                "runner, 1 source, batch 1": lambda: runner(clf, [videos["one"]], StreamOptions(batch=1)),
                f"runner, 1 source, batch {B}": lambda: runner(clf, [videos["one"]], StreamOptions(batch=B)),
                f"runner, 4 sources, batch {B}": lambda: runner(clf, videos["four"], StreamOptions(batch=B)),
                f"live, 1 camera, batch {B}": lambda: runner(clf, [videos["one"]], live),
                f"live, 4 cameras, batch {B}": lambda: runner(clf, videos["four"], live),
            }
            samples: dict[str, list[dict]] = {name: [] for name in cases}
            for r in range(args.runs):
                for name, fn in cases.items():
                    wall, cpu, out = timed(fn)
                    sample = {"wall_s": wall, "cpu_s": cpu}
                    if isinstance(out, tuple):  # a runner: its own summary
                        n, summary = out
                        lat = summary.latency()
                        sample.update(frames=n, fps=summary.fps, per_cpu_s=n / cpu,
                                      read=sum(s.read for s in summary.sources),
                                      dropped=sum(s.dropped for s in summary.sources),
                                      p50_ms=lat["latency_p50_ms"], p99_ms=lat["latency_p99_ms"])
                    else:
                        sample.update(frames=out, fps=out / wall, per_cpu_s=out / cpu)
                    samples[name].append(sample)
                    print(f"round {r + 1}/{args.runs}  {name:<28} {sample['fps']:7.2f} frames/s", file=sys.stderr)
    report["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    report["cases"] = {name: _median(s) for name, s in samples.items()}
    report["samples"] = samples
    report["ratios"] = ratios(report)
    return report


def _median(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples if s[key] is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    return out


def _versions() -> dict:
    import cv2
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__}


def _same_batch_model(name: str, batch: int) -> str:
    return f"model alone, batch {batch}" if name.endswith(f"batch {batch}") else "model alone, batch 1"


def ratios(report: dict) -> dict:
    """Per case, the median over rounds of its frames/s divided by the model alone's at the same batch and by
    the serial loop's *in the same round* (neighbours in time see the same load: steadier than medians' ratios)."""
    samples, B = report["samples"], report["batch"]
    out = {}
    for name, runs in samples.items():
        if name == "decode only" or name.startswith(("model", "live")):  # live: paced by the cameras
            continue
        model = samples[_same_batch_model(name, B)]
        serial = samples["serial loop (batch 1)"]
        out[name] = {
            "vs_model": round(statistics.median(r["fps"] / m["fps"] for r, m in zip(runs, model, strict=True)), 3),
            "vs_serial": round(statistics.median(r["fps"] / s["fps"] for r, s in zip(runs, serial, strict=True)), 3)}
    return out


def table(report: dict) -> str:
    cases, rel = report["cases"], ratios(report)
    lines = ["| case | frames/s | frames per CPU-s | ÷ model alone, same batch | ÷ serial loop | dropped | "
             "latency p50 ms | latency p99 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, c in cases.items():
        r = rel.get(name)
        vs_model = f"{r['vs_model']:.2f}" if r else ""
        vs_serial = f"{r['vs_serial']:.2f}" if r and not name.startswith("serial") else ""
        dropped = f"{c['dropped']:.0f} of {c['read']:.0f}" if "read" in c else ""
        p50 = "" if c.get("p50_ms") is None else f"{c['p50_ms']:.0f}"
        p99 = "" if c.get("p99_ms") is None else f"{c['p99_ms']:.0f}"
        lines.append(f"| {name} | {c['fps']:.2f} | {c['per_cpu_s']:.2f} | {vs_model} | {vs_serial} | {dropped} | "
                     f"{p50} | {p99} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="res2net50_vd_26w_4s", help="zoo model, exported with random weights")
    p.add_argument("--model-file", help="an existing .onnx or engine instead")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=32, help="frames of the one-source video (a quarter per camera of "
                   "the four-source case)")
    p.add_argument("--size", default="1920x1080", help="frame size WxH")
    p.add_argument("--runs", type=int, default=3, help="rounds; medians are reported")
    p.add_argument("--live-seconds", type=float, default=4.0)
    p.add_argument("--live-fps", type=float, default=30.0)
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args()
    report = bench(args)
    print(f"{report['model']} on {report['backend']}, {report['frames']} frames {report['size']}, "
          f"median of {report['runs']} rounds; load average {report['loadavg_1min_before']} → "
          f"{report['loadavg_1min_after']}")
    print(table(report))
    if args.json:
        from trt_res2net.core.files import write_json

        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
