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


def fit_classifier_head(features: np.ndarray, num_classes: int, seed: int = 0, sharpness: float = 12.0,
                        max_active: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A linear head (``out.weight`` [C, num_classes], ``out.bias``) that makes a random-weight network a
    *confident* classifier of images like ``features`` ([N, C] pooled features of the FP32 network).

    A random head gives nearly tied logits, so any perturbation flips the top-1 class and agreement figures
    measure tie-breaking, not precision. Here the centred, normalised features are clustered (seeded
    spherical k-means) into K = min(num_classes, N // 4, max_active) clusters; class k scores the cosine to
    centroid k, scaled by ``sharpness``; the remaining classes get random weights giving logits of about
    N(−2, 1) — a varied background below the winners, as in a trained network, so that output-vector
    metrics (cosine) are not dominated by a constant. Deterministic for given ``features`` and ``seed``."""
    f = np.asarray(features, np.float64)
    n, c = f.shape
    k = max(1, min(num_classes, n // 4, max_active or num_classes))
    mu = f.mean(axis=0)
    centred = f - mu
    norms = np.linalg.norm(centred, axis=1)
    scale = float(np.median(norms)) or 1.0
    u = centred / np.maximum(norms, 1e-12)[:, None]
    rng = np.random.default_rng(seed)
    centroids = [u[int(rng.integers(n))]]
    for _ in range(1, k):  # k-means++ seeding on cosine distance
        d = np.clip(1 - np.max(u @ np.array(centroids).T, axis=1), 0, None)
        p = d / d.sum() if d.sum() > 0 else np.full(n, 1 / n)
        centroids.append(u[int(rng.choice(n, p=p))])
    cent = np.array(centroids)
    for _ in range(25):
        assign = np.argmax(u @ cent.T, axis=1)
        for j in range(k):
            members = u[assign == j]
            if len(members):
                v = members.sum(axis=0)
                cent[j] = v / max(np.linalg.norm(v), 1e-12)
    weight = rng.standard_normal((c, num_classes)) / scale
    weight[:, :k] = sharpness * cent.T / scale
    bias = -(mu @ weight)
    bias[k:] -= 2.0
    return weight.astype(np.float32), bias.astype(np.float32)


def realistic_random_model(spec, images_nchw: np.ndarray, path: str | os.PathLike, *, seed: int = 0,
                           head_images: np.ndarray | None = None, max_active_classes: int | None = None,
                           head_sharpness: float = 12.0, metadata: dict | None = None) -> Path:
    """Export ``spec`` with random weights made realistic for precision tests: BatchNorm statistics fitted to
    ``images_nchw`` (preprocessed real-looking images, trt_res2net.model.reference.fit_bn_statistics) so that
    activation ranges look like a trained network's, and a classifier head fitted to the features of
    ``head_images`` (default: the same images) so that predictions are confident (:func:`fit_classifier_head`).
    Returns the FP32 ONNX path."""
    import onnx
    import onnxruntime as ort

    from ..model import reference
    from ..model import weights as W
    from ..model.onnx_export import export_onnx

    path = Path(path)
    state = reference.fit_bn_statistics(spec, W.random_weights(spec, seed=seed), images_nchw)
    meta = {"weights": f"random (seed {seed}), BN statistics fitted to images, head fitted to their features",
            **(metadata or {})}
    export_onnx(spec, state, path, metadata=meta)
    model = onnx.load(str(path))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info("head.flatten"))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del model
    imgs = images_nchw if head_images is None else head_images
    feats = np.concatenate([session.run(["head.flatten"], {"input": imgs[i : i + 16]})[0]
                            for i in range(0, len(imgs), 16)])
    state["out.weight"], state["out.bias"] = fit_classifier_head(feats, spec.num_classes, seed=seed,
                                                                 sharpness=head_sharpness,
                                                                 max_active=max_active_classes)
    return export_onnx(spec, state, path, metadata=meta)
