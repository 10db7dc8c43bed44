"""The lane costly images decode in, apart from everyone else's: a served model's isolation of decoding.

The limits (``data/preprocess.py``) bound one image's decode, but a bound is not free: a progressive JPEG of 500
scans at 4 MP, or one of 32 scans at 64 MP, is within them and takes a second or more of a core. Decoded beside the
others, a few such requests hold every decoding thread and the cores, and a good request waits behind them. So an
image whose declared work (its pixels × its scans) is over ``costly_pixels`` decodes here instead:

- on ``workers`` threads of their own, at a lower CPU priority (a Linux thread's nice value is its own): the
  others' decodes and the classifier keep the cores;
- at most ``backlog`` more wait, holding no thread (the models go on with a request when its lane job is done);
  past that a request is answered at once with ``UNAVAILABLE`` (HTTP 503, gRPC ``UNAVAILABLE``): the server is busy
  with costly images, retry later;
- one that has not started decoding ``deadline_s`` after it arrived is answered ``UNAVAILABLE`` too, undecoded.

A decode that has started runs to its end (a thread cannot be stopped; the limits bound it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from ...data.image_header import jpeg_scans

# A 16 MP photograph decodes in about 0.1 s of a core: above that an image decodes in the lane (docs/triton.md,
# "Hostile requests").
DEFAULT_COSTLY_PIXELS = 16_000_000
DEFAULT_DECODE_DEADLINE_MS = 2000
DEFAULT_LANE_BACKLOG = 8
LANE_NICE = 10  # a CFS weight of 110 against 1024: the lane gets about a tenth of a core that others want


def decode_work(data, declared: tuple[int, int] | None) -> int:
    """An image's declared decoding work in pixel passes: width × height × a JPEG's scans (0 when the header is not
    one ``image_header`` reads: the decoder refuses it at once, or decodes under OpenCV's own pixel limit)."""
    if declared is None:
        return 0
    return declared[0] * declared[1] * (jpeg_scans(data) or 1)


class LaneBusy(Exception):
    """The lane could not take an image, or not start it in time: the server's state, not the image's fault."""


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LANE_NICE)  # this thread only, on Linux
    except (AttributeError, OSError):
        pass


class DecodeLane:
    """``submit(fn, *args)`` → a Future of ``fn(*args)``, run on the lane's threads; LaneBusy (in the Future) when
    the lane is full or the job did not start within ``deadline_s``."""

    def __init__(self, workers: int = 1, backlog: int = DEFAULT_LANE_BACKLOG,
                 deadline_s: float = DEFAULT_DECODE_DEADLINE_MS / 1e3):
        self.deadline_s, self.workers = deadline_s, workers
        self.slots = threading.BoundedSemaphore(workers + backlog)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="costly-decode", initializer=_lower_priority)

    def submit(self, fn: Callable, *args) -> Future:
        if not self.slots.acquire(blocking=False):
            return _failed(LaneBusy(f"the server is decoding costly images (its {self.workers} thread(s) for them "
                                    "are busy and their queue is full): retry later"))
        arrived = time.monotonic()
        try:
            return self.pool.submit(self._run, arrived, fn, *args)
        except BaseException:
            self.slots.release()
            raise

    def _run(self, arrived: float, fn: Callable, *args):
        try:
            waited = time.monotonic() - arrived
            if waited > self.deadline_s:
                raise LaneBusy(f"not started decoding within {self.deadline_s * 1e3:.0f} ms (waited "
                               f"{waited * 1e3:.0f} ms behind other costly images): retry later")
            return fn(*args)
        finally:
            self.slots.release()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _failed(error: Exception) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future
