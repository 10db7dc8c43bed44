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
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.errors import EXIT_OK, EXIT_SOME_FAILED, UserError
from ..data.annotate import VideoFileWriter, draw_topk, opencv_gui_missing
from ..data.preprocess import ImageLimits
from ..data.sources import CODECS, DECODERS, is_stream_uri
from ..runtime.backend import warn_about_metadata
from ..runtime.stream import StreamOptions, StreamResult, StreamRunner, plan_streams
from .common import FieldFlags, positive_int, write_json_output

_FPS_WINDOW_S = 2.0
# What a service manager stops a service with (systemd, Docker, Kubernetes: SIGTERM; a closed terminal: SIGHUP):
# handled as Ctrl-C is, with exit status 128 + the signal's number (143, 129), as a shell reports a process it
# ended.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_SIGHUP = 128 + signal.SIGHUP


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP during stream mode, raised in the main thread as Ctrl-C's KeyboardInterrupt is, so that the
    same clean-up runs (the runner stops and joins, the videos are finished, the summary and --json written)."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)

# Stream mode's part of infer.py's table from option fields to flags (cli/infer.py FLAGS).
STREAM_FIELDS = {
    "StreamOptions.batch": "--batch",
    "StreamOptions.topk": "--topk",
    "StreamOptions.threshold": "--threshold",
    "StreamOptions.smooth": "--smooth",
    "StreamOptions.loop": "--loop",
    "StreamOptions.realtime": "--realtime",
    "StreamOptions.reconnect_timeout": "--reconnect-timeout",
    "StreamOptions.decoder": "--decoder",
    "StreamOptions.codec": "--codec",
    "StreamOptions.max_frames": "--max-frames",
    "parse_source.decoder": "--decoder",
    "parse_source.codec": "--codec",
}


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
    g = p.add_argument_group(
        "video and streams",
        "SOURCE positionals: video files, image folders or globs, /dev/videoN or a camera index, v4l2://, "
        "rtsp:// http:// udp:// rtp://, csi://N (Jetson), GStreamer pipelines (docs/streams.md). Many sources "
        "are batched on one model; a summary goes to stderr at the end and on Ctrl-C, SIGTERM or SIGHUP "
        "(exit 130, 143, 129); --json writes it too.")
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
                   help="seconds a network stream or camera that is lost, or not up yet at start, is retried, with "
                   "backoff, before giving up (30)")
    g.add_argument("--decoder", choices=DECODERS,
                   help="cpu: OpenCV's FFmpeg (default); nvv4l2: Jetson hardware decoding of RTSP and video files "
                   "through GStreamer (JetPack's OpenCV)")
    g.add_argument("--codec", choices=CODECS, help="the stream's codec for --decoder nvv4l2 (h264)")
    g.add_argument("--max-frames", type=positive_int, metavar="N", help="stop each source after N frames")


def wants_streams(args: argparse.Namespace) -> bool:
    """Stream mode: a positional names a video source, or a stream flag was given."""
    flags = (args.jsonl, args.save_video, args.display, args.threshold, args.smooth, args.loop, args.realtime,
             args.reconnect_timeout, args.decoder, args.codec, args.max_frames)
    if any(flag not in (None, False) for flag in flags):
        return True
    return any(is_stream_uri(x) for x in args.inputs)


def stream_options(args: argparse.Namespace, limits: ImageLimits) -> StreamOptions:
    """The flags → ``StreamOptions`` (a flag not given keeps the option's default); ``limits``: infer.py's image
    limits, for image folders' frames."""
    given = {
        "batch": args.batch, "topk": args.topk, "threshold": args.threshold, "smooth": args.smooth,
        "loop": args.loop or None, "realtime": args.realtime or None, "reconnect_timeout": args.reconnect_timeout,
        "decoder": args.decoder, "codec": args.codec, "max_frames": args.max_frames,
    }
    return StreamOptions(keep_frames=bool(args.save_video or args.display), gpu_preprocess=not args.cpu_preprocess,
                         image_limits=limits, **{k: v for k, v in given.items() if v is not None})


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


@contextmanager
def _stop_signals() -> Iterator[_Hold]:
    """SIGTERM and SIGHUP raise :class:`Stopped` in the main thread while the block runs (elsewhere, e.g. infer.py
    called from a thread, they are left alone); ``hold()`` ignores them, and Ctrl-C, from then on — during the
    clean-up, which a second signal must not cut short. The previous handlers are restored at the end."""
    hold = _Hold()
    if threading.current_thread() is not threading.main_thread():
        yield hold
        return

    def on_signal(signum, frame):
        raise Stopped(signum)

    previous = {s: signal.getsignal(s) for s in (*STOP_SIGNALS, signal.SIGINT)}
    for s in STOP_SIGNALS:
        signal.signal(s, on_signal)
    hold.active = True
    try:
        yield hold
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class _Hold:
    active = False

    def hold(self) -> None:
        if self.active:
            for s in (*STOP_SIGNALS, signal.SIGINT):
                signal.signal(s, signal.SIG_IGN)


