"""The engine stage without a GPU: planning, profiles, the ONNX contract, the no-TensorRT path (exit 3), and whole
builds against fake TensorRT 8.6 / 10.x modules — what no installable library can stand in for (calibrator, DLA,
timing cache, builder flags). The 11.x-style API that TensorRT-RTX shares is tested on the real ``tensorrt_rtx`` in
tests/test_rtx_build.py."""

from __future__ import annotations

import json
import sys

import pytest

from trt_res2net.cli.build import build_parser, engine_options
from trt_res2net.core.errors import EXIT_NO_TENSORRT, MissingDependency, UserError
from trt_res2net.core.hashing import sha256_file
from trt_res2net.engine.build import build_engine, run_engine
from trt_res2net.engine.commands import equivalent_commands
from trt_res2net.engine.manifest import read_manifest
from trt_res2net.engine.options import BatchProfile, EngineOptions, engine_path_for, resolve_batch_profile
from trt_res2net.engine.plan import default_workspace_bytes, plan_engine
from trt_res2net.engine.precision_path import plan_build, precision_onnx_needed
from trt_res2net.model.contract import inspect_onnx

from trt_fakes import (  # isort: skip
    FakeDeviceBuffer,
    fake_gpu,
    fake_version_tag,
    make_fake_tensorrt,
    plan_doc,
    tiny_classifier_onnx,
    write_images,
)

RELEASES = ["8.6.1", "10.3.0", "10.13.3"]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    tiny_classifier_onnx(d / "fp32.onnx")
    tiny_classifier_onnx(d / "qdq.onnx", qdq=True, opset=19)
    tiny_classifier_onnx(d / "fp16.onnx", fp16=True)
    tiny_classifier_onnx(
        d / "fixed4.onnx", batch=4, input_name="x", output_name="save_infer_model/scale_0.tmp_1"
    )
    return d


# ---------------------------------------------------------------------------------------------------------
# Pure planning


def test_batch_profile_defaults_and_forms():
    assert resolve_batch_profile() == BatchProfile(1, 8, 32)
    assert resolve_batch_profile(batch=16) == BatchProfile(16, 16, 16)
    assert resolve_batch_profile(max_batch=4) == BatchProfile(1, 4, 4)
    assert resolve_batch_profile(min_batch=2, max_batch=64) == BatchProfile(2, 8, 64)
    assert resolve_batch_profile(opt_batch=48) == BatchProfile(1, 48, 48)
    assert resolve_batch_profile(onnx_batch=4) == BatchProfile(4, 4, 4)
    assert resolve_batch_profile(batch=4, onnx_batch=4) == BatchProfile(4, 4, 4)
    assert BatchProfile(1, 8, 32).shapes((3, 224, 224))[2] == (32, 3, 224, 224)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch=8, max_batch=16), "exclude each other"),
        (dict(batch=0), "≥ 1"),
        (dict(min_batch=16, opt_batch=8, max_batch=32), "min ≤ opt ≤ max"),
        (dict(max_batch=32, onnx_batch=1), "fixed batch of 1"),
    ],
)
def test_batch_profile_errors(kwargs, match):
    with pytest.raises(UserError, match=match):
        resolve_batch_profile(**kwargs)


def test_the_structure_reader_reads_what_onnx_reads(onnx_dir, tmp_path):
    """read_structure (protocol-buffer fields, without ONNX's package) against onnx.load on every kind of model the
    builder meets: FP32, Q/DQ, FP16, a fixed batch with a Softmax; a symbolic dimension, a negative attribute, an
    initializer listed among the inputs, a custom-domain opset before the default one."""
    import onnx
    from onnx import TensorProto, helper

    from trt_res2net.model.contract import read_structure

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 224, 224])
    w = helper.make_tensor("w", TensorProto.FLOAT16, [2], [1.0, 2.0])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1000])
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=-1), helper.make_node("Cast", ["f"], ["y"], to=1)]
    graph = helper.make_graph(nodes, "g", [x, helper.make_tensor_value_info("w", TensorProto.FLOAT16, [2])], [y], [w])
    odd = helper.make_model(graph, opset_imports=[helper.make_opsetid("com.example", 3), helper.make_opsetid("", 17)])
    onnx.save(odd, tmp_path / "odd.onnx")
    for path in [*sorted(onnx_dir.glob("*.onnx")), tmp_path / "odd.onnx"]:
        model, got = onnx.load(path), read_structure(path)
        g = model.graph
        inits = {t.name: t.data_type for t in g.initializer}

        def spec(v):
            dims = v.type.tensor_type.shape.dim
            return v.name, tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)

        assert [(i.name, i.shape) for i in got.inputs] == [spec(v) for v in g.input if v.name not in inits], path
        assert [(o.name, o.shape) for o in got.outputs] == [spec(v) for v in g.output], path
        assert got.initializer_types == inits, path
        assert [(n.op_type, n.input, n.output) for n in got.node] == [
            (n.op_type, tuple(n.input), tuple(n.output)) for n in g.node], path
        assert [n.cast_to for n in got.node if n.op_type == "Cast"] == [
            a.i for n in g.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"], path
        assert got.opset == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), path
    assert read_structure(tmp_path / "odd.onnx").inputs[0].dtype == "float32"


