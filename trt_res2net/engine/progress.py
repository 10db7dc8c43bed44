"""Progress for engine builds, which take minutes: TensorRT's phases as nested bars (10.x+), else a spinner.

Plain Python, no TensorRT here: ``trt_res2net.engine.builder`` wraps :class:`BuildProgress` in a
``tensorrt.IProgressMonitor`` subclass where the release has one, and runs :class:`Spinner` around the
build where it does not (8.6), so that a build is never silent for minutes.
"""

from __future__ import annotations

import sys
import threading
import time


def format_elapsed(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s"


class BuildProgress:
    """Receives TensorRT's progress callbacks and draws one tqdm bar per active phase, nested by parent.

    ``on_step`` returns False after Ctrl-C (TensorRT then cancels the build and returns no engine); the
    callbacks themselves never raise, since an exception inside a TensorRT callback cannot unwind cleanly.
    """

    def __init__(self, *, max_depth: int = 3, file=None, enabled: bool = True):
        self.max_depth = max_depth
        self.file = file if file is not None else sys.stderr
        self.enabled = enabled
        self.cancelled = False
        self._depth: dict[str, int] = {}
        self._bars: dict[str, object] = {}
        self.events: list[tuple] = []  # (kind, phase, value): kept for tests and the manifest

    def on_start(self, phase: str, parent: str | None, num_steps: int) -> None:
        try:
            depth = 0 if parent is None else self._depth.get(parent, self.max_depth) + 1
            self._depth[phase] = depth
            self.events.append(("start", phase, num_steps))
            if self.enabled and depth < self.max_depth:
                from tqdm import tqdm

                tty = getattr(self.file, "isatty", lambda: False)()
                self._bars[phase] = tqdm(total=num_steps, desc=phase, position=depth, leave=depth == 0,
                                         file=self.file, dynamic_ncols=True,
                                         mininterval=0.1 if tty else 10.0)  # a log gets a line per 10 s
        except KeyboardInterrupt:
            self.cancelled = True

    def on_step(self, phase: str, step: int) -> bool:
        try:
            bar = self._bars.get(phase)
            if bar is not None:
                bar.update(step + 1 - bar.n)  # TensorRT counts steps from 0; tqdm redraws at its own pace
        except KeyboardInterrupt:
            self.cancelled = True
        return not self.cancelled

    def on_finish(self, phase: str) -> None:
        try:
            self.events.append(("finish", phase, None))
            bar = self._bars.pop(phase, None)
            if bar is not None:
                bar.n = bar.total or bar.n
                bar.close()
            self._depth.pop(phase, None)
        except KeyboardInterrupt:
            self.cancelled = True

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


class Spinner:
    """``with Spinner("building engine"):`` — elapsed time on stderr while the body runs.

    On a terminal it redraws one line every ``interval`` seconds; elsewhere (CI logs) it prints a line every
    ``log_interval`` seconds, so that a long build still shows it is alive without flooding the log.
    """

    FRAMES = "|/-\\"

    def __init__(self, message: str, *, file=None, interval: float = 0.25, log_interval: float = 30.0,
                 enabled: bool = True):
        self.message = message
        self.file = file if file is not None else sys.stderr
        self.interval = interval
        self.log_interval = log_interval
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = 0.0
        self.lines = 0

    def _tty(self) -> bool:
        isatty = getattr(self.file, "isatty", None)
        return bool(isatty and isatty())

    def _run(self) -> None:
        tty = self._tty()
        wait = self.interval if tty else self.log_interval
        frame = 0
        while not self._stop.wait(wait):
            elapsed = format_elapsed(time.monotonic() - self.started)
            if tty:
                self.file.write(f"\r{self.FRAMES[frame % len(self.FRAMES)]} {self.message}… {elapsed}   ")
                frame += 1
            else:
                self.file.write(f"{self.message}… {elapsed}\n")
            self.file.flush()
            self.lines += 1

    def __enter__(self):
        self.started = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="trt-build-spinner", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            if self._tty():
                self.file.write("\r" + " " * (len(self.message) + 24) + "\r")
                self.file.flush()
        return False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started
