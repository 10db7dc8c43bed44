"""The calibration images as ONNX Runtime's ``CalibrationDataReader``, which ModelOpt's ``quantize`` reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

CALIB_BATCH = 8  # images per ONNX Runtime calibration step (memory, not results: ranges merge per batch)


def make_reader(batches: Callable[[], Iterator[np.ndarray]], input_name: str = "input",
                on_batch: Callable[[int], None] | None = None):
    """An ONNX Runtime ``CalibrationDataReader`` over preprocessed batches (streamed, never all in memory).

    ``batches()`` returns a fresh iterator of float32 NCHW arrays; ``on_batch(n)`` is called after each
    batch is handed out (a progress bar). ``get_first`` peeks without consuming, as ModelOpt expects."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def rewind(self):
            self._it = batches()
            self._peeked = None

        def get_first(self):
            if self._peeked is None:
                self._peeked = next(self._it, None)
            return None if self._peeked is None else {input_name: self._peeked}

        def get_next(self):
            if self._peeked is not None:
                arr, self._peeked = self._peeked, None
            else:
                arr = next(self._it, None)
            if arr is None:
                return None
            if on_batch:
                on_batch(len(arr))
            return {input_name: arr}

    return _Reader()


def probe_image() -> np.ndarray:
    """A fixed, preprocessed-looking input (1×3×224×224) for runs whose ranges are replaced afterwards."""
    return np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)


def one_batch_reader(batch: np.ndarray):
    """A reader of one batch."""
    return make_reader(lambda: iter([batch]))
