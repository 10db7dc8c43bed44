"""Live video through the exact pipeline: many sources batched on one model (``infer.py SOURCE...``, docs/streams.md).

    capture threads (one per source) → a bounded queue per source → batcher (+ CPU preprocessing)
        → one batch prepared ahead → inference thread (backend, top-k) → results, in a bounded queue

- **Batches across sources.** Each batch takes the *newest* frame of each live source (a camera, a network
  stream) and, round-robin, the next frames of files and image folders, up to ``batch`` frames. A batch waits for
  more file frames until it is full or the files have ended; live frames are never waited for.
- **Live sources never queue up.** Their queue holds ``queue_size`` frames (1): a newer frame replaces an older
  one, and every replaced frame is counted as dropped, so a frame waits at most about one batch before it is
  taken and the capture-to-result latency stays near two batch times however slow the model is. Files and
  image folders lose no frame: their capture thread waits for room (``2 × batch`` frames).
- **Preprocessing** is the backend's GPU path (``classify_bgr``: resize, crop, normalise and top-k on the GPU)
  when it has one, else the CPU reference (``preprocess_bgr``), which runs in the batcher thread while the
  model runs on the previous batch.
- **Reconnects.** A network stream or camera that stops delivering is reopened with backoff (0.25 s doubling to
  4 s), counted, for up to ``reconnect_timeout`` seconds; the other sources go on meanwhile. A file ends at its
  end (``loop`` rewinds it).
- **Smoothing** (``smooth`` = N > 1) is *windowed*: a source's reported probabilities are the mean of its last N
  classified frames' probabilities (its own, whichever batches they were in), then top-k and ``threshold``.

Latency is measured per frame from the moment the capture returned it (decoded) to the moment its top-k was
ready, on the monotonic clock.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from ..core.errors import UserError
from ..data.postprocess import topk, topk_entries
from ..data.preprocess import DEFAULT_LIMITS, ImageLimits
from ..data.sources import FrameError, Source, open_capture, parse_source
from .classifier import Classifier

_END = object()
_LATENCY_WINDOW = 100_000  # latencies kept per source for the percentiles
_EVENTS_KEPT = 1000
_BACKOFF_FIRST, _BACKOFF_MAX = 0.25, 4.0


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
        if self.batch < 1 or self.topk < 1 or self.smooth < 1:
            raise UserError("batch, topk and smooth must be at least 1")
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"the threshold is a probability in [0, 1], got {self.threshold:g}")
        for name in ("reconnect_timeout", "open_timeout", "read_timeout", "realtime_fps"):
            if not getattr(self, name) > 0:
                raise UserError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name):g}")
        if self.queue_size < 0 or self.max_frames < 0:
            raise UserError("queue size and max frames must not be negative")


@dataclass(frozen=True, eq=False)
class StreamResult:
    """One classified frame: its source (as given, and its position among the sources), its index in that
    source (0, 1, ... in reading order, dropped frames included), when it was captured (``timestamp``, Unix
    seconds), its capture-to-result latency, its top-k (``[{"class_id", "label", "score"}]``, after smoothing and
    the threshold), the image file for image sources, and the frame itself when ``keep_frames``."""

    source: str
    source_index: int
    frame_index: int
    timestamp: float
    latency_ms: float
    topk: list[dict]
    preprocessing: str
    image: str | None = None
    frame_bgr: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The JSON Lines record (``infer.py --jsonl``)."""
        d = {"source": self.source, "frame": self.frame_index, "timestamp": round(self.timestamp, 6),
             "latency_ms": round(self.latency_ms, 3), "topk": self.topk, "preprocessing": self.preprocessing}
        if self.image is not None:
            d["image"] = self.image
        return d


@dataclass
class SourceStats:
    """What happened to one source. ``status``: ``running``, ``ended`` (its end), ``stopped`` (the runner was
    stopped), or why it failed (could not be opened, gave up reconnecting, ended early)."""

    uri: str
    kind: str = ""
    backend: str = ""
    live: bool = False
    fps: float = 0.0  # the source's own frame rate, when it states one
    read: int = 0
    classified: int = 0
    dropped: int = 0
    reconnects: int = 0
    errors: int = 0
    status: str = "running"
    failed: bool = False
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW), repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        lat = d.pop("latencies_ms")
        d.update(_percentiles(lat))
        return d


