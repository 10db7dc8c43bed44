"""Res2Net → ONNX, computing exactly what PaddleClas computes (tests/test_paddle_reference.py), BatchNorm folded.

The graph is assembled from one small function per architecture piece (stem, block, shortcut, head). Big
models are written by streaming: each folded tensor is serialised and written on its own, so exporting
res2net200 never holds a second full copy of the weights (see docs/export.md for time and peak memory).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core import files as atomic
from ..core.errors import user_error_from_os_error
from ..core.lazy import lazy_import
from ..core.version import __version__
from ..data.preprocess import SPEC
from .zoo import BlockLayout, ConvUnit, ModelSpec, block_layouts, feature_channels, stem_units

np = lazy_import("numpy")

DEFAULT_OPSET = 17  # TensorRT 8.6's ONNX parser reads up to opset 17
BN_EPSILON = 1e-5
INPUT_NAME = "input"
LOGITS_NAME = "logits"
PROBS_NAME = "probabilities"
BATCH_DIM = "batch"


def fold_bn(weights: dict[str, np.ndarray], prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the inference BatchNorm folded in (computed in float64, stored float32)."""
    w = weights[f"{prefix}._conv.weight"].astype(np.float64)
    gamma = weights[f"{prefix}._batch_norm.weight"].astype(np.float64)
    beta = weights[f"{prefix}._batch_norm.bias"].astype(np.float64)
    mean = weights[f"{prefix}._batch_norm._mean"].astype(np.float64)
    var = weights[f"{prefix}._batch_norm._variance"].astype(np.float64)
    scale = gamma / np.sqrt(var + BN_EPSILON)
    return (w * scale[:, None, None, None]).astype(np.float32), (beta - mean * scale).astype(np.float32)


class _GraphBuilder:
    """Collects nodes and (lazily folded) initializers; node and tensor names follow the weight keys."""

    def __init__(self):
        from onnx import helper

        self.helper = helper
        self.nodes = []
        # (name, shape, make_array(weights)): arrays are made only when written, one at a time
        self.initializers: list[tuple[str, tuple[int, ...], object]] = []

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def const(self, name, shape, make):
        self.initializers.append((name, tuple(shape), make))
        return name

    def conv_bn(self, x: str, u: ConvUnit) -> str:
        w_name = self.const(f"{u.prefix}.weight", (u.cout, u.cin, u.kernel, u.kernel),
                            lambda w, p=u.prefix: fold_bn(w, p)[0])
        b_name = self.const(f"{u.prefix}.bias", (u.cout,), lambda w, p=u.prefix: fold_bn(w, p)[1])
        pad = (u.kernel - 1) // 2
        y = self.node("Conv", [x, w_name, b_name], f"{u.prefix}.conv", kernel_shape=[u.kernel] * 2,
                      strides=[u.stride] * 2, pads=[pad] * 4, dilations=[1, 1], group=1)
        return self.node("Relu", [y], f"{u.prefix}.relu") if u.relu else y


