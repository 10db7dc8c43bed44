"""Video sources by URI: files, image folders and globs, V4L2 cameras, network streams, GStreamer pipelines, CSI.

One syntax for ``infer.py`` and the Python API (docs/streams.md has the table of what works where):

==================================  ==========  ========================================================
URI                                 backend     notes
==================================  ==========  ========================================================
``video.mp4`` ``clip.mkv`` ...       ffmpeg      OpenCV's FFmpeg; every frame, in order (``file://`` too)
``frames/`` ``'frames/*.png'``       images      sorted; decoded by ``decode_image`` like infer.py's images
``/dev/video0`` ``v4l2://0`` ``0``   v4l2        OpenCV's V4L2 backend (pip wheel and JetPack)
``rtsp://`` ``http(s)://``           ffmpeg      live: old frames dropped, reopened with backoff
``udp://`` ``rtp://`` ``tcp://`` ...  ffmpeg      ``udp://@:1234`` listens on every interface
``'videotestsrc ! ... ! appsink'``   gstreamer   a pipeline as given (``appsink`` added when it has none)
``csi://0?width=1920&height=1080``   gstreamer   Jetson MIPI CSI camera: ``nvarguscamerasrc``
==================================  ==========  ========================================================

With ``decoder="nvv4l2"`` (``infer.py --decoder nvv4l2``) RTSP streams and video files are decoded by the
Jetson's hardware decoder through GStreamer (``nvv4l2decoder``) instead of FFmpeg on the CPU. The GStreamer
pipelines are written from NVIDIA's Accelerated GStreamer guide for Jetson Linux; they are unit-tested as
strings but cannot run on a machine without a Jetson.

Frames come out as BGR uint8 H×W×3, what ``preprocess`` receives from an image file, so a frame's answer is
the answer for that frame saved as a lossless PNG. OpenCV is imported inside the functions that need it.
"""

from __future__ import annotations

import glob
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..core.errors import UserError
from .images import IMAGE_EXTENSIONS, find_images
from .preprocess import DEFAULT_LIMITS, ImageDecodeError, ImageLimits, decode_image

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
                    ".mpg", ".mpeg", ".3gp", ".ogv", ".y4m", ".gif", ".h264", ".264", ".h265", ".265", ".hevc",
                    ".mjpeg", ".mjpg")
_HTTP_FILE_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "srt", "tcp")
DECODERS = ("cpu", "nvv4l2")
CODECS = ("h264", "h265")
_GLOB_CHARS = re.compile(r"[*?\[]")
_DEVICE = re.compile(r"^/dev/video(\d+)$")
# GStreamer demuxers by container, for the hardware-decoding file pipeline.
_DEMUXERS = {".mp4": "qtdemux", ".m4v": "qtdemux", ".mov": "qtdemux", ".3gp": "qtdemux", ".mkv": "matroskademux",
             ".webm": "matroskademux", ".ts": "tsdemux", ".mts": "tsdemux", ".m2ts": "tsdemux", ".avi": "avidemux",
             ".flv": "flvdemux"}
# appsink as OpenCV wants it: BGR, and for live sources only the newest buffer kept.
_APPSINK_LIVE = "appsink drop=true max-buffers=1 sync=false"
_APPSINK_FILE = "appsink sync=false"
_TO_BGR = "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"


@dataclass(frozen=True)
class Source:
    """One parsed source. ``target`` is what OpenCV's ``VideoCapture`` opens (a path, URL, device index or
    GStreamer pipeline); ``paths`` the sorted images of an image source. ``live`` sources (cameras, network
    streams) deliver frames in real time: a reader that falls behind drops old frames rather than queueing
    them; ``reconnect`` ones are reopened when they fail. ``name`` is a file-name-safe short name."""

    uri: str
    kind: str  # "video" | "images" | "camera" | "network" | "gstreamer" | "csi"
    backend: str  # "ffmpeg" | "v4l2" | "gstreamer" | "images"
    target: str | int
    live: bool
    reconnect: bool
    name: str
    paths: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def backend_name(self) -> str:
        return {"ffmpeg": "OpenCV's FFmpeg backend", "v4l2": "OpenCV's V4L2 backend",
                "gstreamer": "OpenCV's GStreamer backend", "images": "the image decoder"}[self.backend]


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return name[:80] or "source"


