"""NVIDIA's real TensorRT-RTX builder, ahead of time on this CPU-only machine: engines through build.py from a
reduced Res2Net (fp32, fp16, int8), the full res2net50_vd_26w_4s (fp32) and an external ONNX; manifests checked
against the files; an interrupted build; the one-line refusals; the polygraphy equivalent.

Needs the ``rtx`` extra (``tensorrt-rtx-cu13``; CI installs it); fp16/int8 also need ModelOpt (the ``quant``
extra). No fake stands in for the library here.
"""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from trt_res2net.cli.build import main as build_main
from trt_res2net.engine import manifest as mf
from trt_res2net.engine import trt_compat

from trt_fakes import tiny_classifier_onnx, write_images  # isort: skip

if os.environ.get("TRT_RES2NET_REQUIRE_RTX"):  # CI: the real builder must run here, not be skipped
    import tensorrt_rtx as trt
else:
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed: pip install -e '.[rtx]'")
DEFAULT_TARGETS = ["8.0", "8.6", "8.9", "12.0", "12.1"]  # the library's portable set (1.7.1 plan header)


def _modelopt():
    pytest.importorskip("modelopt.onnx.quantization", reason="fp16/int8 ONNX need ModelOpt: pip install -e .[quant]")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # engines/ and calib/ are relative
    return tmp_path