def _stem(g: _GraphBuilder, spec: ModelSpec, x: str) -> str:
    for u in stem_units(spec):
        x = g.conv_bn(x, u)
    return g.node("MaxPool", [x], "stem.maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


def _bottle2neck(g: _GraphBuilder, b: BlockLayout, x: str) -> str:
    p = b.prefix
    h = g.conv_bn(x, b.conv0)
    scales = len(b.branches) + 1
    sizes = g.const(f"{p}.split_sizes", (scales,), lambda w: np.full(scales, b.split, np.int64))
    chunks = [f"{p}.split_{j}" for j in range(1, scales + 1)]
    g.nodes.append(g.helper.make_node("Split", [h, sizes], chunks, name=f"{p}.split", axis=1))
    ys = []
    for j, unit in enumerate(b.branches):
        # PaddleClas adds the previous branch's output only when the block stride is 1 —
        # including the first block of stage 1, unlike timm.
        inp = chunks[j] if (j == 0 or b.stride == 2) else g.node("Add", [chunks[j], ys[-1]], f"{unit.prefix}.add")
        ys.append(g.conv_bn(inp, unit))
    last = chunks[-1]
    if b.stride == 2:  # exclusive average: padded zeros are not counted (count_include_pad=0)
        last = g.node("AveragePool", [last], f"{p}.split_pool", kernel_shape=[3, 3], strides=[2, 2],
                      pads=[1, 1, 1, 1], count_include_pad=0, ceil_mode=0)
    cat = g.node("Concat", ys + [last], f"{p}.concat", axis=1)
    out = g.conv_bn(cat, b.conv2)
    return g.node("Relu", [g.node("Add", [_shortcut(g, b, x), out], f"{p}.add")], f"{p}.relu")


def _shortcut(g: _GraphBuilder, b: BlockLayout, x: str) -> str:
    if b.shortcut == "identity":
        return x
    if b.shortcut == "pool_conv":  # vd: AvgPool 2x2/2, ceil_mode, exclusive — then a stride-1 1x1 conv
        x = g.node("AveragePool", [x], f"{b.prefix}.short_pool", kernel_shape=[2, 2], strides=[2, 2],
                   pads=[0, 0, 0, 0], ceil_mode=1, count_include_pad=0)
    return g.conv_bn(x, b.short)


def _head(g: _GraphBuilder, spec: ModelSpec, x: str, softmax: bool) -> str:
    x = g.node("GlobalAveragePool", [x], "head.pool")
    x = g.node("Flatten", [x], "head.flatten", axis=1)
    c = feature_channels(spec)
    w = g.const("out.weight", (c, spec.num_classes), lambda w: w["out.weight"])  # [in, out]: transB=0
    b = g.const("out.bias", (spec.num_classes,), lambda w: w["out.bias"])
    name = LOGITS_NAME if not softmax else "head.logits"
    y = g.node("Gemm", [x, w, b], name, transB=0)
    return g.node("Softmax", [y], PROBS_NAME, axis=-1) if softmax else y


def _metadata(spec: ModelSpec, extra: dict | None) -> dict[str, str]:
    meta = {
        "model_name": spec.name,
        "architecture": f"{spec.paddle_name} (depths {list(spec.depths)}, width {spec.width}, scales {spec.scales})",
        "num_classes": str(spec.num_classes),
        "preprocessing": SPEC.to_json(),
        "exporter": f"trt_res2net {__version__}",
    }
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def _skeleton(spec: ModelSpec, opset: int, softmax: bool, metadata: dict | None, image_size: int | None):
    """The model without initializer data, plus the list of (name, shape, make_array) initializers."""
    from onnx import TensorProto, helper

    if opset < 13:
        raise ValueError("opset must be at least 13 (Split with a sizes input)")
    hw = [image_size, image_size] if image_size else ["height", "width"]
    g = _GraphBuilder()
    x = _stem(g, spec, INPUT_NAME)
    for b in block_layouts(spec):
        x = _bottle2neck(g, b, x)
    y = _head(g, spec, x, softmax)
    graph = helper.make_graph(
        g.nodes, spec.name,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, 3, *hw])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [BATCH_DIM, spec.num_classes])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="trt_res2net", producer_version=__version__)
    model.ir_version = 8 if opset <= 17 else 9  # the oldest IR that carries the opset, for old parsers
    helper.set_model_props(model, _metadata(spec, metadata))
    return model, g.initializers


