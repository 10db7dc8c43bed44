"""``--auto-fallback``: keep the layers INT8 hurts most out of quantization until the accuracy budget holds.

1. Sensitivity, measured rather than guessed: one ONNX Runtime session over the fully quantized model in
   which every candidate layer (Conv, Gemm, MatMul) has a switch that feeds it the unquantized tensor and
   weight instead of their Q/DQ versions (``y = dq·(1−s) + x·s``, exact for s ∈ {0, 1}). Turning one switch
   on at a time gives, per layer, how much of the output error vs FP32 disappears when that layer alone
   stays in higher precision. One session, one inference per layer, on a few *calibration* images (the
   held-out images decide the budget, so they don't choose the layers).
2. Search: exclude the top 1, 2, 4, 8 … layers (ModelOpt's ``nodes_to_exclude``, rebuilt from the same
   calibration cache) until the budget holds on the held-out images, then bisect for the fewest layers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..core.files import temp_name
from .modelopt.qdq import QUANTIZABLE_WEIGHTED_OPS, quantized_nodes

SWITCH_PREFIX = "__fallback_switch_"
SENSITIVITY_IMAGES = 8  # enough for a continuous error measure; each layer costs one inference of them


def switchable_model(qdq_model, candidates: Sequence[str]):
    """The Q/DQ model (computing in FP32, see accuracy.fp32_twin) with one scalar float input
    ``__fallback_switch_<i>`` per candidate; returns (model, switch names)."""
    import onnx
    from onnx import TensorProto, helper

    from .accuracy import fp32_twin

    model = fp32_twin(qdq_model)
    producer = {o: n for n in model.graph.node for o in n.output}
    index = {name: i for i, name in enumerate(candidates)}
    nodes, switches = [], []
    model.graph.initializer.append(helper.make_tensor(f"{SWITCH_PREFIX}one", TensorProto.FLOAT, [], [1.0]))
    for node in model.graph.node:
        if node.name in index:
            s = f"{SWITCH_PREFIX}{index[node.name]}"
            keep = f"{s}_keep"
            nodes.append(helper.make_node("Sub", [f"{SWITCH_PREFIX}one", s], [keep], name=f"{s}_sub"))
            rewired = False
            for i, tensor in enumerate(node.input):
                dq = producer.get(tensor)
                q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
                if q is None or q.op_type != "QuantizeLinear":
                    continue
                raw = q.input[0]
                a, b, mixed = f"{s}_{i}_q", f"{s}_{i}_raw", f"{s}_{i}_mixed"
                nodes += [
                    helper.make_node("Mul", [tensor, keep], [a], name=f"{a}_mul"),
                    helper.make_node("Mul", [raw, s], [b], name=f"{b}_mul"),
                    helper.make_node("Add", [a, b], [mixed], name=f"{mixed}_add"),
                ]
                node.input[i] = mixed
                rewired = True
            if rewired:
                switches.append(s)
                model.graph.input.append(helper.make_tensor_value_info(s, TensorProto.FLOAT, []))
            else:
                nodes.pop()  # the Sub: nothing quantized feeds this node after all
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model, switches


def _relative_error(y: np.ndarray, ref: np.ndarray) -> float:
    """Mean over images of ‖y − ref‖² / ‖ref‖² (continuous, so a few images rank layers reliably)."""
    num = ((y.astype(np.float64) - ref) ** 2).sum(axis=1)
    den = np.maximum((ref.astype(np.float64) ** 2).sum(axis=1), 1e-30)
    return float((num / den).mean())


def layer_sensitivity(qdq_model, images: np.ndarray, reference_logits: np.ndarray,
                      candidates: Sequence[str] | None = None, progress: bool = True) -> list[tuple[str, float]]:
    """(layer, error removed by keeping it unquantized) for every quantized Conv/Gemm/MatMul, most
    sensitive first. ``reference_logits`` are the FP32 model's outputs on ``images``."""
    import onnxruntime as ort
    from tqdm import tqdm

    names = list(candidates) if candidates is not None else quantized_nodes(qdq_model, QUANTIZABLE_WEIGHTED_OPS)
    if not names:
        return []
    model, switches = switchable_model(qdq_model, names)
    by_switch = {f"{SWITCH_PREFIX}{i}": n for i, n in enumerate(names)}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    input_name = next(i.name for i in session.get_inputs() if not i.name.startswith(SWITCH_PREFIX))
    off = {s: np.zeros((), np.float32) for s in switches}
    ref = np.asarray(reference_logits, np.float64)

    def error(feed_on: str | None) -> float:
        feed = {input_name: images, **off}
        if feed_on:
            feed[feed_on] = np.ones((), np.float32)
        return _relative_error(session.run(None, feed)[0], ref)

    full = error(None)
    gains = []
    for s in tqdm(switches, desc="layer sensitivity", unit="layer", disable=not progress, leave=False):
        gains.append((by_switch[s], full - error(s)))
    gains.sort(key=lambda t: -t[1])
    return gains


@dataclass
class FallbackResult:
    excluded: list[str]
    report: dict
    trials: list[dict] = field(default_factory=list)  # {"excluded": k, "drop_pp": x, "ok": bool}


