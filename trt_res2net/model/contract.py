"""The one contract a classification model file meets, checked in the same words by the builder, both runtimes and
the Triton export, before any work is done on it.

A classifier here has exactly one image input and one output:

- input: float32 (or float16), rank 4, NCHW ``[N, 3, H, W]``, any H×W (``data.recipe`` fits the preprocessing to
  it); any of N, C, H, W may be symbolic, and a symbolic C is fed 3, a symbolic H or W the recipe's crop;
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
from ..core.protobuf_wire import fields, varint
from ..data.preprocess_spec import SPEC, PreprocessSpec
from ..data.recipe import FROM_MODEL, InputRecipe, PreprocessOptions, choose_recipe

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

    @property
    def input_hw(self) -> tuple[int | None, int | None]:
        """The input's H and W; None where dynamic."""
        return self.input.shape[2], self.input.shape[3]

    def chw(self, spec: PreprocessSpec = SPEC) -> tuple[int, int, int]:
        """The input's C, H, W with symbolic dimensions filled in with what ``spec`` feeds."""
        c, h, w = self.input.shape[1:]
        return (c or 3, h or spec.crop_hw[0], w or spec.crop_hw[1])


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
    shape = list(inp.shape)
    if len(shape) != 4 or shape[1] not in (3, None):
        raise UserError(f"{where}: input {inp.name!r} has shape {_show(shape)}; expected NCHW [N, 3, H, W] (the "
                        "preprocessing makes 3-channel RGB images)")
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

    def chw(self, spec: PreprocessSpec = SPEC) -> tuple[int, int, int]:
        return self.io.chw(spec)


# ONNX's TensorProto.DataType numbers → numpy's dtype names (the names ONNX's own mapping gives), for the readers.
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "object",
                9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64",
                15: "complex128", 16: "bfloat16", 17: "float8e4m3fn", 18: "float8e4m3fnuz", 19: "float8e5m2",
                20: "float8e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4e2m1"}
_FLOAT16 = 10


def _int(buf, payload: int) -> int:
    value = varint(buf, payload)[0]
    return value - (1 << 64) if value >= 1 << 63 else value  # int64 fields: two's complement


def _str(buf, payload: int, end: int) -> str:
    return bytes(buf[payload:end]).decode("utf-8")


def _messages(buf, start: int, end: int, number: int):
    """(start, end) of each length-delimited field ``number`` of a message."""
    for n, wire, p, e in fields(buf, start, end):
        if n == number:
            if wire != 2:
                raise ValueError(f"field {n} has wire type {wire}, expected a message")
            yield p, e


def _value_info(buf, start: int, end: int) -> TensorSpec:
    """ValueInfoProto (name 1, type 2) → TypeProto.tensor_type (1) → elem_type (1), shape (2) → dim (1) →
    dim_value (1) or dim_param (2)."""
    name, elem_type, shape = "", 0, []
    for n, wire, p, e in fields(buf, start, end):
        if n == 1 and wire == 2:
            name = _str(buf, p, e)
        elif n == 2 and wire == 2:
            for tp, te in _messages(buf, p, e, 1):
                for tn, twire, q, qe in fields(buf, tp, te):
                    if tn == 1 and twire == 0:
                        elem_type = _int(buf, q)
                    elif tn == 2 and twire == 2:
                        for dp, de in _messages(buf, q, qe, 1):
                            values = [_int(buf, v) for dn, dw, v, _ in fields(buf, dp, de) if dn == 1 and dw == 0]
                            shape.append(values[-1] if values and values[-1] > 0 else None)
    return TensorSpec(name, tuple(shape), _ONNX_DTYPES.get(elem_type, f"onnx type {elem_type}"))


@dataclass(frozen=True)
class OnnxNode:
    """A graph node as the checks here read it (the names of ONNX's NodeProto fields)."""

    op_type: str
    input: tuple[str, ...]
    output: tuple[str, ...]
    cast_to: int | None = None  # a Cast's ``to``


@dataclass(frozen=True)
class OnnxStructure:
    """An ONNX file's opset, graph inputs (initializers left out) and outputs, nodes, and its initializers'
    data types: read from the protocol-buffer fields themselves, past the weights' bytes."""

    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    node: tuple[OnnxNode, ...]
    initializer_types: dict
    metadata: dict  # the model's metadata_props, key → value


def _node(buf, start: int, end: int) -> OnnxNode:
    """NodeProto: input 1, output 2, op_type 4, attribute 5 (AttributeProto: name 1, i 3)."""
    inputs, outputs, op_type, cast_to = [], [], "", None
    for n, wire, p, e in fields(buf, start, end):
        if wire != 2:
            continue
        if n == 1:
            inputs.append(_str(buf, p, e))
        elif n == 2:
            outputs.append(_str(buf, p, e))
        elif n == 4:
            op_type = _str(buf, p, e)
        elif n == 5:
            attr = {an: (_str(buf, ap, ae) if aw == 2 else _int(buf, ap) if aw == 0 else None)
                    for an, aw, ap, ae in fields(buf, p, e) if an in (1, 3)}
            if attr.get(1) == "to" and isinstance(attr.get(3), int):
                cast_to = attr[3]
    return OnnxNode(op_type, tuple(inputs), tuple(outputs), cast_to if op_type == "Cast" else None)


