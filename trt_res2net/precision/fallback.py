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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import UserError
from .modelopt_bridge import QUANTIZABLE_WEIGHTED_OPS

SWITCH_PREFIX = "__fallback_switch_"


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

    from .modelopt_bridge import quantized_nodes

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
                f"quantization (drop {worst:.2f} pp); raise --max-top1-drop, or build FP16 instead"
            )
        k *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    return FallbackResult(list(ranking[:hi]), reports[hi], trials)