def search_exclusions(ranking: Sequence[str], try_excluding: Callable[[list[str]], tuple[dict, bool, float]],
                      max_layers: int | None = None) -> FallbackResult:
    """Fewest top-ranked layers to exclude so that ``try_excluding(layers) -> (report, ok, drop_pp)`` is ok.

    Doubling (1, 2, 4 …) then bisection; assumes excluding more of the ranking never hurts (it is what the
    ranking measures). Raises UserError when even excluding ``max_layers`` (default: all) misses the budget."""
    limit = min(len(ranking), max_layers or len(ranking))
    trials: list[dict] = []
    reports: dict[int, dict] = {}

    def attempt(k: int) -> bool:
        report, ok, drop = try_excluding(list(ranking[:k]))
        reports[k] = report
        trials.append({"excluded": k, "drop_pp": round(drop, 4), "ok": ok})
        return ok

    if limit == 0:
        raise UserError("no quantized layer can be excluded")
    lo, hi, k = 0, None, 1
    while True:
        k = min(k, limit)
        if attempt(k):
            hi = k
            break
        lo = k
        if k == limit:
            worst = trials[-1]["drop_pp"]
            raise UserError(
                f"the accuracy budget is not met even with the {limit} most sensitive layers kept out of "
                f"quantization (drop {worst:.2f} pp); raise PrecisionOptions.max_top1_drop, or build FP16 instead"
            )
        k *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    return FallbackResult(list(ranking[:hi]), reports[hi], trials)


# --------------------------------------------------------------------------------------------------------
# The precision step's fallback: rank, search, rebuild


def _ranking_images(calib, evaluator):
    """The images the layers are ranked on: calibration images when a folder was given, else held-out ones (then
    said: they also decide the budget); returns (images, what they are)."""
    from ..core import log
    from ..data.calibration_set import iter_batches

    if calib.images is not None:
        arrays = [a for a, _, _ in iter_batches(calib.images[:SENSITIVITY_IMAGES], SENSITIVITY_IMAGES) if len(a)]
        return np.concatenate(arrays), f"{SENSITIVITY_IMAGES} calibration images"
    evaluator.prepare()
    source = f"{SENSITIVITY_IMAGES} held-out images (no CalibrationImages.directory given)"
    log.note(f"note: ranking layers on {source}; pass CalibrationImages.directory to keep the held-out images out of "
             "the choice")
    return np.concatenate([evaluator.images[:SENSITIVITY_IMAGES]]), source


def _rank(opts, fp32_onnx: Path, model, calib, evaluator):
    """The quantized layers, most sensitive first, on :func:`_ranking_images`: (ranking, what they were ranked on)."""
    from ..core import log
    from .accuracy import open_session, run_session
    from .calibration import minutes

    images, source = _ranking_images(calib, evaluator)
    session, _ = open_session(fp32_onnx)
    reference = run_session(session, images)
    del session
    t0 = time.perf_counter()
    ranking = layer_sensitivity(model, images, reference, progress=opts.progress)
    log.note(f"note: auto-fallback: {len(ranking)} layers ranked on {source} in {minutes(time.perf_counter() - t0)}; "
             "most sensitive: " + ", ".join(f"{n} ({g:.2e})" for n, g in ranking[:5]))
    return ranking, source


def auto_fallback(opts, fp32_onnx: Path, model, calib, evaluator, out: Path, staged: Path, log_path: Path,
                  full_drop: float):
    """``PrecisionOptions.auto_fallback``: the fewest most sensitive layers kept out of INT8 for the model to meet
    the budget, rebuilt from the same calibration cache into ``staged``; returns (excluded layers, their accuracy
    report, the record of the ranking and the trials)."""
    from ..core import log
    from .accuracy import format_report, top1_drop_pp, within_budget
    from .modelopt.int8 import quantize_from_cache

    log.note(f"note: auto-fallback: the fully quantized model misses the budget ({full_drop:.2f} pp > "
             f"{opts.max_top1_drop:g}); ranking layers by sensitivity")
    ranking, source = _rank(opts, fp32_onnx, model, calib, evaluator)
    names = [n for n, _ in ranking]

    def try_excluding(layers: list[str]):
        candidate = temp_name(out.with_name(f"{out.stem}.fallback.onnx"))
        try:
            m = quantize_from_cache(fp32_onnx, calib.cache, candidate, high_precision=opts.high_precision,
                                    nodes_to_exclude=layers, log_path=log_path)
            report = evaluator.evaluate(m, f"INT8 without {len(layers)} layers")
        finally:
            candidate.unlink(missing_ok=True)
        drop = top1_drop_pp(report)
        ok = within_budget(report, opts.max_top1_drop)
        log.note(f"note: auto-fallback: {len(layers):3d} layers excluded → drop {drop:.2f} pp "
                 f"({'meets' if ok else 'misses'} the budget)")
        return report, ok, drop

    t0 = time.perf_counter()
    result = search_exclusions(names, try_excluding)
    quantize_from_cache(fp32_onnx, calib.cache, staged, high_precision=opts.high_precision,
                        nodes_to_exclude=result.excluded, log_path=log_path)
    log.result(f"auto-fallback: kept {len(result.excluded)} of {len(names)} quantized layers in "
               f"{opts.high_precision.upper()}: {', '.join(result.excluded)}")
    log.result(format_report(result.report, f"INT8 {out.name} (after fallback)"))
    doc = {"ranking_images": source, "ranking": [{"layer": n, "error_removed": g} for n, g in ranking],
           "trials": result.trials, "search_seconds": round(time.perf_counter() - t0, 1)}
    return result.excluded, result.report, doc
