"""The ONNX files ModelOpt is given and writes: a private copy of the FP32 ONNX (ModelOpt rewrites its input in
place), relabelled to the Q/DQ opset where that changes nothing else, and the scratch folder beside the output."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ...core.files import make_temp_dir
from ..options import MIN_QDQ_OPSET as QDQ_OPSET  # what ModelOpt writes INT8 Q/DQ in (and converts its input to)


@contextlib.contextmanager
def workdir(near: Path):
    """A scratch folder beside ``near`` (same filesystem: the result is moved, not copied), named as ``near``'s
    temporary (``core.files``: a later run removes it if this process is killed)."""
    d = make_temp_dir(near)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def private_copy(fp32_onnx: Path, work: Path) -> Path:
    """ModelOpt rewrites the model it is given in place (``onnx.shape_inference.infer_shapes_path`` with no
    output path), which would change the FP32 ONNX's bytes and hash under the caller: give it a copy — at opset 19
    already when ONNX's version converter would change nothing but the opset number (:func:`opset_relabel_exact`),
    which spares ModelOpt converting and saving the whole model once more."""
    copy = work / "source.onnx"
    if copy.exists():
        return copy
    import onnx

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    if default_opset(model) < QDQ_OPSET and opset_relabel_exact(model, QDQ_OPSET) and not _has_external_data(model):
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = QDQ_OPSET
        onnx.save(model, str(copy))
    else:
        shutil.copyfile(fp32_onnx, copy)
    del model
    return copy


def default_opset(model) -> int:
    """The model's opset of the default ONNX domain (0 when it has none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _has_external_data(model) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def _structure(model):
    """``model`` without its weights' data (initializers as name, type and shape)."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    for t in model.graph.initializer:
        g.initializer.append(onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims))
    return light


def _same(a, b) -> bool:
    """Two repeated proto fields with the same messages, byte for byte."""
    return ([m.SerializeToString(deterministic=True) for m in a]
            == [m.SerializeToString(deterministic=True) for m in b])


def opset_relabel_exact(model, target: int) -> bool:
    """Whether ``onnx.version_converter.convert_version(model, target)`` changes nothing but the opset number: run
    on the model's structure alone (weights left out: the adapters of the operators here do not read them) and
    compared node by node. False on any doubt (then ONNX's version converter runs)."""
    import onnx

    light = _structure(model)
    try:
        converted = onnx.version_converter.convert_version(light, target)
    except Exception:
        return False
    return (len(converted.graph.node) == len(light.graph.node) and _same(light.graph.node, converted.graph.node)
            and _same(converted.graph.input, light.graph.input) and _same(converted.graph.output, light.graph.output)
            and default_opset(converted) == target)
