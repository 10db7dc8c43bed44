"""Evaluation of model files on a labelled image list (``infer.py --eval``): top-1/top-5 accuracy, and agreement
between models.

``evaluate`` runs the models over the list with the shared ImageBatcher, decoding each image once for all models;
the metrics themselves are ``trt_res2net.data.metrics``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..data.metrics import AccuracyMeter, AgreementMeter, read_val_list
from ..data.recipe import FROM_MODEL, PreprocessOptions


@dataclass
class Evaluation:
    """What ``evaluate`` returns; ``to_dict()`` is the JSON summary."""

    list_path: str
    data_root: str
    listed: int
    models: list[dict] = field(default_factory=list)
    agreement: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        evaluated = self.models[0]["images"] if self.models else 0
        return {"list": self.list_path, "data_root": self.data_root, "listed": self.listed,
                "evaluated": evaluated, "failed": len(self.failures), "models": self.models,
                "agreement": self.agreement, "failures": self.failures}

    def format(self) -> str:
        d = self.to_dict()
        lines = [f"evaluated {d['evaluated']} of {d['listed']} images ({d['failed']} unreadable)"]
        width = max(len(m["model"]) for m in self.models)
        lines.append(f"  {'model':<{width}}  {'top-1':>7}  {'top-5':>7}")
        for m in self.models:
            lines.append(f"  {m['model']:<{width}}  {100 * m['top1']:>6.2f}%  {100 * m['top5']:>6.2f}%")
        for a in self.agreement:
            lines.append(
                f"  {a['model']} vs {a['reference']}: top-1 agreement {100 * a['top1_agreement']:.2f}%, "
                f"mean top-5 overlap {100 * a['mean_top5_overlap']:.2f}%, "
                f"cosine {a['cosine_similarity']:.6f}"
            )
        return "\n".join(lines)


def evaluate(
    model_paths: list[str | os.PathLike],
    list_path: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    batch: int = 8,
    threads: int = 2,
    limit: int | None = None,
    progress: bool | None = True,
    backends: list | None = None,
    preprocess: PreprocessOptions = FROM_MODEL,
) -> Evaluation:
    """Top-1/top-5 of each model on the list, and each model's agreement with the first one.

    Unreadable images are skipped and listed in ``failures``; each image is decoded once for all models.
    ``progress``: a tqdm bar with the running figures (None: only on a terminal).
    """
    from .classifier import Classifier

    items = read_val_list(list_path, data_root)
    root = str(Path(data_root) if data_root is not None else Path(list_path).parent)
    if limit is not None:
        items = items[:limit]
    classifiers = [
        Classifier(p, batch=batch, threads=threads, backend=backends[i] if backends else None, preprocess=preprocess)
        for i, p in enumerate(model_paths)
    ]
    _check_labels(classifiers, items, list_path)
    specs = {c.spec for c in classifiers}
    if len(specs) != 1:  # each batch is preprocessed once, for every model
        raise UserError("the models are fed different preprocessing (" + "; ".join(
            f"{c.model_path}: {c.backend.recipe.describe()}" for c in classifiers) + "): evaluate them one by one")
    result = Evaluation(str(list_path), root, len(items))
    try:
        acc, agree = _measure(classifiers, items, result, progress)
    finally:
        for c in classifiers if not backends else []:  # backends passed in belong to the caller
            c.close()
    for c, accuracy in zip(classifiers, acc, strict=True):
        result.models.append({"model": str(c.model_path), **accuracy.summary()})
    for c, agreement in zip(classifiers[1:], agree, strict=True):
        result.agreement.append({"reference": str(classifiers[0].model_path), "model": str(c.model_path),
                                 **agreement.summary()})
    return result


def _check_labels(classifiers: list, items: list[tuple[Path, int]], list_path) -> None:
    """The models have one class count, and every listed label is one of their classes."""
    n_classes = {c.num_classes for c in classifiers}
    if len(n_classes) != 1:
        raise UserError(f"the models have different class counts ({sorted(n_classes)}); cannot compare them")
    (classes,) = n_classes
    worst = max(label for _, label in items)
    if worst >= classes:
        raise UserError(f"{list_path}: label {worst} is out of range for a {classes}-class model")


def _measure(classifiers: list, items: list[tuple[Path, int]], result: Evaluation,
             progress: bool | None) -> tuple[list[AccuracyMeter], list[AgreementMeter]]:
    """Every model over the list, each batch decoded once: the accuracy meters (one per model), the agreement
    meters (each later model against the first); unreadable images go to ``result.failures``."""
    from tqdm import tqdm

    labels = np.array([label for _, label in items], np.int64)
    acc = [AccuracyMeter() for _ in classifiers]
    agree = [AgreementMeter() for _ in classifiers[1:]]
    disable = None if progress is None else not progress
    with tqdm(total=len(items), unit="img", desc="eval", disable=disable, dynamic_ncols=True) as bar:
        for b in classifiers[0].batches([p for p, _ in items]):
            result.failures += [{"image": p, "error": r} for p, r in b.failures]
            if len(b):
                outs = [c.infer(b.array) for c in classifiers]
                for accuracy, out in zip(acc, outs, strict=True):
                    accuracy.update(out, labels[b.indices])
                for agreement, out in zip(agree, outs[1:], strict=True):
                    agreement.update(outs[0], out)
            bar.update(len(b) + len(b.failures))
            postfix = {"top1": f"{100 * acc[0].top1:.2f}%", "top5": f"{100 * acc[0].top5:.2f}%"}
            if agree:
                postfix["agree"] = f"{100 * agree[0].top1_agreement:.2f}%"
            bar.set_postfix(postfix, refresh=False)
    return acc, agree
