"""Accuracy on labelled outputs and agreement between two models' outputs, and the labelled list they come from.

The list is PaddleClas's ``val_list.txt`` form, ``relative/path.jpg label`` per line. ``accuracy`` and
``compare_predictions`` work on output arrays (logits or probabilities — rankings are what count) and return counts
as well as fractions, so running totals (the meters) add up. Used by ``infer.py --eval`` (runtime.evaluate) and by
the FP16/INT8 accuracy report (precision.accuracy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from .postprocess import topk


def read_val_list(
    path: str | os.PathLike, data_root: str | os.PathLike | None = None
) -> list[tuple[Path, int]]:
    """``(image path, label)`` pairs; paths are relative to ``data_root`` (default: the list's folder).

    The label is the last field, so paths may contain spaces; blank lines and ``#`` comments are skipped.
    """
    p = Path(path)
    root = Path(data_root) if data_root is not None else p.parent
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{p}: no such list file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read the list ({e})") from None
    items = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or int(parts[1]) < 0:
            raise UserError(f"{p}:{number}: expected 'relative/path.jpg label', got {line[:80]!r}")
        items.append((root / parts[0], int(parts[1])))
    if not items:
        raise UserError(f"{p}: the list has no images")
    return items


def accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 5) -> dict:
    """Top-1 and top-k accuracy of [N, C] outputs against N integer labels."""
    labels = np.asarray(labels, np.int64).reshape(-1)
    n = labels.shape[0]
    if n == 0:
        return {"images": 0, "top1_correct": 0, f"top{k}_correct": 0, "top1": 0.0, f"top{k}": 0.0}
    ids, _ = topk(logits, k)
    hits = ids == labels[:, None]
    c1, ck = int(hits[:, 0].sum()), int(hits.any(axis=1).sum())
    return {"images": n, "top1_correct": c1, f"top{k}_correct": ck, "top1": c1 / n, f"top{k}": ck / n}


def compare_predictions(logits_a: np.ndarray, logits_b: np.ndarray, k: int = 5) -> dict:
    """How far model b's outputs agree with model a's on the same images.

    top1_agreement: share of images with the same top class; mean_top5_overlap: mean of
    |top-k(a) ∩ top-k(b)| / k; cosine_similarity: mean per-image cosine of the two output vectors;
    max_abs_diff: largest element difference.
    """
    a, b = np.asarray(logits_a, np.float64), np.asarray(logits_b, np.float64)
    if a.shape != b.shape:
        raise UserError(f"cannot compare outputs of shapes {a.shape} and {b.shape}")
    n = a.shape[0]
    if n == 0:
        zero = ("top5_overlap_sum", "cosine_sum", "top1_agreement", "mean_top5_overlap", "cosine_similarity")
        return {"images": 0, "top1_agree": 0, "max_abs_diff": 0.0, **dict.fromkeys(zero, 0.0)}
    k = min(k, a.shape[1])
    ia, _ = topk(a, k)
    ib, _ = topk(b, k)
    agree = int((ia[:, 0] == ib[:, 0]).sum())
    overlap = (ia[:, :, None] == ib[:, None, :]).any(axis=2).sum(axis=1) / k
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 1.0)
    return {
        "images": n,
        "top1_agree": agree,
        "top5_overlap_sum": float(overlap.sum()),
        "cosine_sum": float(cos.sum()),
        "top1_agreement": agree / n,
        "mean_top5_overlap": float(overlap.mean()),
        "cosine_similarity": float(cos.mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
    }


@dataclass
class AccuracyMeter:
    """Running top-1/top-5 over batches."""

    images: int = 0
    top1_correct: int = 0
    top5_correct: int = 0

    def update(self, logits: np.ndarray, labels: np.ndarray) -> None:
        r = accuracy(logits, labels)
        self.images += r["images"]
        self.top1_correct += r["top1_correct"]
        self.top5_correct += r["top5_correct"]

    @property
    def top1(self) -> float:
        return self.top1_correct / self.images if self.images else 0.0

    @property
    def top5(self) -> float:
        return self.top5_correct / self.images if self.images else 0.0

    def summary(self) -> dict:
        return {"images": self.images, "top1": self.top1, "top5": self.top5,
                "top1_correct": self.top1_correct, "top5_correct": self.top5_correct}


@dataclass
class AgreementMeter:
    """Running agreement of one model with a reference model."""

    images: int = 0
    top1_agree: int = 0
    top5_overlap_sum: float = 0.0
    cosine_sum: float = 0.0
    max_abs_diff: float = 0.0

    def update(self, logits_ref: np.ndarray, logits: np.ndarray) -> None:
        r = compare_predictions(logits_ref, logits)
        self.images += r["images"]
        self.top1_agree += r["top1_agree"]
        self.top5_overlap_sum += r["top5_overlap_sum"]
        self.cosine_sum += r["cosine_sum"]
        self.max_abs_diff = max(self.max_abs_diff, r["max_abs_diff"])

    @property
    def top1_agreement(self) -> float:
        return self.top1_agree / self.images if self.images else 0.0

    def summary(self) -> dict:
        n = self.images or 1
        return {"images": self.images, "top1_agreement": self.top1_agreement,
                "mean_top5_overlap": self.top5_overlap_sum / n, "cosine_similarity": self.cosine_sum / n,
                "max_abs_diff": self.max_abs_diff}
