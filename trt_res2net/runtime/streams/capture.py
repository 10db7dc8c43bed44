"""One capture per source: opening it, then a thread that reads its frames into its queue — files paced as live in
realtime mode, unreadable frames skipped, a lost stream reopened with backoff, looped files rewound."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ...core.errors import UserError
from ...data.sources import Capture, FrameError, Source, SourceUnavailable, open_capture
from .control import Frame, RunControl, SourceState

if TYPE_CHECKING:
    from .plan import StreamOptions

BACKOFF_FIRST, BACKOFF_MAX = 0.25, 4.0


def open_source(st: SourceState, source: Source, options: StreamOptions, batch: int) -> None:
    """Open one planned source; a source that cannot be opened keeps its error and status (the others go on). A
    live source that does not answer yet (``SourceUnavailable``) is kept without a capture: its thread waits for
    it, as for one lost later."""
    st.stats.kind, st.stats.backend = source.kind, source.backend
    try:
        st.cap = open_capture(source, options.open_timeout, options.read_timeout, options.image_limits)
    except SourceUnavailable as e:
        st.error = e  # why it is waited for; the capture thread reports it
    except UserError as e:
        refuse(st, e)
        return
    st.source = source
    st.stats.fps = round(float(st.cap.fps), 3) if st.cap is not None else 0.0
    st.live = source.live or options.realtime  # realtime: files are delivered, and dropped, as a camera's frames
    st.stats.live = st.live
    st.maxlen = options.queue_size or (1 if st.live else 2 * batch)
    st.done = False


def refuse(st: SourceState, error: UserError) -> None:
    """A source that cannot be opened (or parsed): its status says why."""
    reason = str(error).removeprefix(f"{st.uri}: ")
    st.stats.status, st.stats.failed = f"could not be opened: {reason}", True
    st.error = error


class Pacer:
    """Frames at a frame rate: each ``wait`` returns at the next frame's due time (realtime mode's files)."""

    def __init__(self, period: float):
        self.period = period
        self._start: float | None = None
        self._n = 0

    def wait(self, control: RunControl) -> bool:
        """Wait until the next frame is due; False when the run stopped meanwhile."""
        if not self.period:
            return True
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._n * self.period
        self._n += 1
        return not (due > now and control.stop.wait(due - now))


class SourceCapture:
    """The capture thread of one open source (``run``): reads until the source ends, gives up or the run stops,
    and leaves the source's status saying which."""

    def __init__(self, st: SourceState, options: StreamOptions, control: RunControl):
        assert st.source is not None, "only a planned source is captured"
        self.st, self.options, self.control = st, options, control
        self.source: Source = st.source
        self.cap: Capture | None = st.cap  # kept in st.cap too, where the runner sees it; None: waited for
        self.pacer = Pacer(0.0)
        if self.cap is not None:
            self._pace()
        self.this_pass = self.good_this_pass = 0  # frames of this pass through a file, and the readable ones
        self.size: tuple[int, int] | None = None  # width, height of the last frame delivered
        self.restart_reported = False

    def _pace(self) -> None:
        fps = self.cap.fps if self.cap.fps > 0 else self.options.realtime_fps
        self.pacer = Pacer(1.0 / fps if self.options.realtime and not self.source.live else 0.0)

    def _wait_for_source(self) -> bool:
        """The source did not answer when the run started: retried as a lost one is; False when it never came."""
        st = self.st
        cap = st.cap = reconnect(st, self.options, self.control, waiting=True)
        if cap is None:
            return False
        self.cap = cap
        st.stats.fps = round(float(cap.fps), 3)
        self._pace()
        return True

    def run(self) -> None:
        st, o, stop = self.st, self.options, self.control.stop
        try:
            if self.cap is None and not self._wait_for_source():
                return
            while not stop.is_set():
                if o.max_frames and st.stats.read >= o.max_frames:
                    st.stats.status = "ended"
                    break
                try:
                    frame = self.cap.read()
                except FrameError as e:
                    self._skip(e)
                    continue
                if frame is None:
                    if self._at_end():
                        continue
                    break
                if self.cap.restarted and self.source.backend == "ffmpeg" and self._restarted(frame):
                    continue
                if not self._deliver(frame):
                    break
        except _Gone:
            pass
        except Exception as e:  # noqa: BLE001 - reported as the source's status, the others go on
            st.stats.status, st.stats.failed = f"failed: {e}", True
            self.control.emit(f"{st.uri}: failed: {e}")
        finally:
            if st.cap is not None:
                st.cap.release()
            with self.control.cond:
                st.done = True
                if st.stats.status == "running":
                    st.stats.status = "stopped"
                self.control.cond.notify_all()

    def _skip(self, error: FrameError) -> None:
        st = self.st
        with self.control.lock:
            st.stats.errors += 1
        st.next_index += 1
        self.this_pass += 1
        self.control.emit(f"{st.uri}: skipped frame {st.next_index - 1}: {error}")

    def _at_end(self) -> bool:
        """No frame came: True to read on (reconnected, or rewound), False when the source is over."""
        st = self.st
        if self.control.stop.is_set():
            return False
        if self.source.reconnect:
            self.cap.release()
            cap = st.cap = reconnect(st, self.options, self.control)
            if cap is None:
                return False
            self.cap = cap
            return True
        self._check_complete()
        if self.options.loop and self.good_this_pass > 0 and self.cap.rewind():  # bad frames only: no loop
            self.this_pass = self.good_this_pass = 0
            return True
        if not st.stats.failed:
            st.stats.status = "ended"
        return False

    def _restarted(self, frame) -> bool:
        """Timestamps went back (a new stream segment): OpenCV would scale a new resolution to the first one. A live
        source is reopened, which reads the new size (True: this frame is dropped, read on); a file cannot be, so
        the event says its later frames may be scaled (False: delivered)."""
        st, h, w = self.st, *frame.shape[:2]
        if not (self.source.live and self.source.reconnect):  # a file, or one served over HTTP: reopening rewinds
            if not self.restart_reported:
                self.restart_reported = True
                self.control.emit(
                    f"{st.uri}: timestamps restart at frame {st.next_index} (a new stream segment): OpenCV's FFmpeg "
                    f"backend decodes a file at its first segment's size, {w}×{h}, so frames of a segment of "
                    "another size are scaled to it and cannot be told apart here; cut the file at the restart to "
                    "classify each segment at its real size")
            return False
        self.control.emit(f"{st.uri}: timestamps restart at frame {st.next_index} (a new stream segment); "
                          "reopened, so that a new resolution is read rather than scaled to the old one")
        self.cap.release()
        try:
            self.cap = st.cap = open_capture(self.source, self.options.open_timeout, self.options.read_timeout,
                                             self.options.image_limits)
        except UserError:
            cap = reconnect(st, self.options, self.control)
            if cap is None:
                raise _Gone() from None
            self.cap = st.cap = cap
        return True

    def _deliver(self, image) -> bool:
        """Queue a frame when it is due: a live source's queue drops its oldest, a file's waits for room."""
        st, control = self.st, self.control
        if not self.pacer.wait(control):
            return False
        size = (image.shape[1], image.shape[0])
        if self.size is not None and size != self.size:
            control.emit(f"{st.uri}: resolution changed from {self.size[0]}×{self.size[1]} to {size[0]}×{size[1]} "
                         f"at frame {st.next_index}; classified at its real size")
        self.size = size
        frame = Frame(st.index, st.next_index, image, time.monotonic(), time.time(), self.cap.image)
        st.next_index += 1
        self.this_pass += 1
        self.good_this_pass += 1
        with control.cond:
            st.stats.read += 1
            if st.live:
                while len(st.queue) >= st.maxlen:
                    st.queue.popleft()
                    st.stats.dropped += 1
            else:
                while len(st.queue) >= st.maxlen and not control.stop.is_set():
                    control.cond.wait(0.1)
            st.queue.append(frame)
            control.cond.notify_all()
        return True

    def _check_complete(self) -> None:
        """A file whose container announces more frames than could be decoded is truncated or corrupt."""
        st = self.st
        expected = self.cap.frame_count  # exact in most containers, estimated from the duration in some: 1 % slack
        if self.source.kind == "video" and expected and expected - self.this_pass > max(1, expected // 100):
            st.stats.errors += 1
            st.stats.status = f"ended early: {self.this_pass} of the {expected} frames its header announces"
            st.stats.failed = True
            self.control.emit(f"{st.uri}: {st.stats.status} (truncated or corrupt)")


class _Gone(Exception):
    """A reopened live source did not come back (its status says so)."""


def reconnect(st: SourceState, options: StreamOptions, control: RunControl, waiting: bool = False,
              ) -> Capture | None:
    """Reopen a lost stream with backoff; the new capture, or None (gave up, or stopping). ``waiting``: the source
    has not answered yet (it did not when the run started), with the same backoff and timeout."""
    assert st.source is not None, "only a planned source is reconnected"
    o, stop = options, control.stop
    if waiting:
        why = str(st.error).removeprefix(f"{st.uri}: ") if st.error is not None else "no answer"
        control.emit(f"waiting for {st.uri} … {why}; retrying with backoff for up to {o.reconnect_timeout:g} s "
                     "(StreamOptions.reconnect_timeout)")
    else:
        control.emit(f"{st.uri}: stream lost after {st.stats.read} frames; reconnecting "
                     f"(giving up after {o.reconnect_timeout:g} s)")
    t_start = time.monotonic()
    deadline = time.monotonic() + o.reconnect_timeout
    delay = BACKOFF_FIRST
    while not stop.is_set():
        try:
            cap = open_capture(st.source, o.open_timeout, o.read_timeout, o.image_limits)
        except UserError:
            cap = None
        if cap is not None:
            if stop.is_set():
                cap.release()
                return None
            if waiting:
                st.error = None
                control.emit(f"{st.uri}: connected after {time.monotonic() - t_start:.1f} s")
                return cap
            with control.lock:
                st.stats.reconnects += 1
            control.emit(f"{st.uri}: reconnected (reconnect {st.stats.reconnects})")
            return cap
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if stop.wait(min(delay, remaining)):
            return None
        delay = min(2 * delay, BACKOFF_MAX)
    if stop.is_set():
        return None
    st.stats.status = f"gave up {'waiting' if waiting else 'reconnecting'} after {o.reconnect_timeout:g} s"
    st.stats.failed = True
    control.emit(f"{st.uri}: {st.stats.status}")
    return None
