"""The precision sidecar ``<onnx>.json`` as a type (precision.sidecar.PrecisionSidecar): round trip, the first
release's files, a newer release's refused, and what the engine stage reads of it (read_precision_sidecar)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.precision.calib_cache import CacheKey
from trt_res2net.precision.sidecar import PrecisionSidecar, read_precision_sidecar

FIXTURES = Path(__file__).parent / "fixtures"


def _int8() -> PrecisionSidecar:
    return PrecisionSidecar(
        precision="int8", model="m", quantization_source="calibrated", source_onnx="m.onnx",
        source_onnx_sha256="a" * 64, tools={"modelopt": "0.47.0"}, onnx_sha256="d" * 64,
        created="2026-12-01T00:00:00+00:00", high_precision="fp16", opset=19, calibration_cache="calib/m.cache",
        calibration_cache_reused=False, calibration_key=CacheKey("a" * 64, "b" * 64, "c" * 64, "entropy",
                                                                 {"modelopt": "0.47.0"}),
        calibration_method="entropy", calibration_images=48, calibration_synthetic=False,
        excluded_layers=("conv1",), accuracy={"top1_agreement": 0.9})


def test_round_trip():
    side = _int8()
    assert PrecisionSidecar.from_json(json.loads(json.dumps(side.to_json())), "m_int8.onnx.json") == side
    doc = side.to_json()
    assert list(doc)[:4] == ["format", "format_version", "onnx_sha256", "created"]
    assert doc["excluded_layers"] == ["conv1"] and doc["calibration_key"]["method"] == "entropy"
    assert "autocast_reference" not in doc  # an FP16 sidecar's


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_the_first_releases_sidecars_are_read(tmp_path, precision):
    """A sidecar as the first release wrote it: read with the attributes the engine stage uses, and written back
    with the same content."""
    text = (FIXTURES / f"precision_sidecar_v1_{precision}.json").read_text()
    onnx = tmp_path / f"m_{precision}.onnx"
    onnx.write_bytes(b"model")
    Path(str(onnx) + ".json").write_text(text)
    side = read_precision_sidecar(onnx)
    assert side is not None and side.precision == precision
    assert side.to_json() == json.loads(text)
    if precision == "int8":
        assert (side.quantization_source, side.calibration_method, side.calibration_images) == ("calibrated",
                                                                                              "entropy", 48)
        assert side.calibration_synthetic is True and side.excluded_layers == ("/stem/conv1/Conv",)
        assert side.calibration_cache == "calib/tiny16.entropy.cache" and side.high_precision == "fp16"
        assert side.calibration_key.onnx_sha256 == "a" * 64
    else:
        assert side.quantization_source == "autocast-fp16" and side.excluded_layers is None
    assert read_precision_sidecar(onnx, "d" * 64 if precision == "int8" else "e" * 64) == side
    assert read_precision_sidecar(onnx, "0" * 64) is None  # another file's


def test_a_newer_sidecar_is_refused_in_one_line(tmp_path):
    doc = json.loads((FIXTURES / "precision_sidecar_v1_int8.json").read_text())
    with pytest.raises(UserError) as e:
        PrecisionSidecar.from_json({**doc, "format_version": 2}, "m_int8.onnx.json")
    assert "\n" not in str(e.value) and "format 2" in str(e.value) and "upgrade trt_res2net" in str(e.value)
    onnx = tmp_path / "m_int8.onnx"
    shutil.copy(FIXTURES / "precision_sidecar_v1_int8.json", str(onnx) + ".json")
    Path(str(onnx) + ".json").write_text(json.dumps({**doc, "format_version": 2}))
    assert read_precision_sidecar(onnx) is None  # the engine stage then treats the ONNX as given


def test_not_a_sidecar_is_none(tmp_path):
    onnx = tmp_path / "m.onnx"
    assert read_precision_sidecar(onnx) is None
    Path(str(onnx) + ".json").write_text('{"format": "something else"}')
    assert read_precision_sidecar(onnx) is None
    Path(str(onnx) + ".json").write_text("{not json")
    assert read_precision_sidecar(onnx) is None
