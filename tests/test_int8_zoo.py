"""INT8 beyond Res2Net: each graph of tests/onnx_zoo.py (ConvNeXt blocks, depthwise convolutions, LayerNorm, GELU,
layer scale, squeeze-excitation, global pooling in the middle, residual adds from the input) quantized by the
project's INT8 path (the precision step of build.py --precision int8: convert_precision → modelopt.int8), its
consistency checks holding (every activation scale the calibrated one, as the model's precision holds it), the
layers ModelOpt leaves in high precision named with their reason, agreeing with FP32 within the gate of
tests/test_quantize_modelopt.py, and built as a TensorRT-RTX engine.

Run ``pytest -s tests/test_int8_zoo.py -k agrees`` to see the per-graph agreement rows.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

pytest.importorskip("modelopt.onnx.quantization", reason="ModelOpt not installed (pip install -e '.[quant]')")

import onnx  # noqa: E402
from onnx_zoo import ZOO, write_zoo_model  # noqa: E402
from quant_helpers import args, photos, preprocessed, run_precision  # noqa: E402

from trt_res2net.data.synthetic import write_images  # noqa: E402
from trt_res2net.precision.calib_cache import read_cache  # noqa: E402
from trt_res2net.precision.modelopt.qdq import (  # noqa: E402
    FP16_SMALLEST,
    activation_scales,
    as_autocast_fp16,
    expected_scale,
    quantized_nodes,
    unquantized_reasons,
)

# the gate of tests/test_quantize_modelopt.py (why these numbers: its docstring): at most 3 of 48 flips, cosine 0.995
INT8_MIN_AGREEMENT, INT8_MIN_COSINE = 0.9375, 0.995
# what ModelOpt leaves in high precision, and why (ModelOpt 0.47's rules; none elsewhere)
LEFT_UNQUANTIZED = {"pool_in_middle": {"/gc/transform/0/MatMul": "K=32, N=8: a GEMM under 16 wide",
                                       "/gc/transform/3/MatMul": "K=8, N=32: a GEMM under 16 wide"}}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    src = photos()
    fit = write_images(root / "fit", 16, seed=100, photos=src)
    write_images(root / "calib", 16, seed=101, photos=src)
    write_images(root / "eval", 48, seed=102, photos=src)
    return {"root": root, "fit": preprocessed(fit)}


def _int8(ws, name: str, high_precision: str = "fp16", method: str = "entropy"):
    """The zoo graph through build.py's precision step: (FP32 ONNX, INT8 ONNX, sidecar's accuracy report)."""
    fp32 = write_zoo_model(name, ws["root"] / f"{name}_{high_precision}_{method}" / f"{name}.onnx", ws["fit"])
    a = args(precision="int8", calib_dir=ws["root"] / "calib", eval_dir=ws["root"] / "eval", calib_method=method,
             calib_cache=fp32.with_suffix(".cache"), high_precision=high_precision, max_top1_drop=100)
    out = run_precision(a, fp32, name)
    return fp32, out, json.loads(out.with_name(out.name + ".json").read_text())["accuracy"]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_int8_of_the_zoo_agrees_with_fp32_and_builds_for_tensorrt_rtx(ws, name, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        fp32, out, report = _int8(ws, name)
    model = onnx.load(str(out))
    # the consistency check ran (calibrate_and_quantize); here again against the cache, from outside
    cache = read_cache(fp32.with_suffix(".cache"))
    got = activation_scales(model)
    assert got and all(np.float32(v) == np.float32(expected_scale(cache.scales[n], "fp16")) for n, v in got.items())
    left = LEFT_UNQUANTIZED.get(name, {})
    assert unquantized_reasons(model) == left
    weighted = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert quantized_nodes(model) == [n for n in weighted if n not in left]
    notes = [r.getMessage() for r in caplog.records if "layers in high precision" in r.getMessage()]
    assert len(notes) == (1 if left else 0) and all(f"{n} ({r})" in notes[0] for n, r in left.items())
    print(f"\n| {name} | {len(weighted) - len(left)}/{len(weighted)} | {', '.join(left) or '—'} | "
          f"{100 * report['top1_agreement']:.2f} % | {report['cosine_similarity']:.5f} |")
    assert report["images"] == 48
    assert report["top1_agreement"] >= INT8_MIN_AGREEMENT and report["cosine_similarity"] >= INT8_MIN_COSINE
    _rtx_build(fp32, out, tmp_path)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_fp16_of_the_zoo_agrees_with_fp32_and_builds_for_tensorrt_rtx(ws, name, tmp_path):
    """The same graphs through build.py's FP16 step (ModelOpt AutoCast), then a TensorRT-RTX FP16 engine."""
    fp32 = write_zoo_model(name, ws["root"] / f"{name}_fp16" / f"{name}.onnx", ws["fit"])
    out = run_precision(args(precision="fp16", eval_dir=ws["root"] / "eval", max_top1_drop=100), fp32, name)
    report = json.loads(out.with_name(out.name + ".json").read_text())["accuracy"]
    assert report["images"] == 48 and report["top1_agreement"] >= INT8_MIN_AGREEMENT
    assert report["cosine_similarity"] >= 0.999
    _rtx_build(fp32, out, tmp_path, "fp16")


