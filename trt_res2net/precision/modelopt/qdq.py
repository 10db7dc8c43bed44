"""What a Q/DQ model holds: its activation scales (keyed as a calibration cache keys them) and the layers it
quantizes."""

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


def check_scales_from(model, scales: dict[str, float], high_precision: str) -> None:
    """Every activation scale of ``model`` is ``scales``' (rounded to FP16 where the model keeps them in FP16)."""
    got = activation_scales(model)
    stray = [n for n in got if n not in scales]
    if stray:
        raise UserError(f"the Q/DQ model quantizes {len(stray)} tensors without a calibrated scale (e.g. {stray[0]})")
    cast = np.float16 if high_precision == "fp16" else np.float32
    off = [n for n, v in got.items() if np.float32(v) != np.float32(cast(np.float32(usable_scale(scales[n]))))]
    if off:
        raise UserError(f"the Q/DQ model's scale of {off[0]} is not its calibrated one (ModelOpt changed?)")
