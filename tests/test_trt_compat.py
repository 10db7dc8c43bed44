"""TensorRT release gates and version parsing, without TensorRT; and trt-api-check over the package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trt_res2net import trt_compat
from trt_res2net.errors import EXIT_NO_TENSORRT, MissingDependency, UserError

REPO = Path(__file__).resolve().parents[1]
RELEASES = ["8.6.1", "10.3.0", "10.13.3", "11.4.0"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8.6.1", (8, 6, 1, 0)),
        ("8.6.2.3", (8, 6, 2, 3)),
        ("10.3.0.26", (10, 3, 0, 26)),
        ("10.13.3.post1", (10, 13, 3, 0)),
        ("11.4.0.106", (11, 4, 0, 106)),
        ("10.0", (10, 0, 0, 0)),
    ],
)
def test_parse_version(text, expected):
    v = trt_compat.parse_version(text)
    assert tuple(v) == expected
    assert str(v) == ".".join(map(str, expected[:3]))


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError):
        trt_compat.parse_version("trt")


# What the bindings of each release have (tensorrt_notes §2.5 / the trt-api-check name lists).
EXPECTED_GATES = {
    #            explicit strongly always  flags  calib  monitor optlvl  dmv2   opset  fp16src
    "8.6.1": (True, False, False, True, True, False, True, False, 17, "flag"),
    "10.3.0": (False, True, False, True, True, True, True, True, None, "flag"),
    "10.13.3": (False, True, False, True, True, True, True, True, None, "flag"),
    "11.4.0": (False, True, True, False, False, True, True, True, None, "onnx"),
}


@pytest.mark.parametrize("release", RELEASES)
def test_gates_per_release(release):
    v = trt_compat.parse_version(release)
    got = (
        trt_compat.needs_explicit_batch_flag(v),
        trt_compat.has_strongly_typed_flag(v),
        trt_compat.always_strongly_typed(v),
        trt_compat.has_precision_flags(v),
        trt_compat.has_int8_calibrator(v),
        trt_compat.has_progress_monitor(v),
        trt_compat.has_builder_optimization_level(v),
        trt_compat.has_device_memory_size_v2(v),
        trt_compat.max_onnx_opset(v),
        trt_compat.fp16_source(v),
    )
    assert got == EXPECTED_GATES[release]


def test_gates_accept_tuples_and_strings():
    assert trt_compat.needs_explicit_batch_flag((8, 6))
    assert not trt_compat.needs_explicit_batch_flag("10.3.0")
    assert trt_compat.has_device_memory_size_v2("10.1") and not trt_compat.has_device_memory_size_v2("10.0.1")
    assert not trt_compat.is_supported("8.5.2") and trt_compat.is_supported("8.6.1")


@pytest.mark.parametrize(
    "release, modes", [("8.6.1", ("calibrator",)), ("10.3.0", ("qdq", "calibrator")), ("11.4.0", ("qdq",))]
)
def test_int8_modes(release, modes):
    assert trt_compat.int8_modes(release) == modes


@pytest.mark.parametrize(
    "requested, release, have_qdq, expected",
    [
        ("auto", "8.6.1", None, "calibrator"),
        ("auto", "8.6.1", True, "calibrator"),
        ("auto", "10.3.0", None, "qdq"),
        ("auto", "10.3.0", True, "qdq"),
        ("auto", "10.3.0", False, "calibrator"),
        ("auto", "11.4.0", False, "qdq"),
        ("calibrator", "10.13.3", True, "calibrator"),
        ("qdq", "10.3.0", False, "qdq"),
    ],
)
def test_resolve_int8_mode(requested, release, have_qdq, expected):
    assert trt_compat.resolve_int8_mode(requested, release, have_qdq_onnx=have_qdq) == expected


def test_resolve_int8_mode_refusals_say_why():
    with pytest.raises(UserError, match=r"opset ≤ 17.*opset 19.*calibrator"):
        trt_compat.resolve_int8_mode("qdq", "8.6.1")
    with pytest.raises(UserError, match=r"no INT8 calibrator.*removed in 11.0.*qdq"):
        trt_compat.resolve_int8_mode("calibrator", "11.4.0")
    with pytest.raises(UserError, match="qdq, calibrator or auto"):
        trt_compat.resolve_int8_mode("minmax", "10.3.0")


def test_require_supported_refuses_jetpack5():
    with pytest.raises(UserError, match="8.5.*JetPack 5"):
        trt_compat.require_supported("8.5.2")
    trt_compat.require_supported("8.6.1")


def test_import_tensorrt_missing_is_exit_3(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(MissingDependency) as info:
        trt_compat.import_tensorrt(what_was_written="onnx/x.onnx")
    msg = str(info.value)
    assert info.value.exit_code == EXIT_NO_TENSORRT == 3
    assert msg.startswith("wrote onnx/x.onnx; TensorRT is not importable")
    assert "pip install tensorrt" in msg and "python3-libnvinfer" in msg and "\n" not in msg
    assert trt_compat.installed_version() is None


def test_installed_version_with_fake(monkeypatch):
    from trt_fakes import make_fake_tensorrt

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.13.3"))
    assert trt_compat.installed_version() == (10, 13, 3, 0)


def test_package_import_stays_light():
    code = (
        "import sys, trt_res2net.trt_compat, trt_res2net.builder, trt_res2net.manifest, "
        "trt_res2net.trt_calibrator, trt_res2net.build_progress\n"
        "heavy = [m for m in ('tensorrt', 'onnx', 'onnxruntime', 'cv2', 'cuda', 'torch')\n"
        "         if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------
# trt-api-check (NVIDIA-free API check against the real bindings' names); CI has ../shared/tools.


def _api_check_tool() -> Path | None:
    env = os.environ.get("TRT_API_CHECK")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "tools" / "trt-api-check")
    return next((c for c in candidates if c.is_file()), None)


def test_trt_api_check_reports_no_unknown_names_and_all_release_names_are_gated():
    tool = _api_check_tool()
    if tool is None:
        pytest.skip("trt-api-check not found (../shared/tools/trt-api-check or $TRT_API_CHECK)")
    out = subprocess.run([sys.executable, str(tool), "."], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"trt-api-check: 0 unknown TensorRT names", out.stdout), out.stdout
    # The package's release-dependent names must each have a gate (tests may list others: a test that
    # imports tensorrt makes every attribute in it a candidate, e.g. numpy's).
    pkg = subprocess.run([sys.executable, str(tool), "trt_res2net"], cwd=REPO, capture_output=True, text=True)
    listed = re.findall(r"^  (\w+)\s+(?:yes|-)\s", pkg.stdout, flags=re.M)
    ungated = [name for name in listed if name not in trt_compat.GATED_NAMES]
    assert not ungated, f"release-dependent names without a gate in trt_compat.GATED_NAMES: {ungated}"


@pytest.mark.parametrize("release", RELEASES)
def test_gated_names_match_the_fakes(release):
    """Each gate says 'present' exactly where the fake release (built from the name lists) has the name."""
    from trt_fakes import make_fake_tensorrt

    trt = make_fake_tensorrt(release)
    where = {
        "EXPLICIT_BATCH": hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"),
        "STRONGLY_TYPED": hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"),
        "FP16": hasattr(trt.BuilderFlag, "FP16"),
        "IInt8EntropyCalibrator2": hasattr(trt, "IInt8EntropyCalibrator2"),
        "int8_calibrator": "int8_calibrator" in trt.Builder(None).create_builder_config()._allowed,
        "IProgressMonitor": hasattr(trt, "IProgressMonitor"),
        "progress_monitor": "progress_monitor" in trt.Builder(None).create_builder_config()._allowed,
    }
    v = trt_compat.parse_version(release)
    for name, present in where.items():
        gate = trt_compat.GATED_NAMES[name](v)
        if name == "EXPLICIT_BATCH":  # used only below 10 although 10.x still has it
            assert gate <= present
        else:
            assert gate == present, name
