"""Latency statistics of a benchmark: :class:`LatencyStats` of samples in milliseconds, and per batch size the
:class:`BatchResult` (GPU compute and end to end, the first run apart, and whether the figures are stable enough to
compare)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CV_WARN_THRESHOLD = 0.025  # a coefficient of variation above it: the figures are not stable enough to compare


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latency samples in milliseconds."""

    count: int
    mean: float
    std: float  # sample standard deviation (ddof=1; 0 for one sample)
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    @property
    def cv(self) -> float:
        """Coefficient of variation, std / mean."""
        return self.std / self.mean if self.mean > 0 else 0.0

    def to_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in _STATS_KEYS}, "cv": self.cv}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyStats:
        """``to_dict``'s form back (``cv`` is derived)."""
        return cls(int(data["count"]), *(float(data[k]) for k in _STATS_KEYS[1:]))


_STATS_KEYS = ("count", "mean", "std", "min", "p50", "p90", "p99", "max")


def latency_stats(samples_ms) -> LatencyStats:
    x = np.asarray(list(samples_ms), dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])  # linear interpolation between order statistics
    return LatencyStats(
        count=int(x.size),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        min=float(x.min()),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        max=float(x.max()),
    )


@dataclass(frozen=True)
class BatchResult:
    batch: int
    gpu_compute: LatencyStats
    end_to_end: LatencyStats
    first_run_ms: float | None = None  # the first, lazily initialising (TensorRT-RTX: compiling) run

    @property
    def throughput(self) -> float:
        """End-to-end images per second."""
        return self.batch * 1000.0 / self.end_to_end.mean

    @property
    def gpu_throughput(self) -> float:
        """Images per second of the engine alone (GPU compute)."""
        return self.batch * 1000.0 / self.gpu_compute.mean

    def warnings(self, threshold: float = CV_WARN_THRESHOLD, on_cpu: bool = False) -> list[str]:
        """``on_cpu``: a CPU model's (its compute is the model's run on the CPU)."""
        out = []
        device = "CPU" if on_cpu else "GPU"
        for label, stats in ((f"{device} compute", self.gpu_compute), ("end-to-end", self.end_to_end)):
            if stats.cv > threshold:
                out.append(
                    f"batch {self.batch}: {label} latency varies too much to compare (CV {stats.cv:.1%} > "
                    f"{threshold:.1%}); stop other {device} work, lock clocks or raise BenchmarkOptions.iterations"
                )
        return out

    def to_dict(self, threshold: float = CV_WARN_THRESHOLD, on_cpu: bool = False) -> dict:
        return {
            "batch": self.batch,
            "first_run_ms": self.first_run_ms,
            "gpu_compute_ms": self.gpu_compute.to_dict(),
            "end_to_end_ms": self.end_to_end.to_dict(),
            "throughput_images_per_s": self.throughput,
            "gpu_throughput_images_per_s": self.gpu_throughput,
            "warnings": self.warnings(threshold, on_cpu),
        }

    @classmethod
    def from_dict(cls, data: dict) -> BatchResult:
        """``to_dict``'s form back (throughputs and warnings are derived)."""
        first = data["first_run_ms"]
        return cls(int(data["batch"]), LatencyStats.from_dict(data["gpu_compute_ms"]),
                   LatencyStats.from_dict(data["end_to_end_ms"]), None if first is None else float(first))
