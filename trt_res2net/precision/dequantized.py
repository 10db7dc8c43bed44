"""Which weighted layers of a graph take an input through a dequantize — what a Q/DQ graph asks to run in INT8 —
counted the same way on an ONNX graph (``DequantizeLinear`` nodes, :func:`onnx_layers`) and on a TensorRT network
(``DEQUANTIZE`` layers): each is described as :class:`GraphLayer` items and given to :func:`fed_through_dequantize`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import NamedTuple


class GraphLayer(NamedTuple):
    """One node or layer: its name, its kind (op type or layer type), its input and output tensor names in order
    (an absent input as None or "")."""

    name: str
    kind: str
    inputs: Sequence[str | None]
    outputs: Sequence[str]


def fed_through_dequantize(layers: Iterable[GraphLayer], *, dequantize: str, weighted: Collection[str],
                           positions: Sequence[int] | None = None) -> list[str]:
    """Names of the ``weighted`` layers (in order) whose inputs come from a ``dequantize`` layer: every input at
    ``positions`` (e.g. ``(0, 1)``: data and weights), or any one input when ``positions`` is None."""
    layers = list(layers)
    dq_out = {o for layer in layers if layer.kind == dequantize for o in layer.outputs}

    def through(layer: GraphLayer, i: int) -> bool:
        return i < len(layer.inputs) and bool(layer.inputs[i]) and layer.inputs[i] in dq_out

    found = []
    for layer in layers:
        if layer.kind not in weighted:
            continue
        wanted = range(len(layer.inputs)) if positions is None else positions
        if (any if positions is None else all)(through(layer, i) for i in wanted):
            found.append(layer.name)
    return found


def onnx_layers(model) -> Iterator[GraphLayer]:
    """An ONNX ModelProto's nodes as :class:`GraphLayer` items."""
    for node in model.graph.node:
        yield GraphLayer(node.name, node.op_type, list(node.input), list(node.output))
