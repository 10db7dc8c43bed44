"""The evaluation recipe's numbers (docs/preprocessing.md): one frozen ``PreprocessSpec`` per model input size.

``SPEC`` is PaddleClas's recipe for the 224×224 Res2Nets: short side resized to 256, centre crop 224×224, ImageNet
mean and std, RGB. Another input size follows the same recipe at its own scale (``spec_for_input``): the crop is the
model's H×W and the short side is resized to the crop's larger side ÷ 0.875 (timm's ``crop_pct`` and PaddleClas's
``ResizeImage(resize_short)`` + ``CropImage(size)`` are this shape), so that the crop always fits.

Every consumer — the CPU path, calibration, the CUDA kernel, the served models, the manifests — takes the spec a
model was given (``data.recipe`` decides it), never a second copy of these numbers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields

from ..core.errors import UserError
from ..core.lazy import lazy_import

np = lazy_import("numpy")

# The recipe's crop ÷ resized short side: 224 / 256. An integer ratio (7/8), so that sizes are exact.
CROP_RATIO = (7, 8)


@dataclass(frozen=True)
class PreprocessSpec:
    """Decode (cv2, BGR) → RGB → resize short side → centre crop → scale, mean/std → CHW.

    ``crop_size`` is the crop's height, and its width unless ``crop_width`` says otherwise (a non-square input);
    ``crop_hw`` is the pair."""

    resize_short: int = 256
    crop_size: int = 224
    interpolation: str = "cv2.INTER_LINEAR"  # PaddleClas ResizeImage, backend cv2; no antialiasing
    channel_order: str = "RGB"  # the network sees RGB; cv2 decodes BGR
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    layout: str = "NCHW"
    crop_width: int | None = None  # None: square (left out of the dict, so a square spec's hash is what it was)

    # What the CPU path, the CUDA kernel and the served models implement: the spec records these (they are part of
    # its hash) but cannot change them.
    SUPPORTED = {"interpolation": ("cv2.INTER_LINEAR",), "channel_order": ("RGB",), "layout": ("NCHW",)}

    def __post_init__(self) -> None:
        for name, supported in self.SUPPORTED.items():
            if getattr(self, name) not in supported:
                raise ValueError(f"PreprocessSpec.{name} {getattr(self, name)!r}: the preprocessing implements "
                                 f"{' and '.join(supported)} only")
        if self.crop_width == self.crop_size:
            object.__setattr__(self, "crop_width", None)
        h, w = self.crop_hw
        if h < 1 or w < 1 or self.resize_short < max(h, w):
            raise UserError(f"the preprocessing's crop {h}×{w} must be at least 1 pixel and fit the short side "
                            f"resized to {self.resize_short}")

    @property
    def crop_hw(self) -> tuple[int, int]:
        return self.crop_size, self.crop_width or self.crop_size

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.crop_width is None:
            del d["crop_width"]
        return d

    @classmethod
    def from_dict(cls, data: dict, where: str) -> PreprocessSpec:
        """A spec as ``to_dict`` wrote it; UserError naming ``where`` for anything else."""
        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or not set(data) <= known:
            extra = sorted(set(data) - known) if isinstance(data, dict) else type(data).__name__
            raise UserError(f"{where}: not a preprocessing spec (unknown {extra})")
        try:
            values = {k: tuple(v) if k in ("mean", "std") else v for k, v in data.items()}
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise UserError(f"{where}: not a preprocessing spec ({e})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def describe(self) -> str:
        """One line for people: the sizes, the normalisation, the channel order."""
        h, w = self.crop_hw
        mean = ", ".join(f"{m:g}" for m in self.mean)
        std = ", ".join(f"{s:g}" for s in self.std)
        return (f"short side resized to {self.resize_short}, centre crop {h}×{w} (H×W), scale {self.scale:.6g}, "
                f"mean [{mean}], std [{std}], {self.channel_order}")

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """PaddleClas ResizeImage(resize_short): ``round`` is Python's (halves to even)."""
        scale = self.resize_short / min(width, height)
        return int(round(width * scale)), int(round(height * scale))

    def crop_offsets(self, width: int, height: int) -> tuple[int, int]:
        """PaddleClas CropImage: integer centre offsets (x0, y0) in the resized image."""
        h, w = self.crop_hw
        return (width - w) // 2, (height - h) // 2

    def normalization_table(self) -> np.ndarray:
        """float32 [3, 256]: row c, column x is what the recipe gives 8-bit value x of RGB channel c.

        Computed with the recipe's own float32 operations, ``(float32(x) * float32(scale) - mean) / std``,
        so a lookup in this table is exact. The CUDA kernel can use it too.
        """
        return normalization_table(self)

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 per-channel (a, b): ``x * a + b`` is the recipe fused (equal up to float32 rounding)."""
        std = np.asarray(self.std, np.float64)
        a = self.scale / std
        b = -np.asarray(self.mean, np.float64) / std
        return a.astype(np.float32), b.astype(np.float32)


SPEC = PreprocessSpec()


def resize_for_crop(height: int, width: int) -> int:
    """The recipe's short side for a crop of height × width: the larger side ÷ 0.875, rounded down (224 → 256,
    288 → 329), as timm's ``crop_pct`` sizes it."""
    num, den = CROP_RATIO
    return max(height, width) * den // num


def spec_for_input(height: int, width: int, resize_short: int | None = None) -> PreprocessSpec:
    """The recipe at an input of height × width (``SPEC`` itself at 224×224)."""
    return PreprocessSpec(resize_short=resize_short or resize_for_crop(height, width), crop_size=height,
                          crop_width=width)


def normalization_table(spec: PreprocessSpec) -> np.ndarray:
    cached = _TABLES.get(spec)
    if cached is None:
        x = np.arange(256, dtype=np.float32)[:, None]
        mean = np.asarray(spec.mean, np.float32)
        std = np.asarray(spec.std, np.float32)
        cached = np.ascontiguousarray(((x * np.float32(spec.scale) - mean) / std).T)  # [3 (RGB), 256]
        cached.flags.writeable = False
        _TABLES[spec] = cached
    return cached


_TABLES: dict[PreprocessSpec, np.ndarray] = {}
