"""An ONNX that keeps its weights in an external data file (what ``torch.onnx.export`` writes, and every model
over 2 GB must) through every stage: FP16 and INT8 ONNX through build.py (the FP32 file and its folder untouched),
TensorRT-RTX engines from each, the manifest's hash over the data file, a Triton repository holding the data file
beside ``model.onnx``; and the core helpers (``core.onnx_files``, ``core.hashing.sha256_onnx``) on their own.

The classifier is tests/quant_helpers' realistic reduced Res2Net (a decided classifier: top-1 agreement measures
precision), saved with ``save_as_external_data``; 16 calibration and 32 held-out images keep it fast. INT8 must meet
tests/test_quantize_modelopt.py's gate (top-1 agreement ≥ 93.75 %, logit cosine ≥ 0.995), and the INT8 ONNX of the
external-data model must hold the same graph and weights as the one made from the same model saved in one file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from trt_res2net.cli.build import main as build_main
from trt_res2net.core.commit import commit_files
from trt_res2net.core.errors import UserError
from trt_res2net.core.hashing import sha256_file, sha256_onnx
from trt_res2net.core.onnx_files import (
    check_onnx_files,
    copy_onnx,
    external_data_locations,
    onnx_unit,
    save_onnx,
)

from onnx_models import make_classifier  # isort: skip

INT8_MIN_AGREEMENT, INT8_MIN_COSINE = 0.9375, 0.995  # tests/test_quantize_modelopt.py's gate
DATA = "tiny16.onnx.data"


def _save_external(model, path: Path, location: str = DATA, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=kw.pop("one_file", True),
                    location=location, size_threshold=0, **kw)
    return path


def _logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------------------
# The helpers


def test_locations_are_read_without_loading_the_model_as_onnx_names_them(tmp_path):
    """The wire-format scan finds what ONNX itself finds: initializers, a Constant's tensor, one file per tensor."""
    model = onnx.load(str(make_classifier(tmp_path / "m.onnx", num_classes=10)))
    assert external_data_locations(tmp_path / "m.onnx") == ()
    const = onnx.helper.make_node("Constant", [], ["k"], value=onnx.numpy_helper.from_array(
        np.arange(300, dtype=np.float32), "k_value"))
    model.graph.node.insert(0, const)
    model.graph.output.append(onnx.helper.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [300]))
    one = _save_external(onnx.ModelProto.FromString(model.SerializeToString()), tmp_path / "one" / "m.onnx",
                         "w.bin", convert_attribute=True)
    assert external_data_locations(one) == ("w.bin",)
    many = _save_external(model, tmp_path / "many" / "m.onnx", None, one_file=False)
    expected = [t.name for t in onnx.external_data_helper._get_all_tensors(onnx.load(str(many),
                                                                                        load_external_data=False))
                if onnx.external_data_helper.uses_external_data(t)]
    assert list(external_data_locations(many)) == expected and expected


def test_the_hash_covers_the_data_file(tmp_path):
    """An inline ONNX hashes as its file (every hash recorded before stays); with external data, the hash of its
    files' hashes — and a change to the data file alone changes it."""
    inline = make_classifier(tmp_path / "m.onnx", num_classes=10)
    assert sha256_onnx(inline) == sha256_file(inline)
    ext = _save_external(onnx.load(str(inline)), tmp_path / "a" / "m.onnx", "m.onnx.data")
    data = ext.with_name("m.onnx.data")
    lines = f"{sha256_file(ext)}\n{sha256_file(data)}\n".encode()
    assert sha256_onnx(ext) == hashlib.sha256(lines).hexdigest()  # sha256sum m.onnx m.onnx.data | cut … | sha256sum
    other = tmp_path / "b" / "m.onnx"
    copy_onnx(ext, other)
    assert sha256_onnx(other) == sha256_onnx(ext)
    raw = bytearray(other.with_name("m.onnx.data").read_bytes())
    raw[100] ^= 0x01
    other.with_name("m.onnx.data").write_bytes(bytes(raw))
    assert sha256_file(other) == sha256_file(ext) and sha256_onnx(other) != sha256_onnx(ext)


