"""Small classifiers made of the patterns real ones use beyond Res2Net, as FP32 ONNX for the INT8 tests
(tests/test_int8_zoo.py): depthwise convolutions, LayerNorm, GELU, layer scale (a Mul by a parameter),
squeeze-excitation, global pooling in the middle, residual adds from the input, and timm's ConvNeXt block.

Every graph takes ``input`` [N,3,224,224] and gives ``logits`` [N,1000] (the project's contract), is at opset 17
with node names as torch's exporter writes them, and is a *decided* classifier: random He-scaled weights (so the
activations keep a trained network's magnitudes without normalisation layers to fit), then a head fitted to its
pooled features (``realistic_random.fit_classifier_head``), so that top-1 agreement measures precision, not ties.
Channels are 16 or more where a layer should be quantized (ModelOpt leaves smaller convolutions and GEMMs alone).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

OPSET = 17
CLASSES = 1000


class Graph:
    """A graph under construction: nodes, initializers, and a seeded generator for the weights."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.count: dict[str, int] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        value = np.asarray(value)
        if value.dtype == np.float64:  # numpy 2 keeps float64 where a float64 scalar entered: the graph is FP32
            value = value.astype(np.float32)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], scope: str, **attrs) -> str:
        from onnx import helper

        k = self.count.get(f"{scope}/{op_type}", 0)
        self.count[f"{scope}/{op_type}"] = k + 1
        name = f"{scope}/{op_type}" + (f"_{k}" if k else "")
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    # layers -------------------------------------------------------------------------------------------

    def conv(self, x: str, scope: str, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             gain: float = 2.0) -> str:
        fan_in = cin // groups * k * k
        w = self.rng.standard_normal((cout, cin // groups, k, k)).astype(np.float32) * np.sqrt(gain / fan_in)
        b = (0.05 * self.rng.standard_normal(cout)).astype(np.float32)
        return self.op("Conv", [x, self.const(f"{scope}.weight", w), self.const(f"{scope}.bias", b)], scope,
                       kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2 if k % 2 else 0] * 4,
                       group=groups)

    def linear(self, x: str, scope: str, cin: int, cout: int, gain: float = 2.0, std: float | None = None) -> str:
        """torch's Linear as its exporter writes it on a >2-D input: MatMul by W.T, then Add of the bias. Weights of
        standard deviation ``std``, or He-scaled by ``gain``."""
        w = self.rng.standard_normal((cin, cout)) * (std if std is not None else np.sqrt(gain / cin))
        y = self.op("MatMul", [x, self.const(f"{scope}.weight", w)], scope)
        return self.op("Add", [y, self.const(f"{scope}.bias", (0.05 * self.rng.standard_normal(cout))
                                             .astype(np.float32))], scope)

    def layer_norm(self, x: str, scope: str, c: int) -> str:
        w = (1 + 0.1 * self.rng.standard_normal(c)).astype(np.float32)
        b = (0.1 * self.rng.standard_normal(c)).astype(np.float32)
        return self.op("LayerNormalization", [x, self.const(f"{scope}.weight", w), self.const(f"{scope}.bias", b)],
                       scope, axis=-1, epsilon=1e-6)

    def layer_norm_2d(self, x: str, scope: str, c: int) -> str:
        """timm's LayerNorm2d: NCHW → NHWC, LayerNorm over C, back."""
        y = self.op("Transpose", [x], scope, perm=[0, 2, 3, 1])
        return self.op("Transpose", [self.layer_norm(y, scope, c)], scope, perm=[0, 3, 1, 2])

    def gelu(self, x: str, scope: str) -> str:
        """GELU as torch exports it at opset 17: x · (1 + erf(x / √2)) / 2."""
        d = self.op("Div", [x, self.const(f"{scope}.sqrt2", np.float32(np.sqrt(2)))], scope)
        e = self.op("Add", [self.op("Erf", [d], scope), self.const(f"{scope}.one", np.float32(1))], scope)
        return self.op("Mul", [self.op("Mul", [x, e], scope), self.const(f"{scope}.half", np.float32(0.5))], scope)

    def relu(self, x: str, scope: str) -> str:
        return self.op("Relu", [x], scope)

    def relu6(self, x: str, scope: str) -> str:
        bounds = [self.const(f"{scope}.min", np.float32(0)), self.const(f"{scope}.max", np.float32(6))]
        return self.op("Clip", [x, *bounds], scope)

    def global_pool(self, x: str, scope: str) -> str:
        return self.op("GlobalAveragePool", [x], scope)


# --------------------------------------------------------------------------------------------------------
# The patterns (each: a graph body from "input" to a feature map [N, C, h, w]; returns (tensor, C))


def _stem(g: Graph, c: int) -> str:
    """A patchify stem, 3 → c channels, 8×8 stride 8 (224 → 28): small maps keep the tests fast."""
    return g.relu(g.conv("input", "/stem/conv", 3, c, 8, 8), "/stem")


def convnext_block(g: Graph, x: str, scope: str, c: int, gamma: float, std: float | None = None) -> str:
    """timm's ConvNeXtBlock: depthwise 7×7, NHWC, LayerNorm, Linear 4c, GELU, Linear c, NCHW, layer scale (a Mul by
    the parameter gamma [1,c,1,1]), residual add; Linear weights of ``std`` (timm's init) or He-scaled."""
    y = g.conv(x, f"{scope}/conv_dw", c, c, 7, groups=c, gain=1.0)
    y = g.op("Transpose", [y], scope, perm=[0, 2, 3, 1])
    y = g.layer_norm(y, f"{scope}/norm", c)
    y = g.gelu(g.linear(y, f"{scope}/mlp/fc1", c, 4 * c, std=std), f"{scope}/mlp/act")
    y = g.linear(y, f"{scope}/mlp/fc2", 4 * c, c, gain=1.0, std=std)
    y = g.op("Transpose", [y], scope, perm=[0, 3, 1, 2])
    scale = (gamma * (1 + 0.2 * g.rng.standard_normal((1, c, 1, 1)))).astype(np.float32)
    y = g.op("Mul", [y, g.const(f"{scope}.gamma", scale)], scope)
    return g.op("Add", [y, x], scope)


def _convnext(gamma: float, std: float | None = None) -> Callable[[Graph], tuple[str, int]]:
    def body(g: Graph) -> tuple[str, int]:
        x = g.layer_norm_2d(g.conv("input", "/stem/stem.0", 3, 32, 8, 8), "/stem/stem.1", 32)
        for i in range(2):
            x = convnext_block(g, x, f"/stages/stages.0/blocks/blocks.{i}", 32, gamma, std)
        x = g.conv(g.layer_norm_2d(x, "/stages/stages.1/downsample/0", 32), "/stages/stages.1/downsample/1", 32, 64,
                   2, 2)
        return convnext_block(g, x, "/stages/stages.1/blocks/blocks.0", 64, gamma, std), 64
    return body


def _depthwise(g: Graph) -> tuple[str, int]:
    """MobileNetV2's inverted residuals: 1×1 expand, ReLU6, depthwise 3×3 (stride 1 then 2), ReLU6, 1×1 project,
    residual add where the shape allows."""
    x = g.relu6(g.conv("input", "/features/0/conv", 3, 16, 8, 8), "/features/0")
    c = 16
    for i, stride in enumerate((1, 2, 1), start=1):
        s = f"/features/{i}"
        y = g.relu6(g.conv(x, f"{s}/expand", c, 4 * c, 1), f"{s}/expand")
        y = g.relu6(g.conv(y, f"{s}/dw", 4 * c, 4 * c, 3, stride, groups=4 * c), f"{s}/dw")
        y = g.conv(y, f"{s}/project", 4 * c, 32 if i == 2 else c, 1, gain=1.0)
        x = y if stride != 1 or i == 2 else g.op("Add", [x, y], s)
        c = 32 if i >= 2 else c
    return x, c


def _squeeze_excite(g: Graph) -> tuple[str, int]:
    """ResNet blocks with squeeze-excitation: global pool, 1×1 reduce, ReLU, 1×1 expand, Sigmoid, Mul into the map,
    residual add."""
    x = _stem(g, 32)
    for i in range(2):
        s = f"/layer1/{i}"
        y = g.relu(g.conv(x, f"{s}/conv1", 32, 32, 3), f"{s}/conv1")
        y = g.conv(y, f"{s}/conv2", 32, 32, 3, gain=1.0)
        z = g.relu(g.conv(g.global_pool(y, f"{s}/se"), f"{s}/se/fc1", 32, 16, 1), f"{s}/se")
        z = g.op("Sigmoid", [g.conv(z, f"{s}/se/fc2", 16, 32, 1)], f"{s}/se")
        x = g.relu(g.op("Add", [g.op("Mul", [y, z], f"{s}/se"), x], s), s)
    return x, 32


def _pool_in_middle(g: Graph) -> tuple[str, int]:
    """A global-context block (GCNet): the map's global average through a bottleneck of ratio 1/4 (Linear 32 → 8,
    LayerNorm, ReLU, Linear 8 → 32), added back to every position; then convolutions after the pooling. ModelOpt
    leaves both Linears unquantized (a GEMM with K or N under 16)."""
    x = _stem(g, 32)
    ctx = g.op("Flatten", [g.global_pool(x, "/gc")], "/gc", axis=1)
    ctx = g.relu(g.layer_norm(g.linear(ctx, "/gc/transform/0", 32, 8), "/gc/transform/1", 8), "/gc")
    ctx = g.linear(ctx, "/gc/transform/3", 8, 32, gain=1.0)
    ctx = g.op("Reshape", [ctx, g.const("/gc/shape", np.array([-1, 32, 1, 1], np.int64))], "/gc")
    x = g.op("Add", [x, ctx], "/gc")
    x = g.relu(g.conv(x, "/layer2/conv1", 32, 32, 3, 2), "/layer2")
    return g.relu(g.conv(x, "/layer2/conv2", 32, 32, 3), "/layer2/1"), 32


def _input_residual(g: Graph) -> tuple[str, int]:
    """Residual adds from the graph input (a learned correction of the image, as in denoising front ends) and from
    each block's input (identity shortcuts)."""
    y = g.relu(g.conv("input", "/pre/conv1", 3, 16, 3), "/pre")
    y = g.conv(y, "/pre/conv2", 16, 3, 3, gain=0.2)  # 3 outputs, 16 inputs: quantized (ModelOpt's INT8 rule)
    x = _stem_from(g, g.op("Add", ["input", y], "/pre"), 32)
    for i in range(2):
        s = f"/layer1/{i}"
        z = g.relu(g.conv(x, f"{s}/conv1", 32, 32, 3), f"{s}/conv1")
        x = g.relu(g.op("Add", [x, g.conv(z, f"{s}/conv2", 32, 32, 3, gain=1.0)], s), s)
    return x, 32


def _stem_from(g: Graph, x: str, c: int) -> str:
    return g.relu(g.conv(x, "/stem/conv", 3, c, 8, 8), "/stem")


ZOO: dict[str, Callable[[Graph], tuple[str, int]]] = {
    "convnext": _convnext(0.5),  # layer scale as trained (gammas of trained ConvNeXts are 0.1–1)
    # timm's convnext_tiny made without its pretrained weights: layer scale ls_init_value 1e-6, Linears std 0.02
    "convnext_fresh": _convnext(1e-6, std=0.02),
    "depthwise": _depthwise,
    "squeeze_excite": _squeeze_excite,
    "pool_in_middle": _pool_in_middle,
    "input_residual": _input_residual,
}


# --------------------------------------------------------------------------------------------------------
# The classifier


def _model(g: Graph, outputs: list, name: str):
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
    graph = helper.make_graph(g.nodes, name, [inp], outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnx_zoo")
    model.ir_version = 8
    return model


def _features(model, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": images[i:i + 16]})[0] for i in range(0, len(images), 16)])


def write_zoo_model(name: str, path: Path, fit_images: np.ndarray, seed: int = 0) -> Path:
    """The FP32 ONNX of zoo graph ``name`` at ``path``: the body, global average pool, flatten, and a head fitted
    to the pooled features of ``fit_images`` (preprocessed N×3×224×224)."""
    import onnx
    from onnx import TensorProto, helper

    from trt_res2net.model.realistic_random import fit_classifier_head

    g = Graph(seed)
    x, c = ZOO[name](g)
    pooled = g.op("Flatten", [g.global_pool(x, "/head/global_pool")], "/head/flatten", axis=1)
    features = _features(_model(g, [helper.make_tensor_value_info(pooled, TensorProto.FLOAT, ["N", c])], name),
                         fit_images)
    weight, bias = fit_classifier_head(features, CLASSES, seed=seed, max_active=32)
    g.nodes.append(helper.make_node("Gemm", [pooled, g.const("/head/fc.weight", weight),
                                             g.const("/head/fc.bias", bias)], ["logits"], name="/head/fc/Gemm"))
    model = _model(g, [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], name)
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
