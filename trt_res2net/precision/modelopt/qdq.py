"""What a Q/DQ model holds: its activation scales (keyed as a calibration cache keys them, checked against the
calibrated ones as ModelOpt's AutoCast writes them in FP16), the layers it quantizes, and why ModelOpt left the
others in high precision."""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from ...core.errors import UserError
from ..dequantized import fed_through_dequantize, onnx_layers

QUANTIZABLE_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def activation_scales(model) -> dict[str, float]:
    """Activation tensor name → float scale of every per-tensor QuantizeLinear on a non-constant input,
    keyed as ModelOpt keys a calibration cache (the FP32 model's tensor name)."""
    inits = _initializers(model)
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale_name = node.input[1]
        if scale_name not in inits or inits[scale_name].size != 1:
            raise UserError(f"unexpected Q/DQ model: activation scale {scale_name} is not a constant scalar")
        # ModelOpt names the scale of tensor T "T_scale" (cache entry T); converting the float parts to FP16
        # renames it "T_scale_1" and quantizes the graph input through a Cast ("input_cast_to_fp16").
        m = re.fullmatch(r"(.+)_scale(?:_\d+)?", scale_name)
        name = m.group(1) if m else node.input[0]
        scales[name] = float(np.float32(inits[scale_name].reshape(())))
    return scales


def quantized_nodes(model, op_types: Iterable[str] = QUANTIZABLE_WEIGHTED_OPS) -> list[str]:
    """Names of nodes of ``op_types`` whose inputs come through DequantizeLinear (in graph order)."""
    return fed_through_dequantize(onnx_layers(model), dequantize="DequantizeLinear", weighted=set(op_types))


def usable_scale(value: float) -> float:
    """A scale a QuantizeLinear can divide by: zero or non-finite ones (TensorRT writes ``0`` for an all-zero
    tensor) raised to the smallest normal float32."""
    value = float(np.float32(value))
    return value if np.isfinite(value) and value > 0 else float(np.finfo(np.float32).tiny)


# AutoCast (ModelOpt 0.47, ``PrecisionConverter._convert_initializer_data``) writes an FP16 initializer as: values
# past FP16's largest clamped to it, nonzero ones under its smallest subnormal (2**-24) raised to that, then a cast.
FP16_SMALLEST = float(np.finfo(np.float16).smallest_subnormal)


def as_autocast_fp16(value: float) -> float:
    """The FP16 value AutoCast writes for the float32 ``value`` (as float): raised to FP16's smallest subnormal when
    nonzero and below it (a plain cast would round it to 0, a QuantizeLinear dividing by zero), clamped at its max."""
    v = np.float32(value)
    top = np.float32(np.finfo(np.float16).max)
    v = np.clip(v, -top, top)
    if v != 0 and abs(v) < FP16_SMALLEST:
        v = np.float32(FP16_SMALLEST)
    return float(np.float16(v))


def expected_scale(calibrated: float, high_precision: str) -> float:
    """The scale a Q/DQ model in ``high_precision`` holds for a calibrated one: usable (:func:`usable_scale`), then as
    AutoCast writes it in FP16."""
    usable = usable_scale(calibrated)
    return as_autocast_fp16(usable) if high_precision == "fp16" else usable


def raised_in_fp16(scales: dict[str, float], high_precision: str) -> list[str]:
    """The tensors whose calibrated scale is under FP16's smallest value, which an FP16 Q/DQ model holds raised to it:
    their activations (all under 127 × 2**-24 ≈ 7.6e-6, e.g. a block scaled by a fresh layer scale of 1e-6) are
    quantized in FP16's own subnormal steps, no coarser than FP16 holds them."""
    if high_precision != "fp16":
        return []
    return [n for n, v in scales.items() if usable_scale(v) < FP16_SMALLEST]


def note_raised_in_fp16(scales: dict[str, float], high_precision: str) -> None:
    """One warning line naming the tensors :func:`raised_in_fp16` finds (none: nothing said)."""
    from ...core import log

    raised = raised_in_fp16(scales, high_precision)
    if raised:
        first = raised[0]
        span = 127 * max(scales[first], 0.0)
        log.warn_once(f"{len(raised)} activation scales are under FP16's smallest value {FP16_SMALLEST:.3g} and kept "
                      f"at it (e.g. {first}: calibrated {scales[first]:.3g}, a range of ±{span:.2g}): "
                      "quantized in FP16's own steps; PrecisionOptions.high_precision='fp32' keeps them finer")


