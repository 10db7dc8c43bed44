"""The ONNX files ModelOpt is given and writes: a private copy of the FP32 ONNX (ModelOpt rewrites its input in
place) with its external data files, relabelled to the Q/DQ opset where that changes nothing else; the scratch
folder beside the output; and ModelOpt's result written the way the FP32 ONNX keeps its weights
(:func:`publish_result`)."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ...core.files import make_temp_dir
from ...core.onnx_files import copy_onnx, external_data_locations, onnx_unit, save_onnx
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
    which spares ModelOpt converting and saving the whole model once more. The copy is in a folder of its own
    (``work/source/``), with the FP32 ONNX's data files copied to their locations there (ONNX refuses data files
    that are symbolic links; ModelOpt writes its own files beside its output, so none of them can land on a data
    file)."""
    copy = work / "source" / "source.onnx"
    if copy.exists():
        return copy
    import onnx

    copy.parent.mkdir()
    model = onnx.load(str(fp32_onnx), load_external_data=False)
    if default_opset(model) < QDQ_OPSET and opset_relabel_exact(model, QDQ_OPSET):
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = QDQ_OPSET
        onnx.save(model, str(copy))  # without its weights' data: external tensors keep their locations
        for location in external_data_locations(fp32_onnx):
            (copy.parent / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(fp32_onnx.parent / location, copy.parent / location)
    else:
        copy_onnx(fp32_onnx, copy)
    del model
    return copy


def keeps_external_data(fp32_onnx: Path) -> bool:
    """Whether the FP32 ONNX keeps its weights in data files: its FP16 / INT8 models then do too."""
    return bool(external_data_locations(fp32_onnx))


def publish_result(model, written: Path | None, out_path: Path, *, external: bool) -> None:
    """``model`` (its weights loaded; ``written``: the file in a scratch folder ModelOpt wrote it to, if any) to
    ``out_path`` as one unit (``core.commit``): inline, or with its weights in ``<out_path>.data`` when
    ``external`` (and always for a model over 2 GB, which ModelOpt writes with external data itself)."""
    from ...core.commit import commit_files

    if written is None or (external and not external_data_locations(written)):
        staged = (written.parent if written is not None else make_temp_dir(out_path)) / "result" / out_path.name
        staged.parent.mkdir(parents=True)
        try:
            save_onnx(model, staged, external=external)
            commit_files(onnx_unit(staged, out_path))
        finally:
            shutil.rmtree(staged.parent if written is not None else staged.parent.parent, ignore_errors=True)
        return
    commit_files(onnx_unit(written, out_path))  # a data file ModelOpt named is renamed for out_path


def default_opset(model) -> int:
    """The model's opset of the default ONNX domain (0 when it has none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


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
