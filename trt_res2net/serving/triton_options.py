"""The Triton repository's serving settings (:class:`TritonOptions`) and their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..data.preprocess import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from .triton_models.decode_lane import DEFAULT_COSTLY_PIXELS, DEFAULT_DECODE_DEADLINE_MS

DEFAULT_MAX_BATCH = 32
# With no delay a busy instance still gets batches (the requests that queued while it ran), and an idle one
# starts at once; a delay only adds latency at low load (docs/triton.md, "Batching and the queue delay").
DEFAULT_QUEUE_DELAY_US = 0
DEFAULT_QUEUE_TIMEOUT_MS = 5000
QUEUE_SIZE_PER_BATCH = 4  # default max_queue_size: this many full batches per model
# Two decoding instances take side by side the requests a finished batch sends back at once; more only add
# processes (docs/triton.md).
DEFAULT_PREPROCESS_INSTANCES = 2
DEFAULT_TOPK = 5
MAX_QUEUE_DELAY_US = 10_000_000


@dataclass(frozen=True)
class TritonOptions:
    """The repository's serving settings.

    ``max_batch``: max_batch_size of the ONNX/Python models and steps (None: the engine's max batch, else
    32); ``queue_delay_us``: how long a model waits to fill a batch; ``instances``: instances of each classifier
    and of the pipeline model (per GPU for the plan); ``topk``: classes the image models return; ``labels``: a
    labels file (infer.py's formats; None: ImageNet's for 1000 classes, else the ids); ``preprocess_instances``:
    instances of the preprocessing (decoding) model; ``intra_op_threads``: ONNX Runtime threads per instance (0:
    the serving machine's cores ÷ ``instances``, so that instances × threads ≤ cores); ``max_queue_size``:
    requests each model queues before rejecting more (None: ``QUEUE_SIZE_PER_BATCH`` × its max_batch_size);
    ``queue_timeout_ms``: a request queued longer is rejected (0: never); ``max_image_pixels`` /
    ``max_image_bytes``: the largest image the preprocessing decodes (data/preprocess.py's defaults);
    ``costly_image_pixels``: a request declaring more decoding work (pixels × a JPEG's scans) decodes in its own
    lane, and one the lane has not started ``decode_deadline_ms`` after it came is answered 503
    (serving/triton_models/decode_lane.py)."""

    max_batch: int | None = None
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    topk: int = DEFAULT_TOPK
    labels: Path | None = None
    preprocess_instances: int = DEFAULT_PREPROCESS_INSTANCES
    intra_op_threads: int = 0
    max_queue_size: int | None = None
    queue_timeout_ms: int = DEFAULT_QUEUE_TIMEOUT_MS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    costly_image_pixels: int = DEFAULT_COSTLY_PIXELS
    decode_deadline_ms: int = DEFAULT_DECODE_DEADLINE_MS

    def __post_init__(self):
        if self.labels is not None:
            object.__setattr__(self, "labels", Path(self.labels))
        if not 0 <= self.queue_delay_us <= MAX_QUEUE_DELAY_US or self.instances < 1 or self.topk < 1:
            raise UserError(f"TritonOptions.queue_delay_us must be 0..{MAX_QUEUE_DELAY_US} µs, "
                            "TritonOptions.instances and TritonOptions.topk ≥ 1")
        if self.max_batch is not None and self.max_batch < 1:
            raise UserError(f"TritonOptions.max_batch must be ≥ 1, not {self.max_batch}")
        for name, low in (("preprocess_instances", 1), ("intra_op_threads", 0), ("max_queue_size", 1),
                          ("queue_timeout_ms", 0), ("max_image_pixels", 1), ("max_image_bytes", 1),
                          ("costly_image_pixels", 1), ("decode_deadline_ms", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise UserError(f"TritonOptions.{name} must be ≥ {low}, not {value}")

    def queue_size(self, max_batch: int) -> int:
        """Requests a model with this max_batch_size queues before rejecting more."""
        return self.max_queue_size or QUEUE_SIZE_PER_BATCH * max_batch