def test_inspect_onnx(onnx_dir, tmp_path):
    io = inspect_onnx(onnx_dir / "fp32.onnx")
    assert (io.input_name, io.output_name, io.batch) == ("input", "logits", None)
    assert io.input_shape == (None, 3, 224, 224) and io.opset == 17 and not io.has_qdq and not io.has_fp16
    assert io.chw() == (3, 224, 224)
    q = inspect_onnx(onnx_dir / "qdq.onnx")
    assert q.has_qdq and q.opset == 19
    assert inspect_onnx(onnx_dir / "fp16.onnx").has_fp16
    fixed = inspect_onnx(onnx_dir / "fixed4.onnx")
    assert (fixed.input_name, fixed.batch, fixed.output_name) == ("x", 4, "save_infer_model/scale_0.tmp_1")
    with pytest.raises(UserError, match="not found"):
        inspect_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(UserError, match="not a readable ONNX"):
        inspect_onnx(tmp_path / "junk.onnx")


def _plan(precision, release, onnx_dir, onnx="fp32.onnx", **kw):
    return plan_build(
        precision, release, onnx_path=onnx_dir / onnx, fp32_onnx_path=onnx_dir / "fp32.onnx", **kw
    )


@pytest.mark.parametrize(
    "precision, release, onnx, mode, expect",
    [
        ("fp32", "8.6.1", "fp32.onnx", "auto", ("fp32.onnx", (), False, True, None)),
        ("fp32", "11.4.0", "fp32.onnx", "auto", ("fp32.onnx", (), True, False, None)),
        ("fp16", "8.6.1", "fp16.onnx", "auto", ("fp32.onnx", ("FP16",), False, True, None)),
        ("fp16", "10.3.0", "fp16.onnx", "auto", ("fp32.onnx", ("FP16",), False, False, None)),
        ("fp16", "11.4.0", "fp16.onnx", "auto", ("fp16.onnx", (), True, False, None)),
        ("int8", "8.6.1", "fp32.onnx", "auto", ("fp32.onnx", ("INT8", "FP16"), False, True, "calibrator")),
        ("int8", "10.3.0", "qdq.onnx", "auto", ("qdq.onnx", (), True, False, "qdq")),
        ("int8", "10.3.0", "fp32.onnx", "auto", ("fp32.onnx", ("INT8", "FP16"), False, False, "calibrator")),
        (
            "int8",
            "10.13.3",
            "qdq.onnx",
            "calibrator",
            ("fp32.onnx", ("INT8", "FP16"), False, False, "calibrator"),
        ),
        ("int8", "11.4.0", "qdq.onnx", "auto", ("qdq.onnx", (), True, False, "qdq")),
    ],
)
def test_plan_build(onnx_dir, precision, release, onnx, mode, expect):
    plan = _plan(precision, release, onnx_dir, onnx, int8_mode=mode)
    got = (plan.onnx_path.name, plan.flags, plan.strongly_typed, plan.explicit_batch, plan.int8_mode)
    assert got == expect
    assert plan.calibrator == (plan.int8_mode == "calibrator")


def test_plan_build_fp32_high_precision_for_calibrator(onnx_dir):
    assert _plan("int8", "10.3.0", onnx_dir, int8_mode="calibrator", high_precision="fp32").flags == ("INT8",)


@pytest.mark.parametrize(
    "precision, release, onnx, mode, match",
    [
        ("fp16", "11.4.0", "fp32.onnx", "auto", "FP16 only from an FP16 ONNX.*AutoCast"),
        ("int8", "8.6.1", "qdq.onnx", "qdq", "opset ≤ 17"),
        ("int8", "11.4.0", "fp32.onnx", "calibrator", "no INT8 calibrator"),
        ("int8", "11.4.0", "fp32.onnx", "auto", "needs the Q/DQ ONNX"),
        ("int8", "10.3.0", "fp16.onnx", "qdq", "no QuantizeLinear"),
        ("int4", "10.3.0", "fp32.onnx", "auto", "build_engine.precision must be"),
        ("fp32", "8.5.2", "fp32.onnx", "auto", "JetPack 5"),
    ],
)
def test_plan_build_refusals(onnx_dir, precision, release, onnx, mode, match):
    with pytest.raises(UserError, match=match):
        _plan(precision, release, onnx_dir, onnx, int8_mode=mode)


@pytest.mark.parametrize(
    "precision, mode, release, expected",
    [
        ("fp32", "auto", None, False),
        ("fp16", "auto", None, True),
        ("int8", "auto", None, True),
        ("int8", "calibrator", None, False),
        ("fp16", "auto", "8.6.1", False),
        ("fp16", "auto", "10.3.0", False),
        ("fp16", "auto", "11.4.0", True),
        ("int8", "auto", "8.6.1", False),
        ("int8", "auto", "10.3.0", True),
        ("int8", "calibrator", "10.3.0", False),
        ("int8", "auto", "11.4.0", True),
    ],
)
def test_precision_onnx_needed(precision, mode, release, expected):
    assert precision_onnx_needed(precision, mode, release) is expected