def _build(capsys, *argv) -> tuple[int, str, str]:
    code = build_main(["--quiet", "--engine-family", "tensorrt-rtx", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _check_manifest_against_file(engine):
    """The manifest describes this very file: size, SHA-256, family, version, targets (also in its header)."""
    m = mf.read_manifest(engine)
    assert m["engine_bytes"] == engine.stat().st_size and m["engine_sha256"] == mf.sha256_file(engine)
    assert m["engine_family"] == "tensorrt-rtx" and m["library_version"] == trt.__version__
    header = trt_compat.read_rtx_plan_header(engine.read_bytes()[:64])
    version = str(trt.__version__)  # "1.7.1.116"; the header holds 1.7.1
    assert header is not None and version.startswith(".".join(map(str, header.version)) + ".")
    assert m["compute_capabilities"] == list(header.compute_capabilities)
    assert m["compute_capabilities_and_later"] == header.and_later
    assert m["gpu"] is None  # built ahead of time, on no GPU
    return m


def test_fp32_reduced_res2net_through_build_py(workdir, capsys, tiny_onnx):
    code, out, err = _build(capsys, "--onnx", str(tiny_onnx))
    assert code == 0, err
    engine = workdir / "engines" / f"{tiny_onnx.stem}_fp32_b32.rtx.engine"
    assert f"engine ready: {engine.relative_to(workdir)}" in out
    m = _check_manifest_against_file(engine)
    assert m["compute_capabilities"] == DEFAULT_TARGETS and m["compute_capabilities_and_later"]
    assert m["precision"] == "fp32" and m["caveats"] == [] and m["build_options"]["strongly_typed"]
    assert m["io"]["input"]["name"] == "input" and m["io"]["output"]["name"] == "logits"
    assert m["profiles"] == [{"input": "input", "min": [1, 3, 224, 224], "opt": [8, 3, 224, 224],
                              "max": [32, 3, 224, 224]}]
    assert m["build_options"]["workspace_default"] and m["build_options"]["workspace_mib"] > 0
    assert "runs on GPUs of compute capability 8.0 (A100, A30)" in err and "and later" in err
    assert "Hopper GPUs (H100, H200) and Jetson need standard TensorRT" in err
    assert f"polygraphy equivalent: {m['build_options']['equivalent_commands']['polygraphy']}\n" in err
    assert list((workdir / "engines").glob(".*")) == []  # no temporary file left behind


def test_targets_are_written_into_the_plan(workdir, capsys, tiny_onnx):
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--compute-capability", "12.0,8.6", "--batch", "4")
    assert code == 0, err
    m = _check_manifest_against_file(workdir / "engines" / f"{tiny_onnx.stem}_fp32_b4.rtx.engine")
    assert m["compute_capabilities"] == ["8.6", "12.0"] and not m["compute_capabilities_and_later"]
    assert m["build_options"]["compute_capabilities_requested"] == ["8.6", "12.0"]
    poly = m["build_options"]["equivalent_commands"]["polygraphy"]
    assert poly.startswith("POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy convert ")
    assert poly.endswith("--compute-capabilities 8.6 12.0")
    assert "trtexec" not in m["build_options"]["equivalent_commands"]  # the RTX wheels ship none


def test_the_polygraphy_equivalent_builds_the_same_targets(workdir, capsys, tiny_onnx):
    """The recorded polygraphy line, run as printed, makes an RTX plan for the same compute capabilities."""
    import shutil

    if shutil.which("polygraphy") is None:
        pytest.skip("polygraphy is not installed (it comes with the quant extra)")
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--compute-capability", "8.9", "--max-batch", "4")
    assert code == 0, err
    engine = workdir / "engines" / f"{tiny_onnx.stem}_fp32_b4.rtx.engine"
    command = mf.read_manifest(engine)["build_options"]["equivalent_commands"]["polygraphy"]
    theirs = workdir / "polygraphy.engine"
    parts = shlex.split(command)
    parts[parts.index("-o") + 1] = str(theirs)
    proc = subprocess.run(shlex.join(parts), shell=True, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    header = trt_compat.read_rtx_plan_header(theirs.read_bytes()[:64])
    assert header.compute_capabilities == ("8.9",) and not header.and_later


def test_fp16_engine_is_smaller_and_turing_takes_it(workdir, capsys, tiny_onnx):
    _modelopt()
    assert _build(capsys, "--onnx", str(tiny_onnx))[0] == 0
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--precision", "fp16")
    assert code == 0, err
    fp32 = workdir / "engines" / f"{tiny_onnx.stem}_fp32_b32.rtx.engine"
    fp16 = workdir / "engines" / f"{tiny_onnx.stem}_fp16_b32.rtx.engine"
    m = _check_manifest_against_file(fp16)
    assert m["precision"] == "fp16" and m["onnx"].endswith("_fp16.onnx")
    assert fp16.stat().st_size < 0.75 * fp32.stat().st_size
    # Turing: no FP32 GEMM in TensorRT-RTX, but the AutoCast ONNX computes its head in FP16
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--precision", "fp16", "--compute-capability", "7.5",
                          "--save-engine", "engines/turing.rtx.engine")
    assert code == 0, err
    assert _check_manifest_against_file(workdir / "engines" / "turing.rtx.engine")["compute_capabilities"] == ["7.5"]


def test_int8_qdq_engine_carries_the_weight_only_caveat(workdir, capsys, tiny_onnx):
    _modelopt()
    write_images(workdir / "calib", n=8, seed=3, size=(260, 240))
    code, _, err = _build(capsys, "--onnx", str(tiny_onnx), "--precision", "int8", "--calib-dir",
                          str(workdir / "calib"), "--calib-method", "max", "--max-batch", "8")
    assert code == 0, err
    m = _check_manifest_against_file(workdir / "engines" / f"{tiny_onnx.stem}_int8_b8.rtx.engine")
    assert m["precision"] == "int8" and m["int8_mode"] == "qdq" and m["onnx"].endswith("_int8.onnx")
    assert len(m["caveats"]) == 1 and "weight-only quantization of GEMMs" in m["caveats"][0]
    assert "warning: TensorRT-RTX documents INT8 only as weight-only quantization" in err


def test_full_res2net50_vd_fp32(workdir, capsys):
    code, out, err = _build(capsys, "--model", "res2net50_vd_26w_4s", "--random-weights")
    assert code == 0, err
    engine = workdir / "engines" / "res2net50_vd_26w_4s_fp32_b32.rtx.engine"
    m = _check_manifest_against_file(engine)
    assert m["model"] == "res2net50_vd_26w_4s" and m["fp32_onnx_sha256"] == mf.sha256_file(
        workdir / "engines" / "res2net50_vd_26w_4s.onnx")
    assert engine.stat().st_size > 80 << 20  # 25.7 M float32 weights are in the plan


def test_external_paddle2onnx_style_onnx(workdir, capsys):
    """A fixed-batch ONNX with PaddleClas's inference-model names and a softmax at the end."""
    onnx_path = tiny_classifier_onnx(workdir / "inference.onnx", batch=4, input_name="x",
                                     output_name="save_infer_model/scale_0.tmp_1", softmax=True)
    code, _, err = _build(capsys, "--onnx", str(onnx_path))
    assert code == 0, err
    m = _check_manifest_against_file(workdir / "engines" / "inference_fp32_b4.rtx.engine")
    assert m["io"]["input"]["name"] == "x" and m["io"]["input"]["shape"] == [4, 3, 224, 224]
    assert m["io"]["output"]["name"] == "save_infer_model/scale_0.tmp_1" and m["outputs_probabilities"]


def test_interrupted_build_leaves_no_engine(workdir, capsys, tiny_onnx, monkeypatch):
    """Ctrl-C during the build: the progress monitor tells TensorRT-RTX to cancel; nothing is written."""
    from trt_res2net.engine import progress as build_progress

    def ctrl_c(self, phase, step):
        self.cancelled = True  # what BuildProgress does when KeyboardInterrupt arrives in a callback
        return False

    monkeypatch.setattr(build_progress.BuildProgress, "on_step", ctrl_c)
    code, out, err = _build(capsys, "--onnx", str(tiny_onnx))
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted"
    assert "engine ready" not in out and "Traceback" not in err
    engines = workdir / "engines"
    assert not engines.exists() or list(engines.iterdir()) == []  # no engine, manifest or temporary file


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--precision", "fp16", "--dla-core", "0"], "--dla-core: TensorRT-RTX has no DLA"),
        (["--precision", "int8", "--int8-mode", "calibrator"], "TensorRT-RTX 1.7 has no INT8 calibrator"),
        (["--timing-cache", "t.cache"], "--timing-cache: TensorRT-RTX times no tactics ahead of time"),
        (["--trt-calib-cache", "c.cache"], "--trt-calib-cache: only for TensorRT's INT8 calibrator"),
        (["--compute-capability", "9.0"], "TensorRT-RTX targets 7.5, 8.0, 8.6, 8.9, 12.0, 12.1 or current"),
        (["--compute-capability", "8.6,7.5"], "cannot compile FP32 GEMM for Turing (compute capability 7.5)"),
        (["--compute-capability", "current"], "--compute-capability current needs an NVIDIA GPU on this machine"),
    ],
)
def test_options_that_mean_nothing_here_are_refused_in_one_line(workdir, capsys, tiny_onnx, argv, message):
    code, out, err = _build(capsys, "--onnx", str(tiny_onnx), *argv)
    assert code in (2, 3) and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (workdir / "engines").exists() or not list((workdir / "engines").glob("*.engine"))
