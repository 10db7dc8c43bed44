"""Deterministic natural-looking images for calibration and evaluation when no dataset is at hand.

No ImageNet can be downloaded where this project is developed and tested, yet INT8 calibration and the
accuracy checks need images whose statistics resemble photographs: smooth illumination, objects with edges,
texture, noise. :func:`make_image` paints such scenes from a seeded generator — a lit background gradient,
overlapping shapes with shading, stripes and blobs, sensor noise, a slight blur — and, when photographs are
given, mixes in random crops of them (rescaled, flipped, colour-jittered). Same seed, same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h + 1) / 2
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    # A soft light spot, as from a lamp or the sun.
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    r = rng.uniform(0.3, 1.0) * max(h, w)
    light = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return img * (0.6 + 0.5 * light[..., None])


def _paint_shapes(rng: np.random.Generator, img: np.ndarray) -> None:
    import cv2

    h, w = img.shape[:2]
    for _ in range(int(rng.integers(3, 12))):
        color = tuple(float(v) for v in rng.uniform(0, 255, 3))
        kind = int(rng.integers(0, 5))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.integers(max(4, min(h, w) // 16), max(8, min(h, w) // 2)))
        if kind == 0:
            cv2.circle(img, (cx, cy), size, color, -1, lineType=cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(img, (cx - size, cy - size // 2), (cx + size, cy + size // 2), color, -1)
        elif kind == 2:
            axes = (size, max(2, int(size * rng.uniform(0.2, 0.9))))
            cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
        elif kind == 3:
            pts = rng.integers([0, 0], [w, h], size=(int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], color, lineType=cv2.LINE_AA)
        else:  # stripes: texture with strong edges
            period = int(rng.integers(3, 16))
            x0, y0 = max(0, cx - size), max(0, cy - size)
            patch = img[y0:cy + size, x0:cx + size]
            if patch.size:
                stripes = (np.arange(patch.shape[1]) // period) % 2 == 0
                patch[:, stripes] = color


def _photo_crop(rng: np.random.Generator, photo: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    ph, pw = photo.shape[:2]
    scale = rng.uniform(0.35, 1.0)
    ch, cw = max(8, int(ph * scale)), max(8, int(pw * scale))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = cv2.resize(photo[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    gain = rng.uniform(0.7, 1.3, 3)  # colour and brightness jitter
    return crop * gain[None, None, :] + rng.uniform(-20, 20)


def make_image(rng: np.random.Generator, photos: Sequence[np.ndarray] = (),
               size_range: tuple[int, int] = (160, 420)) -> np.ndarray:
    """One BGR uint8 image of random size (each side in ``size_range``)."""
    import cv2

    h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
    if photos and rng.random() < 0.6:
        img = _photo_crop(rng, photos[int(rng.integers(len(photos)))], h, w)
        if rng.random() < 0.5:
            _paint_shapes(rng, img)
    else:
        img = _background(rng, h, w)
        _paint_shapes(rng, img)
    img = img + rng.normal(0, rng.uniform(1, 8), img.shape)  # sensor noise
    k = int(rng.choice([1, 3, 5]))
    if k > 1:
        img = cv2.GaussianBlur(img, (k, k), 0)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(directory: str | os.PathLike, n: int, seed: int = 0,
                 photos: Sequence[str | os.PathLike] = (), ext: str = ".jpg") -> list[Path]:
    """Write ``n`` images ``img_00000.jpg`` … into ``directory`` (created); returns their paths."""
    import cv2

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    sources = []
    for p in photos:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            sources.append(img)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = out / f"img_{i:05d}{ext}"
        if not cv2.imwrite(str(path), make_image(rng, sources)):
            raise OSError(f"could not write {path}")
        paths.append(path)
    return paths
