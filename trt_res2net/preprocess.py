"""PaddleClas's evaluation preprocessing (res2net_spec §9): the one spec and its CPU reference.

Every consumer — inference, calibration, evaluation, the ONNX metadata and the CUDA kernel — reads the
numbers from ``SPEC`` below, so there is exactly one place where they live.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PreprocessSpec:
    """Decode (cv2, BGR) → RGB → resize short side → centre crop → scale, mean/std → CHW."""

    resize_short: int = 256
    crop_size: int = 224
    interpolation: str = "cv2.INTER_LINEAR"  # PaddleClas ResizeImage, backend cv2; no antialiasing
    channel_order: str = "RGB"  # the network sees RGB; cv2 decodes BGR
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    layout: str = "NCHW"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """PaddleClas ResizeImage(resize_short): ``round`` is Python's (halves to even)."""
        scale = self.resize_short / min(width, height)
        return int(round(width * scale)), int(round(height * scale))

    def crop_offsets(self, width: int, height: int) -> tuple[int, int]:
        """PaddleClas CropImage: integer centre offsets (x0, y0) in the resized image."""
        return (width - self.crop_size) // 2, (height - self.crop_size) // 2


SPEC = PreprocessSpec()


def preprocess_bgr(image_bgr: np.ndarray, spec: PreprocessSpec = SPEC) -> np.ndarray:
    """A decoded 3-channel BGR uint8 image → float32 [3, crop, crop], exactly as PaddleClas evaluates."""
    import cv2

    h, w = image_bgr.shape[:2]
    new_w, new_h = spec.resized_size(w, h)
    resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    x0, y0 = spec.crop_offsets(new_w, new_h)
    crop = resized[y0 : y0 + spec.crop_size, x0 : x0 + spec.crop_size, ::-1]  # BGR → RGB
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    out = (crop.astype(np.float32) * np.float32(spec.scale) - mean) / std
    return np.ascontiguousarray(out.transpose(2, 0, 1))
