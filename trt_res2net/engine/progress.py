"""Progress for engine builds, which take minutes: TensorRT's phases as nested bars (10.x+), else a spinner.

Plain Python, no TensorRT here: ``trt_res2net.engine.builder`` wraps :class:`BuildProgress` in a
``tensorrt.IProgressMonitor`` subclass where the release has one, and runs :class:`Spinner` around the
build where it does not (8.6), so that a build is never silent for minutes.

Ctrl-C during a build goes through :func:`sigint_recorded`: while TensorRT builds, SIGINT only records the
interrupt (``BuildProgress.interrupt``), ``on_step`` then tells TensorRT to cancel, and the builder raises
KeyboardInterrupt once TensorRT has returned, so a KeyboardInterrupt never lands inside a TensorRT callback.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator


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

    ``on_step`` returns False once :meth:`interrupt` was called (Ctrl-C: TensorRT then cancels the build and
    returns no engine); the callbacks themselves never raise, since an exception inside a TensorRT callback
    cannot unwind cleanly.
    """

    def __init__(self, *, max_depth: int = 3, file=None, enabled: bool = True):
        self.max_depth = max_depth
        self.file = file if file is not None else sys.stderr
        self.enabled = enabled
        self.cancelled = False  # Ctrl-C was recorded: TensorRT is told to stop, the builder raises after it
        self._depth: dict[str, int] = {}
        self._bars: dict[str, object] = {}
        self.events: list[tuple] = []  # (kind, phase, value): kept for tests and the manifest

    def interrupt(self) -> None:
        """Record Ctrl-C (called from the SIGINT handler of :func:`sigint_recorded`): no drawing, no raising."""
        self.cancelled = True

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
            self.interrupt()

    def on_step(self, phase: str, step: int) -> bool:
        try:
            bar = self._bars.get(phase)
            if bar is not None:
                bar.update(step + 1 - bar.n)  # TensorRT counts steps from 0; tqdm redraws at its own pace
        except KeyboardInterrupt:
            self.interrupt()
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
            self.interrupt()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


@contextlib.contextmanager
def sigint_recorded(on_interrupt: Callable[[], None]) -> Iterator[bool]:
    """``with sigint_recorded(progress.interrupt):`` — while the body runs, SIGINT (Ctrl-C) calls ``on_interrupt``
    instead of raising KeyboardInterrupt wherever Python happens to be (inside a TensorRT callback, say); the
    caller checks what was recorded after the body and raises then. The previous handler is restored on the way
    out, whatever happens. Only the main thread can set signal handlers: elsewhere this does nothing (the body
    gets False, the main thread True).
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return

    def handler(signum, frame):
        on_interrupt()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield True
    finally:
        # None: a handler not set from Python; the default is the closest Python can restore
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


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
