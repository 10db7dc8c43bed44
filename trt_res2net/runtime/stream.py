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
  4 s), counted, for up to ``reconnect_timeout`` seconds; the other sources go on meanwhile. One that does not
  answer when the run starts is waited for the same way ("waiting for …"). A file ends at its end (``loop``
  rewinds it).
- **Resolution changes.** OpenCV scales every frame to the size it found at opening; where a stream's timestamps
  restart (a new segment, an encoder restarted at another size), a live source is reopened so that its new size
  is read, and a file's event says that its later frames may be scaled.
- **Smoothing** (``smooth`` = N > 1) is *windowed*: a source's reported probabilities are the mean of its last N
  classified frames' probabilities (its own, whichever batches they were in), then top-k and ``threshold``.

Latency is measured per frame from the moment the capture returned it (decoded) to the moment its top-k was
ready, on the monotonic clock.

:func:`plan_streams` resolves the sources first (:class:`StreamPlan`); the runner's parts are in ``runtime/streams/``:
``capture`` (per source: opening, reading, pacing, reconnects), ``batching``, ``inference`` (the model, smoothing,
the threshold), ``results`` (:class:`StreamResult`, :class:`StreamSummary`) and ``control`` (what the threads share).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from ..core.errors import UserError
from ..data.recipe import FROM_MODEL, PreprocessOptions
from ..data.sources import Source, unique_names
from .classifier import Classifier
from .streams.batching import Batcher
from .streams.capture import SourceCapture, open_source, refuse
from .streams.control import END, RunControl, SourceState
from .streams.inference import BatchInference
from .streams.plan import PlannedSource, StreamOptions, StreamPlan, plan_streams
from .streams.results import SourceStats, StreamResult, StreamSummary

__all__ = ["PlannedSource", "SourceStats", "StreamOptions", "StreamPlan", "StreamResult", "StreamRunner",
           "StreamSummary", "open_streams", "plan_streams", "run_streams"]


