"""The percentile calibration, which ModelOpt's ``quantize`` does not offer: symmetric ranges from a histogram of
|x| per tensor, built batch by batch (bounded memory) — the method of ONNX Runtime's PercentileCalibrater (2048
bins), computed here because ModelOpt's patches make ONNX Runtime's calibrator classes unusable beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class AbsHistogram:
    """A growing histogram of |x|: fixed bin width set by the first batch (max / bins); later larger
    values append bins of the same width; past ``max_bins`` pairs of bins merge (width doubles)."""

    def __init__(self, bins: int = 2048, max_bins: int = 2048 * 8):
        self.bins, self.max_bins = bins, max_bins
        self.width = 0.0
        self.counts = np.zeros(0, np.int64)
        self.zeros_before_width = 0  # all-zero batches seen before any nonzero value set the bin width

    def add(self, values: np.ndarray) -> None:
        a = np.abs(np.asarray(values, np.float32).reshape(-1))
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        top = float(a.max())
        if self.width == 0.0:
            if top == 0.0:
                self.zeros_before_width += a.size
                return
            self.width = top / self.bins
            self.counts = np.zeros(self.bins, np.int64)
            self.counts[0] = self.zeros_before_width
        need = int(np.floor(top / self.width)) + 1
        while need > self.max_bins:  # merge neighbours: same data, half the resolution
            if self.counts.size % 2:
                self.counts = np.append(self.counts, 0)
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.width *= 2
            need = int(np.floor(top / self.width)) + 1
        if need > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(need - self.counts.size, np.int64)])
        idx = np.minimum((a / self.width).astype(np.int64), self.counts.size - 1)
        self.counts += np.bincount(idx, minlength=self.counts.size)

    def threshold(self, percentile: float) -> float:
        """The upper edge of the bin where the cumulative share first reaches ``percentile`` %."""
        total = int(self.counts.sum())
        if self.width == 0.0 or total == 0:
            return 0.0
        cdf = np.cumsum(self.counts) / total
        i = int(np.searchsorted(cdf, percentile / 100.0))
        return (min(i, self.counts.size - 1) + 1) * self.width


def percentile_scales(fp32_onnx: Path, reader, tensors: list[str], percentile: float) -> dict[str, float]:
    """The scale of each of ``tensors`` of the FP32 model over the reader's batches: the bin edge below which
    ``percentile`` % of all its |x| lie, / 127."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(fp32_onnx))
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del model
    hists = {name: AbsHistogram() for name in tensors}
    while (batch := reader.get_next()) is not None:
        for name, value in zip(tensors, session.run(tensors, batch), strict=True):
            hists[name].add(value)
    return {name: float(np.float32(h.threshold(percentile) / 127.0)) for name, h in hists.items()}