def test_unsafe_and_missing_data_files_are_refused_in_one_line(tmp_path):
    ext = _save_external(onnx.load(str(make_classifier(tmp_path / "m.onnx", num_classes=10))),
                         tmp_path / "a" / "m.onnx", "m.onnx.data")
    assert check_onnx_files(ext) == (ext.with_name("m.onnx.data"),)
    ext.with_name("m.onnx.data").unlink()
    with pytest.raises(UserError, match=r"keeps its weights in .*m\.onnx\.data: no such file"):
        check_onnx_files(ext, "FP32 ONNX")
    model = onnx.load(str(ext), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere.data"
    onnx.save(model, str(tmp_path / "escape.onnx"))
    with pytest.raises(UserError, match="outside its folder"):
        external_data_locations(tmp_path / "escape.onnx")


def test_a_staged_model_is_committed_with_its_data_file_under_another_name(tmp_path):
    """How a model that misses its budget becomes ``x.rejected.onnx``: its data file renamed with it, the locations
    rewritten, the result loadable; the model's weights stay in memory after it was saved."""
    src = make_classifier(tmp_path / "m.onnx", num_classes=10)
    model = onnx.load(str(src))
    stage = tmp_path / "stage"
    stage.mkdir()
    assert save_onnx(model, stage / "x.onnx", external=True) == (stage / "x.onnx.data",)
    assert all(t.HasField("raw_data") for t in model.graph.initializer)
    final = tmp_path / "out" / "x.rejected.onnx"
    unit = onnx_unit(stage / "x.onnx", final)
    commit_files(unit)
    assert _listing(final.parent) == ["x.rejected.onnx", "x.rejected.onnx.data"]
    assert external_data_locations(final) == ("x.rejected.onnx.data",)
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    np.testing.assert_array_equal(_logits(final, x), _logits(src, x))


# --------------------------------------------------------------------------------------------------------
# The stages, through build.py


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt not installed (pip install -e '.[quant]')")
    from quant_helpers import make_workspace

    root = tmp_path_factory.mktemp("external")
    ws = make_workspace(root / "inline", calib=16, held_out=32)
    ext = _save_external(onnx.load(str(ws["onnx"])), root / "user" / "tiny16.onnx")
    return {**ws, "ext": ext, "root": root}


@pytest.fixture(scope="module")
def converted(ws):
    """FP16 and INT8 ONNX of the external-data model through build.py --onnx-only (the INT8 evaluated against FP32
    with the project's gate as its budget), and the INT8 of the same model saved in one file, to compare."""
    import os

    cwd = os.getcwd()
    os.chdir(ws["root"])
    try:
        before = {p.name: sha256_file(p) for p in ws["ext"].parent.iterdir()}
        calib = ["--calib-dir", str(ws["calib_dir"])]
        assert build_main(["--onnx", str(ws["ext"]), "--precision", "fp16", "--onnx-only", "--quiet"]) == 0
        assert build_main(["--onnx", str(ws["ext"]), "--precision", "int8", "--onnx-only", "--quiet", *calib,
                           "--eval-dir", str(ws["eval_dir"]),
                           "--max-top1-drop", str(100 * (1 - INT8_MIN_AGREEMENT))]) == 0
        assert build_main(["--onnx", str(ws["onnx"]), "--precision", "int8", "--onnx-only", "--quiet", *calib,
                           "--calib-cache", "calib/inline.cache", "--onnx-out", "inline/tiny16_int8.onnx"]) == 0
    finally:
        os.chdir(cwd)
    assert {p.name: sha256_file(p) for p in ws["ext"].parent.iterdir()} == before  # nothing written beside it
    engines = ws["root"] / "engines"
    return {"fp16": engines / "tiny16_fp16.onnx", "int8": engines / "tiny16_int8.onnx",
            "inline_int8": ws["root"] / "inline" / "tiny16_int8.onnx"}


def test_fp16_and_int8_keep_their_weights_in_a_data_file_beside_them(ws, converted):
    engines = converted["fp16"].parent
    assert {"tiny16_fp16.onnx", "tiny16_fp16.onnx.data", "tiny16_fp16.onnx.json", "tiny16_int8.onnx",
            "tiny16_int8.onnx.data", "tiny16_int8.onnx.json"} <= set(_listing(engines))
    assert not [n for n in _listing(engines) if n.startswith(".")]  # no temporary left
    for precision in ("fp16", "int8"):
        path = converted[precision]
        assert external_data_locations(path) == (f"{path.name}.data",)
        sidecar = json.loads(path.with_name(path.name + ".json").read_text())
        assert sidecar["onnx_sha256"] == sha256_onnx(path) != sha256_file(path)
        assert sidecar["source_onnx_sha256"] == sha256_onnx(ws["ext"])
    assert external_data_locations(converted["inline_int8"]) == ()  # a one-file model stays one file


def test_int8_of_external_data_agrees_with_fp32_and_is_the_inline_models_int8(ws, converted):
    report = json.loads(converted["int8"].with_name("tiny16_int8.onnx.json").read_text())["accuracy"]
    assert report["images"] == 32
    assert report["top1_agreement"] >= INT8_MIN_AGREEMENT and report["cosine_similarity"] >= INT8_MIN_COSINE
    ext, inline = onnx.load(str(converted["int8"])), onnx.load(str(converted["inline_int8"]))
    assert [n.SerializeToString() for n in ext.graph.node] == [n.SerializeToString() for n in inline.graph.node]
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in inline.graph.initializer}
    assert {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in ext.graph.initializer} == {
        k: v.tobytes() for k, v in weights.items()}


