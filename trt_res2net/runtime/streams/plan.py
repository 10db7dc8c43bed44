"""What a stream run reads and how, resolved before any capture starts: :class:`StreamOptions`, and
:func:`plan_streams` → :class:`StreamPlan`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ...core.errors import UserError
from ...data.preprocess import DEFAULT_LIMITS, ImageLimits
from ...data.sources import CODECS, DECODERS, Source, parse_source


@dataclass(frozen=True)
class StreamOptions:
    """How sources are read and classified; the defaults are ``infer.py``'s.

    ``batch`` frames per inference (across sources); ``topk`` classes per frame; ``threshold``: entries scoring
    below it are left out (a frame may then have none); ``smooth``: windowed mean over a source's last N frames'
    probabilities (1: none); ``loop``: rewind files and image folders at their end; ``realtime``: deliver files and
    image folders at their frame rate (``realtime_fps`` when they have none) and treat them as live (a camera
    replayed: frames dropped when the model is slower); ``reconnect_timeout``: seconds a lost network stream or
    camera is retried before giving up; ``open_timeout`` / ``read_timeout``: seconds FFmpeg waits for a network
    stream to open / for its next frame; ``queue_size``: frames queued per source (0: 1 for live sources,
    ``2 × batch`` for files); ``decoder`` ``cpu`` or ``nvv4l2`` (Jetson hardware decoding of RTSP and files through
    GStreamer) with ``codec`` h264/h265; ``keep_frames``: results carry their frame (``frame_bgr``, for drawing);
    ``gpu_preprocess``: use the backend's GPU preprocessing when it has one; ``max_frames``: stop each source after
    that many frames (0: no limit); ``image_limits``: the largest images an image folder's frames may be (refused
    before decoding, as unreadable frames).
    """

    batch: int = 8
    topk: int = 5
    threshold: float = 0.0
    smooth: int = 1
    loop: bool = False
    realtime: bool = False
    realtime_fps: float = 30.0
    reconnect_timeout: float = 30.0
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    queue_size: int = 0
    decoder: str = "cpu"
    codec: str = "h264"
    keep_frames: bool = False
    gpu_preprocess: bool = True
    max_frames: int = 0
    image_limits: ImageLimits = DEFAULT_LIMITS

    def __post_init__(self):
        for name in ("batch", "topk", "smooth"):
            if getattr(self, name) < 1:
                raise UserError(f"StreamOptions.{name} must be at least 1, not {getattr(self, name)}")
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"StreamOptions.threshold is a probability in [0, 1], not {self.threshold:g}")
        for name in ("reconnect_timeout", "open_timeout", "read_timeout", "realtime_fps"):
            if not getattr(self, name) > 0:
                raise UserError(f"StreamOptions.{name} must be positive, not {getattr(self, name):g}")
        for name in ("queue_size", "max_frames"):
            if getattr(self, name) < 0:
                raise UserError(f"StreamOptions.{name} must not be negative, not {getattr(self, name)}")


@dataclass(frozen=True)
class PlannedSource:
    """One source as given (``uri``), parsed (``source``), or refused (``refusal``: reported when the runner
    starts, the other sources go on)."""

    uri: str
    source: Source | None
    refusal: UserError | None = None


@dataclass(frozen=True)
class StreamPlan:
    """What a stream run reads and how: every source resolved (or refused) and the options, before any capture
    starts (:func:`plan_streams`)."""

    sources: tuple[PlannedSource, ...]
    options: StreamOptions


def plan_streams(sources: Sequence[str | os.PathLike | Source], options: StreamOptions = StreamOptions()) -> StreamPlan:
    """Resolve ``sources`` (URIs, ``trt_res2net.data.sources.parse_source``, or parsed ``Source`` s) with
    ``options``'s decoder. UserError when there is no source or the decoder or codec is not one this release has;
    a source that cannot be parsed is kept as refused (the runner reports it, and fails only when no source
    opens)."""
    if not sources:
        raise UserError("no sources given")
    if options.decoder not in DECODERS:
        raise UserError(f"StreamOptions.decoder must be one of {', '.join(DECODERS)}, not {options.decoder!r}")
    if options.codec not in CODECS:
        raise UserError(f"StreamOptions.codec must be one of {', '.join(CODECS)}, not {options.codec!r}")
    planned = []
    for given in sources:
        if isinstance(given, Source):
            planned.append(PlannedSource(given.uri, given))
            continue
        try:
            planned.append(PlannedSource(str(given), parse_source(given, options.decoder, options.codec)))
        except UserError as e:
            planned.append(PlannedSource(str(given), None, e))
    return StreamPlan(tuple(planned), options)
