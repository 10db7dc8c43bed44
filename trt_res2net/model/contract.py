"""The one contract a classification model file meets, checked in the same words by the builder, both runtimes and
the Triton export, before any work is done on it.

A classifier here has exactly one image input and one output:

- input: float32 (or float16), rank 4, NCHW ``[N, 3, H, W]`` with ``H = W = 224`` (what the preprocessing makes);
  any of N, C, H, W may be symbolic, and a symbolic C, H or W is fed 3, 224, 224;
- output: float32 (or float16), ``[N, classes]``, optionally with trailing 1s (``[N, classes, 1, 1]``); the class
  count may be symbolic (a runtime then learns it from one probe batch).

That is what PaddleClas's own exports look like through paddle2onnx (input ``x`` ``[-1, 3, 224, 224]``, output
``softmax_0.tmp_0`` ``[-1, 1000]`` after a Softmax), as well as torchvision's and timm's exports and this project's
(``input`` ``[batch, 3, 224, 224]`` → ``logits`` ``[batch, 1000]``). NHWC inputs (TensorFlow/Keras exports),
one-channel inputs, several inputs or outputs, and image-shaped outputs (segmentation) are refused.

Each reader turns what it has into :class:`TensorSpec` lists — :func:`inspect_onnx` an ONNX file (without its
weights), ``runtime.onnx_runtime`` an ONNX Runtime session, ``runtime.trt_engine`` a deserialized engine — and
:func:`check_classifier_io` decides.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError
from ..data.preprocess import SPEC

FLOAT_TYPES = ("float32", "float16")
# Ops that pass a tensor through unchanged in value: a Softmax behind them still makes the output probabilities.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "CastLike"}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as every reader sees it: ``None`` for a symbolic dimension; numpy's dtype names."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass(frozen=True)
class ClassifierIO:
    """The checked image input and class-score output of a model file."""

    input: TensorSpec
    output: TensorSpec

    @property
    def batch(self) -> int | None:
        """The fixed batch written in the model, or None for a dynamic batch."""
        return self.input.shape[0]

    @property
    def num_classes(self) -> int | None:
        return self.output.shape[1]

    def chw(self) -> tuple[int, int, int]:
        """The input's C, H, W with symbolic dimensions filled in with what the preprocessing feeds."""
        c, h, w = self.input.shape[1:]
        return (c or 3, h or SPEC.crop_size, w or SPEC.crop_size)


def check_classifier_io(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], where: str,
                        dtypes: Sequence[str] = FLOAT_TYPES) -> ClassifierIO:
    """The contract (module docstring); UserError naming ``where`` and the first thing that breaks it.

    ``dtypes``: the data types accepted for the input and the output (a consumer that feeds float32 only, such as
    the Triton ensembles, passes ``("float32",)``)."""
    expected = " or ".join(dtypes)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise UserError(f"{where}: has {len(inputs)} inputs ({names}); an image classifier has one")
    if len(outputs) != 1:
        names = ", ".join(o.name for o in outputs)
        raise UserError(f"{where}: has {len(outputs)} outputs ({names}); expected one, [N, classes]")
    inp, out = inputs[0], outputs[0]
    if inp.dtype not in dtypes:
        raise UserError(f"{where}: input {inp.name!r} is {inp.dtype}; expected {expected}")
    c = SPEC.crop_size
    shape = list(inp.shape)
    if len(shape) != 4 or shape[1] not in (3, None) or not set(shape[2:]) <= {c, None}:
        raise UserError(f"{where}: input {inp.name!r} has shape {_show(shape)}; expected NCHW [N, 3, {c}, {c}] "
                        f"(the preprocessing makes 3×{c}×{c})")
    oshape = list(out.shape)
    if len(oshape) < 2 or oshape[1] == 0 or any(d is not None and d != 1 for d in oshape[2:]):
        raise UserError(f"{where}: output {out.name!r} has shape {_show(oshape)}; expected [N, classes]")
    if out.dtype not in dtypes:
        raise UserError(f"{where}: output {out.name!r} is {out.dtype}; expected {expected}")
    if inp.shape[0] is not None and out.shape[0] is not None and inp.shape[0] != out.shape[0]:
        raise UserError(f"{where}: output {out.name!r} has batch {out.shape[0]}, the input {inp.shape[0]}; "
                        "expected [N, classes] for an [N, 3, H, W] input")
    return ClassifierIO(inp, out)


