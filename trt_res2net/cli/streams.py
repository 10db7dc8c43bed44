"""infer.py on video: files, cameras, network streams and GStreamer pipelines, batched on one model (docs/streams.md).

    python infer.py MODEL_FILE SOURCE... [--jsonl PATH] [--save-video DIR] [--display] [--threshold P]
                    [--smooth N] [--loop] [--realtime] [--reconnect-timeout S] [--batch N]

A positional is a video source when it has a URI scheme (``rtsp://``, ``csi://`` ...), is a GStreamer pipeline,
a ``/dev/videoN`` device, a camera index, a glob, or a file with a video extension; any one of them, or any of
the flags below, puts infer.py in stream mode, where image files and folders are image sequences. Without them
infer.py classifies images (cli/infer.py).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import deque
from pathlib import Path

from ..core.errors import EXIT_OK, EXIT_SOME_FAILED, UserError
from .common import positive_int

_FPS_WINDOW_S = 2.0


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {value:g}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value:g}")
    return value


def add_stream_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.sources import CODECS, DECODERS

    g = p.add_argument_group(
        "video and streams",
        "SOURCE positionals: video files, image folders or globs, /dev/videoN or a camera index, v4l2://, "
        "rtsp:// http:// udp:// rtp://, csi://N (Jetson), GStreamer pipelines (docs/streams.md). Many sources "
        "are batched on one model; a summary goes to stderr at the end and on Ctrl-C; --json writes it too.")
    g.add_argument("--jsonl", metavar="PATH",
                   help="one JSON record per classified frame (source, frame, timestamp, latency_ms, topk), "
                   "written and flushed as it comes ('-' for stdout)")
    g.add_argument("--save-video", type=Path, metavar="DIR",
                   help="an annotated MP4 per source in DIR (top-k and FPS drawn on each classified frame)")
    g.add_argument("--display", action="store_true", help="show the annotated frames in a window per source (q quits)")
    g.add_argument("--threshold", type=_probability, metavar="P",
                   help="report only classes scoring at least P (0)")
    g.add_argument("--smooth", type=positive_int, metavar="N",
                   help="temporal smoothing: the mean probabilities of each source's last N frames (1: none)")
    g.add_argument("--loop", action="store_true", help="rewind video files and image folders at their end")
    g.add_argument("--realtime", action="store_true",
                   help="deliver video files at their frame rate, as a camera would (frames dropped when the model "
                   "is slower)")
    g.add_argument("--reconnect-timeout", type=_seconds, metavar="S",
                   help="seconds a lost network stream or camera is retried, with backoff, before giving up (30)")
    g.add_argument("--decoder", choices=DECODERS,
                   help="cpu: OpenCV's FFmpeg (default); nvv4l2: Jetson hardware decoding of RTSP and video files "
                   "through GStreamer (JetPack's OpenCV)")
    g.add_argument("--codec", choices=CODECS, help="the stream's codec for --decoder nvv4l2 (h264)")
    g.add_argument("--max-frames", type=positive_int, metavar="N", help="stop each source after N frames")


def wants_streams(args: argparse.Namespace) -> bool:
    """Stream mode: a positional names a video source, or a stream flag was given."""
    from ..data.sources import is_stream_uri

    flags = (args.jsonl, args.save_video, args.display, args.threshold, args.smooth, args.loop, args.realtime,
             args.reconnect_timeout, args.decoder, args.codec, args.max_frames)
    if any(flag not in (None, False) for flag in flags):
        return True
    return any(is_stream_uri(x) for x in args.inputs)


def stream_options(args: argparse.Namespace):
    """The flags → ``StreamOptions`` (a flag not given keeps the option's default)."""
    from ..runtime.stream import StreamOptions
    from .infer import image_limits

    given = {
        "batch": args.batch, "topk": args.topk, "threshold": args.threshold, "smooth": args.smooth,
        "loop": args.loop or None, "realtime": args.realtime or None, "reconnect_timeout": args.reconnect_timeout,
        "decoder": args.decoder, "codec": args.codec, "max_frames": args.max_frames,
    }
    return StreamOptions(keep_frames=bool(args.save_video or args.display), gpu_preprocess=not args.cpu_preprocess,
                         image_limits=image_limits(args), **{k: v for k, v in given.items() if v is not None})


class _Rate:
    """Classified frames per second of one source over the last two seconds (what is drawn as FPS)."""

    def __init__(self):
        self.times: deque[float] = deque()

    def tick(self) -> float:
        now = time.monotonic()
        self.times.append(now)
        while now - self.times[0] > _FPS_WINDOW_S:
            self.times.popleft()
        span = now - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


def _line(r) -> str:
    classes = "; ".join(f"{e['label']} {e['score']:.4f}" for e in r.topk) or "(nothing above the threshold)"
    where = f" ({r.image})" if r.image else ""
    return f"{r.source} frame {r.frame_index}{where}: {classes}"


def run_streams(args: argparse.Namespace) -> int:
    from ..data.annotate import VideoFileWriter, draw_topk, opencv_gui_missing
    from ..runtime.stream import StreamRunner
    from .infer import _check_preprocessing_metadata, _write_json

    if not args.inputs:
        raise UserError("no sources given (SOURCE...)")
    options = stream_options(args)
    if args.display:
        reason = opencv_gui_missing()
        if reason:
            raise UserError(reason)
    if args.save_video is not None:
        try:
            args.save_video.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{args.save_video}: cannot create the video folder ({e.strerror or e})") from None
    print_lock = threading.Lock()

    def report(message: str) -> None:
        with print_lock:
            print(message, file=sys.stderr, flush=True)

    runner = StreamRunner(args.model, args.inputs, options, labels=args.labels, on_event=report)
    jsonl = None
    writers: dict[int, VideoFileWriter] = {}
    rates: dict[int, _Rate] = {}
    to_stdout = not args.quiet and args.jsonl != "-"
    started = False
    try:
        with runner:  # opens the sources: UserError (one line) when none can be opened
            started = True
            backend = runner.classifier.backend
            if not args.quiet:
                report(f"{args.model}: {backend.describe()}; preprocessing on the {runner.preprocessing.upper()}; "
                       f"batch {runner.batch}")
            _check_preprocessing_metadata(backend, args.model)
            jsonl = _open_jsonl(args.jsonl)
            names = runner.names
            for r in runner:
                if jsonl is not None:
                    jsonl.write(_json_line(r.to_dict()))
                    jsonl.flush()  # tail -f follows a live stream
                if to_stdout:
                    with print_lock:
                        print(_line(r), flush=True)
                if r.frame_bgr is None:
                    continue
                fps = rates.setdefault(r.source_index, _Rate()).tick()
                annotated = draw_topk(r.frame_bgr, r.topk, fps)
                if args.save_video is not None:
                    writer = writers.get(r.source_index)
                    if writer is None:
                        fps_out = runner.summary().sources[r.source_index].fps
                        writer = writers[r.source_index] = VideoFileWriter(
                            args.save_video / f"{names[r.source_index]}.mp4", fps_out)
                    writer.write(annotated)
                if args.display and _show(r.source, annotated):
                    break  # q or Esc in a window
    finally:
        for writer in writers.values():
            path = writer.close()
            if path is not None and not args.quiet:
                report(f"wrote {path} ({writer.frames} frames)")
        if jsonl is not None and jsonl is not sys.stdout:
            jsonl.close()
        if args.display:
            _close_windows()
        if started:
            report(runner.summary().format())
            if args.json:
                _write_json(args.json, runner.summary().to_dict())
    return EXIT_SOME_FAILED if runner.summary().failed else EXIT_OK


def _open_jsonl(path: str | None):
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        return open(p, "w", encoding="utf-8")  # noqa: SIM115 - streamed line by line, closed in run_streams
    except OSError as e:
        raise UserError(f"{p}: cannot write the JSON Lines ({e.strerror or e})") from None


def _json_line(record: dict) -> str:
    import json

    return json.dumps(record, ensure_ascii=False) + "\n"


def _show(title: str, frame) -> bool:
    """Show a frame; True when the user pressed q or Esc."""
    import cv2

    cv2.imshow(title, frame)
    return (cv2.waitKey(1) & 0xFF) in (ord("q"), 27)


def _close_windows() -> None:
    import cv2

    try:
        cv2.destroyAllWindows()
    except cv2.error:
        pass
