"""The calibration-cache text format and its keyed sidecar (no TensorRT, no ModelOpt needed)."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.precision.calib_cache import (
    MODELOPT_VERSION_TAG,
    CacheKey,
    CalibrationCache,
    check_cache_key,
    hex_to_scale,
    read_cache,
    read_cache_key,
    scale_to_hex,
    sidecar_path,
    trt_version_tag,
    write_cache,
    write_cache_key,
)


@pytest.mark.parametrize(
    "version, tag",
    [("8.5.2", "8502"), ("8.6.1", "8601"), ("8.6.1.6", "8601"), ("10.3.0", "100300"), ("10.14.1", "101401"),
     ("11.4.0.106", "110400"), ("10", "100000")],
)
def test_trt_version_tag(version, tag):
    assert trt_version_tag(version) == tag


@pytest.mark.parametrize("bad", ["", "x.y", "8.600.1", "-1.2.3"])
def test_trt_version_tag_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        trt_version_tag(bad)


def test_hex_is_the_big_endian_float32_bit_pattern():
    assert scale_to_hex(1 / 127) == "3c010204"  # 1/127 as TensorRT writes it (float32 bits, hex)
    assert hex_to_scale("3c010204") == pytest.approx(1 / 127, rel=1e-7)
    assert scale_to_hex(0.0) == "00000000"
    assert hex_to_scale("0") == 0.0
    assert hex_to_scale("1") == struct.unpack(">f", b"\x00\x00\x00\x01")[0]  # unpadded, as TensorRT prints
    with pytest.raises(ValueError):
        hex_to_scale("1ffffffff")


def test_round_trip_keeps_scales_bit_exact(tmp_path):
    rng = np.random.default_rng(1)
    scales = {f"tensor_{i}": float(np.float32(s)) for i, s in enumerate(rng.uniform(1e-4, 3.0, 50))}
    scales["input"] = float(np.float32(2.64 / 127))
    cache = CalibrationCache(MODELOPT_VERSION_TAG, "entropy", scales)
    path = write_cache(tmp_path / "calib" / "m.cache", cache)
    back = read_cache(path)
    assert back.header == "TRT-modelopt-entropy"
    assert list(back.scales) == list(scales)  # file order kept
    assert np.array_equal(np.float32(list(back.scales.values())), np.float32(list(scales.values())))
    assert back.to_bytes() == cache.to_bytes()
    assert not back.made_by_tensorrt
    assert not list(tmp_path.glob("calib/.*"))  # no temporary left behind


def test_parses_tensorrt_written_cache_and_sanitizes_it(tmp_path):
    # As TensorRT writes it: unpadded hex, "0" for an all-zero tensor, TRT-internal names with spaces.
    raw = (
        b"TRT-8601-EntropyCalibration2\r\n"
        b"input: 3c8b2ea7\r\n"
        b"(Unnamed Layer* 3) [Convolution]_output: 3d1b5a6c\r\n"
        b"dead_relu: 0\r\n"
        b"tiny: 1\r\n\r\n"
    )
    cache = CalibrationCache.from_bytes(raw)
    assert cache.version_tag == "8601" and cache.algorithm == "EntropyCalibration2" and cache.made_by_tensorrt
    assert cache.scales["dead_relu"] == 0.0
    assert cache.scales["(Unnamed Layer* 3) [Convolution]_output"] == hex_to_scale("3d1b5a6c")
    assert cache.scales["input"] == hex_to_scale("3c8b2ea7")
    text = cache.to_bytes().decode()
    # ModelOpt's reader: skip line 1, split on ": ", bytes.fromhex(8 digits) — must work on every line.
    for line in text.splitlines()[1:]:
        name, hexval = line.split(": ")
        assert len(hexval) == 8
        struct.unpack("!f", bytes.fromhex(hexval))


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "not text"),
        (b"hello\nx: 3c010204\n", "TRT-<version>-<algorithm>"),
        (b"TRT-8601-EntropyCalibration2\nx 3c010204\n", "line 2"),
        (b"TRT-8601-EntropyCalibration2\nx: zz\n", "line 2"),
    ],
)
def test_damaged_caches_are_one_line_errors(raw, words):
    with pytest.raises(UserError) as e:
        CalibrationCache.from_bytes(raw, source="calibration cache c.cache")
    assert words in str(e.value) and "\n" not in str(e.value)


def test_read_cache_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_cache(tmp_path / "nope.cache")


def test_names_that_cannot_be_written_are_refused():
    with pytest.raises(ValueError):
        CalibrationCache("modelopt", "max", {"a: b": 0.1}).to_bytes()


def _key(**over) -> CacheKey:
    k = CacheKey(
        onnx_sha256="ab12" + "0" * 60,
        preprocess_sha256="11" * 32,
        calibration_manifest_sha256="22" * 32,
        method="entropy",
        tools={"modelopt": "0.47.0", "onnxruntime": "1.24.4"},
        preprocess={"crop_size": 224},
    )
    return dataclasses.replace(k, **over)


def test_sidecar_round_trip_and_matching_key(tmp_path):
    cache = tmp_path / "m.cache"
    write_cache(cache, CalibrationCache("modelopt", "entropy", {"x": 0.1}))
    write_cache_key(cache, _key(), info={"model": "m", "images": 32})
    assert sidecar_path(cache) == tmp_path / "m.cache.json"
    doc = read_cache_key(cache)
    assert doc.info.images == 32 and doc.info.model == "m" and doc.key == _key()
    check_cache_key(cache, _key())  # same key: accepted
    # A subset is enough: a rebuild without images cannot know the manifest hash.
    check_cache_key(cache, _key(calibration_manifest_sha256=None))
    expected = _key().to_json()
    del expected["calibration_manifest_sha256"]
    check_cache_key(cache, expected)


def test_stale_key_is_refused_naming_the_field(tmp_path):
    cache = tmp_path / "m.cache"
    write_cache(cache, CalibrationCache("modelopt", "entropy", {"x": 0.1}))
    write_cache_key(cache, _key())
    with pytest.raises(UserError) as e:
        check_cache_key(cache, _key(onnx_sha256="cd34" + "0" * 60))
    msg = str(e.value)
    assert "onnx_sha256=ab1200000000…" in msg and "this build has cd3400000000…" in msg
    assert "delete it or pass CalibrationImages.directory to recalibrate" in msg and str(cache) in msg
    with pytest.raises(UserError, match="method=entropy, this build has max"):
        check_cache_key(cache, _key(method="max"))
    with pytest.raises(UserError, match=r"tools\.modelopt=0\.47\.0, this build has 0\.48\.0"):
        check_cache_key(cache, _key(tools={"modelopt": "0.48.0", "onnxruntime": "1.24.4"}))
    # A TensorRT calibrator expecting its own version refuses a ModelOpt cache.
    with pytest.raises(UserError, match=r"tools\.tensorrt=\(none\), this build has 10\.3\.0"):
        check_cache_key(cache, {"tools": {"tensorrt": "10.3.0"}})
    # The first differing field in KEY_FIELDS order is the one named.
    with pytest.raises(UserError, match="onnx_sha256"):
        check_cache_key(cache, _key(method="max", onnx_sha256="ff" * 32))


def test_cache_without_or_with_broken_sidecar_is_refused(tmp_path):
    cache = tmp_path / "m.cache"
    write_cache(cache, CalibrationCache("8601", "EntropyCalibration2", {"x": 0.1}))
    with pytest.raises(UserError, match="has no sidecar m.cache.json"):
        check_cache_key(cache, _key())
    sidecar_path(cache).write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        check_cache_key(cache, _key())
    sidecar_path(cache).write_text('{"format": "something else", "key": {}}')
    with pytest.raises(UserError, match="not a trt_res2net calibration-cache sidecar"):
        check_cache_key(cache, _key())


# ---------------------------------------------------------------------------------------------------------
# The sidecar as a type: round trip, the first release's files, a newer release's refused

FIXTURES = Path(__file__).parent / "fixtures"


def test_cache_key_file_round_trips():
    from trt_res2net.precision.calib_cache import CacheInfo, CacheKeyFile

    doc = CacheKeyFile(_key(), CacheInfo(model="m", images=32, synthetic=True, created="2026-12-01T00:00:00+00:00"))
    assert CacheKeyFile.from_json(json.loads(json.dumps(doc.to_json())), "x.cache.json") == doc
    assert doc.to_json()["format"] == "trt_res2net.calibration-cache-key" and doc.to_json()["format_version"] == 1
    assert "tool" not in doc.to_json()["info"]  # what was not said is not written


@pytest.mark.parametrize("name", ["calibration_key_v1_modelopt.json", "calibration_key_v1_tensorrt.json"])
def test_the_first_releases_cache_keys_are_read(tmp_path, name):
    """Sidecars as the first release wrote them (ModelOpt's and TensorRT's calibrator's) read, checked and written
    back with the same content."""
    from trt_res2net.precision.calib_cache import CacheKeyFile

    cache = tmp_path / "m.cache"
    write_cache(cache, CalibrationCache("modelopt", "entropy", {"x": 0.1}))
    sidecar_path(cache).write_text((FIXTURES / name).read_text())
    doc = read_cache_key(cache)
    assert doc.key.onnx_sha256 == "a" * 64 and doc.key.calibration_manifest_sha256 == "c" * 64
    assert doc.to_json() == json.loads((FIXTURES / name).read_text())
    assert bool(doc.info.synthetic) == ("modelopt" in name)
    assert doc.info.tool == ("tensorrt" if "tensorrt" in name else None)
    check_cache_key(cache, doc.key)
    assert CacheKeyFile.from_json(doc.to_json(), name) == doc


def test_a_newer_cache_key_is_refused_in_one_line(tmp_path):
    cache = tmp_path / "m.cache"
    write_cache(cache, CalibrationCache("modelopt", "entropy", {"x": 0.1}))
    doc = json.loads((FIXTURES / "calibration_key_v1_modelopt.json").read_text())
    sidecar_path(cache).write_text(json.dumps({**doc, "format_version": 2}))
    with pytest.raises(UserError) as e:
        check_cache_key(cache, _key())
    assert "\n" not in str(e.value) and "format 2" in str(e.value) and "upgrade trt_res2net" in str(e.value)
