"""Annotated frames and the video files they go to (``infer.py --save-video DIR``, ``--display``).

The top-k is drawn in the frame's top-left corner on a dark band, one line per class with its score, and the
frames per second in the bottom-left corner (what the classifier keeps up with, as jetson-inference overlays its
network FPS). Videos are MPEG-4 Part 2 (``mp4v``) in MP4, which every OpenCV build writes, and are written
under a temporary name and renamed when closed, so a finished file is never a partial one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..core.errors import UserError


def draw_topk(frame: np.ndarray, entries: list[dict], fps: float | None = None, title: str | None = None,
              ) -> np.ndarray:
    """A copy of ``frame`` (BGR uint8) with ``entries`` (``[{"class_id", "label", "score"}]``) drawn on it."""

    out = frame.copy()
    h, w = out.shape[:2]
    scale = max(0.4, min(1.2, w / 1000))
    thick = 1 if scale < 0.8 else 2
    line_h = int(26 * scale) + 4
    lines = [title] if title else []
    # ImageNet labels list synonyms ("tabby, tabby cat"): the first one is drawn.
    lines += [f"{e['score'] * 100:5.1f}%  {str(e['label']).split(',')[0]}" for e in entries]
    if not entries:
        lines.append("(below the threshold)")
    _text_block(out, lines, (0, 0), scale, thick, line_h, (255, 255, 255))
    if fps is not None:
        _text_block(out, [f"{fps:.1f} FPS"], (0, max(0, h - line_h - 8)), scale, thick, line_h, (0, 255, 255))
    return out


def _text_block(img: np.ndarray, lines: list[str], origin: tuple[int, int], scale: float, thick: int,
                line_h: int, color: tuple[int, int, int]) -> None:
    """Lines of text on a darkened band whose top-left corner is ``origin``."""
    import cv2

    h, w = img.shape[:2]
    x0, y0 = origin
    band_w = max((cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] for t in lines), default=0) + 12
    roi = img[y0 : min(h, y0 + line_h * len(lines) + 8), x0 : min(w, x0 + band_w)]
    roi[...] = (roi.astype(np.uint16) * 2 // 5).astype(np.uint8)  # darken behind the text
    for i, text in enumerate(lines):
        cv2.putText(img, text, (x0 + 6, y0 + line_h * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick,
                    cv2.LINE_AA)


class VideoFileWriter:
    """Frames → ``path`` (an ``.mp4``), written to ``.NAME.partial.mp4`` beside it and renamed on ``close()``.

    The size is the first frame's; later frames of another size (a camera that reconnected at another
    resolution) are resized to it. ``fps`` is the rate the file plays at."""

    def __init__(self, path: str | os.PathLike, fps: float):
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 30.0
        self.partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._writer = None
        self._size: tuple[int, int] | None = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import cv2

        h, w = frame.shape[:2]
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self.partial), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                self._writer = None
                raise UserError(f"{self.path}: cannot write an MP4 video there")
        elif (w, h) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file; its path, or None when no frame was written (then no partial file is left either: one
        whose writer was being opened when the run was interrupted is removed)."""
        if self._writer is None:
            self.partial.unlink(missing_ok=True)
            return None
        self._writer.release()
        self._writer = None
        os.replace(self.partial, self.path)
        return self.path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def opencv_gui_missing() -> str | None:
    """Why ``cv2.imshow`` cannot work here (one line, after "a window needs"), or None when it can."""
    import cv2

    m = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if m and m.group(1).upper() == "NONE":
        return (f"OpenCV with a GUI, and this cv2 {cv2.__version__} has none "
                "(opencv-python-headless): pip install opencv-python, or JetPack's OpenCV on Jetson")
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "a display, and there is none here (DISPLAY is not set)"
    return None