def _has_scheme(text: str) -> str | None:
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", text)
    return m.group(1).lower() if m else None


def is_pipeline(text: str) -> bool:
    """A GStreamer pipeline string: elements joined by `` ! ``."""
    return bool(re.search(r"\s!\s", text)) and _has_scheme(text.strip()) is None


def is_stream_uri(text: str) -> bool:
    """Whether an ``infer.py`` positional names a video source rather than image files or a folder: a URI
    scheme, a GStreamer pipeline, a ``/dev/video`` device, a camera index, a video file (by extension) or a
    glob pattern. Image files and folders stay images (classified as today)."""
    text = str(text)
    if _has_scheme(text) is not None or is_pipeline(text) or _DEVICE.match(text):
        return True
    p = Path(text)
    try:
        exists = p.exists()
    except OSError:  # e.g. a file in a folder this user may not enter: a path, not a stream (reading it says why)
        return p.suffix.lower() in VIDEO_EXTENSIONS
    if exists:
        return p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    return text.isdigit() or p.suffix.lower() in VIDEO_EXTENSIONS or bool(_GLOB_CHARS.search(text))


def _query(uri: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(uri).query).items()}


def _int_param(params: dict[str, str], key: str, default: int, uri: str) -> int:
    try:
        value = int(params.get(key, default))
    except ValueError:
        raise UserError(f"{uri}: {key} must be an integer, got {params[key]!r}") from None
    if value < 0:
        raise UserError(f"{uri}: {key} must not be negative")
    return value


# ------------------------------------------------------------------------------------ Jetson pipelines


def csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, framerate: int = 30,
                 flip: int = 0) -> str:
    """A Jetson MIPI CSI camera through libargus (``nvarguscamerasrc``): NV12 in NVMM memory, converted by the
    VIC (``nvvidconv``) to BGRx, then to BGR for OpenCV's appsink — the pipeline of NVIDIA's Accelerated
    GStreamer guide. ``flip``: nvvidconv's ``flip-method`` (0 none, 2 rotate 180°, ...)."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},framerate={framerate}/1,format=NV12 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
            f"{_APPSINK_LIVE}")


def rtsp_nvdec_pipeline(url: str, codec: str = "h264", latency_ms: int = 200) -> str:
    """An RTSP camera decoded by the Jetson's NVDEC (``nvv4l2decoder``): depayload, parse, decode to NVMM,
    ``nvvidconv`` to BGRx, ``videoconvert`` to BGR."""
    _check_codec(codec)
    return (f"rtspsrc location={url} latency={latency_ms} ! rtp{codec}depay ! {codec}parse ! nvv4l2decoder ! "
            f"{_TO_BGR} ! {_APPSINK_LIVE}")


def file_nvdec_pipeline(path: str | os.PathLike, codec: str = "h264") -> str:
    """A video file decoded by the Jetson's NVDEC: the container's demuxer (by extension), the codec's parser,
    ``nvv4l2decoder``, then BGR. Every frame is kept (the appsink does not drop)."""
    _check_codec(codec)
    suffix = Path(path).suffix.lower()
    demux = _DEMUXERS.get(suffix)
    if demux is None:
        raise UserError(f"{path}: no hardware-decoding pipeline for {suffix or 'this'} files "
                        f"(containers: {' '.join(sorted(_DEMUXERS))}); use parse_source.decoder='cpu'")
    return (f"filesrc location={path} ! {demux} ! {codec}parse ! nvv4l2decoder ! {_TO_BGR} ! {_APPSINK_FILE}")


def usb_mjpeg_nvdec_pipeline(device: str = "/dev/video0", width: int = 1280, height: int = 720,
                             framerate: int = 30) -> str:
    """A USB camera's MJPEG decoded by the Jetson's hardware JPEG decoder (``nvv4l2decoder mjpeg=1``)."""
    return (f"v4l2src device={device} io-mode=2 ! image/jpeg,width={width},height={height},"
            f"framerate={framerate}/1 ! nvv4l2decoder mjpeg=1 ! {_TO_BGR} ! {_APPSINK_LIVE}")


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise UserError(f"parse_source.codec must be one of {', '.join(CODECS)}, not {codec!r}")


def _with_appsink(pipeline: str, live: bool) -> str:
    if re.search(r"\bappsink\b", pipeline):
        return pipeline
    return f"{pipeline} ! videoconvert ! video/x-raw,format=BGR ! {_APPSINK_LIVE if live else _APPSINK_FILE}"


# ------------------------------------------------------------------------------------------------ parsing


def parse_source(uri: str | os.PathLike, decoder: str = "cpu", codec: str = "h264") -> Source:
    """A URI, path, device or pipeline → :class:`Source` (UserError, one line, when it names nothing usable).

    ``decoder``: ``cpu`` (OpenCV's FFmpeg) or ``nvv4l2`` (Jetson hardware decoding through GStreamer, for RTSP
    streams and video files; ``codec`` is then the stream's, h264 or h265)."""
    if decoder not in DECODERS:
        raise UserError(f"parse_source.decoder must be one of {', '.join(DECODERS)}, not {decoder!r}")
    _check_codec(codec)
    text = str(uri)
    if not text.strip():
        raise UserError("an empty source")
    scheme = _has_scheme(text)
    if scheme == "file":
        return _parse_path(text[len("file://"):], text, decoder, codec)
    if scheme == "csi":
        parts = urlsplit(text)
        sensor = parts.netloc or parts.path.strip("/") or "0"
        if not sensor.isdigit():
            raise UserError(f"{text}: a CSI camera is csi://N (N the sensor id), e.g. csi://0")
        q = _query(text)
        pipeline = csi_pipeline(int(sensor), _int_param(q, "width", 1920, text), _int_param(q, "height", 1080, text),
                                _int_param(q, "framerate", 30, text), _int_param(q, "flip", 0, text))
        return Source(text, "csi", "gstreamer", pipeline, live=True, reconnect=True, name=f"csi{sensor}")
    if scheme == "v4l2":
        rest = text[len("v4l2://"):]
        return _camera(text, rest)
    if scheme in NETWORK_SCHEMES:
        parts = urlsplit(text)
        target = text
        if parts.netloc.startswith("@"):  # jetson-inference's rtp://@:1234: listen on every interface
            target = text.replace("://@", "://0.0.0.0", 1)
        # A complete file served over HTTP is read like a file (no frame dropped); .ts, .m3u8, ... are live.
        video_file = scheme in ("http", "https") and Path(parts.path).suffix.lower() in _HTTP_FILE_EXTENSIONS
        name = _safe_name(f"{parts.hostname or scheme}_{parts.port or ''}_{parts.path}")
        if decoder == "nvv4l2" and scheme in ("rtsp", "rtsps"):
            return Source(text, "network", "gstreamer", rtsp_nvdec_pipeline(text, codec), live=True,
                          reconnect=True, name=name)
        return Source(text, "network", "ffmpeg", target, live=not video_file, reconnect=True, name=name)
    if scheme is not None:
        raise UserError(f"{text}: unknown source scheme {scheme}:// (files, folders, /dev/videoN, v4l2://, "
                        f"csi://, {', '.join(s + '://' for s in NETWORK_SCHEMES)} or a GStreamer pipeline)")
    if is_pipeline(text):
        return _gstreamer(text, text)
    if _DEVICE.match(text):
        return _camera(text, text)
    return _parse_path(text, text, decoder, codec)


def _camera(uri: str, rest: str) -> Source:
    m = _DEVICE.match(rest)
    if m:
        index = int(m.group(1))
    elif rest.isdigit():
        index = int(rest)
    else:
        raise UserError(f"{uri}: a V4L2 camera is /dev/videoN, v4l2:///dev/videoN or its index N")
    return Source(uri, "camera", "v4l2", index, live=True, reconnect=True, name=f"video{index}")


def _gstreamer(uri: str, pipeline: str) -> Source:
    live = not re.search(r"\b(multi)?filesrc\b", pipeline)
    head = re.split(r"[\s!]", pipeline.strip(), maxsplit=1)[0]
    return Source(uri, "gstreamer", "gstreamer", _with_appsink(pipeline.strip(), live), live=live,
                  reconnect=live, name=_safe_name(f"gst_{head}"))


def _parse_path(text: str, uri: str, decoder: str, codec: str) -> Source:
    p = Path(text)
    if p.is_dir():
        paths = tuple(find_images([p]))
        if not paths:
            raise UserError(f"{uri}: no images found (looked for {' '.join(IMAGE_EXTENSIONS)})")
        return Source(uri, "images", "images", str(p), live=False, reconnect=False, name=_safe_name(p.name),
                      paths=paths)
    if p.is_file():
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            return Source(uri, "images", "images", str(p), live=False, reconnect=False,
                          name=_safe_name(p.stem), paths=(p,))
        if decoder == "nvv4l2":
            return Source(uri, "video", "gstreamer", file_nvdec_pipeline(p, codec), live=False, reconnect=False,
                          name=_safe_name(p.stem))
        return Source(uri, "video", "ffmpeg", str(p), live=False, reconnect=False, name=_safe_name(p.stem))
    if _GLOB_CHARS.search(text):
        paths = tuple(sorted(Path(f) for f in glob.glob(text, recursive=True)
                             if Path(f).suffix.lower() in IMAGE_EXTENSIONS and Path(f).is_file()))
        if not paths:
            raise UserError(f"{uri}: no images match (looked for {' '.join(IMAGE_EXTENSIONS)})")
        return Source(uri, "images", "images", text, live=False, reconnect=False,
                      name=_safe_name(Path(text).parent.name or "glob"), paths=paths)
    if text.isdigit():
        return _camera(uri, text)
    raise UserError(f"{uri}: no such file or directory")


def unique_names(sources: Sequence[Source]) -> list[str]:
    """Each source's ``name``, made unique (``_2``, ``_3`` ...), e.g. for one output file per source."""
    seen: dict[str, int] = {}
    names = []
    for s in sources:
        n = seen.get(s.name, 0) + 1
        seen[s.name] = n
        names.append(s.name if n == 1 else f"{s.name}_{n}")
    return names


# ---------------------------------------------------------------------------------------- OpenCV's build


def opencv_has_gstreamer() -> bool:
    """Whether this cv2 was built with GStreamer (``cv2.getBuildInformation()``'s Video I/O section)."""
    import cv2

    m = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(m) and m.group(1).upper() == "YES"


def gstreamer_missing_message(uri: str) -> str:
    import cv2

    return (f"{uri}: needs OpenCV built with GStreamer; this cv2 {cv2.__version__} has none (pip's "
            "opencv-python wheels never do): on Jetson keep JetPack's OpenCV (apt package nvidia-opencv) with the "
            "README's Jetson install (requirements/jetpack6.txt); elsewhere an OpenCV built with "
            "-DWITH_GSTREAMER=ON")


_QUIET_LOCK = threading.Lock()
_QUIETED = False


def _quiet_opencv() -> None:
    """FFmpeg's and OpenCV's own messages (a refused connection, a corrupt packet) would interleave with ours;
    each failure is reported once, in one line, by the stream runner. Users' own settings win:
    OPENCV_FFMPEG_LOGLEVEL and OPENCV_LOG_LEVEL are left alone when set."""
    global _QUIETED
    with _QUIET_LOCK:
        if _QUIETED:
            return
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg is first used
        if "OPENCV_LOG_LEVEL" not in os.environ:
            import cv2

            try:
                cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
            except AttributeError:  # older bindings
                pass
        _QUIETED = True


# ---------------------------------------------------------------------------------------------- capturing


class FrameError(Exception):
    """One unreadable frame of an image source (the source goes on)."""


class SourceUnavailable(UserError):
    """A live source that did not answer when opened (a camera or server not up yet): worth retrying, unlike a
    wrong scheme, a missing file or a missing backend."""


class Capture:
    """An open source: ``read()`` → the next frame, BGR uint8 H×W×3, or None at its end (or when the stream
    failed); ``release()`` frees it. ``fps`` (0.0 when unknown) and ``frame_count`` (0 when unknown) come from
    the container; ``image`` names the file of the last frame of an image source."""

    fps: float = 0.0
    frame_count: int = 0
    image: str | None = None
    restarted: bool = False  # the last frame's timestamp went back: a new stream segment began there

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def release(self) -> None:
        pass

    def rewind(self) -> bool:
        """Back to the first frame (``--loop``); False when this source cannot."""
        return False


class ImageSequenceCapture(Capture):
    """The sorted images of a folder or glob, decoded as infer.py decodes images (``limits``: images over them are
    refused before they are decoded, as bad frames)."""

    def __init__(self, paths: Sequence[Path], limits: ImageLimits = DEFAULT_LIMITS):
        self.paths = list(paths)
        self.limits = limits
        self.frame_count = len(self.paths)
        self._next = 0

    def read(self) -> np.ndarray | None:
        if self._next >= len(self.paths):
            return None
        path = self.paths[self._next]
        self._next += 1
        self.image = str(path)
        try:
            return decode_image(path, self.limits)
        except ImageDecodeError as e:
            raise FrameError(str(e)) from None

    def rewind(self) -> bool:
        self._next = 0
        return True


# How far back a frame's timestamp must go to count as a restart: more than the jitter of a camera's clock, less
# than any real segment.
_RESTART_MS = 100.0


class VideoCaptureSource(Capture):
    """OpenCV's ``VideoCapture`` on one backend."""

    def __init__(self, cap, rewindable: bool):
        import cv2

        self.cap = cap
        self._rewindable = rewindable
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if not np.isfinite(self.fps) or self.fps < 0 or self.fps > 1000:
            self.fps = 0.0
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count and np.isfinite(count) and count > 0 else 0
        self._last_ms: float | None = None

    def read(self) -> np.ndarray | None:
        import cv2

        try:
            ok, frame = self.cap.read()
        except cv2.error:
            return None
        if not ok or frame is None or frame.size == 0:
            return None
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            try:
                frame = decode_image(frame)  # gray or BGRA cameras → BGR, as IMREAD_COLOR does
            except ImageDecodeError as e:
                raise FrameError(str(e)) from None
        self._check_timestamp()
        return frame

    def _check_timestamp(self) -> None:
        """``restarted`` when this frame's timestamp is before the last one's: concatenated MPEG-TS segments, or an
        encoder that restarted. OpenCV's FFmpeg backend keeps the first segment's frame size for every later frame
        (it scales the others to it, and CAP_PROP_FRAME_WIDTH still says the first), so this is where a
        resolution change can hide."""
        import cv2

        ms = float(self.cap.get(cv2.CAP_PROP_POS_MSEC))
        if not np.isfinite(ms):
            return
        self.restarted = self._last_ms is not None and ms < self._last_ms - _RESTART_MS
        self._last_ms = ms

    def rewind(self) -> bool:
        import cv2

        self._last_ms = None
        return self._rewindable and bool(self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0))

    def release(self) -> None:
        self.cap.release()