class StreamRunner:
    """Classify frames from many sources with one model, batched. A context manager: entering opens every source
    (each that cannot be opened is reported; UserError when none can; a live one that does not answer yet is
    waited for by its capture thread, as a lost one is) and starts the threads — a capture per
    source (``streams.capture``), the batcher (``streams.batching``) and the inference (``streams.inference``);
    leaving (or ``close()``), also on Ctrl-C, stops them, joins every thread and releases every capture. Iterate it
    for :class:`StreamResult` s as they come; ``summary()`` any time.

    ``model``: a model file (``.onnx``, ``.engine``) or an open :class:`Classifier` (kept open at the end);
    ``sources``: URIs (``trt_res2net.data.sources.parse_source``), parsed ``Source`` s, or a :class:`StreamPlan`
    (whose options are then the run's); ``on_event``: called with each one-line event (a source that cannot be
    opened, lost, reconnected, gave up, a bad frame), from the runner's threads; the events are also kept in the
    summary.
    """

    def __init__(self, model, sources: Sequence | StreamPlan, options: StreamOptions | None = None, labels=None,
                 on_event: Callable[[str], None] | None = None, preprocess: PreprocessOptions = FROM_MODEL):
        self.plan = sources if isinstance(sources, StreamPlan) else plan_streams(sources, options or StreamOptions())
        self.options = options = self.plan.options
        self._own_classifier = not isinstance(model, Classifier)
        self.classifier = (Classifier(model, labels=labels, topk=options.topk, batch=options.batch,
                                      gpu_preprocess=options.gpu_preprocess, preprocess=preprocess)
                           if self._own_classifier else model)
        backend = self.classifier.backend
        self.batch = min(options.batch, backend.max_batch) if backend.max_batch else options.batch
        self.preprocessing = self.classifier.preprocessing
        self._control = RunControl(on_event)
        self._states = [SourceState(i, p.uri) for i, p in enumerate(self.plan.sources)]
        self._batcher = Batcher(self._states, self.batch, self.preprocessing, self._control,
                               self.classifier.spec)
        self._inference = BatchInference(self.classifier, options, self._states, self._batcher, self._control)
        self._threads: list[threading.Thread] = []
        self._started = self._closed = self._interrupted = False
        self._stop_signal: str | None = None

    def summary(self) -> StreamSummary:
        return StreamSummary([st.stats for st in self._states], self._control.seconds(), self.batch,
                             self.preprocessing, self._interrupted, list(self._control.events), self._stop_signal)

    @property
    def names(self) -> list[str]:
        """A file-name-safe name per source, unique among them (e.g. for one output video each)."""
        parsed = [st.source if st.source is not None else Source(st.uri, "", "", "", False, False,
                                                                     f"source{st.index}")
                  for st in self._states]
        return unique_names(parsed)

    # -- starting -------------------------------------------------------------------------------------

    def _open(self, st: SourceState) -> None:
        planned = self.plan.sources[st.index]
        if planned.source is not None:
            open_source(st, planned.source, self.options, self.batch)
        elif planned.refusal is not None:
            refuse(st, planned.refusal)

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
            if len(failed) == 1 and failed[0].error is not None:
                raise failed[0].error
            for st in failed:
                self._control.emit(str(st.error))
            raise UserError(f"none of the {len(failed)} sources could be opened")
        for st in failed:
            self._control.emit(str(st.error))
        self._start_threads()
        return self

    def _start_threads(self) -> None:
        self._control.t0 = time.monotonic()
        for st in self._states:
            if st.source is not None:
                st.thread = threading.Thread(target=SourceCapture(st, self.options, self._control).run,
                                             daemon=True, name=f"capture-{st.index}")
        self._threads = [st.thread for st in self._states if st.thread is not None]
        self._threads.append(threading.Thread(target=self._batcher.run, daemon=True, name="batcher"))
        self._threads.append(threading.Thread(target=self._inference.run, daemon=True, name="inference"))
        for t in self._threads:
            t.start()

    def __enter__(self) -> StreamRunner:
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):  # Ctrl-C, or a stop signal as one
            self._interrupted = True
            self._stop_signal = getattr(exc, "signal_name", None) or "SIGINT"
        self.close()

    # -- consuming and stopping -----------------------------------------------------------------------

    def __iter__(self) -> Iterator[StreamResult]:
        self.start()
        results = self._inference.results
        while True:
            try:
                item = results.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is END:
                break
            yield from item
        if self._control.error is not None:
            raise self._control.error
        self._control.t_end = self._control.t_end or time.monotonic()

    def close(self) -> None:
        """Stop every thread, wait for them, release every capture (and the classifier this runner opened)."""
        if self._closed:
            return
        self._closed = True
        control = self._control
        control.stop.set()
        with control.cond:
            control.cond.notify_all()
        if control.t_end is None and control.t0 is not None:
            control.t_end = time.monotonic()
        patience = self.options.open_timeout + self.options.read_timeout + 2.0
        for t in self._threads:
            t.join(timeout=patience if t.name.startswith("capture") else None)
            if t.is_alive():
                control.emit(f"{t.name}: did not stop within {patience:g} s (a capture blocked in OpenCV); left "
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


def run_streams(plan: StreamPlan, model: str | os.PathLike | Classifier, *, labels=None,
                on_event: Callable[[str], None] | None = None) -> StreamRunner:
    """The runner of ``plan`` (:func:`plan_streams`) on ``model``: a context manager whose entering opens the
    sources (see :class:`StreamRunner`)."""
    return StreamRunner(model, plan, labels=labels, on_event=on_event)


def open_streams(model: str | os.PathLike | Classifier, sources: Sequence | StreamPlan,
                 options: StreamOptions | None = None, labels=None,
                 on_event: Callable[[str], None] | None = None) -> StreamRunner:
    """Classify frames of one or many sources with one model, batched (docs/streams.md)::

        with open_streams("model.onnx", ["cam.mp4", "rtsp://10.0.0.5/live"], StreamOptions(batch=8)) as run:
            for r in run:                        # StreamResult: source, frame_index, latency_ms, topk, ...
                print(r.source, r.frame_index, r.topk[0]["label"])
        print(run.summary().format())

    ``sources`` may be a :class:`StreamPlan` (``plan_streams``: the sources resolved first). The sources are opened
    on entering the ``with`` block; leaving it (also by Ctrl-C or an exception) stops and joins every thread and
    releases every capture.
    """
    plan = sources if isinstance(sources, StreamPlan) else plan_streams(sources, options or StreamOptions())
    return run_streams(plan, model, labels=labels, on_event=on_event)
