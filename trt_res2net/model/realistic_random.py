"""Random-weight Res2Nets that behave like trained ones, for precision tests and benchmarks without weights.

Random weights with BatchNorm statistics fitted to real-looking images (``reference.fit_bn_statistics``) give the
activation ranges a trained network has, and a classifier head fitted to their features gives confident
predictions: what INT8 calibration and the FP16/INT8 accuracy checks need to mean something.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


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

    from . import reference
    from . import weights as W
    from .onnx_export import write_onnx

    path = Path(path)
    state = reference.fit_bn_statistics(spec, W.random_weights(spec, seed=seed), images_nchw)
    meta = {"weights": f"random (seed {seed}), BN statistics fitted to images, head fitted to their features",
            **(metadata or {})}
    write_onnx(spec, state, path, metadata=meta)
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
    return write_onnx(spec, state, path, metadata=meta)