@pytest.fixture(scope="module")
def rtx_engines(ws, converted):
    """TensorRT-RTX engines (ahead of time, batch 1–2) of the external-data FP32, FP16 and INT8 ONNX. The caveats
    said once per process (``core.log.warn_once``) are forgotten afterwards: tests/test_rtx_build.py counts them."""
    from trt_res2net.core import log

    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed: pip install -e '.[rtx]'")
    warned = set(log._warned)
    out = ws["root"] / "rtx"
    common = ["--engine-family", "tensorrt-rtx", "--max-batch", "2", "--opt-batch", "1", "--engine-dir", str(out),
              "--quiet"]
    assert build_main(["--onnx", str(ws["ext"]), "--precision", "fp32", *common]) == 0
    for precision in ("fp16", "int8"):
        assert build_main(["--onnx", str(converted[precision]), *common]) == 0
    built = {"fp32": out / "tiny16_fp32_b2.rtx.engine", "fp16": out / "tiny16_fp16_b2.rtx.engine",
             "int8": out / "tiny16_int8qdq_b2.rtx.engine"}
    assert all(e.is_file() for e in built.values()), _listing(out)
    yield built
    log._warned.intersection_update(warned)


def test_rtx_engines_and_manifests_hash_the_data_file(ws, converted, rtx_engines):
    from trt_res2net.engine.manifest import read_manifest

    for precision, onnx_path in (("fp32", ws["ext"]), ("fp16", converted["fp16"]), ("int8", converted["int8"])):
        engine = rtx_engines[precision]
        m = read_manifest(engine)
        assert m.engine_sha256 == sha256_file(engine) and m.precision == precision
        assert m.onnx_sha256 == sha256_onnx(onnx_path) != sha256_file(onnx_path)  # the data file is in it
    assert read_manifest(rtx_engines["fp32"]).fp32_onnx_sha256 == sha256_onnx(ws["ext"])
    assert read_manifest(rtx_engines["int8"]).quantization.source == "calibrated"  # its sidecar matched the hash


def test_only_the_data_file_changed_changes_the_manifests_hash(ws, rtx_engines, tmp_path):
    """Same .onnx bytes, one weight changed in the data file: the engine built from it records another hash."""
    from trt_res2net.engine.manifest import read_manifest

    other = tmp_path / "tiny16.onnx"
    copy_onnx(ws["ext"], other)
    data = other.with_name(DATA)
    weights = np.frombuffer(data.read_bytes(), np.float32).copy()
    weights[0] += 1.0
    data.write_bytes(weights.tobytes())
    assert build_main(["--onnx", str(other), "--engine-family", "tensorrt-rtx", "--max-batch", "2", "--opt-batch",
                       "1", "--engine-dir", str(tmp_path / "e"), "--quiet"]) == 0
    m = read_manifest(tmp_path / "e" / "tiny16_fp32_b2.rtx.engine")
    assert sha256_file(other) == sha256_file(ws["ext"])
    assert m.onnx_sha256 == sha256_onnx(other) != read_manifest(rtx_engines["fp32"]).onnx_sha256


def test_a_missing_data_file_is_refused_before_any_work(ws, tmp_path, capsys):
    lone = tmp_path / "tiny16.onnx"
    shutil.copyfile(ws["ext"], lone)
    code = build_main(["--onnx", str(lone), "--precision", "fp16", "--onnx-only", "--onnx-out",
                       str(tmp_path / "o.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "tiny16.onnx.data: no such file" in err and "Traceback" not in err
    assert _listing(tmp_path) == ["tiny16.onnx"]


def test_triton_repository_holds_the_data_file_and_loads_in_onnx_runtime(tmp_path):
    from trt_res2net.core.errors import MissingDependency
    from trt_res2net.serving.repository import model_config_pb2, read_record, write_triton_repository

    try:
        model_config_pb2()
    except MissingDependency as e:
        pytest.skip(str(e))
    # tests/onnx_models' classifier: ONNX Runtime cannot read a shape input (the Res2Net's Split sizes) from a data
    # file, so the Res2Net saved with size_threshold=0 would not load from its own folder either
    ext = _save_external(onnx.load(str(make_classifier(tmp_path / "src" / "m.onnx"))), tmp_path / "user" / "tiny.onnx",
                         "weights.bin")
    repo = write_triton_repository(tmp_path / "repo", ext)
    x = np.random.default_rng(1).random((2, 3, 224, 224), dtype=np.float32)
    expected = _logits(ext, x)
    for model in ("tiny_classifier_onnx", "tiny_python"):
        version = repo.path / model / "1"
        assert {"model.onnx", "weights.bin"} <= set(_listing(version))
        assert sha256_onnx(version / "model.onnx") == sha256_onnx(ext)
        np.testing.assert_array_equal(_logits(version / "model.onnx", x), expected)
    record = read_record(repo.path)
    assert record.onnx.data_files == ("weights.bin",) and record.onnx.sha256 == sha256_onnx(ext)
