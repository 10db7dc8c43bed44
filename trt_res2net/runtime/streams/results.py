"""What a stream run reports: one :class:`StreamResult` per classified frame, :class:`SourceStats` per source, and
the :class:`StreamSummary` of the run."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

_LATENCY_WINDOW = 100_000  # latencies kept per source for the percentiles


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
        d.update(percentiles(lat))
        return d


def percentiles(latencies) -> dict:
    """``latency_p50_ms`` and ``latency_p99_ms`` of the latencies (None when there are none)."""
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
    stop_signal: str | None = None  # the signal that interrupted the run (SIGINT, SIGTERM, SIGHUP), when one did

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
        return percentiles(everything)

    def to_dict(self) -> dict:
        return {"sources": [s.to_dict() for s in self.sources], "seconds": round(self.seconds, 3),
                "classified": self.classified, "frames_per_second": round(self.fps, 3), "batch": self.batch,
                "preprocessing": self.preprocessing, "interrupted": self.interrupted, "stop_signal": self.stop_signal,
                **self.latency()}

    def format(self) -> str:
        width = max([len(s.uri) for s in self.sources] + [6])
        lines = [f"{'source':<{width}}  {'read':>7}  {'classified':>10}  {'dropped':>7}  {'reconnects':>10}  "
                 f"{'p50 ms':>8}  {'p99 ms':>8}  status"]
        for s in self.sources:
            lat = percentiles(s.latencies_ms)
            p50 = "-" if lat["latency_p50_ms"] is None else f"{lat['latency_p50_ms']:.1f}"
            p99 = "-" if lat["latency_p99_ms"] is None else f"{lat['latency_p99_ms']:.1f}"
            lines.append(f"{s.uri:<{width}}  {s.read:>7}  {s.classified:>10}  {s.dropped:>7}  {s.reconnects:>10}  "
                         f"{p50:>8}  {p99:>8}  {s.status}")
        lat = self.latency()
        tail = (f"; latency p50 {lat['latency_p50_ms']:.1f} ms, p99 {lat['latency_p99_ms']:.1f} ms (capture to "
                "result)" if lat["latency_p50_ms"] is not None else "")
        lines.append(f"{self.classified} frames classified in {self.seconds:.1f} s: {self.fps:.1f} frames/s at "
                     f"batch {self.batch}, preprocessing on the {self.preprocessing.upper()}{tail}"
                     + (f"; interrupted{f' ({self.stop_signal})' if self.stop_signal else ''}"
                        if self.interrupted else ""))
        return "\n".join(lines)