def test_default_workspace():
    gib = 1 << 30
    assert default_workspace_bytes(20 * gib, 24 * gib, False) == 10 * gib
    assert default_workspace_bytes(130 * gib, 140 * gib, False) == 16 * gib
    assert default_workspace_bytes(12 * gib, 16 * gib, True) == 3 * gib  # Jetson: a quarter of free
    assert default_workspace_bytes(60 * gib, 64 * gib, True) == 4 * gib
    assert default_workspace_bytes(100 << 20, 4 * gib, True) == 256 << 20
    assert default_workspace_bytes(None, 8 * gib, False) == 4 * gib


def test_engine_path_for():
    assert (
        str(engine_path_for("res2net200_vd_26w_4s", "int8", 32))
        == "engines/res2net200_vd_26w_4s_int8_b32.engine"
    )


def _options(*argv) -> EngineOptions:
    """build.py's flags through the CLI's own mapping (the one place flags become EngineOptions)."""
    return engine_options(build_parser().parse_args(["--onnx", "m.onnx", *argv]))


def _step(argv, onnx, model, precision, fp32):
    return build_engine(onnx, precision, _options(*argv), fp32_onnx_path=fp32, model_name=model).path


def _planned(argv, onnx, model, precision, fp32):
    return plan_engine(onnx, _options(*argv), precision=precision, fp32_onnx_path=fp32, model_name=model)


def test_cli_flags_map_onto_engine_options():
    opts = _options("--int8-mode", "calibrator", "--min-batch", "2", "--max-batch", "16", "--workspace", "512",
                    "--timing-cache", "t.cache", "--dla-core", "0", "--builder-opt-level", "5", "--calib-batch", "4")
    assert opts.batch_profile() == BatchProfile(2, 8, 16)
    assert opts.workspace_bytes == 512 << 20 and str(opts.timing_cache) == "t.cache"
    assert (opts.dla_core, opts.builder_opt_level, opts.calibrator_batch, opts.int8_mode) == (0, 5, 4, "calibrator")
    d = _options()
    assert d == EngineOptions() and d.workspace_bytes is None and d.calibrator_batch == 8
    assert d.log_level == "warning" and d.progress and not _options("--quiet").progress
    with pytest.raises(SystemExit):
        _options("--builder-opt-level", "9")
    with pytest.raises(SystemExit):
        _options("--int8-mode", "minmax")
    with pytest.raises(UserError, match="EngineOptions.workspace_mib must be ≥ 1 MiB, not 0"):
        _options("--workspace", "0")
    with pytest.raises(UserError, match="EngineOptions.compute_capabilities='9.0'"):
        EngineOptions(compute_capabilities="9.0")
    assert EngineOptions(compute_capabilities=("12.0", "8.6")).compute_capabilities == ("8.6", "12.0")


# ---------------------------------------------------------------------------------------------------------
# build_engine without TensorRT / without a GPU: exit status 3, one line, ONNX named