def _rtx_build(fp32, converted_onnx, tmp_path, precision: str = "int8"):
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed: pip install -e '.[rtx]'")
    from trt_res2net.engine.build import build_engine
    from trt_res2net.engine.manifest import read_manifest
    from trt_res2net.engine.options import EngineOptions

    options = EngineOptions(family="tensorrt-rtx", engine_dir=tmp_path / "engines", max_batch=4, progress=False)
    built = build_engine(converted_onnx, precision, options, fp32_onnx_path=fp32)
    m = read_manifest(built.path)
    assert m.precision == precision and m.library_version == trt.__version__
    assert precision != "int8" or m.int8_mode == "qdq"
    assert m.engine_bytes == built.path.stat().st_size > 0


def test_a_fresh_convnext_layer_scale_is_named_not_refused(ws, caplog, monkeypatch):
    """timm's convnext_tiny without its pretrained weights (layer scale 1e-6): the activations of each block's Mul by
    gamma are all under 127 × 2⁻²⁴, their scales under FP16's smallest value, which AutoCast writes as that value —
    the issue-23 failure was the check expecting a plain FP16 cast (0). Named in one warning; FP32 keeps them."""
    from trt_res2net.core import log

    monkeypatch.setattr(log, "_warned", set())  # said once per process: the parametrized test may have said it
    with caplog.at_level(logging.WARNING):
        _, out, _ = _int8(ws, "convnext_fresh")
    warnings = [r.getMessage() for r in caplog.records if "under FP16's smallest value" in r.getMessage()]
    assert len(warnings) == 1 and "/stages/stages.0/blocks/blocks.0/Mul_output_0" in warnings[0]
    mul = "/stages/stages.0/blocks/blocks.0/Mul_output_0"
    assert activation_scales(onnx.load(str(out)))[mul] == FP16_SMALLEST
    assert float(np.float16(read_cache(out.parent / "convnext_fresh.cache").scales[mul])) == 0.0  # a plain cast's
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        fp32, out32, report = _int8(ws, "convnext_fresh", high_precision="fp32", method="max")
    assert not [r for r in caplog.records if "under FP16's smallest value" in r.getMessage()]
    cache = read_cache(fp32.with_suffix(".cache"))
    got = activation_scales(onnx.load(str(out32)))
    assert got["/stages/stages.0/blocks/blocks.0/Mul_output_0"] < FP16_SMALLEST
    assert all(np.float32(v) == np.float32(cache.scales[n]) for n, v in got.items())
    assert report["top1_agreement"] >= INT8_MIN_AGREEMENT and report["cosine_similarity"] >= INT8_MIN_COSINE


def test_autocast_fp16_values_as_modelopt_writes_them():
    """qdq.as_autocast_fp16 against AutoCast's own conversion of an initializer (ModelOpt 0.47)."""
    from modelopt.onnx.autocast.precisionconverter import PRECISION_MAP, PrecisionConverter
    from onnx import numpy_helper

    values = np.array([0.0, 1e-9, 2.0 ** -25, 3e-8, 2.0 ** -24, 7e-8, 1e-3, 0.5, 7e4, 1e6], np.float32)
    converter = PrecisionConverter.__new__(PrecisionConverter)
    converter._warned_values_clamp_max = converter._warned_values_clamp_min = True
    init = numpy_helper.from_array(values, "s")
    converted = converter._convert_initializer_data(init, PRECISION_MAP["fp32"], PRECISION_MAP["fp16"])
    written = numpy_helper.to_array(converted)
    assert [as_autocast_fp16(v) for v in values] == [float(v) for v in written]
    assert as_autocast_fp16(1e-9) == FP16_SMALLEST == 2.0 ** -24 and as_autocast_fp16(0.0) == 0.0
