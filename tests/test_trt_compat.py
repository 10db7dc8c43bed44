"""TensorRT / TensorRT-RTX release gates, version parsing and library choice, without TensorRT (the real
tensorrt_rtx module where installed); and trt-api-check over the package."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trt_res2net.core.errors import EXIT_NO_TENSORRT, MissingDependency, UserError
from trt_res2net.engine import trt_compat

REPO = Path(__file__).resolve().parents[1]
RELEASES = ["8.6.1", "10.3.0", "10.13.3", "11.4.0"]
RTX = trt_compat.parse_version("1.7.1.116", "tensorrt-rtx")


def _version(release):
    return RTX if release == "rtx-1.7.1" else trt_compat.parse_version(release)


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
    assert tuple(v)[:4] == expected and v.family == "tensorrt"
    assert str(v) == ".".join(map(str, expected[:3]))
    assert v.label == f"TensorRT {v}"


def test_parse_rtx_version():
    assert tuple(RTX) == (1, 7, 1, 116, "tensorrt-rtx") and RTX.full == "1.7.1.116"
    assert RTX.label == "TensorRT-RTX 1.7.1"
    with pytest.raises(UserError, match="unknown engine family"):
        trt_compat.parse_version("1.7.1", "tensorrt-lean")


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError):
        trt_compat.parse_version("trt")


# What the bindings of each release have (tensorrt_notes §2.5 / the trt-api-check name lists).
EXPECTED_GATES = {
    #            explicit strongly always  flags  calib  monitor optlvl  opset  fp16src
    "8.6.1": (True, False, False, True, True, False, True, 17, "flag"),
    "10.3.0": (False, True, False, True, True, True, True, None, "flag"),
    "10.13.3": (False, True, False, True, True, True, True, None, "flag"),
    "11.4.0": (False, True, True, False, False, True, True, None, "onnx"),
    "rtx-1.7.1": (False, True, True, False, False, True, True, None, "onnx"),
}
#                    dla    no-GPU build  targets  runtime cache  timing cache
FAMILY_GATES = {"tensorrt": (True, False, False, False, True), "tensorrt-rtx": (False, True, True, True, False)}


@pytest.mark.parametrize("release", [*RELEASES, "rtx-1.7.1"])
def test_gates_per_release(release):
    v = _version(release)
    got = (
        trt_compat.needs_explicit_batch_flag(v),
        trt_compat.has_strongly_typed_flag(v),
        trt_compat.always_strongly_typed(v),
        trt_compat.has_precision_flags(v),
        trt_compat.has_int8_calibrator(v),
        trt_compat.has_progress_monitor(v),
        trt_compat.has_builder_optimization_level(v),
        trt_compat.max_onnx_opset(v),
        trt_compat.fp16_source(v),
    )
    assert got == EXPECTED_GATES[release]
    family = (trt_compat.has_dla(v), trt_compat.builds_without_gpu(v), trt_compat.has_compute_capability_targets(v),
              trt_compat.has_runtime_cache(v), trt_compat.has_timing_cache(v))
    assert family == FAMILY_GATES[v.family]


def test_gates_accept_tuples_and_strings():
    assert trt_compat.needs_explicit_batch_flag((8, 6))
    assert not trt_compat.needs_explicit_batch_flag("10.3.0")
    assert trt_compat.has_progress_monitor("9.0") and not trt_compat.has_progress_monitor("8.6.1")
    assert not trt_compat.is_supported("8.5.2") and trt_compat.is_supported("8.6.1")
    # a TensorRT-RTX version is always a TrtVersion: "1.7" as a string is a (too old) TensorRT
    assert trt_compat.is_supported(RTX) and not trt_compat.is_supported("1.7.1")
    assert not trt_compat.is_supported(trt_compat.parse_version("1.6.0", "tensorrt-rtx"))


@pytest.mark.parametrize(
    "release, modes",
    [("8.6.1", ("calibrator",)), ("10.3.0", ("qdq", "calibrator")), ("11.4.0", ("qdq",)), ("rtx-1.7.1", ("qdq",))],
)
def test_int8_modes(release, modes):
    assert trt_compat.int8_modes(_version(release)) == modes


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
    with pytest.raises(UserError, match=r"TensorRT-RTX 1.7 has no INT8 calibrator \(never had one\)"):
        trt_compat.resolve_int8_mode("calibrator", RTX)
    assert trt_compat.resolve_int8_mode("auto", RTX, have_qdq_onnx=False) == "qdq"


def test_require_supported_refuses_jetpack5():
    with pytest.raises(UserError, match="8.5.*JetPack 5"):
        trt_compat.require_supported("8.5.2")
    trt_compat.require_supported("8.6.1")
    with pytest.raises(UserError, match=r"TensorRT-RTX 1.6 is older .* 1.7 \(upgrade: .*trt-res2net\[rtx\]"):
        trt_compat.require_supported(trt_compat.parse_version("1.6.0", "tensorrt-rtx"))


def _hide(monkeypatch, *modules):
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)  # makes `import m` raise ImportError


def test_import_library_missing_is_exit_3(monkeypatch):
    _hide(monkeypatch, "tensorrt")
    with pytest.raises(MissingDependency) as info:
        trt_compat.import_library("tensorrt", what_was_written="onnx/x.onnx")
    msg = str(info.value)
    assert info.value.exit_code == EXIT_NO_TENSORRT == 3
    assert msg.startswith("wrote onnx/x.onnx; TensorRT is not importable")
    assert "pip install 'trt-res2net[trt]'" in msg and "python3-libnvinfer" in msg and "\n" not in msg
    assert trt_compat.installed_version("tensorrt") is None


def test_auto_without_either_library_names_both(monkeypatch):
    _hide(monkeypatch, "tensorrt", "tensorrt_rtx")
    with pytest.raises(MissingDependency) as info:
        trt_compat.import_library("auto", what_was_written="x.onnx")
    msg = str(info.value)
    assert msg.startswith("wrote x.onnx; neither TensorRT nor TensorRT-RTX is importable; to build the engine")
    assert "pip install 'trt-res2net[trt]'" in msg and "trt-res2net[rtx]" in msg and "\n" not in msg
    assert trt_compat.installed_version() is None


def test_auto_prefers_tensorrt_then_takes_rtx(monkeypatch):
    from trt_fakes import make_fake_tensorrt

    rtx = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed: pip install -e .[rtx]")
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.13.3"))
    assert trt_compat.installed_version() == (10, 13, 3, 0, "tensorrt")
    assert trt_compat.import_library("tensorrt-rtx").module is rtx
    _hide(monkeypatch, "tensorrt")
    lib = trt_compat.import_library()
    assert lib.module is rtx and lib.version.family == "tensorrt-rtx" and lib.label.startswith("TensorRT-RTX 1.")


def test_package_import_stays_light():
    code = (
        "import sys, trt_res2net.engine.trt_compat, trt_res2net.engine.builder, trt_res2net.engine.manifest, "
        "trt_res2net.engine.calibrator, trt_res2net.engine.progress, trt_res2net.runtime.tensorrt_backend\n"
        "heavy = [m for m in ('tensorrt', 'tensorrt_rtx', 'onnx', 'onnxruntime', 'cv2', 'cuda', 'torch')\n"
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


# Attributes trt-api-check lists because a file that imports tensorrt uses them, confirmed not to be TensorRT's:
# Python's (list.append, dict.update, sorted's key=), numpy's (itemsize, int64) and cuda_util's (DeviceInfo.cc,
# DeviceBuffer.free, Stream.memset).
NOT_TENSORRT_NAMES = {"append", "update", "key", "itemsize", "int64", "cc", "free", "memset"}


def test_trt_api_check_reports_no_unknown_names_and_all_release_names_are_gated():
    tool = _api_check_tool()
    if tool is None:
        pytest.skip("trt-api-check not found (../shared/tools/trt-api-check or $TRT_API_CHECK)")
    out = subprocess.run([sys.executable, str(tool), "--rtx", "."], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"trt-api-check: 0 unknown TensorRT names", out.stdout), out.stdout
    # The package's release-dependent names (TensorRT-RTX counted as one more release) must each have a gate
    # (tests may list others: a test that imports tensorrt makes every attribute in it a candidate).
    pkg = subprocess.run([sys.executable, str(tool), "--rtx", "trt_res2net"], cwd=REPO, capture_output=True,
                         text=True)
    listed = re.findall(r"^  (\w+)\s+(?:yes|-)\s", pkg.stdout, flags=re.M)
    ungated = [name for name in listed if name not in trt_compat.GATED_NAMES and name not in NOT_TENSORRT_NAMES]
    assert not ungated, f"release-dependent names without a gate in trt_compat.GATED_NAMES: {ungated}"


@pytest.mark.parametrize("release", ["8.6.1", "10.3.0", "10.13.3"])
def test_gated_names_match_the_fakes(release):
    """Each gate says 'present' exactly where the fake release (built from the name lists) has the name; 11.x's
    are checked against the real bindings' names by trt-api-check, TensorRT-RTX's against the real module."""
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


def test_gated_names_match_the_real_tensorrt_rtx():
    """Each gate says 'present' for TensorRT-RTX exactly where the real tensorrt_rtx module has the name."""
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed: pip install -e .[rtx]")
    v = trt_compat.parse_version(trt.__version__, "tensorrt-rtx")
    config = trt.Builder(trt.Logger()).create_builder_config()
    owners = [trt, trt.NetworkDefinitionCreationFlag, trt.BuilderFlag, config, trt.Runtime, trt.ICudaEngine,
              trt.IRuntimeConfig, trt.IRuntimeCache, trt.IExecutionContext, trt.EngineValidity, trt.CudaGraphStrategy,
              trt.ExecutionContextAllocationStrategy]
    for name, gate in trt_compat.GATED_NAMES.items():
        present = any(hasattr(owner, name) for owner in owners)
        if name == "EXPLICIT_BATCH":
            assert not gate(v) and not present
        else:
            assert gate(v) == present, name


@pytest.mark.parametrize(
    "text, expected",
    [("8.6,8.9,12.0", ["8.6", "8.9", "12.0"]), ("12.0, sm_86, 86", ["8.6", "12.0"]), ("7.5", ["7.5"]),
     ("current", ["current"]), ("CURRENT", ["current"])],
)
def test_parse_compute_capabilities(text, expected):
    assert trt_compat.parse_compute_capabilities(text) == expected


@pytest.mark.parametrize(
    "text, match",
    [("9.0", "Hopper: build with TensorRT"), ("8.7", "targets 7.5, 8.0, 8.6, 8.9, 12.0, 12.1 or current"),
     ("current,8.6", "alone"), (",", "needs a list")],
)
def test_parse_compute_capabilities_refusals(text, match):
    with pytest.raises(UserError, match=match):
        trt_compat.parse_compute_capabilities(text)


def test_rtx_plan_header_and_family(tmp_path):
    head = bytearray(64)
    head[:4] = b"vtrt"
    head[24:27] = bytes([1, 7, 1])
    head[32] = 0x7E  # the default targets as observed on 1.7.1
    h = trt_compat.read_rtx_plan_header(bytes(head))
    assert h.version == (1, 7, 1) and h.compute_capabilities == ("8.0", "8.6", "8.9", "12.0", "12.1") and h.and_later
    head[32] = 0x14
    h = trt_compat.read_rtx_plan_header(bytes(head))
    assert h.compute_capabilities == ("8.6", "12.0") and not h.and_later
    assert trt_compat.read_rtx_plan_header(b"ftrt" + bytes(60)) is None
    # versioned and checked: a size that disagrees, an unknown release, unknown or no target bits → None, and why
    head[16:24] = (4096).to_bytes(8, "little")
    assert trt_compat.read_rtx_plan_header(bytes(head), size=4096).compute_capabilities == ("8.6", "12.0")
    assert trt_compat.read_rtx_plan_header(bytes(head), size=4000) is None
    assert "plan size of 4096 bytes, the plan has 4000" in trt_compat.rtx_plan_header_problem(bytes(head), 4000)
    for index, value, why in ((25, 8, "TensorRT-RTX 1.8.1, whose header layout is unknown here (1.7)"),
                              (32, 0x80, "unknown target bits in 0x80"), (32, 0x40, "no target bit set")):
        changed = bytearray(head)
        changed[index] = value
        assert trt_compat.read_rtx_plan_header(bytes(changed)) is None
        assert trt_compat.rtx_plan_header_problem(bytes(changed)) == (f"written by {why}" if index == 25 else why)
    # the sentence never lists nothing: no targets recorded → the library's documented default set
    assert trt_compat.rtx_targets_sentence([], False) == (
        "compute capability 8.0 (A100, A30), 8.6 (A10, A40, RTX 30, RTX A6000), 8.9 (L4, L40S, RTX 40), 12.0 (RTX 50, "
        "RTX PRO Blackwell) and later (the library's documented default)")
    (tmp_path / "a.engine").write_bytes(bytes(head))
    (tmp_path / "b.engine").write_bytes(b"ftrt" + bytes(60))
    assert trt_compat.engine_family_of(tmp_path / "a.engine") == "tensorrt-rtx"
    assert trt_compat.engine_family_of(tmp_path / "b.engine") == "tensorrt"


def test_rtx_runs_on():
    default = ["8.0", "8.6", "8.9", "12.0", "12.1"]
    assert trt_compat.rtx_runs_on("8.9", default, True) and trt_compat.rtx_runs_on("13.0", default, True)
    assert not trt_compat.rtx_runs_on("9.0", default, True) and not trt_compat.rtx_runs_on("7.5", default, True)
    assert not trt_compat.rtx_runs_on("12.0", ["8.6"], False) and not trt_compat.rtx_runs_on("13.0", default, False)
