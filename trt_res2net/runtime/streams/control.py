"""What the stream runner's threads share: the per-source state and its lock, the stop event, the first error,
the run's clock and its event log."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...core.errors import UserError
from ...data.sources import Capture, Source
from .results import SourceStats

END = object()  # the last item a stage hands to the next
_EVENTS_KEPT = 1000


@dataclass
class Frame:
    """One captured frame on its way to a batch."""

    source: int
    index: int
    image: np.ndarray
    t: float  # monotonic, when the capture returned it
    wall: float
    name: str | None


class SourceState:
    """One source's capture, queue and counters (the queue and counters are guarded by the control's lock)."""

    def __init__(self, index: int, uri: str):
        self.index = index
        self.uri = uri
        self.stats = SourceStats(uri)
        self.source: Source | None = None
        self.cap: Capture | None = None
        self.live = False
        self.maxlen = 1
        self.queue: deque[Frame] = deque()
        self.done = True
        self.next_index = 0
        self.thread: threading.Thread | None = None
        self.error: UserError | None = None


class RunControl:
    """The lock (and its condition) guarding every source's queue and counters, the stop event, the first error
    a stage met (handed to the consumer), when the run started and last delivered, and the events."""

    def __init__(self, on_event: Callable[[str], None] | None):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.t0: float | None = None
        self.t_end: float | None = None
        self.events: deque[str] = deque(maxlen=_EVENTS_KEPT)
        self._on_event = on_event

    def emit(self, message: str) -> None:
        """Keep a one-line event and hand it to the callback."""
        self.events.append(message)
        if self._on_event is not None:
            try:
                self._on_event(message)
            except Exception:  # noqa: BLE001 - a reporting callback must not stop a capture thread
                pass

    def fail(self, error: BaseException) -> None:
        """A stage failed: keep the first error and stop every thread."""
        self.error = self.error or error
        self.stop.set()

    def seconds(self) -> float:
        end = self.t_end if self.t_end is not None else time.monotonic()
        return end - self.t0 if self.t0 is not None else 0.0

    def put(self, q: queue.Queue, item, force: bool = False) -> bool:
        """Put, waiting for room while the run goes on; False when it stopped first. ``force`` makes room."""
        while True:
            if self.stop.is_set() and not force:
                return False
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if force and self.stop.is_set():
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass
