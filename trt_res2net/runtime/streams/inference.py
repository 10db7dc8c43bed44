"""The inference thread: each prepared batch through the model (the classifier's GPU or CPU path), then per frame
the source's windowed smoothing, top-k and the threshold, as :class:`StreamResult` s."""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...data.postprocess import topk, topk_entries
from ..classifier import Classifier
from .batching import Batcher
from .control import END, Frame, RunControl, SourceState
from .results import StreamResult

if TYPE_CHECKING:
    from .plan import StreamOptions


class Smoother:
    """Windowed smoothing: a source's reported probabilities are the mean of its last ``n`` frames'."""

    def __init__(self, n: int, sources: int):
        self.n = n
        self._windows: list[deque[np.ndarray]] = [deque() for _ in range(sources)]

    def __call__(self, source: int, probabilities: np.ndarray) -> np.ndarray:
        window = self._windows[source]
        window.append(probabilities)
        if len(window) > self.n:
            window.popleft()
        return np.mean(np.stack(window), axis=0)


class BatchInference:
    """The inference thread (``run``): takes ``batcher``'s prepared batches, hands lists of results to
    ``results`` (a bounded queue) and updates each source's classified count and latencies."""

    def __init__(self, classifier: Classifier, options: StreamOptions, states: Sequence[SourceState],
                 batcher: Batcher, control: RunControl):
        self.classifier, self.options, self.states = classifier, options, list(states)
        self.batcher, self.control = batcher, control
        self.k = min(options.topk, classifier.num_classes)
        self.smoother = Smoother(options.smooth, len(self.states)) if options.smooth > 1 else None
        self.results: queue.Queue = queue.Queue(maxsize=4)

    def run(self) -> None:
        control = self.control
        try:
            while True:
                try:
                    item = self.batcher.prepared.get(timeout=0.1)
                except queue.Empty:
                    if control.stop.is_set():
                        break
                    continue
                if item is END:
                    break
                self.batcher.slot.release()
                results = self._classify(*item)
                if not control.put(self.results, results):
                    break
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            control.fail(e)
        finally:
            control.put(self.results, END, force=True)

    def _classify(self, frames: list[Frame], payload) -> list[StreamResult]:
        clf, o = self.classifier, self.options
        if self.smoother is not None:
            probs = clf.batch_probabilities(payload)
            rows = [topk(self.smoother(f.source, probs[row]), self.k) for row, f in enumerate(frames)]
        else:
            ids, scores = clf.classify_batch(payload, self.k)
            rows = list(zip(ids, scores, strict=True))
        done = time.monotonic()
        results = []
        for f, (r_ids, r_scores) in zip(frames, rows, strict=True):
            st = self.states[f.source]
            entries = topk_entries(r_ids, r_scores, clf.labels)
            if o.threshold > 0:
                entries = [e for e in entries if e["score"] >= o.threshold]
            latency = (done - f.t) * 1e3
            with self.control.lock:
                st.stats.classified += 1
                st.stats.latencies_ms.append(latency)
            results.append(StreamResult(st.uri, st.index, f.index, f.wall, latency, entries, clf.preprocessing,
                                        f.name, f.image if o.keep_frames else None))
        self.control.t_end = done
        return results
