"""Batches across sources: the newest frame of each live source and, round-robin, the next frames of files, up to
the batch size; CPU preprocessing (when the backend has no GPU path) while the model runs on the previous batch."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

import numpy as np

from ...data.preprocess import SPEC, ImageDecodeError, PreprocessSpec, preprocess_bgr
from .control import END, Frame, RunControl, SourceState


class Batcher:
    """The batching thread (``run``): one batch prepared ahead of the one running, put on ``prepared`` as
    ``(frames, payload)`` — decoded images for GPU preprocessing, else the preprocessed float32 NCHW array."""

    def __init__(self, states: Sequence[SourceState], batch: int, preprocessing: str, control: RunControl,
                 spec: PreprocessSpec = SPEC):
        self.states, self.batch, self.preprocessing, self.control = list(states), batch, preprocessing, control
        self.spec = spec  # the model's preprocessing (the CPU reference's numbers)
        self.prepared: queue.Queue = queue.Queue()
        self.slot = threading.Semaphore(1)  # released by the inference thread when it takes a batch

    def run(self) -> None:
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
                start = (start + 1) % len(self.states)
                if self.preprocessing == "gpu":
                    self.prepared.put((frames, [f.image for f in frames]))
                    continue
                frames, array = self._preprocess(frames)
                if frames:
                    self.prepared.put((frames, array))
                else:
                    self.slot.release()
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self.control.fail(e)
        finally:
            self.prepared.put(END)

    def _preprocess(self, frames: list[Frame]) -> tuple[list[Frame], np.ndarray]:
        """The CPU reference preprocessing of each frame; a frame it refuses is counted and skipped."""
        payload = np.empty((len(frames), 3, *self.spec.crop_hw), np.float32)
        kept: list[Frame] = []
        for f in frames:
            try:
                preprocess_bgr(f.image, self.spec, out=payload[len(kept)])
                kept.append(f)
            except ImageDecodeError as e:  # e.g. an absurd aspect ratio
                st = self.states[f.source]
                with self.control.lock:
                    st.stats.errors += 1
                self.control.emit(f"{st.uri}: skipped frame {f.index}: {e.reason}")
        return kept, payload[: len(kept)]

    def _acquire_slot(self) -> bool:
        while not self.control.stop.is_set():
            if self.slot.acquire(timeout=0.1):
                return True
        return False

    def _gather(self, frames: list[Frame], taken: set[int], start: int) -> None:
        """Fill ``frames`` round-robin from ``start``: the newest frame of each live source not yet in this
        batch (the older ones are dropped), the next frames of files."""
        n = len(self.states)
        progress = True
        while len(frames) < self.batch and progress:
            progress = False
            for j in range(n):
                if len(frames) >= self.batch:
                    return
                st = self.states[(start + j) % n]
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

    def _next_batch(self, start: int) -> list[Frame] | None:
        control = self.control
        with control.cond:
            while True:
                if control.stop.is_set():
                    return None
                if any(st.queue for st in self.states):
                    break
                if all(st.done for st in self.states):
                    return None
                control.cond.wait(0.1)
            frames: list[Frame] = []
            taken: set[int] = set()
            self._gather(frames, taken, start)
            # Files: fill the batch while one of them can still deliver (throughput); live frames never wait.
            while (len(frames) < self.batch and not control.stop.is_set()
                   and any(not st.live and not st.done for st in self.states)):
                control.cond.wait(0.05)
                self._gather(frames, taken, start)
            control.cond.notify_all()  # room in the file queues
            return frames