def _percentiles(latencies) -> dict:
    if not len(latencies):
        return {"latency_p50_ms": None, "latency_p99_ms": None}
    p50, p99 = np.percentile(np.fromiter(latencies, float), [50, 99])
    return {"latency_p50_ms": round(float(p50), 3), "latency_p99_ms": round(float(p99), 3)}


@dataclass
class StreamSummary:
    """Frames read, classified and dropped per source, reconnects, throughput and latency of a run."""

    sources: list[SourceStats]
    seconds: float
    batch: int
    preprocessing: str
    interrupted: bool = False
    events: list[str] = field(default_factory=list)

    @property
    def classified(self) -> int:
        return sum(s.classified for s in self.sources)

    @property
    def fps(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> bool:
        """A source could not be opened, gave up, ended early, or had unreadable frames (infer.py exits 1)."""
        return any(s.failed or s.errors for s in self.sources)

    def latency(self) -> dict:
        everything = [x for s in self.sources for x in s.latencies_ms]
        return _percentiles(everything)

    def to_dict(self) -> dict:
        return {"sources": [s.to_dict() for s in self.sources], "seconds": round(self.seconds, 3),
                "classified": self.classified, "frames_per_second": round(self.fps, 3), "batch": self.batch,
                "preprocessing": self.preprocessing, "interrupted": self.interrupted, **self.latency()}

    def format(self) -> str:
        width = max([len(s.uri) for s in self.sources] + [6])
        lines = [f"{'source':<{width}}  {'read':>7}  {'classified':>10}  {'dropped':>7}  {'reconnects':>10}  "
                 f"{'p50 ms':>8}  {'p99 ms':>8}  status"]
        for s in self.sources:
            lat = _percentiles(s.latencies_ms)
            p50 = "-" if lat["latency_p50_ms"] is None else f"{lat['latency_p50_ms']:.1f}"
            p99 = "-" if lat["latency_p99_ms"] is None else f"{lat['latency_p99_ms']:.1f}"
            lines.append(f"{s.uri:<{width}}  {s.read:>7}  {s.classified:>10}  {s.dropped:>7}  {s.reconnects:>10}  "
                         f"{p50:>8}  {p99:>8}  {s.status}")
        lat = self.latency()
        tail = (f"; latency p50 {lat['latency_p50_ms']:.1f} ms, p99 {lat['latency_p99_ms']:.1f} ms (capture to "
                "result)" if lat["latency_p50_ms"] is not None else "")
        lines.append(f"{self.classified} frames classified in {self.seconds:.1f} s: {self.fps:.1f} frames/s at "
                     f"batch {self.batch}, preprocessing on the {self.preprocessing.upper()}{tail}"
                     + ("; interrupted" if self.interrupted else ""))
        return "\n".join(lines)


@dataclass
class _Frame:
    source: int
    index: int
    image: np.ndarray
    t: float  # monotonic, when the capture returned it
    wall: float
    name: str | None


class _State:
    """One source's capture, queue and counters (the queue and counters are guarded by the runner's lock)."""

    def __init__(self, index: int, uri: str, stats: SourceStats):
        self.index = index
        self.uri = uri
        self.stats = stats
        self.source: Source | None = None
        self.cap = None
        self.live = False
        self.maxlen = 1
        self.queue: deque[_Frame] = deque()
        self.done = True
        self.next_index = 0
        self.thread: threading.Thread | None = None
        self.window: deque = deque()
        self.error: UserError | None = None


class StreamRunner:
    """Classify frames from many sources with one model, batched. A context manager: entering opens every source
    (each that cannot be opened is reported; UserError when none can) and starts the threads; leaving (or
    ``close()``), also on Ctrl-C, stops them, joins every thread and releases every capture. Iterate it for
    :class:`StreamResult` s as they come; ``summary()`` any time.

    ``model``: a model file (``.onnx``, ``.engine``) or an open :class:`Classifier` (kept open at the end);
    ``sources``: URIs (``trt_res2net.data.sources.parse_source``) or parsed ``Source`` s; ``on_event``: called
    with each one-line event (a source that cannot be opened, lost, reconnected, gave up, a bad frame), from the
    runner's threads; the events are also kept in the summary.
    """

    def __init__(self, model, sources: Sequence, options: StreamOptions = StreamOptions(), labels=None,
                 on_event: Callable[[str], None] | None = None):
        if not sources:
            raise UserError("no sources given")
        self.options = options
        self._own_classifier = not isinstance(model, Classifier)
        self.classifier = (Classifier(model, labels=labels, topk=options.topk, batch=options.batch,
                                      gpu_preprocess=options.gpu_preprocess)
                           if self._own_classifier else model)
        backend = self.classifier.backend
        self.batch = min(options.batch, backend.max_batch) if backend.max_batch else options.batch
        self.preprocessing = self.classifier.preprocessing
        self._on_event = on_event
        self._events: deque[str] = deque(maxlen=_EVENTS_KEPT)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._prepared: queue.Queue = queue.Queue()
        self._slot = threading.Semaphore(1)  # one batch prepared ahead of the one running
        self._results: queue.Queue = queue.Queue(maxsize=4)
        self._error: BaseException | None = None
        self._threads: list[threading.Thread] = []
        self._started = self._closed = self._interrupted = False
        self._t0 = self._t_end = None
        self._states = [_State(i, str(getattr(s, "uri", s)), SourceStats(str(getattr(s, "uri", s))))
                        for i, s in enumerate(sources)]
        self._given = list(sources)

    # -- events and summary ---------------------------------------------------------------------------

    def _emit(self, message: str) -> None:
        self._events.append(message)
        if self._on_event is not None:
            try:
                self._on_event(message)
            except Exception:  # noqa: BLE001 - a reporting callback must not stop a capture thread
                pass

    def summary(self) -> StreamSummary:
        end = self._t_end if self._t_end is not None else time.monotonic()
        seconds = end - self._t0 if self._t0 is not None else 0.0
        return StreamSummary([st.stats for st in self._states], seconds, self.batch, self.preprocessing,
                             self._interrupted, list(self._events))

    @property
    def names(self) -> list[str]:
        """A file-name-safe name per source, unique among them (e.g. for one output video each)."""
        from ..data.sources import unique_names

        parsed = [st.source if st.source is not None else Source(st.uri, "", "", "", False, False,
                                                                     f"source{st.index}")
                  for st in self._states]
        return unique_names(parsed)

    # -- starting -------------------------------------------------------------------------------------

    def _open(self, st: _State) -> None:
        o = self.options
        given = self._given[st.index]
        try:
            source = given if isinstance(given, Source) else parse_source(given, o.decoder, o.codec)
            st.stats.kind, st.stats.backend = source.kind, source.backend
            st.cap = open_capture(source, o.open_timeout, o.read_timeout, o.image_limits)
        except UserError as e:
            reason = str(e).removeprefix(f"{st.uri}: ")
            st.stats.status, st.stats.failed = f"could not be opened: {reason}", True
            st.error = e
            return
        st.source = source
        st.stats.fps = round(float(st.cap.fps), 3)
        paced = o.realtime and not source.live
        st.live = source.live or paced
        st.stats.live = st.live
        st.maxlen = o.queue_size or (1 if st.live else 2 * self.batch)
        st.done = False

    def start(self) -> StreamRunner:
        if self._started:
            return self
        self._started = True
        try:
            with ThreadPoolExecutor(min(8, len(self._states)), thread_name_prefix="open") as pool:
                list(pool.map(self._open, self._states))
        except BaseException:  # Ctrl-C while opening: release what was opened
            self._release_unstarted()
            self._close_classifier()
            raise
        failed = [st for st in self._states if st.source is None]
        if len(failed) == len(self._states):
            self._close_classifier()
            if len(failed) == 1:
                raise failed[0].error
            for st in failed:
                self._emit(str(st.error))
            raise UserError(f"none of the {len(failed)} sources could be opened")
        for st in failed:
            self._emit(str(st.error))
        self._t0 = time.monotonic()
        for st in self._states:
            if st.source is not None:
                st.thread = threading.Thread(target=self._capture_loop, args=(st,), daemon=True,
                                             name=f"capture-{st.index}")
        self._threads = [st.thread for st in self._states if st.thread is not None]
        self._threads.append(threading.Thread(target=self._batch_loop, daemon=True, name="batcher"))
        self._threads.append(threading.Thread(target=self._infer_loop, daemon=True, name="inference"))
        for t in self._threads:
            t.start()
        return self

    def __enter__(self) -> StreamRunner:
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is KeyboardInterrupt:
            self._interrupted = True
        self.close()

    # -- capture --------------------------------------------------------------------------------------

    def _capture_loop(self, st: _State) -> None:
        o = self.options
        source = st.source
        cap = st.cap
        period = 0.0
        if o.realtime and not source.live:
            period = 1.0 / (cap.fps if cap.fps > 0 else o.realtime_fps)
        paced_start, paced_n, this_pass, good_this_pass = None, 0, 0, 0
        try:
            while not self._stop.is_set():
                if o.max_frames and st.stats.read >= o.max_frames:
                    st.stats.status = "ended"
                    break
                try:
                    frame = cap.read()
                except FrameError as e:
                    with self._lock:
                        st.stats.errors += 1
                    st.next_index += 1
                    this_pass += 1
                    self._emit(f"{st.uri}: skipped frame {st.next_index - 1}: {e}")
                    continue
                if frame is None:
                    if self._stop.is_set():
                        break
                    if source.reconnect:
                        cap.release()
                        cap = st.cap = self._reconnect(st)
                        if cap is None:
                            break
                        continue
                    self._check_complete(st, cap, this_pass)
                    if o.loop and good_this_pass > 0 and cap.rewind():  # a source of bad frames only: no loop
                        this_pass = good_this_pass = 0
                        continue
                    if not st.stats.failed:
                        st.stats.status = "ended"
                    break
                now = time.monotonic()
                if period:
                    if paced_start is None:
                        paced_start = now
                    due = paced_start + paced_n * period
                    paced_n += 1
                    if due > now and self._stop.wait(due - now):
                        break
                    now = time.monotonic()
                item = _Frame(st.index, st.next_index, frame, now, time.time(),
                              getattr(cap, "image", None))
                st.next_index += 1
                this_pass += 1
                good_this_pass += 1
                with self._cond:
                    st.stats.read += 1
                    if st.live:
                        while len(st.queue) >= st.maxlen:
                            st.queue.popleft()
                            st.stats.dropped += 1
                    else:
                        while len(st.queue) >= st.maxlen and not self._stop.is_set():
                            self._cond.wait(0.1)
                    st.queue.append(item)
                    self._cond.notify_all()
        except Exception as e:  # noqa: BLE001 - reported as the source's status, the others go on
            st.stats.status, st.stats.failed = f"failed: {e}", True
            self._emit(f"{st.uri}: failed: {e}")
        finally:
            if cap is not None:
                cap.release()
            with self._cond:
                st.done = True
                if st.stats.status == "running":
                    st.stats.status = "stopped"
                self._cond.notify_all()

    def _check_complete(self, st: _State, cap, this_pass: int) -> None:
        """A file whose container announces more frames than could be decoded is truncated or corrupt."""
        expected = cap.frame_count  # exact in most containers, estimated from the duration in some: 1 % slack
        if st.source.kind == "video" and expected and expected - this_pass > max(1, expected // 100):
            st.stats.errors += 1
            st.stats.status = f"ended early: {this_pass} of the {expected} frames its header announces"
            st.stats.failed = True
            self._emit(f"{st.uri}: {st.stats.status} (truncated or corrupt)")

    def _reconnect(self, st: _State):
        """Reopen a lost stream with backoff; the new capture, or None (gave up, or stopping)."""
        o = self.options
        self._emit(f"{st.uri}: stream lost after {st.stats.read} frames; reconnecting "
                   f"(giving up after {o.reconnect_timeout:g} s)")
        deadline = time.monotonic() + o.reconnect_timeout
        delay = _BACKOFF_FIRST
        while not self._stop.is_set():
            try:
                cap = open_capture(st.source, o.open_timeout, o.read_timeout, o.image_limits)
            except UserError:
                cap = None
            if cap is not None:
                if self._stop.is_set():
                    cap.release()
                    return None
                with self._lock:
                    st.stats.reconnects += 1
                self._emit(f"{st.uri}: reconnected (reconnect {st.stats.reconnects})")
                return cap
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._stop.wait(min(delay, remaining)):
                return None
            delay = min(2 * delay, _BACKOFF_MAX)
        if self._stop.is_set():
            return None
        st.stats.status = f"gave up reconnecting after {o.reconnect_timeout:g} s"
        st.stats.failed = True
        self._emit(f"{st.uri}: {st.stats.status}")
        return None

    # -- batching and preprocessing -------------------------------------------------------------------

    def _gather(self, frames: list[_Frame], taken: set[int], start: int) -> None:
        """Fill ``frames`` round-robin from ``start``: the newest frame of each live source not yet in this
        batch (the older ones are dropped), the next frames of files."""
        n = len(self._states)
        progress = True
        while len(frames) < self.batch and progress:
            progress = False
            for j in range(n):
                if len(frames) >= self.batch:
                    return
                st = self._states[(start + j) % n]
                if not st.queue:
                    continue
                if st.live:
                    if st.index in taken:
                        continue
                    while len(st.queue) > 1:
                        st.queue.popleft()
                        st.stats.dropped += 1
                    taken.add(st.index)
                frames.append(st.queue.popleft())
                progress = True

    def _next_batch(self, start: int) -> list[_Frame] | None:
        with self._cond:
            while True:
                if self._stop.is_set():
                    return None
                if any(st.queue for st in self._states):
                    break
                if all(st.done for st in self._states):
                    return None
                self._cond.wait(0.1)
            frames: list[_Frame] = []
            taken: set[int] = set()
            self._gather(frames, taken, start)
            # Files: fill the batch while one of them can still deliver (throughput); live frames never wait.
            while (len(frames) < self.batch and not self._stop.is_set()
                   and any(not st.live and not st.done for st in self._states)):
                self._cond.wait(0.05)
                self._gather(frames, taken, start)
            self._cond.notify_all()  # room in the file queues
            return frames

    def _batch_loop(self) -> None:
        from ..data.preprocess import SPEC, ImageDecodeError, preprocess_bgr

        c = SPEC.crop_size
        start = 0
        try:
            while True:
                # Gather only once the inference thread has taken the previous batch: live frames are then at
                # most one batch old when their own batch starts.
                if not self._acquire_slot():
                    break
                frames = self._next_batch(start)
                if not frames:
                    break
                start = (start + 1) % len(self._states)
                if self.preprocessing == "gpu":
                    payload = [f.image for f in frames]
                else:
                    payload = np.empty((len(frames), 3, c, c), np.float32)
                    kept = []
                    for f in frames:
                        try:
                            preprocess_bgr(f.image, out=payload[len(kept)])
                            kept.append(f)
                        except ImageDecodeError as e:  # e.g. an absurd aspect ratio
                            with self._lock:
                                self._states[f.source].stats.errors += 1
                            self._emit(f"{self._states[f.source].uri}: skipped frame {f.index}: {e.reason}")
                    frames, payload = kept, payload[: len(kept)]
                    if not frames:
                        self._slot.release()
                        continue
                self._prepared.put((frames, payload))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._error = self._error or e
            self._stop.set()
        finally:
            self._prepared.put(_END)

    def _acquire_slot(self) -> bool:
        while not self._stop.is_set():
            if self._slot.acquire(timeout=0.1):
                return True
        return False

    def _put(self, q: queue.Queue, item, force: bool = False) -> bool:
        """Put, waiting for room while the runner runs; False when it stopped first. ``force`` makes room."""
        while True:
            if self._stop.is_set() and not force:
                return False
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if force and self._stop.is_set():
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass

    # -- inference ------------------------------------------------------------------------------------

    def _infer_loop(self) -> None:
        clf = self.classifier
        o = self.options
        k_out = min(o.topk, clf.num_classes)
        try:
            while True:
                try:
                    item = self._prepared.get(timeout=0.1)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    continue
                if item is _END:
                    break
                self._slot.release()
                frames, payload = item
                probs = ids = scores = None
                if self.preprocessing == "gpu":
                    k = clf.num_classes if o.smooth > 1 else k_out
                    top = clf.backend.classify_bgr(payload, k)
                    if o.smooth > 1:
                        probs = np.zeros((len(frames), clf.num_classes), np.float32)
                        np.put_along_axis(probs, top.ids.astype(np.int64), top.scores, axis=1)
                    else:
                        ids, scores = top.ids, top.scores
                else:
                    probs = clf.probabilities(clf.infer(payload))
                done = time.monotonic()
                results = []
                for row, f in enumerate(frames):
                    st = self._states[f.source]
                    if probs is not None:
                        p = probs[row]
                        if o.smooth > 1:
                            st.window.append(p)
                            if len(st.window) > o.smooth:
                                st.window.popleft()
                            p = np.mean(np.stack(st.window), axis=0)
                        r_ids, r_scores = topk(p, k_out)
                    else:
                        r_ids, r_scores = ids[row], scores[row]
                    entries = topk_entries(r_ids, r_scores, clf.labels)
                    if o.threshold > 0:
                        entries = [e for e in entries if e["score"] >= o.threshold]
                    latency = (done - f.t) * 1e3
                    with self._lock:
                        st.stats.classified += 1
                        st.stats.latencies_ms.append(latency)
                    results.append(StreamResult(st.uri, st.index, f.index, f.wall, latency, entries,
                                                self.preprocessing, f.name,
                                                f.image if o.keep_frames else None))
                self._t_end = done
                if not self._put(self._results, results):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._error = self._error or e
            self._stop.set()
        finally:
            self._put(self._results, _END, force=True)

    # -- consuming and stopping -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[StreamResult]:
        self.start()
        while True:
            try:
                item = self._results.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is _END:
                break
            yield from item
        if self._error is not None:
            raise self._error
        self._t_end = self._t_end or time.monotonic()

    def close(self) -> None:
        """Stop every thread, wait for them, release every capture (and the classifier this runner opened)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._t_end is None and self._t0 is not None:
            self._t_end = time.monotonic()
        patience = self.options.open_timeout + self.options.read_timeout + 2.0
        for t in self._threads:
            t.join(timeout=patience if t.name.startswith("capture") else None)
            if t.is_alive():
                self._emit(f"{t.name}: did not stop within {patience:g} s (a capture blocked in OpenCV); left "
                           "behind as a daemon thread")
        for st in self._states:
            if st.stats.status == "running":
                st.stats.status = "stopped"
        self._close_classifier()

    def _release_unstarted(self) -> None:
        for st in self._states:
            if st.cap is not None and st.thread is None:
                st.cap.release()

    def _close_classifier(self) -> None:
        if self._own_classifier:
            self.classifier.close()
            self._own_classifier = False


def open_streams(model: str | os.PathLike | Classifier, sources: Sequence, options: StreamOptions = StreamOptions(),
                 labels=None, on_event: Callable[[str], None] | None = None) -> StreamRunner:
    """Classify frames of one or many sources with one model, batched (docs/streams.md)::

        with open_streams("model.onnx", ["cam.mp4", "rtsp://10.0.0.5/live"], StreamOptions(batch=8)) as run:
            for r in run:                        # StreamResult: source, frame_index, latency_ms, topk, ...
                print(r.source, r.frame_index, r.topk[0]["label"])
        print(run.summary().format())

    The sources are opened on entering the ``with`` block; leaving it (also by Ctrl-C or an exception) stops and
    joins every thread and releases every capture.
    """
    return StreamRunner(model, sources, options, labels=labels, on_event=on_event)
