"""ModelOpt's slow internals replaced, for one call (:func:`fast_paths`), by ones that give ModelOpt what its own
would: the cleanup of AutoCast in linear time, shape inference without sending the weights through it, and the
model-size check without serializing the model."""

from __future__ import annotations

import contextlib

LIGHT_SHAPE_INFERENCE_MIN_ELEMENTS = 4096  # initializers at least this large are shapes only to shape inference
_TENSOR_DATA_FIELDS = (4, 5, 6, 7, 9, 10, 11)  # TensorProto's data fields (model/contract.py)


def _cleanup_no_consumer_nodes(self) -> None:
    """ModelOpt AutoCast's ``PrecisionConverter._cleanup_no_consumer_nodes`` (0.47) in linear time: the nodes none of
    whose outputs is a network output or consumed by a node, removed in graph order — the same nodes as ModelOpt's,
    which asks ``get_consumer_nodes`` (a scan of every node) for every output of every node, quadratic in the
    model's size (docs/build_safety.md)."""
    network_outputs = {o.name for o in self.model.graph.output}
    consumed = {name for node in self.model.graph.node for name in node.input}
    doomed = [node for node in self.model.graph.node
              if not any(out in network_outputs or out in consumed for out in node.output)]
    for node in doomed:
        self.model.graph.node.remove(node)


def _copy_fields(src, dst, skip=()) -> None:
    """``dst`` gets ``src``'s set fields, except those named or numbered in ``skip``."""
    for desc, value in src.ListFields():
        if desc.name in skip or desc.number in skip:
            continue
        if desc.is_repeated:
            getattr(dst, desc.name).extend(value)
        elif desc.type == desc.TYPE_MESSAGE:
            getattr(dst, desc.name).CopyFrom(value)
        else:
            setattr(dst, desc.name, value)


def _light_copy(model, min_elements: int):
    """A copy of ``model`` whose large float initializers have their names, types and shapes but no data (their data
    is never read or copied); returns (copy, how many initializers lost their data)."""
    import onnx

    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                   onnx.TensorProto.BFLOAT16)
    light = onnx.ModelProto()
    _copy_fields(model, light, ("graph",))
    _copy_fields(model.graph, light.graph, ("initializer",))
    stubs = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if t.data_type in float_types and n >= min_elements:
            _copy_fields(t, light.graph.initializer.add(), _TENSOR_DATA_FIELDS)
            stubs += 1
        else:
            light.graph.initializer.append(t)
    return light, stubs


def light_infer_shapes(original):
    """``onnx.shape_inference.infer_shapes`` for a ModelProto, without sending the weights through it: ONNX's shape
    inference runs on a copy whose large float initializers carry no data (it needs only their types and shapes;
    small tensors, which data propagation may read, keep theirs), and the result is the model with the inferred
    ``value_info``, inputs and outputs — the same bytes ONNX returns (tests/test_quantize.py). ModelOpt runs shape
    inference about ten times on a quantization, each pass otherwise serializing and parsing the whole model."""
    import onnx

    def infer(model, check_type=False, strict_mode=False, data_prop=False):
        if not isinstance(model, onnx.ModelProto):
            return original(model, check_type, strict_mode, data_prop)
        light, stubs = _light_copy(model, LIGHT_SHAPE_INFERENCE_MIN_ELEMENTS)
        if not stubs:
            return original(model, check_type, strict_mode, data_prop)
        inferred = original(light, check_type, strict_mode, data_prop)
        del light
        result = onnx.ModelProto()
        result.CopyFrom(model)
        g, ig = result.graph, inferred.graph
        for field in ("value_info", "input", "output"):
            getattr(g, field).clear()
            getattr(g, field).extend(getattr(ig, field))
        return result

    return infer


def serialized_size_bound(model) -> int:
    """An upper bound of ``model.ByteSize()`` read from the fields' lengths, without serializing anything large: the
    initializers' data, every node, input, output and value_info's own size, 16 bytes per field for its tag and
    length, and a MiB for the small fields. (upb's ``ByteSize`` serializes the model to measure it.)"""
    g = model.graph
    size = 1 << 20
    size += len(model.doc_string) + len(g.doc_string) + len(g.name)
    size += sum(len(p.key) + len(p.value) + 16 for p in model.metadata_props)
    for t in g.initializer:
        size += (len(t.raw_data) + 8 * (len(t.float_data) + len(t.int32_data) + len(t.int64_data)
                                        + len(t.double_data) + len(t.uint64_data))
                 + sum(len(x) + 16 for x in t.string_data) + sum(e.ByteSize() + 16 for e in t.external_data)
                 + len(t.name) + len(t.doc_string) + 11 * len(t.dims) + 64)
    for field in (g.node, g.input, g.output, g.value_info, g.sparse_initializer, g.quantization_annotation,
                  model.opset_import, model.functions, model.training_info):
        size += sum(m.ByteSize() + 16 for m in field)
    return size


def _too_large_for_protobuf(original):
    """ModelOpt's ``is_model_too_large_for_protobuf`` (0.47), which measures the model with ``ByteSize`` (a
    serialization of the whole model, about ten times per quantization), answered without it when
    :func:`serialized_size_bound` is below half the limit (the answer is then certainly False); ModelOpt's own
    measure otherwise."""
    import onnx

    limit = onnx.checker.MAXIMUM_PROTOBUF

    def check(model) -> bool:
        if isinstance(model, onnx.ModelProto) and model.HasField("graph") and model.graph.node \
                and serialized_size_bound(model) < limit // 2:
            return False
        return original(model)

    return check


@contextlib.contextmanager
def fast_paths():
    """ModelOpt with :func:`_cleanup_no_consumer_nodes` in place of its quadratic one, shape inference through
    :func:`light_infer_shapes` and its model-size check through :func:`_too_large_for_protobuf`, for the body."""
    import modelopt.onnx.utils as modelopt_utils
    import onnx.shape_inference
    from modelopt.onnx.autocast.precisionconverter import PrecisionConverter

    original = PrecisionConverter._cleanup_no_consumer_nodes
    original_infer = onnx.shape_inference.infer_shapes
    original_size_check = modelopt_utils.is_model_too_large_for_protobuf
    PrecisionConverter._cleanup_no_consumer_nodes = _cleanup_no_consumer_nodes
    onnx.shape_inference.infer_shapes = light_infer_shapes(original_infer)
    modelopt_utils.is_model_too_large_for_protobuf = _too_large_for_protobuf(original_size_check)
    try:
        yield
    finally:
        PrecisionConverter._cleanup_no_consumer_nodes = original
        onnx.shape_inference.infer_shapes = original_infer
        modelopt_utils.is_model_too_large_for_protobuf = original_size_check
