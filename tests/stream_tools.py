"""Test videos and loopback stream servers for the stream tests (tests/test_streams*.py).

Video files are written by OpenCV's own FFmpeg (lossless FFV1, PNG and HuffYUV where exact frames matter; MPEG-4
and Motion JPEG as lossy codecs). The live servers need Debian packages, installed by .ci/run:

- RTSP: the system python3 with GStreamer's RTSP server (``gir1.2-gst-rtsp-server-1.0 python3-gi
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly``), tests/rtsp_server.py;
- UDP and HTTP: ``ffmpeg`` streaming a test video as MPEG-TS.

Without them those tests skip and say what to install; under CI (``CI`` set) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")
DEBIAN_PACKAGES = ("ffmpeg gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base "
                   "gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly")

# (file name, fourcc, lossless)
LOSSLESS = [("ffv1.mp4", "FFV1"), ("ffv1.mkv", "FFV1"), ("png.avi", "MPNG"), ("huffyuv.avi", "HFYU")]
LOSSY = [("mpeg4.mp4", "mp4v"), ("mjpeg.avi", "MJPG")]


def frames(n: int, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[np.ndarray]:
    """``n`` photograph-like BGR frames (different scenes, so different answers)."""
    import cv2

    from trt_res2net.data.synthetic import make_image

    rng = np.random.default_rng(seed)
    return [cv2.resize(make_image(rng), size, interpolation=cv2.INTER_AREA) for _ in range(n)]


def can_write(path: Path, fourcc: str) -> bool:
    """Whether this OpenCV's video writer takes ``fourcc`` in ``path``'s container (OpenCV 4.11's FFmpeg refuses
    FFV1 in MP4; 5.x writes it)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (64, 48))
    opened = writer.isOpened()
    writer.release()
    path.unlink(missing_ok=True)
    return opened


def write_video(path: Path, images: list[np.ndarray], fourcc: str, fps: float = 25.0) -> Path:
    import cv2

    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path.suffix}"
    for im in images:
        writer.write(im)
    writer.release()
    return path


def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of a video as OpenCV decodes it (what a lossy file's frames are)."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(frame)
    cap.release()
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(what: str) -> None:
    message = f"{what} missing: apt-get install -y --no-install-recommends {DEBIAN_PACKAGES} (.ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        _missing("ffmpeg")
    return path


def require_rtsp_server() -> None:
    probe = ("import gi; gi.require_version('Gst','1.0'); gi.require_version('GstRtspServer','1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert Gst.ElementFactory.find('x264enc') and Gst.ElementFactory.find('rtph264pay')")
    ok = Path(SYSTEM_PYTHON).exists() and subprocess.run(
        [SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=60).returncode == 0
    if not ok:
        _missing("GStreamer's RTSP server for the system python3 (with x264enc)")


def _wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Wait until a TCP socket listens on ``port`` (Linux's /proc/net/tcp, state 0A), or the process exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if fields[1].rsplit(":", 1)[1] == f"{port:04X}" and fields[3] == "0A":
                    return
        time.sleep(0.05)


class RtspServer:
    """tests/rtsp_server.py as a process: ``start()``, ``stop()`` (kill it: clients see the server gone)."""

    def __init__(self, port: int | None = None, fps: int = 30):
        self.port = port or free_port()
        self.fps = fps
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/test"

    def start(self) -> RtspServer:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), str(self.port), str(self.fps)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r} {err[-500:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


class FfmpegStream:
    """``ffmpeg -re`` sending a video, looped, as H.264 in MPEG-TS to ``udp://127.0.0.1:PORT`` or serving it at
    ``http://127.0.0.1:PORT/live.ts`` (one client)."""

    def __init__(self, video: Path, protocol: str, port: int | None = None):
        self.video, self.protocol = video, protocol
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return (f"udp://127.0.0.1:{self.port}" if self.protocol == "udp"
                else f"http://127.0.0.1:{self.port}/live.ts")

    def start(self) -> FfmpegStream:
        out = (["-f", "mpegts", f"udp://127.0.0.1:{self.port}?pkt_size=1316"] if self.protocol == "udp"
               else ["-f", "mpegts", "-listen", "1", self.url])
        self.proc = subprocess.Popen(
            [require_ffmpeg(), "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.video),
             "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "10", "-pix_fmt", "yuv420p",
             *out], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if self.protocol == "http":
            _wait_listening(self.port, self.proc)  # without connecting: ffmpeg serves one client only
        else:
            time.sleep(0.3)  # packets flow; the receiver waits for a key frame anyway
        if self.proc.poll() is not None:
            raise RuntimeError(f"ffmpeg exited: {self.proc.stderr.read().decode()[-500:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None