def _tensor(name, shape, make, weights):
    from onnx import numpy_helper

    arr = np.asarray(make(weights))
    assert arr.shape == shape, (name, arr.shape, shape)
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def build_onnx(spec: ModelSpec, weights: dict[str, np.ndarray], *, opset: int = DEFAULT_OPSET,
               softmax: bool = False, metadata: dict | None = None, image_size: int | None = SPEC.crop_size):
    """The whole model as an in-memory ``onnx.ModelProto`` (convenient for small models and tests).

    ``image_size`` fixes the spatial input size (224, the crop of the preprocessing spec); None leaves
    height and width dynamic. The batch dimension is always dynamic."""
    model, inits = _skeleton(spec, opset, softmax, metadata, image_size)
    model.graph.initializer.extend(_tensor(*i, weights) for i in inits)
    return model


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_onnx(spec: ModelSpec, weights: dict[str, np.ndarray], path: str | os.PathLike, *,
                opset: int = DEFAULT_OPSET, softmax: bool = False, metadata: dict | None = None,
                image_size: int | None = SPEC.crop_size, progress: bool = False) -> Path:
    """Write the model to ``path`` atomically; the bytes equal ``build_onnx(...).SerializeToString()``. An OSError
    (a full disk, say) is a one-line UserError naming ``path``, and leaves no temporary.

    Protobuf writes fields in field-number order, so the file is: model fields before ``graph`` (7), the graph
    (nodes and name, then each initializer (field 5) serialised one at a time, then inputs/outputs), then the
    remaining model fields. Only one folded tensor is in memory at a time.
    """
    from onnx import GraphProto, ModelProto
    from tqdm import tqdm

    model, inits = _skeleton(spec, opset, softmax, metadata, image_size)
    graph = model.graph
    head = GraphProto(node=graph.node, name=graph.name).SerializeToString()
    tail = GraphProto(input=graph.input, output=graph.output).SerializeToString()
    before = ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                        producer_version=model.producer_version).SerializeToString()
    after = ModelProto(opset_import=model.opset_import, metadata_props=model.metadata_props).SerializeToString()
    # The graph is length-prefixed, so each initializer's serialised size is computed from its shape first.
    entries = []
    for name, shape, make in inits:
        dtype = np.int64 if name.endswith("split_sizes") else np.float32
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        size = _tensor_entry_size(name, shape, dtype, nbytes)
        entries.append((name, shape, make, size))
    graph_len = len(head) + len(tail) + sum(1 + len(_varint(e[3])) + e[3] for e in entries)
    path = Path(path)
    try:
        with atomic.atomic_open(path, "wb") as f:
            f.write(before + b"\x3a" + _varint(graph_len) + head)  # field 7 (graph), length-delimited
            for name, shape, make, size in tqdm(entries, desc=f"export {path.name}", unit="tensor",
                                                disable=not progress, leave=False):
                data = _tensor(name, shape, make, weights).SerializeToString()
                assert len(data) == size, (name, len(data), size)
                f.write(b"\x2a" + _varint(size) + data)  # field 5 (initializer), length-delimited
            f.write(tail + after)
    except OSError as e:  # a full disk, a folder that refuses the file: one line naming it (the temporary is gone)
        raise user_error_from_os_error(atomic.name_the_path(e, path), "write") from None
    return path


def _tensor_entry_size(name: str, shape: tuple[int, ...], dtype, nbytes: int) -> int:
    """Serialised size of a raw-data TensorProto, without materialising its data."""
    from onnx import TensorProto, helper

    probe = TensorProto(dims=shape, data_type=helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), name=name)
    return probe.ByteSize() + 1 + len(_varint(nbytes)) + nbytes  # + field 9 tag, length, bytes


def check_onnx(path: str | os.PathLike) -> None:
    """onnx.checker (full check, which includes strict shape inference) on the written file."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def graph_statistics(spec: ModelSpec, image_size: int = SPEC.crop_size) -> dict[str, int | float]:
    """Trainable parameters and MACs, read off the generated graph (no weight data needed).

    Every Conv's bias is a folded BatchNorm and stands for that BN's two trainable vectors (gamma, beta);
    MACs are conv + FC multiply-accumulates for one image; GFLOPs = 2 × MACs / 1e9 (the card's convention).
    """
    import onnx
    from onnx import TensorProto, helper

    model, inits = _skeleton(spec, DEFAULT_OPSET, False, None, image_size)
    shapes = {name: shape for name, shape, _ in inits}
    for name, shape, make in inits:
        if name.endswith("split_sizes"):
            model.graph.initializer.append(_tensor(name, shape, make, None))
        else:  # weight shapes only: declared as typed graph inputs so shape inference can see them
            model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inferred.graph.value_info}
    params = macs = 0
    for node in inferred.graph.node:
        if node.op_type == "Conv":
            w, b = shapes[node.input[1]], shapes[node.input[2]]
            params += int(np.prod(w)) + 2 * b[0]
            ho, wo = dims[node.output[0]][2:]
            macs += int(np.prod(w)) * ho * wo
        elif node.op_type == "Gemm":
            w, b = shapes[node.input[1]], shapes[node.input[2]]
            params += int(np.prod(w)) + b[0]
            macs += int(np.prod(w))
    return {"params": params, "macs": macs, "gflops": 2 * macs / 1e9}