def _structure(buf) -> OnnxStructure:
    """ModelProto: opset_import 8 (domain 1, version 2), graph 7, metadata_props 14 (key 1, value 2). GraphProto:
    node 1, initializer 5 (TensorProto: data_type 2, name 8), input 11, output 12."""
    opset, graph, metadata = 0, None, {}
    for n, wire, p, e in fields(buf, 0, len(buf)):
        if n == 14 and wire == 2:
            entry = {fn: _str(buf, fp, fe) for fn, fw, fp, fe in fields(buf, p, e) if fw == 2 and fn in (1, 2)}
            metadata[entry.get(1, "")] = entry.get(2, "")
        if n == 8 and wire == 2:
            entry = {fn: (_str(buf, fp, fe) if fw == 2 else _int(buf, fp)) for fn, fw, fp, fe in fields(buf, p, e)
                     if (fn, fw) in ((1, 2), (2, 0))}
            if entry.get(1, "") in ("", "ai.onnx"):
                opset = entry.get(2, 0)
        elif n == 7:
            if wire != 2:
                raise ValueError("the graph field is not a message")
            graph = (p, e)
    if graph is None:
        raise ValueError("no graph")
    nodes, inputs, outputs, init_types = [], [], [], {}
    for n, wire, p, e in fields(buf, *graph):
        if wire != 2:
            continue
        if n == 1:
            nodes.append(_node(buf, p, e))
        elif n == 5:
            name, dtype = "", 0
            for tn, tw, q, qe in fields(buf, p, e):  # reads past the data fields without copying them
                if tn == 8 and tw == 2:
                    name = _str(buf, q, qe)
                elif tn == 2 and tw == 0:
                    dtype = _int(buf, q)
            init_types[name] = dtype
        elif n == 11:
            inputs.append(_value_info(buf, p, e))
        elif n == 12:
            outputs.append(_value_info(buf, p, e))
    return OnnxStructure(int(opset), tuple(i for i in inputs if i.name not in init_types), tuple(outputs),
                         tuple(nodes), init_types, metadata)


def read_structure(path: str | os.PathLike) -> OnnxStructure:
    """The ONNX model's structure — opset, inputs, outputs, nodes, initializers' data types — without its weights
    (read past in a memory map, never loaded: a 300 MB model is checked as fast as a small one) and without
    importing ONNX's package (numpy and protobuf: not needed to build an engine from it). UserError for a missing,
    unreadable or damaged file."""
    import mmap

    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not an ONNX file")
    problem = "empty file"
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size:
                with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                    view = memoryview(buf)
                    try:
                        return _structure(view)
                    except Exception as e:  # a damaged or foreign file: a truncated field, a bad wire type or UTF-8
                        problem = f"{type(e).__name__}: {e}"  # (the traceback, and its views of the map, go here)
                    finally:
                        view.release()
    except FileNotFoundError:
        raise UserError(f"ONNX file {path} not found") from None
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None
    except OSError as e:  # a FIFO, a symbolic-link loop, an I/O error
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    raise UserError(f"{path} is not a readable ONNX model ({problem})")


def output_is_softmax(graph, output_name: str) -> bool:
    """Whether the graph output is produced by a Softmax (through shape-only ops such as Reshape or Cast); ``graph``
    has ``node`` (an :class:`OnnxStructure` or ONNX's GraphProto)."""
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
    Softmax — read without its weights (:func:`read_structure`)."""
    model = read_structure(path)
    io = check_classifier_io(model.inputs, model.outputs, str(path), dtypes)
    ops = {n.op_type for n in model.node}
    has_fp16 = _FLOAT16 in model.initializer_types.values() or any(n.cast_to == _FLOAT16 for n in model.node)
    return OnnxIO(io=io, opset=model.opset, has_qdq=bool(ops & {"QuantizeLinear", "DequantizeLinear"}),
                  has_fp16=has_fp16, outputs_probabilities=output_is_softmax(model, io.output.name))


def onnx_output_is_softmax(path: str | os.PathLike, output_name: str) -> bool:
    """:func:`output_is_softmax` of an ONNX file; False when the file cannot be read here."""
    try:
        return output_is_softmax(read_structure(path), output_name)
    except UserError:
        return False


def onnx_recipe(path, options: PreprocessOptions = FROM_MODEL) -> InputRecipe:
    """The recipe of an ONNX file (its input size and ``preprocessing`` metadata, read without its weights)."""
    structure = read_structure(path)
    io = check_classifier_io(structure.inputs, structure.outputs, str(path))
    return choose_recipe(io.input_hw, str(path), options, structure.metadata.get("preprocessing"))