def _show(shape: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# --------------------------------------------------------------------------------------------------------
# ONNX files


@dataclass(frozen=True)
class OnnxIO:
    """What the builder and the Triton export need to know about a classification ONNX: its checked I/O, the
    opset, whether the graph already is Q/DQ or FP16, and whether it ends in a Softmax."""

    io: ClassifierIO
    opset: int
    has_qdq: bool
    has_fp16: bool
    outputs_probabilities: bool = False

    @property
    def input_name(self) -> str:
        return self.io.input.name

    @property
    def input_shape(self) -> tuple[int | None, ...]:
        return self.io.input.shape

    @property
    def output_name(self) -> str:
        return self.io.output.name

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        return self.io.output.shape

    @property
    def batch(self) -> int | None:
        return self.io.batch

    def chw(self) -> tuple[int, int, int]:
        return self.io.chw()


def _onnx_dtype(elem_type: int) -> str:
    import numpy as np
    import onnx

    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return onnx.helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()


def _tensor_spec(value_info) -> TensorSpec:
    tensor = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)
    return TensorSpec(value_info.name, shape, _onnx_dtype(tensor.elem_type))


# Protocol-buffer field numbers (onnx.proto): ModelProto.graph, GraphProto.initializer / sparse_initializer, and the
# TensorProto fields that hold data (float, int32, string, int64, raw, double, uint64).
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DATA_FIELDS = frozenset({4, 5, 6, 7, 9, 10, 11})


def _varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buf, start: int, end: int):
    """(field number, wire type, start of the field, start of its payload, end) per field of buf[start:end]."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
            payload = pos
        elif wire == 1:
            payload, pos = pos, pos + 8
        elif wire == 2:
            length, payload = _varint(buf, pos)
            pos = payload + length
        elif wire == 5:
            payload, pos = pos, pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, wire, field_start, payload, pos


def _without_data(buf, start: int, end: int, drop: frozenset) -> bytes:
    return b"".join(bytes(buf[f:e]) for n, _w, f, _p, e in _fields(buf, start, end) if n not in drop)


def _len_field(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _structure_bytes(buf) -> bytes:
    """An ONNX file's ModelProto bytes with the data of every initializer left out (names, types and shapes kept),
    reading only what it keeps: a 300 MB model's structure in milliseconds, without its weights in memory."""
    out = []
    for number, wire, f, payload, e in _fields(buf, 0, len(buf)):
        if number == _MODEL_GRAPH and wire == 2:
            graph = []
            for gnum, gwire, gf, gp, ge in _fields(buf, payload, e):
                if gnum == _GRAPH_INITIALIZER and gwire == 2:
                    graph.append(_len_field(gnum, _without_data(buf, gp, ge, _TENSOR_DATA_FIELDS)))
                else:
                    graph.append(bytes(buf[gf:ge]))
            out.append(_len_field(number, b"".join(graph)))
        else:
            out.append(bytes(buf[f:e]))
    return b"".join(out)


def load_graph(path: str | os.PathLike):
    """The ONNX model's structure — graph, inputs, outputs, opsets, metadata, and its initializers' names, types and
    shapes, without their data (read past, never loaded: checking a 300 MB model costs what checking a small one
    does). UserError for a missing, unreadable or damaged file."""
    import mmap

    import onnx

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an ONNX file")
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ValueError("empty file")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                data = _structure_bytes(memoryview(buf))
        model = onnx.ModelProto()
        model.ParseFromString(data)
        if not model.HasField("graph"):
            raise ValueError("no graph")
        return model
    except FileNotFoundError:
        raise UserError(f"ONNX file {path} not found") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except Exception as e:  # a damaged or foreign file: a truncated field, an unknown wire type, DecodeError
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None


def output_is_softmax(graph, output_name: str) -> bool:
    """Whether the graph output is produced by a Softmax (through shape-only ops such as Reshape or Cast)."""
    producer = {out: node for node in graph.node for out in node.output}
    name, seen = output_name, set()
    while name in producer and name not in seen:
        seen.add(name)
        node = producer[name]
        if node.op_type == "Softmax":
            return True
        if node.op_type not in _PASS_THROUGH or not node.input:
            return False
        name = node.input[0]
    return False


def inspect_onnx(path: str | os.PathLike, dtypes: Sequence[str] = FLOAT_TYPES) -> OnnxIO:
    """An ONNX file's checked I/O (:func:`check_classifier_io`), opset, and whether it is Q/DQ, FP16 or ends in a
    Softmax — read without its external weights."""
    import onnx

    model = load_graph(path)
    g = model.graph
    init_names = {t.name for t in g.initializer}
    inputs = [_tensor_spec(i) for i in g.input if i.name not in init_names]
    io = check_classifier_io(inputs, [_tensor_spec(o) for o in g.output], str(path), dtypes)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops = {n.op_type for n in g.node}
    has_fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in g.node
    )
    return OnnxIO(io=io, opset=int(opset), has_qdq=bool(ops & {"QuantizeLinear", "DequantizeLinear"}),
                  has_fp16=has_fp16, outputs_probabilities=output_is_softmax(g, io.output.name))


def onnx_output_is_softmax(path: str | os.PathLike, output_name: str) -> bool:
    """:func:`output_is_softmax` of an ONNX file; False when the file cannot be read here."""
    try:
        return output_is_softmax(load_graph(path).graph, output_name)
    except UserError:
        return False