def check_scales_from(model, scales: dict[str, float], high_precision: str) -> None:
    """Every activation scale of ``model`` is ``scales``' (as AutoCast writes it in FP16 where the model keeps its
    scales in FP16: :func:`expected_scale`); the ones FP16 cannot hold are named in one warning
    (:func:`note_raised_in_fp16`)."""
    got = activation_scales(model)
    stray = [n for n in got if n not in scales]
    if stray:
        raise UserError(f"the Q/DQ model quantizes {len(stray)} tensors without a calibrated scale (e.g. {stray[0]})")
    off = [n for n, v in got.items() if np.float32(v) != np.float32(expected_scale(scales[n], high_precision))]
    if off:
        name = off[0]
        raise UserError(f"the Q/DQ model's scale of {name} is {got[name]:.6g}, not its calibrated {scales[name]:.6g} "
                        f"({expected_scale(scales[name], high_precision):.6g} in {high_precision}): ModelOpt changed?")
    note_raised_in_fp16({n: scales[n] for n in got}, high_precision)


def _conv_reason(weight: np.ndarray, group: int, kernel: list[int], from_input: bool) -> str | None:
    """ModelOpt's INT8 rule for a Conv (0.47, ``graph_utils.find_nodes_from_convs_to_exclude``), as a reason."""
    out_c, in_c = weight.shape[0], weight.shape[1]
    if out_c >= 16 and in_c >= 16:
        return None
    if group == 1 and (out_c % 8 == 0 or in_c % 8 == 0) and (from_input or out_c >= 16 or in_c >= 16) \
            and len(set(kernel)) == 1:
        return None
    if group > 1 and out_c % 8 == 0 and all(k >= 3 for k in kernel):
        return None
    return f"{in_c}→{out_c} channels{f' in {group} groups' if group > 1 else ''}: too few for INT8 kernels"


def _gemm_reason(node, weight: np.ndarray) -> str | None:
    """ModelOpt's rule for a MatMul/Gemm (``find_nodes_from_matmul_to_exclude``): K or N under 16 (or a GEMV)."""
    transposed = any(a.name == "transB" and a.i for a in node.attribute)
    k, n = (weight.shape[-1], weight.shape[-2]) if transposed else (weight.shape[-2], weight.shape[-1])
    return f"K={k}, N={n}: a GEMM under 16 wide" if min(k, n) < 16 else None


def unquantized_reasons(model, skip: Iterable[str] = ()) -> dict[str, str]:
    """The Conv/Gemm/MatMul nodes of a Q/DQ model whose inputs do not come through DequantizeLinear (except those in
    ``skip``), each with ModelOpt's reason where one of its rules explains it."""
    inits = _initializers(model)
    inputs = {i.name for i in model.graph.input}
    quantized = set(quantized_nodes(model))
    reasons = {}
    for node in model.graph.node:
        if node.op_type not in QUANTIZABLE_WEIGHTED_OPS or node.name in quantized or node.name in skip:
            continue
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None:
            reasons[node.name] = "its weight is not a constant"
            continue
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Conv":
            kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else list(weight.shape[2:])
            group = attrs["group"].i if "group" in attrs else 1
            reason = _conv_reason(weight, group, kernel, node.input[0] in inputs)
        else:
            reason = _gemm_reason(node, weight)
        reasons[node.name] = reason or "ModelOpt's placement (no rule of its size checks)"
    return reasons


def note_unquantized(model, skip: Iterable[str] = ()) -> None:
    """One note naming the layers ModelOpt left unquantized and why (:func:`unquantized_reasons`); none: nothing."""
    from ...core import log

    reasons = unquantized_reasons(model, skip)
    if reasons:
        total = len(reasons) + len(quantized_nodes(model))
        named = "; ".join(f"{n} ({r})" for n, r in list(reasons.items())[:4])
        more = f"; and {len(reasons) - 4} more" if len(reasons) > 4 else ""
        message = f"ModelOpt left {len(reasons)} of {total} layers in high precision: {named}{more}"
        if message not in _NOTED:  # said once per process (auto-fallback quantizes the same model again and again)
            _NOTED.add(message)
            log.note(message)


_NOTED: set[str] = set()