def test_no_library_is_exit_3_naming_the_onnx(onnx_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` → ImportError
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(MissingDependency) as info:
        _step([], onnx_dir / "qdq.onnx", "tiny", "int8", onnx_dir / "fp32.onnx")
    msg = str(info.value)
    assert info.value.exit_code == EXIT_NO_TENSORRT == 3
    assert msg.startswith(
        f"wrote {onnx_dir / 'fp32.onnx'} and {onnx_dir / 'qdq.onnx'}; neither TensorRT nor TensorRT-RTX is "
        "importable; to build the engine install TensorRT (pip install 'trt-res2net[trt]' on x86 with a driver for "
        "CUDA 12"
    )
    assert "or TensorRT-RTX (pip install 'trt-res2net[rtx]'" in msg and "\n" not in msg
    with pytest.raises(MissingDependency, match=r"; TensorRT is not importable \(ModuleNotFoundError"):
        _step(["--engine-family", "tensorrt"], onnx_dir / "fp32.onnx", "tiny", "fp32", onnx_dir / "fp32.onnx")


def test_no_gpu_is_exit_3(onnx_dir, monkeypatch):
    from trt_res2net.cuda import device

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt("10.3.0"))

    def no_gpu(device=0):
        raise MissingDependency("no usable NVIDIA GPU (CUDA error 35: is the driver installed?)")

    monkeypatch.setattr(device, "detect_gpu", no_gpu)
    with pytest.raises(MissingDependency) as info:
        _step([], onnx_dir / "fp32.onnx", "tiny", "fp32", onnx_dir / "fp32.onnx")
    assert info.value.exit_code == 3
    assert str(info.value).startswith(f"wrote {onnx_dir / 'fp32.onnx'}; no usable NVIDIA GPU")
    assert "pip install 'trt-res2net[trt]'" in str(info.value)
    assert "EngineOptions.family='tensorrt-rtx', which builds without a GPU" in str(info.value)


def test_dla_fp32_is_a_usage_error(onnx_dir):
    with pytest.raises(UserError, match="DLA runs FP16 or INT8"):
        _step(["--dla-core", "0"], onnx_dir / "fp32.onnx", "t", "fp32", onnx_dir / "fp32.onnx")


# ---------------------------------------------------------------------------------------------------------
# Whole builds against fake TensorRT releases


@pytest.fixture
def fake_env(monkeypatch, tmp_path):
    """Fake TensorRT (set per test), a fake GPU, fake device buffers, and a scratch working directory
    (engines/ and calib/ are relative)."""
    from trt_res2net.cuda import device
    from trt_res2net.engine import calibrator as trt_calibrator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(device, "detect_gpu", lambda device=0: fake_gpu())
    monkeypatch.setattr(trt_calibrator, "CudaDeviceBuffer", FakeDeviceBuffer)
    FakeDeviceBuffer.instances.clear()

    def use(version, **kw):
        trt = make_fake_tensorrt(version, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        return trt

    return use


def _build(argv, onnx_dir, precision, onnx="fp32.onnx", model="tiny"):
    return _step(["--quiet", *argv], onnx_dir / onnx, model, precision, onnx_dir / "fp32.onnx")


@pytest.mark.parametrize("release", RELEASES)
def test_fp32_build_per_release(fake_env, onnx_dir, release):
    trt = fake_env(release)
    plan = _planned(["--quiet"], onnx_dir / "fp32.onnx", "tiny", "fp32", onnx_dir / "fp32.onnx")
    assert plan.build.explicit_batch == (release == "8.6.1")  # EXPLICIT_BATCH only on 8.x
    assert plan.build.flags == () and not plan.build.strongly_typed and plan.build.int8_mode is None
    assert plan.profile == BatchProfile(1, 8, 32) and plan.targets is None and plan.calibration_batch is None
    assert plan.options.workspace_mib == 10 << 10  # half the fake GPU's 20 GiB free
    assert str(plan.engine_path) == "engines/tiny_fp32_b32.engine" and not plan.engine_path.exists()
    engine = run_engine(plan).path
    assert engine == plan.engine_path and engine.exists()
    m = read_manifest(engine)
    assert m.library_version == release and m.precision == "fp32" and m.int8_mode is None
    assert m.engine_family == "tensorrt" and m.compute_capabilities == ("8.9",)
    assert m.gpu.name == "NVIDIA Fake GPU" and m.gpu.compute_capability == "8.9"
    assert (m.io.input.name, m.io.input.shape, m.io.output.name) == ("input", (-1, 3, 224, 224), "logits")
    assert m.profiles[0].max == (32, 3, 224, 224) and m.build_options.workspace_mib == 10 << 10
    assert m.build_options.progress == ("spinner" if release == "8.6.1" else "monitor")
    assert m.onnx_sha256 == m.fp32_onnx_sha256 == sha256_file(onnx_dir / "fp32.onnx")
    assert m.engine_sha256 == sha256_file(engine) and m.engine_bytes == engine.stat().st_size
    assert ("init_plugins", "") in trt.log


@pytest.mark.parametrize(
    "release, path, flags, strongly",
    [
        ("8.6.1", "fp32.onnx", ("FP16",), 0),
        ("10.3.0", "fp32.onnx", ("FP16",), 0),
    ],
)
def test_fp16_build_per_release(fake_env, onnx_dir, release, path, flags, strongly):
    fake_env(release)
    plan = _planned(["--quiet", "--batch", "4"], onnx_dir / "fp16.onnx", "tiny", "fp16", onnx_dir / "fp32.onnx")
    assert plan.build.flags == flags and plan.build.strongly_typed == bool(strongly)
    assert plan.build.onnx_path.name == path and plan.profile == BatchProfile(4, 4, 4)
    engine = run_engine(plan).path
    assert engine.name == "tiny_fp16_b4.engine" and read_manifest(engine).onnx.endswith(path)
    assert read_manifest(engine).quantization.source == "fp16-builder-flag"


@pytest.mark.parametrize("release, strongly_bit", [("10.3.0", 1 << 1), ("10.13.3", 1 << 1)])
def test_int8_qdq_build(fake_env, onnx_dir, release, strongly_bit):
    fake_env(release)
    plan = _planned(["--quiet", "--int8-mode", "qdq"], onnx_dir / "qdq.onnx", "tiny", "int8", onnx_dir / "fp32.onnx")
    assert plan.build.flags == () and plan.build.strongly_typed and plan.build.int8_mode == "qdq"
    assert plan.build.onnx_path.name == "qdq.onnx" and plan.calibration_batch is None and plan.io.has_qdq
    engine = run_engine(plan).path
    assert plan_doc(engine)["network_flags"] == strongly_bit  # STRONGLY_TYPED reached the network
    m = read_manifest(engine)
    assert m.int8_mode == "qdq" and m.calibration is None and m.onnx.endswith("qdq.onnx")
    assert (m.onnx_sha256, m.fp32_onnx_sha256) == (sha256_file(onnx_dir / "qdq.onnx"),
                                                   sha256_file(onnx_dir / "fp32.onnx"))


@pytest.mark.parametrize("release", ["8.6.1", "10.3.0", "10.13.3"])
def test_a_given_qdq_or_fp16_onnx_is_built_as_what_it_is(fake_env, onnx_dir, release):
    """An ONNX that is already INT8 Q/DQ or FP16, given as it is (no FP32 original): built from its own types where
    the release can, named and recorded as what it is; a Q/DQ ONNX on 8.6 (no explicit-quantization path here) is
    refused in one line rather than calibrated again."""
    fake_env(release)
    qdq, fp16 = onnx_dir / "qdq.onnx", onnx_dir / "fp16.onnx"
    if release == "8.6.1":
        with pytest.raises(UserError, match=r"qdq.onnx is already INT8 \(Q/DQ nodes\), which TensorRT 8.6 builds only "
                                             r"as explicit quantization: use EngineOptions.int8_mode='qdq'"):
            _step(["--quiet"], qdq, "given", "int8", qdq)
    else:
        plan = _planned(["--quiet"], qdq, "given", "int8", qdq)
        assert plan.build.int8_mode == "qdq" and plan.build.strongly_typed and plan.build.onnx_path == qdq
        engine = run_engine(plan).path
        m = read_manifest(engine)
        assert engine.name == "given_int8_b32.engine" and m.int8_mode == "qdq"
        assert m.quantization.source == "external-qdq" and m.calibration is None
        assert m.compute_precision.known is True
    plan = _planned(["--quiet"], fp16, "given", "fp16", fp16)
    # no strongly typed networks on 8.6: the FP16 flag over the FP16 ONNX
    assert (plan.build.flags, plan.build.strongly_typed) == ((("FP16",), False) if release == "8.6.1" else ((), True))
    m = read_manifest(run_engine(plan).path)
    assert m.quantization.source == "external-fp16" and m.onnx == str(fp16)


@pytest.mark.parametrize("release", ["8.6.1", "10.3.0"])
def test_int8_calibrator_build_then_reuse(fake_env, onnx_dir, tmp_path, release):
    trt = fake_env(release)
    images = write_images(tmp_path / "calib_images", n=11)
    plan = _planned(["--quiet", "--calib-dir", str(images[0].parent), "--calib-batch", "4", "--max-batch", "8"],
                    onnx_dir / "fp32.onnx", "tiny", "int8", onnx_dir / "fp32.onnx")
    assert plan.build.flags == ("INT8", "FP16") and plan.build.calibrator and plan.calibration_batch == 4
    assert plan.profile == BatchProfile(1, 8, 8)
    engine = run_engine(plan).path
    doc = plan_doc(engine)
    assert doc["calibrated_batches"] == 2  # 11 images → two full batches of 4, the rest dropped
    assert doc["calibration_profile"] == {"input": [[4, 3, 224, 224]] * 3}
    buf = FakeDeviceBuffer.instances[-1]
    assert len(buf.uploads) == 2 and buf.uploads[0].shape == (4, 3, 224, 224) and buf.freed
    import cv2  # the uploaded batch is exactly the CPU preprocessing of the first images

    from trt_res2net.data.preprocess import preprocess_bgr

    assert abs(buf.uploads[0][0] - preprocess_bgr(cv2.imread(str(images[0])))).max() == 0

    tag = fake_version_tag(release)
    cache = tmp_path / "calib" / f"tiny.trt{tag}.cache"
    assert cache.read_text().startswith(f"TRT-{tag}-EntropyCalibration2\n")
    side = json.loads((tmp_path / "calib" / f"tiny.trt{tag}.cache.json").read_text())
    key, info = side["key"], side["info"]
    assert key["tools"] == {"tensorrt": release} and key["method"] == "tensorrt-entropy2"
    assert key["onnx_sha256"] == sha256_file(onnx_dir / "fp32.onnx") and info["calibration_batch"] == 4
    assert len(key["calibration_manifest_sha256"]) == 64 and info["batches"] == 2
    listed = json.loads((tmp_path / "calib" / f"tiny.trt{tag}.cache.images.json").read_text())
    assert [e["path"] for e in listed["images"]] == [p.name for p in images]  # the image manifest beside it
    assert listed["sha256"] == key["calibration_manifest_sha256"]
    m = read_manifest(engine)
    assert m.int8_mode == "calibrator" and m.calibration.cache == str(cache.relative_to(tmp_path))
    assert m.calibration.reused is False and m.calibration.images == 11 and m.calibration.batch == 4
    assert m.build_options.calibration_profile == (4, 3, 224, 224)
    assert m.quantization.source == "tensorrt-calibrator" and m.quantization.calibration_cache == m.calibration.cache

    # A second build reuses the cache without any images.
    trt.log.clear()
    engine2 = _build(["--max-batch", "8"], onnx_dir, "int8")
    assert plan_doc(engine2)["calibrated_batches"] == 0
    assert any(k == "calibration_cache_used" for k, _ in trt.log)
    assert read_manifest(engine2).calibration.reused is True


def test_calibrator_needs_images_or_cache(fake_env, onnx_dir):
    fake_env("8.6.1")
    with pytest.raises(UserError, match="needs calibration images.*CalibrationImages.directory=DIR"):
        _build([], onnx_dir, "int8")


def test_stale_calibration_cache_is_refused(fake_env, onnx_dir, tmp_path):
    fake_env("10.3.0")
    images = write_images(tmp_path / "imgs", n=8)
    _build(["--calib-dir", str(images[0].parent), "--calib-batch", "4"], onnx_dir, "int8")
    cache = tmp_path / "calib" / "tiny.trt100300.cache"

    # Another TensorRT release: the cache header's version differs → refused, naming both.
    text = cache.read_text().replace("TRT-100300-", "TRT-101303-")
    cache.write_text(text)
    with pytest.raises(UserError, match=r"written by TensorRT 101303.*this TensorRT is 100300.*CalibrationImages.dir"):
        _build([], onnx_dir, "int8")

    # A key field differs (another ONNX) → refused by the sidecar check.
    cache.write_text(text.replace("TRT-101303-", "TRT-100300-"))
    side = tmp_path / "calib" / "tiny.trt100300.cache.json"
    doc = json.loads(side.read_text())
    doc["key"]["onnx_sha256"] = "0" * 64
    side.write_text(json.dumps(doc))
    with pytest.raises(UserError, match="onnx_sha256"):
        _build([], onnx_dir, "int8")

    # With images, the stale cache is recalibrated and replaced (said on stderr).
    _build(["--calib-dir", str(images[0].parent), "--calib-batch", "4"], onnx_dir, "int8")
    assert json.loads(side.read_text())["key"]["onnx_sha256"] != "0" * 64


def test_cache_without_sidecar_is_refused(fake_env, onnx_dir, tmp_path):
    fake_env("10.3.0")
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "tiny.trt100300.cache").write_text(
        "TRT-100300-EntropyCalibration2\ninput: 3c010204\n"
    )
    with pytest.raises(UserError, match="no sidecar"):
        _build([], onnx_dir, "int8")


def test_calibration_failure_is_reported_and_no_cache_kept(fake_env, onnx_dir, tmp_path, monkeypatch):
    fake_env("10.3.0")
    images = write_images(tmp_path / "imgs", n=8)

    class Broken(FakeDeviceBuffer):
        def upload(self, array):
            raise RuntimeError("cudaMemcpy failed: cudaErrorIllegalAddress (700)")

    from trt_res2net.engine import calibrator as trt_calibrator

    monkeypatch.setattr(trt_calibrator, "CudaDeviceBuffer", Broken)
    with pytest.raises(UserError, match="INT8 calibration failed.*cudaErrorIllegalAddress"):
        _build(["--calib-dir", str(images[0].parent), "--calib-batch", "4"], onnx_dir, "int8")
    assert not (tmp_path / "calib" / "tiny.trt100300.cache").exists()
    assert not (tmp_path / "engines" / "tiny_int8_b32.engine").exists()


def test_fixed_batch_external_onnx(fake_env, onnx_dir, tmp_path):
    """A paddle2onnx-like export: other tensor names, batch 4 fixed in the file → no profile, a batch-4
    engine."""
    fake_env("10.3.0")
    plan = _planned(["--quiet"], onnx_dir / "fixed4.onnx", "mymodel", "fp16", onnx_dir / "fixed4.onnx")
    assert plan.profile == BatchProfile(4, 4, 4) and plan.io.batch == 4
    engine = run_engine(plan).path
    assert engine.name == "mymodel_fp16_b4.engine"
    assert plan_doc(engine)["profiles"] == []  # a static input: no optimization profile is added
    m = read_manifest(engine)
    assert m.io.input.name == "x" and m.io.input.shape == (4, 3, 224, 224)
    assert m.io.output.name == "save_infer_model/scale_0.tmp_1"
    with pytest.raises(UserError, match="fixed batch of 4"):
        _step(["--max-batch", "32"], onnx_dir / "fixed4.onnx", "mymodel", "fp16", onnx_dir / "fixed4.onnx")


def test_fixed_batch_calibration_uses_the_file_batch(fake_env, onnx_dir, tmp_path):
    fake_env("8.6.1")
    images = write_images(tmp_path / "imgs", n=9)
    engine = _step(["--quiet", "--calib-dir", str(images[0].parent)], onnx_dir / "fixed4.onnx", "m", "int8",
                   onnx_dir / "fixed4.onnx")
    doc = plan_doc(engine)
    assert doc["calibrated_batches"] == 2 and doc["calibration_profile"] is None


def test_build_options_reach_tensorrt(fake_env, onnx_dir, tmp_path):
    fake_env("10.13.3", num_dla_cores=2)
    engine = _build(
        [
            "--workspace",
            "300",
            "--builder-opt-level",
            "5",
            "--dla-core",
            "1",
            "--save-engine",
            str(tmp_path / "out" / "x.engine"),
        ],
        onnx_dir,
        "fp16",
    )
    assert engine == tmp_path / "out" / "x.engine"
    doc = plan_doc(engine)
    assert doc["pools"] == {"WORKSPACE": 300 << 20} and doc["opt_level"] == 5
    assert doc["device"] == "DLA" and doc["dla_core"] == 1 and "GPU_FALLBACK" in doc["flags"]
    opts = read_manifest(engine).build_options
    assert opts.workspace_mib == 300 and opts.dla_core == 1 and opts.builder_opt_level == 5


def test_dla_core_must_exist(fake_env, onnx_dir):
    fake_env("10.3.0", num_dla_cores=0)
    with pytest.raises(UserError, match="0 DLA core.*Jetson"):
        _build(["--dla-core", "0"], onnx_dir, "fp16")


def test_timing_cache_written_reused_and_keyed(fake_env, onnx_dir, tmp_path):
    fake_env("10.3.0")
    tc = tmp_path / "timing.cache"
    _build(["--timing-cache", str(tc)], onnx_dir, "fp32")
    assert tc.read_bytes() == b"+measured"
    assert json.loads((tmp_path / "timing.cache.json").read_text())["gpu"] == "NVIDIA Fake GPU"
    engine = _build(["--timing-cache", str(tc)], onnx_dir, "fp32")
    assert plan_doc(engine)["timing_cache"] and tc.read_bytes() == b"+measured+measured"

    fake_env("10.13.3")  # another TensorRT release → refused, not overwritten
    with pytest.raises(UserError, match=r"tensorrt_version='10.3.0', this build has '10.13.3'"):
        _build(["--timing-cache", str(tc)], onnx_dir, "fp32")
    assert tc.read_bytes() == b"+measured+measured"

    other = tmp_path / "other.cache"
    other.write_bytes(b"OTHER-DEVICE...")
    with pytest.raises(UserError, match="refused timing cache"):
        _build(["--timing-cache", str(other)], onnx_dir, "fp32")


def test_8_6_parser_refuses_opset_19(fake_env, tmp_path):
    """8.6's ONNX parser reads opset ≤ 17 (a real build failure on TensorRT-RTX: tests/test_rtx_build.py)."""
    fake_env("8.6.1")
    tiny_classifier_onnx(tmp_path / "op19.onnx", opset=19)
    with pytest.raises(UserError, match="ONNX parser rejected.*opset 19"):
        _step(["--quiet"], tmp_path / "op19.onnx", "t", "fp32", tmp_path / "op19.onnx")


def test_8_6_uses_spinner(fake_env, onnx_dir, monkeypatch):
    from trt_res2net.engine import progress as build_progress

    entered = []

    class RecordingSpinner(build_progress.Spinner):
        def __enter__(self):
            entered.append(self.message)
            return super().__enter__()

    monkeypatch.setattr(build_progress, "Spinner", RecordingSpinner)
    fake_env("8.6.1")
    _build([], onnx_dir, "fp32")
    assert entered == ["building tiny_fp32_b32.engine"]


def test_softmax_output_is_recorded(fake_env, tmp_path):
    fake_env("10.3.0")
    probs = tiny_classifier_onnx(tmp_path / "p.onnx", softmax=True, output_name="probabilities")
    assert inspect_onnx(probs).outputs_probabilities
    engine = _step(["--quiet"], probs, "p", "fp32", probs)
    m = read_manifest(engine)
    assert m.outputs_probabilities is True and m.io.output.name == "probabilities"


def test_tiny_res2net_through_the_fake_builder(fake_env, tiny_onnx, tmp_path):
    """The real exporter's tiny Res2Net (conftest) through every release's fake builder."""
    for release in RELEASES:
        fake_env(release)
        engine = _step(["--quiet", "--max-batch", "4", "--engine-dir", str(tmp_path / release)], tiny_onnx,
                       "tiny_res2net", "fp32", tiny_onnx)
        m = read_manifest(engine)
        assert m.io.input.name == "input" and m.io.output.name == "logits"
        assert m.outputs_probabilities is False and m.profiles[0].max == (4, 3, 224, 224)


def test_equivalent_commands(onnx_dir):
    plan = _plan("int8", "10.3.0", onnx_dir, int8_mode="calibrator")
    cmds = equivalent_commands(plan, BatchProfile(1, 8, 32), "input", (3, 224, 224), "engines/t.engine",
                               workspace_bytes=4 << 30, calib_cache="calib/t.trt100300.cache",
                               timing_cache="t.cache", builder_opt_level=4, version="10.3.0")
    t, p = cmds["trtexec"].split(), cmds["polygraphy"].split()
    assert t[:3] == ["trtexec", f"--onnx={onnx_dir / 'fp32.onnx'}", "--saveEngine=engines/t.engine"]
    for flag in ("--memPoolSize=workspace:4096M", "--minShapes=input:1x3x224x224", "--optShapes=input:8x3x224x224",
                 "--maxShapes=input:32x3x224x224", "--fp16", "--int8", "--calib=calib/t.trt100300.cache",
                 "--timingCacheFile=t.cache", "--builderOptimizationLevel=4"):
        assert flag in t, flag
    assert " --trt-max-shapes 'input:[32,3,224,224]'" in cmds["polygraphy"] and "--tf32" in p
    assert "--calibration-cache calib/t.trt100300.cache" in cmds["polygraphy"]

    q = equivalent_commands(_plan("int8", "10.3.0", onnx_dir, "qdq.onnx"), BatchProfile(4, 4, 4), "x",
                            (3, 224, 224), "e.engine", workspace_bytes=1 << 30, dynamic=False, version="10.3.0")
    assert "--stronglyTyped" in q["trtexec"] and "--int8" not in q["trtexec"] and "Shapes" not in q["trtexec"]
    eleven = equivalent_commands(_plan("int8", "11.4.0", onnx_dir, "qdq.onnx"), BatchProfile(1, 1, 1), "x",
                                 (3, 224, 224), "e.engine", workspace_bytes=1 << 30, version="11.4.0")
    assert "--stronglyTyped" not in eleven["trtexec"]  # a no-op flag in 11.x


def test_manifest_records_equivalent_commands(fake_env, onnx_dir, capsys):
    fake_env("8.6.1")
    engine = _build(["--batch", "2"], onnx_dir, "fp16")
    cmds = read_manifest(engine).build_options.equivalent_commands
    assert "--fp16" in cmds["trtexec"] and "--minShapes=input:2x3x224x224" in cmds["trtexec"]
    err = capsys.readouterr().err  # and printed at the end of the build
    assert f"trtexec equivalent: {cmds['trtexec']}\n" in err and f"polygraphy equivalent: {cmds['polygraphy']}" in err


def test_batch_usage_errors_come_before_the_tensorrt_check(onnx_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError) as info:
        _step(["--batch", "0"], onnx_dir / "fp32.onnx", "t", "fp32", onnx_dir / "fp32.onnx")
    assert info.value.exit_code == 2 and "EngineOptions.batch must be ≥ 1" in str(info.value)


def test_rebuild_replaces_engine_and_manifest(fake_env, onnx_dir):
    fake_env("10.3.0")
    first = _build(["--batch", "2"], onnx_dir, "fp32")
    sha1 = read_manifest(first).engine_sha256
    fake_env("10.13.3")
    second = _build(["--batch", "2"], onnx_dir, "fp32")
    assert first == second and read_manifest(second).library_version == "10.13.3"
    assert read_manifest(second).engine_sha256 == sha256_file(second) != sha1


# ---------------------------------------------------------------------------------------------------------
# The plan in two parts: the target before the ONNX exists (build.py), the engine plan once it does


def test_the_target_is_planned_before_the_onnx_exists(fake_env, onnx_dir, monkeypatch):
    from trt_res2net.core.commit import Busy, PathLock
    from trt_res2net.engine.plan import plan_target

    fake_env("10.3.0")
    target = plan_target(_options("--quiet", "--max-batch", "16"), "fp16", model_name="tiny")  # a zoo model's export
    assert target.profile == BatchProfile(1, 8, 16) and str(target.engine_path) == "engines/tiny_fp16_b16.engine"
    assert target.gpu.name == "NVIDIA Fake GPU" and target.gpu_missing is None and target.caveats == ()
    assert target.options.workspace_mib == 10 << 10 and target.requested.workspace_mib is None
    with target.lock():  # what build.py holds across the export: a second build of this engine is refused
        with monkeypatch.context() as m, pytest.raises(Busy, match="is writing engines/tiny_fp16_b16.engine"):
            m.setattr("trt_res2net.core.commit._HELD", {})  # this process's locks unknown, as to another process
            PathLock(target.engine_path, "build").acquire()
    assert not target.engine_path.parent.exists()  # released: the lock file and the folder made for it are gone
    plan = plan_engine(onnx_dir / "fp32.onnx", precision="fp16", fp32_onnx_path=onnx_dir / "fp32.onnx",
                       model_name="tiny", target=target)
    assert plan.target is target and plan.build.flags == ("FP16",) and plan.engine_path == target.engine_path
    with pytest.raises(ValueError, match="another build"):
        plan_engine(onnx_dir / "fp32.onnx", precision="fp32", model_name="tiny", target=target)


def test_no_gpu_is_said_once_the_onnx_is_written(fake_env, onnx_dir, monkeypatch):
    """A TensorRT build without a GPU: the target records why, and the engine plan refuses (exit status 3) naming
    the ONNX files that exist by then."""
    from trt_res2net.cuda import device
    from trt_res2net.engine.plan import plan_target

    fake_env("10.3.0")

    def no_gpu(device=0):
        raise MissingDependency("no usable NVIDIA GPU")

    monkeypatch.setattr(device, "detect_gpu", no_gpu)
    target = plan_target(_options("--quiet"), "fp32", model_name="tiny")
    assert target.gpu is None and target.gpu_missing == "no usable NVIDIA GPU"
    assert target.options.workspace_mib is None  # no GPU to take half of
    with pytest.raises(MissingDependency, match=rf"^wrote {onnx_dir / 'fp32.onnx'}; no usable NVIDIA GPU; to build"):
        plan_engine(onnx_dir / "fp32.onnx", model_name="tiny", target=target)


def test_a_refusal_names_the_option_field(fake_env, onnx_dir):
    """The library speaks in EngineOptions' fields; build.py shows its flags (cli/build.py FLAGS)."""
    from trt_res2net.cli.build import FLAGS

    fake_env("10.3.0")
    with pytest.raises(UserError) as info:
        plan_engine(onnx_dir / "fp32.onnx", EngineOptions(compute_capabilities="8.6"))
    text = str(info.value)
    assert text.startswith("EngineOptions.compute_capabilities is for TensorRT-RTX engines; TensorRT builds")
    assert "use EngineOptions.family='tensorrt-rtx' for" in text and "--" not in text
    assert FLAGS.message(text).startswith("--compute-capability is for TensorRT-RTX engines")
    assert "use --engine-family tensorrt-rtx for" in FLAGS.message(text)