def open_capture(source: Source, open_timeout: float = 10.0, read_timeout: float = 5.0,
                 image_limits: ImageLimits = DEFAULT_LIMITS) -> Capture:
    """Open ``source``; UserError (one line naming it and the backend tried) when it cannot be opened.

    ``open_timeout`` / ``read_timeout`` (seconds) bound how long FFmpeg waits for a network stream to answer
    and for the next packet (a server that went away is then noticed, and the stream reopened); ``image_limits``
    bound the images of an image source."""
    if source.backend == "images":
        return ImageSequenceCapture(source.paths, image_limits)
    import cv2

    _quiet_opencv()
    if source.backend == "gstreamer":
        if not opencv_has_gstreamer():
            raise UserError(gstreamer_missing_message(source.uri))
        api = cv2.CAP_GSTREAMER
    elif source.backend == "v4l2":
        api = cv2.CAP_V4L2
    else:
        api = cv2.CAP_FFMPEG
    params: list[int] = []
    if source.backend == "ffmpeg":
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, max(1, int(open_timeout * 1000)),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, max(1, int(read_timeout * 1000))]
    if source.kind == "video" and source.backend == "ffmpeg" and not Path(str(source.target)).is_file():
        raise UserError(f"{source.uri}: no such file")
    try:
        cap = cv2.VideoCapture(source.target, api, params) if params else cv2.VideoCapture(source.target, api)
    except cv2.error as e:
        raise UserError(f"{source.uri}: cannot open with {source.backend_name} ({_one_line(e)})") from None
    if not cap.isOpened():
        cap.release()
        why = {"video": "not a video OpenCV can decode", "camera": "no such camera, or it is busy",
               "network": "no answer, or no video stream there",
               "csi": "no CSI camera, or nvargus-daemon not running"}.get(source.kind, "it did not start")
        error = SourceUnavailable if source.reconnect else UserError
        raise error(f"{source.uri}: cannot open with {source.backend_name} ({why})")
    return VideoCaptureSource(cap, rewindable=source.kind == "video")


def _one_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__
