"""Postprocessing: softmax, top-k with class ids, labels and scores, and a readable table."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np

from ..core.errors import UserError

IMAGENET_CLASSES = 1000
_PACKAGE_LABELS = "imagenet1k_label_list.txt"


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float32 (computed in float64 for fp16 inputs' sake)."""
    x = np.asarray(logits, np.float64)
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x.astype(np.float32)


def is_probability(output_batch: np.ndarray, atol: float = 5e-3) -> bool:
    """Heuristic: every row non-negative and summing to 1 (within ``atol``, which allows fp16 outputs)."""
    x = np.asarray(output_batch, np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2 or not np.isfinite(x).all():
        return False
    return bool((x >= -1e-6).all() and np.allclose(x.sum(axis=1), 1.0, rtol=0, atol=atol))


def topk(scores: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Per row the ``k`` highest scores, best first (ties: lower class id first).

    ``scores`` is [N, C] (or [C]); returns (ids int64 [N, k'], scores [N, k']) with k' = min(k, C).
    """
    s = np.asarray(scores)
    squeeze = s.ndim == 1
    if squeeze:
        s = s[None]
    k = max(1, min(int(k), s.shape[1]))
    ids = np.argsort(-s, axis=1, kind="stable")[:, :k].astype(np.int64)  # stable: ties keep id order
    vals = np.take_along_axis(s, ids, axis=1)
    return (ids[0], vals[0]) if squeeze else (ids, vals)


def _parse_label_lines(lines: list[str], source: str) -> list[str] | dict[int, str]:
    """PaddleClas's ``<id> <label>`` lines (a dict), or plain one-label-per-line files (a list)."""
    lines = [ln.rstrip("\r\n") for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise UserError(f"{source}: the labels file is empty")
    first = [ln.split(maxsplit=1)[0] if ln.strip() else "" for ln in lines]
    if all(tok.isdigit() for tok in first):
        table: dict[int, str] = {}
        for number, ln in enumerate(lines, 1):
            parts = ln.strip().split(maxsplit=1)
            cid = int(parts[0])
            if cid in table:
                raise UserError(f"{source}:{number}: class id {cid} appears twice")
            table[cid] = parts[1].strip() if len(parts) > 1 else str(cid)
        return table
    return [ln.strip() for ln in lines]


def load_labels(
    path: str | os.PathLike | None = None, num_classes: int | None = IMAGENET_CLASSES
) -> list[str]:
    """Class names, index = class id.

    ``path`` (``--labels``): PaddleClas's ``<id> <label>`` format or one label per line. Without it,
    the ImageNet-1k labels shipped with the package when there are 1000 classes, else the ids as text.
    A file whose classes do not match ``num_classes`` is a UserError (it belongs to another model).
    """
    if path is None:
        if num_classes is not None and num_classes != IMAGENET_CLASSES:
            return [str(i) for i in range(num_classes)]
        text = resources.files(__package__).joinpath(_PACKAGE_LABELS).read_text(encoding="utf-8")
        source = _PACKAGE_LABELS
    else:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise UserError(f"{p}: labels file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{p}: cannot read labels ({e})") from None
        source = str(p)
    parsed = _parse_label_lines(text.splitlines(), source)
    if isinstance(parsed, dict):
        n = max(parsed) + 1
        if num_classes is not None and n > num_classes:
            raise UserError(f"{source}: labels go up to class {n - 1}; the model has {num_classes} classes")
        n = num_classes if num_classes is not None else n
        labels = [parsed.get(i, str(i)) for i in range(n)]
        missing = n - len(parsed)
        if missing:
            raise UserError(f"{source}: {missing} of the model's {n} classes have no label")
        return labels
    if num_classes is not None and len(parsed) != num_classes:
        raise UserError(f"{source}: {len(parsed)} labels, but the model has {num_classes} classes")
    return parsed


def topk_entries(ids: np.ndarray, scores: np.ndarray, labels: list[str] | None) -> list[dict]:
    """One row's top-k as the JSON form ``[{"class_id", "label", "score"}, ...]``."""
    out = []
    for cid, score in zip(ids.tolist(), scores.tolist(), strict=True):
        label = labels[cid] if labels is not None and cid < len(labels) else str(cid)
        out.append({"class_id": int(cid), "label": label, "score": round(float(score), 6)})
    return out


def format_topk(entries: list[dict], title: str | None = None) -> str:
    """A readable table of one image's top-k entries (the JSON form)."""
    lines = [title] if title else []
    width = max([len(str(e["class_id"])) for e in entries] + [5])
    lines.append(f"  {'rank':>4}  {'class':>{width}}  {'score':>8}  label")
    for rank, e in enumerate(entries, 1):
        lines.append(f"  {rank:>4}  {e['class_id']:>{width}}  {e['score']:>8.5f}  {e['label']}")
    return "\n".join(lines)
