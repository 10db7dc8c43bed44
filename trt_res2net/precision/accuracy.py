"""How close an FP16 or INT8 ONNX stays to the FP32 ONNX, on held-out images, in ONNX Runtime.

Metrics (``trt_res2net.data.metrics``, as infer.py --eval): top-1 agreement, mean top-5 overlap, logit
cosine similarity, and top-1/top-5 accuracy of both models when labels are given. The budget of
``--max-top1-drop X`` is in percentage points: the drop of top-1 accuracy when labelled, otherwise
100 − top-1 agreement (% of images whose top class changed).

ONNX Runtime before 1.25 rounds float16 QuantizeLinear toward zero on the CPU (microsoft/onnxruntime#18576,
fixed by PR #32452): an INT8 model whose float parts are FP16 then scores far worse on the CPU than it will
in TensorRT. :func:`fp16_quantize_is_exact` probes the installed ONNX Runtime; when it is affected, such a
model is evaluated as its *FP32-arithmetic twin* — the same graph and the same FP16-rounded constants, with
FP16 casts made FP32 — and the report says so.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import EXIT_SOME_FAILED, UserError
from ..data.metrics import accuracy, compare_predictions, read_val_list
from ..data.preprocess import SPEC, PreprocessSpec
from .options import DATA_ROOT_ALONE, DEFAULT_EVAL_IMAGES, TWO_HELD_OUT_SETS

EVAL_BATCH = 16
TWIN_NOTE = ("evaluated with FP32 arithmetic on its FP16-rounded constants: this ONNX Runtime rounds float16 "
             "QuantizeLinear toward zero on the CPU (microsoft/onnxruntime#18576)")


class AccuracyBudgetExceeded(UserError):
    """The converted model misses the ``PrecisionOptions.max_top1_drop`` budget (exit status 1: the build ran, its
    result failed)."""

    exit_code = EXIT_SOME_FAILED


# --------------------------------------------------------------------------------------------------------
# The held-out set


@dataclass
class EvalSet:
    """Images (and labels, when the set came from a list) for the accuracy comparison."""

    paths: list[Path]
    labels: list[int] | None
    source: str

    def __len__(self) -> int:
        return len(self.paths)


def load_eval_set(eval_dir=None, eval_list=None, data_root=None, limit: int = DEFAULT_EVAL_IMAGES,
                  seed: int = 1) -> EvalSet | None:
    """``--eval-dir DIR`` (unlabelled) or ``--eval LIST [--data-root DIR]`` (labelled), at most ``limit``
    images (0 = all), chosen like calibration images (sorted; a seeded sample when more)."""
    from ..data.calibration_set import select_calibration_images

    if eval_dir and eval_list:
        raise UserError(TWO_HELD_OUT_SETS)
    if eval_dir:
        paths = select_calibration_images(eval_dir, n=limit or 10**9, seed=seed)
        return EvalSet(paths, None, f"{len(paths)} images from {eval_dir}")
    if eval_list:
        items = read_val_list(eval_list, data_root)
        if limit and len(items) > limit:
            import hashlib

            rank = sorted(range(len(items)),
                          key=lambda i: hashlib.sha256(f"{seed}:{items[i][0].as_posix()}".encode()).hexdigest())
            keep = set(rank[:limit])
            items = [it for i, it in enumerate(items) if i in keep]
        return EvalSet([p for p, _ in items], [lab for _, lab in items], f"{len(items)} labelled images of {eval_list}")
    if data_root:
        raise UserError(DATA_ROOT_ALONE)
    return None


# --------------------------------------------------------------------------------------------------------
# Running models


@functools.lru_cache(maxsize=1)
def fp16_quantize_is_exact() -> bool:
    """Does this ONNX Runtime round float16 QuantizeLinear to nearest-even on the CPU? (#18576 probe)"""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = np.array([0.050018310546875, -0.050018310546875, 0.1500244140625, 2.4], np.float16)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])
    graph = helper.make_graph(
        [node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [4])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [4])],
        [helper.make_tensor("s", TensorProto.FLOAT16, [], [0.0999755859375]),
         helper.make_tensor("z", TensorProto.INT8, [], [0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    y = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = np.clip(np.rint(x.astype(np.float32) / np.float32(np.float16(0.0999755859375))), -128, 127)
    return bool(np.array_equal(y.astype(np.float32), expected))


def has_fp16_quantize(model) -> bool:
    from onnx import TensorProto

    inits = {t.name: t.data_type for t in model.graph.initializer}
    return any(n.op_type == "QuantizeLinear" and inits.get(n.input[1]) == TensorProto.FLOAT16
               for n in model.graph.node)


def fp32_twin(model):
    """A copy of ``model`` computing in FP32: FP16 initializers and constants widened (same values), casts
    to FP16 made casts to FP32, intermediate type annotations dropped."""
    import onnx
    from onnx import TensorProto, numpy_helper

    twin = onnx.ModelProto()
    twin.CopyFrom(model)

    def widened(t):
        return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)

    for i, t in enumerate(twin.graph.initializer):
        if t.data_type == TensorProto.FLOAT16:
            twin.graph.initializer[i].CopyFrom(widened(t))
    for node in twin.graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                attr.t.CopyFrom(widened(attr.t))
    for vi in list(twin.graph.input) + list(twin.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            raise UserError("the converted model has FP16 inputs or outputs; expected float32 I/O")
    del twin.graph.value_info[:]
    return twin


def open_session(model_or_path, threads: int | None = None):
    """An ONNX Runtime CPU session for a model file or ModelProto; returns (session, note or None)."""
    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    from ..core.onnx_files import PROTOBUF_LIMIT, external_data_files

    path = model_or_path if isinstance(model_or_path, (str, os.PathLike)) else None
    if path is not None and sum(f.stat().st_size for f in (Path(path), *external_data_files(path))) < PROTOBUF_LIMIT:
        path = None  # loaded with its data: ONNX Runtime cannot read a shape input (a Split's sizes) from a data file
        model = onnx.load(str(model_or_path))
    else:  # over protobuf's limit: ONNX Runtime reads the data files from the model's folder itself
        model = onnx.load(str(path), load_external_data=False) if path is not None else model_or_path
    note = None
    if has_fp16_quantize(model) and not fp16_quantize_is_exact():
        if path is not None:
            model = onnx.load(str(path))
        model, note, path = fp32_twin(model), TWIN_NOTE, None
    source = str(path) if path is not None else model.SerializeToString()
    session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    return session, note


def run_session(session, arrays: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: arrays})[0]


@dataclass
class Evaluator:
    """The held-out set, preprocessed once and kept as FP32-reference logits; each candidate model is run
    over the same images. ``images`` holds the preprocessed arrays (N×3×224×224 float32)."""

    eval_set: EvalSet
    reference_onnx: Path
    spec: PreprocessSpec = SPEC
    progress: bool = True
    images: np.ndarray | None = None
    reference_logits: np.ndarray | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    kept_labels: list[int] | None = None

    def prepare(self) -> None:
        if self.images is not None:
            return
        from ..data.calibration_set import iter_batches

        arrays, labels = [], []
        label_of = dict(zip(map(str, self.eval_set.paths), self.eval_set.labels or [], strict=False))
        bar = _bar(len(self.eval_set), "decode held-out images", self.progress)
        for arr, names, failures in iter_batches(self.eval_set.paths, EVAL_BATCH, self.spec):
            arrays.append(arr)
            labels.extend(label_of.get(n, -1) for n in names)
            self.failures.extend(failures)
            bar.update(len(names) + len(failures))
        bar.close()
        if not arrays or sum(len(a) for a in arrays) == 0:
            raise UserError(f"none of the held-out images ({self.eval_set.source}) could be read")
        self.images = np.concatenate(arrays)
        self.kept_labels = labels if self.eval_set.labels is not None else None
        self.reference_logits = self.run(self.reference_onnx, "FP32 reference")[0]

    def run(self, model, what: str) -> tuple[np.ndarray, str | None]:
        session, note = open_session(model)
        outs = []
        bar = _bar(len(self.images), f"run {what}", self.progress)
        for i in range(0, len(self.images), EVAL_BATCH):
            outs.append(run_session(session, self.images[i : i + EVAL_BATCH]))
            bar.update(len(outs[-1]))
        bar.close()
        return np.concatenate(outs).astype(np.float32), note

    def evaluate(self, model, what: str) -> dict:
        """The comparison report of ``model`` (path or ModelProto) against the FP32 reference."""
        self.prepare()
        logits, note = self.run(model, what)
        return self.report(logits, note)

    def report(self, logits: np.ndarray, note: str | None = None) -> dict:
        """The comparison report of a candidate's logits on ``images`` (run elsewhere, e.g. OpenVINO) against the
        FP32 reference."""
        report = {"images": int(len(logits)), "source": self.eval_set.source, **{
            k: v for k, v in compare_predictions(self.reference_logits, logits).items()
            if k in ("top1_agreement", "mean_top5_overlap", "cosine_similarity", "max_abs_diff")}}
        if self.failures:
            report["unreadable_images"] = len(self.failures)
        if note:
            report["note"] = note
        if self.kept_labels is not None:
            labels = np.asarray(self.kept_labels)
            ref, got = accuracy(self.reference_logits, labels), accuracy(logits, labels)
            report.update(fp32_top1=ref["top1"], fp32_top5=ref["top5"], top1=got["top1"], top5=got["top5"])
        return report


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------------
# Budget and report


def top1_drop_pp(report: dict) -> float:
    """What --max-top1-drop limits, in percentage points."""
    if "fp32_top1" in report:
        return 100.0 * (report["fp32_top1"] - report["top1"])
    return 100.0 * (1.0 - report["top1_agreement"])


def budget_measure_name(report: dict) -> str:
    return "top-1 accuracy drop" if "fp32_top1" in report else "top-1 disagreement"


def within_budget(report: dict, max_drop: float | None) -> bool:
    return max_drop is None or top1_drop_pp(report) <= max_drop + 1e-9


def format_report(report: dict, label: str) -> str:
    """A small table for people."""
    rows = [
        ("top-1 agreement", f"{100 * report['top1_agreement']:.2f} %"),
        ("mean top-5 overlap", f"{100 * report['mean_top5_overlap']:.2f} %"),
        ("logit cosine similarity", f"{report['cosine_similarity']:.5f}"),
    ]
    if "fp32_top1" in report:
        rows.append(("top-1 accuracy", f"{100 * report['top1']:.2f} %  (FP32 {100 * report['fp32_top1']:.2f} %, "
                                       f"{-top1_drop_pp(report):+.2f} pp)"))
        rows.append(("top-5 accuracy", f"{100 * report['top5']:.2f} %  (FP32 {100 * report['fp32_top5']:.2f} %)"))
    lines = [f"{label} vs FP32 on {report['source']}:"]
    lines += [f"  {k:<24s} {v}" for k, v in rows]
    if report.get("unreadable_images"):
        lines.append(f"  ({report['unreadable_images']} unreadable images skipped)")
    if report.get("note"):
        lines.append(f"  note: {report['note']}")
    return "\n".join(lines)


def overlap_warning(eval_paths: Sequence[Path], calib_paths: Sequence[Path]) -> str | None:
    """A warning when held-out images are also calibration images (the comparison would flatter INT8)."""
    calib = {os.path.realpath(p) for p in calib_paths}
    shared = sum(1 for p in eval_paths if os.path.realpath(p) in calib)
    if shared:
        return f"{shared} of the {len(eval_paths)} held-out images are also calibration images"
    return None