def run_streams(args: argparse.Namespace, limits: ImageLimits, flags: FieldFlags) -> int:
    """Stream mode: the sources planned, the outputs checked, then every classified frame to the outputs and the
    summary to stderr — also on Ctrl-C (exit 130 by run_main), SIGTERM (exit 143) and SIGHUP (exit 129). ``flags``
    shows the library's events with infer.py's flags."""
    if not args.inputs:
        raise UserError("no sources given (SOURCE...)")
    try:
        with _stop_signals() as hold:
            return _run_streams(args, limits, flags, hold)
    except Stopped as e:
        print(f"stopped by {e.signal_name}", file=sys.stderr)
        return 128 + e.signum


def _run_streams(args: argparse.Namespace, limits: ImageLimits, flags: FieldFlags, hold: _Hold) -> int:
    plan = plan_streams(args.inputs, stream_options(args, limits))
    _check_outputs(args)
    print_lock = threading.Lock()

    def report(message: str) -> None:
        with print_lock:
            print(flags.message(message), file=sys.stderr, flush=True)

    from ..data.recipe import PreprocessOptions

    runner = StreamRunner(args.model, plan, labels=args.labels, on_event=report,
                          preprocess=flags.options(PreprocessOptions, args))
    outputs = _Outputs(args, runner, print_lock, report)
    started = False
    try:
        with runner:  # opens the sources: UserError (one line) when none can be opened
            started = True
            if not args.quiet:
                report(f"{args.model}: {runner.classifier.backend.describe()}; preprocessing on the "
                       f"{runner.preprocessing.upper()}; batch {runner.batch}")
            warn_about_metadata(runner.classifier.backend, args.model)
            outputs.open()
            for r in runner:
                if outputs.write(r):
                    break  # q or Esc in a window
    finally:
        hold.hold()  # a second signal must not cut the clean-up short
        outputs.close()
        if started:
            report(runner.summary().format())
            if args.json:
                summary = runner.summary().to_dict()
                for source in summary["sources"]:  # why a source failed, in infer.py's words
                    source["status"] = flags.message(source["status"])
                write_json_output(args.json, summary)
    return EXIT_SOME_FAILED if runner.summary().failed else EXIT_OK


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse a window without OpenCV's GUI, and make the video folder, before any source is opened."""
    if args.display:
        reason = opencv_gui_missing()
        if reason:
            raise UserError(f"--display needs {reason}")
    if args.save_video is not None:
        try:
            args.save_video.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{args.save_video}: cannot create the video folder ({e.strerror or e})") from None


class _Outputs:
    """Where each classified frame goes: the JSON Lines, a line on stdout, an annotated video per source
    (``--save-video``) and a window per source (``--display``)."""

    def __init__(self, args: argparse.Namespace, runner: StreamRunner, print_lock: threading.Lock, report):
        self.args, self.runner, self.print_lock, self.report = args, runner, print_lock, report
        self.to_stdout = not args.quiet and args.jsonl != "-"
        self.jsonl = None
        self.names: list[str] = []
        self.writers: dict[int, VideoFileWriter] = {}
        self.rates: dict[int, _Rate] = {}

    def open(self) -> None:
        """Once the sources are open: the JSON Lines file, and each source's name for its video."""
        self.jsonl = _open_jsonl(self.args.jsonl)
        self.names = self.runner.names

    def write(self, r: StreamResult) -> bool:
        """Hand one result to every output; True when the user closed a window (q or Esc)."""
        args = self.args
        if self.jsonl is not None:
            self.jsonl.write(_json_line(r.to_dict()))
            self.jsonl.flush()  # tail -f follows a live stream
        if self.to_stdout:
            with self.print_lock:
                print(_line(r), flush=True)
        if r.frame_bgr is None:
            return False
        fps = self.rates.setdefault(r.source_index, _Rate()).tick()
        annotated = draw_topk(r.frame_bgr, r.topk, fps)
        if args.save_video is not None:
            writer = self.writers.get(r.source_index)
            if writer is None:
                fps_out = self.runner.summary().sources[r.source_index].fps
                writer = self.writers[r.source_index] = VideoFileWriter(
                    args.save_video / f"{self.names[r.source_index]}.mp4", fps_out)
            writer.write(annotated)
        return args.display and _show(r.source, annotated)

    def close(self) -> None:
        for writer in self.writers.values():
            path = writer.close()
            if path is not None and not self.args.quiet:
                self.report(f"wrote {path} ({writer.frames} frames)")
        if self.jsonl is not None and self.jsonl is not sys.stdout:
            self.jsonl.close()
        if self.args.display:
            _close_windows()


def _open_jsonl(path: str | None):
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        return open(p, "w", encoding="utf-8")  # noqa: SIM115 - streamed line by line, closed by _Outputs.close
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
