"""Tiny image-classification ONNX models made with onnx.helper (conv → relu → global pool → gemm).

They stand in for "any classifier ONNX": our own export's names, or a paddle2onnx export of a fine-tuned
PaddleClas model with foreign names, a fixed batch and a softmax output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_classifier(
    path: Path,
    num_classes: int = 1000,
    batch: int | str = "batch",
    input_name: str = "input",
    output_name: str = "logits",
    softmax: bool = False,
    seed: int = 0,
    classes_dim: int | str | None = None,
    input_dtype: str = "float32",
    hw: int | str = 224,
    input_width: int | str | None = None,
) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    width = 16
    # Weights with a spread of responses so that different images get different top classes.
    w_conv = rng.normal(0, 0.5, (width, 3, 8, 8)).astype(np.float32)
    b_conv = rng.normal(0, 0.1, width).astype(np.float32)
    w_fc = rng.normal(0, 1.0, (num_classes, width)).astype(np.float32)
    b_fc = rng.normal(0, 0.1, num_classes).astype(np.float32)
    inits = [
        numpy_helper.from_array(w_conv, "conv.w"),
        numpy_helper.from_array(b_conv, "conv.b"),
        numpy_helper.from_array(w_fc, "fc.w"),
        numpy_helper.from_array(b_fc, "fc.b"),
    ]
    nodes = []
    x = input_name
    if input_dtype == "float16":
        nodes.append(helper.make_node("Cast", [x], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    nodes += [
        helper.make_node("Conv", [x, "conv.w", "conv.b"], ["c"], strides=[8, 8]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["z" if softmax else output_name], transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["sm"], axis=1))
        nodes.append(helper.make_node("Identity", ["sm"], [output_name]))  # paddle2onnx-like tail
    elem = TensorProto.FLOAT16 if input_dtype == "float16" else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info(input_name, elem, [batch, 3, hw, hw if input_width is None else input_width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, classes_dim or num_classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_paddle2onnx_like(path: Path, num_classes: int = 10, batch: int = 1) -> Path:
    """Fixed batch, foreign tensor names, softmax output: how a fine-tuned PaddleClas export looks."""
    return make_classifier(
        path,
        num_classes=num_classes,
        batch=batch,
        input_name="x",
        output_name="save_infer_model/scale_0.tmp_1",
        softmax=True,
        seed=7,
    )
