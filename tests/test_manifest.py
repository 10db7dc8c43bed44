"""Engine manifests, the compatibility refusal, and the GPU/Jetson detection they record (fake cuda-python)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from fake_gpu_runtime import cudaError_t, fake_cuda_runtime, install_cuda_runtime

from trt_res2net.core.errors import MissingDependency, UserError
from trt_res2net.cuda import device as dev
from trt_res2net.data.preprocess import SPEC
from trt_res2net.engine import manifest as mf
from trt_res2net.engine.trt_compat import parse_version

FIXTURES = Path(__file__).parent / "fixtures"


def _manifest(tmp_path, **over):
    """An engine file and the manifest of a standard TensorRT build on a Jetson beside it."""
    from trt_fakes import fake_gpu

    engine = tmp_path / "m_fp16_b8.engine"
    engine.write_bytes(b"plan-bytes")
    gpu = fake_gpu(name="Orin", cc="8.7", integrated=True)
    kw = dict(
        engine=engine.name, engine_sha256=mf.sha256_file(engine), engine_bytes=len(b"plan-bytes"), model="m",
        precision="fp16", quantization=mf.Quantization("fp16-builder-flag", "FP16 by TensorRT's builder flag"),
        compute_precision=mf.ComputePrecision(True, "FP16 where TensorRT finds it faster"), engine_family="tensorrt",
        library_version="10.3.0", compute_capabilities=("8.7",), gpu=mf.BuildGpu.from_json(gpu.to_manifest()),
        onnx="onnx/m.onnx", onnx_sha256="ab" * 32,
        io=mf.EngineTensors(mf.TensorRecord("input", (-1, 3, 224, 224), "float"),
                            mf.TensorRecord("logits", (-1, 1000), "float")),
        profiles=(mf.ProfileRecord("input", (1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)),),
        preprocess=SPEC.to_dict(), preprocess_sha256=SPEC.sha256(),
        build_options=mf.BuildOptions(flags=("FP16",), equivalent_commands={"trtexec": "trtexec --fp16"}),
        build_time_s=12.346,
    )
    kw.update(over)
    return engine, mf.EngineManifest(**kw)


def test_manifest_round_trip(tmp_path):
    engine, doc = _manifest(tmp_path)
    assert mf.EngineManifest.from_json(doc.to_json(), "x") == doc
    path = mf.write_manifest(engine, doc)
    assert path == tmp_path / "m_fp16_b8.engine.json" == mf.manifest_path_for(engine)
    assert not list(tmp_path.glob(".*.part"))  # atomic write left no temporary behind
    back = mf.read_manifest(engine)
    assert back == doc and mf.read_manifest(path) == back and mf.find_manifest(engine) == back
    raw = json.loads(path.read_text())  # the file keeps the JSON keys of format 2
    assert (raw["format"], raw["format_version"]) == ("trt_res2net.engine-manifest", 3)
    assert raw["gpu"]["name"] == "Orin" and raw["gpu"]["integrated"] is True
    assert raw["gpu"]["total_memory_mib"] == 24 * 1024
    assert raw["io"]["input"] == {"name": "input", "shape": [-1, 3, 224, 224], "dtype": "float"}
    assert raw["profiles"][0]["max"] == [32, 3, 224, 224] and raw["build_options"]["flags"] == ["FP16"]
    assert raw["quantization"] == {"source": "fp16-builder-flag", "label": "FP16 by TensorRT's builder flag"}


def test_a_manifest_of_the_previous_release_is_read():
    """tests/fixtures/manifest_v2.json: what the previous release wrote beside a TensorRT-RTX engine (format 2)."""
    data = json.loads((FIXTURES / "manifest_v2.json").read_text())
    assert data["format_version"] == 2
    m = mf.EngineManifest.from_json(data, "manifest_v2.json")
    assert (m.engine_family, m.library_version, m.compute_capabilities) == ("tensorrt-rtx", "1.7.1.116", ("8.6",))
    assert m.gpu is None and m.compute_capabilities_and_later is False
    assert m.io.input.name == "input" and m.io.input.shape == (-1, 3, 224, 224) and m.io.output.shape == (-1, 10)
    assert m.profiles[0].opt == (4, 3, 224, 224) and m.build_options.strongly_typed is True
    assert m.quantization.source == "none" and m.compute_precision.known is True
    assert m.build_options.compute_capabilities_requested == ("8.6",) and m.preprocess_sha256 == SPEC.sha256()
    again = m.to_json()  # written again: the same keys and values, under format 3
    assert {**again, "format_version": 2} == data


def test_an_unknown_newer_manifest_is_refused_in_one_line(tmp_path):
    engine = tmp_path / "x.engine"
    mf.manifest_path_for(engine).write_text(json.dumps({"format": mf.MANIFEST_FORMAT, "format_version": 4}))
    with pytest.raises(UserError) as info:
        mf.read_manifest(engine)
    message = str(info.value)
    assert "\n" not in message and "format 4" in message and "upgrade trt_res2net" in message


def test_read_manifest_errors(tmp_path):
    engine = tmp_path / "x.engine"
    assert mf.find_manifest(engine) is None
    with pytest.raises(UserError, match="not found"):
        mf.read_manifest(engine)
    mf.manifest_path_for(engine).write_text("{broken")
    with pytest.raises(UserError, match="unreadable"):
        mf.read_manifest(engine)
    mf.manifest_path_for(engine).write_text('{"format": "something else"}')
    with pytest.raises(UserError, match="not a trt_res2net engine manifest"):
        mf.read_manifest(engine)
    mf.manifest_path_for(engine).write_text(json.dumps({"format": mf.MANIFEST_FORMAT, "format_version": 3,
                                                        "io": {"output": {}}}))
    with pytest.raises(UserError, match="damaged engine manifest"):
        mf.read_manifest(engine)


@pytest.mark.parametrize(
    "cc, expected",
    [((8, 7), "8.7"), ("8.7", "8.7"), ("sm_90", "9.0"), ("12.0", "12.0"), (8.6, "8.6"), ([7, 5], "7.5")],
)
def test_normalize_cc(cc, expected):
    assert mf.normalize_cc(cc) == expected


def test_check_engine_compatible(tmp_path):
    _, doc = _manifest(tmp_path)
    v = parse_version
    mf.check_engine_compatible(doc, v("10.3.0.30"), "Orin", (8, 7))  # build number does not matter
    with pytest.raises(UserError) as info:
        mf.check_engine_compatible(doc, v("10.13.3"), "Orin", "8.7")
    assert "built with TensorRT 10.3.0" in str(info.value) and "10.13.3" in str(info.value)
    assert "rebuild" in str(info.value)
    with pytest.raises(UserError, match=r"compute capability 8.7 \(Orin\).*NVIDIA H200.*9.0"):
        mf.check_engine_compatible(doc, v("10.3.0"), "NVIDIA H200", "9.0")
    with pytest.raises(UserError, match=r"built on GPU 'Orin'.*'Orin Nano'"):
        mf.check_engine_compatible(doc, v("10.3.0"), "Orin Nano", "8.7")
    with pytest.raises(UserError, match="TensorRT"):
        mf.check_engine_compatible(mf.EngineManifest(gpu=mf.BuildGpu()), v("10.3.0"), "x", "8.7")  # no version
    with pytest.raises(UserError, match=r"is a TensorRT engine; TensorRT-RTX 1.7.1 cannot run it.*pip install "
                                         r"'trt-res2net\[trt\]'"):
        mf.check_engine_compatible(doc, v("1.7.1", "tensorrt-rtx"), "NVIDIA GeForce RTX 4090", "8.9")


def test_check_rtx_engine_by_compute_capability(tmp_path):
    """A portable TensorRT-RTX engine is checked by membership of the GPU's compute capability, not by name."""
    _, doc = _manifest(tmp_path, engine_family="tensorrt-rtx", library_version="1.7.1.116", gpu=None,
                       compute_capabilities=("8.6", "8.9", "12.0"))
    rtx = parse_version("1.7.1.116", "tensorrt-rtx")
    for name, cc in (("NVIDIA GeForce RTX 3090", "8.6"), ("NVIDIA L4", "8.9"), ("NVIDIA RTX PRO 6000", "12.0")):
        mf.check_engine_compatible(doc, rtx, name, cc)
    for other in ("1.8.0", "1.7.2", "1.6.0"):  # NVIDIA: not compatible between releases, newer or older
        with pytest.raises(UserError, match=rf"built with TensorRT-RTX 1.7.1.116, but this machine has TensorRT-RTX "
                                             rf"{other}, and TensorRT-RTX engines run only on the release that built "
                                             "them: rebuild it"):
            mf.check_engine_compatible(doc, parse_version(other, "tensorrt-rtx"), "NVIDIA L4", "8.9")
    mf.check_engine_compatible(doc, parse_version("1.7.1.200", "tensorrt-rtx"), "NVIDIA L4", "8.9")  # same release
    with pytest.raises(UserError, match=r"8.6 \(A10.*12.0 \(RTX 50.*this GPU \(NVIDIA A100\) is 8.0; rebuild "
                                         r"it for compute capability 8.0$"):
        mf.check_engine_compatible(doc, rtx, "NVIDIA A100", "8.0")
    with pytest.raises(UserError, match=r"H200\) is 9.0; this GPU is not a TensorRT-RTX target: build the engine "
                                         r"with TensorRT \(engine family tensorrt\)$"):
        mf.check_engine_compatible(doc, rtx, "NVIDIA H200", "9.0")
    with pytest.raises(UserError, match="is a TensorRT-RTX engine; TensorRT 10.3.0 cannot run it"):
        mf.check_engine_compatible(doc, parse_version("10.3.0"), "NVIDIA L4", "8.9")
    with pytest.raises(UserError, match="is 13.0"):
        mf.check_engine_compatible(doc, rtx, "a future GPU", "13.0")
    mf.check_engine_compatible(replace(doc, compute_capabilities_and_later=True), rtx, "a future GPU", "13.0")


def test_format_1_manifests_still_read(tmp_path):
    engine = tmp_path / "old.engine"
    engine.write_bytes(b"plan")
    mf.manifest_path_for(engine).write_text(json.dumps({
        "format": mf.MANIFEST_FORMAT, "format_version": 1, "tensorrt_version": "10.3.0",
        "gpu": {"name": "Orin", "compute_capability": "8.7"}}))
    doc = mf.read_manifest(engine)
    assert (doc.engine_family, doc.library_version, doc.compute_capabilities) == ("tensorrt", "10.3.0", ("8.7",))
    assert doc.gpu.name == "Orin"
    mf.check_engine_compatible(doc, parse_version("10.3.0"), "Orin", "8.7")


def test_check_engine_file(tmp_path):
    engine, doc = _manifest(tmp_path)
    mf.check_engine_file(doc, engine)
    engine.write_bytes(b"another plan")
    with pytest.raises(UserError, match="engine_sha256 differs"):
        mf.check_engine_file(doc, engine)


def test_jetson_info(tmp_path):
    assert dev.jetson_info(tmp_path) is None
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n"
    )
    assert dev.jetson_info(tmp_path) == {"module": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.3"}
    (tmp_path / "proc/device-tree/model").write_bytes(b"Raspberry Pi 4\x00")
    (tmp_path / "etc/nv_tegra_release").unlink()
    assert dev.jetson_info(tmp_path) is None


def test_detect_gpu_with_fake_cuda(monkeypatch):
    rt = install_cuda_runtime(monkeypatch, fake_cuda_runtime(count=2))
    gpu = dev.detect_gpu(1)
    assert gpu.name == "NVIDIA GeForce RTX 4090" and gpu.cc == "8.9" and gpu.index == 1
    assert gpu.free_memory == 20 << 30 and gpu.total_memory == 24 << 30 and not gpu.integrated
    assert ("cudaSetDevice", 1) in rt.calls  # free memory is that of the device asked for
    with pytest.raises(UserError, match=r"device 3 does not exist \(this machine has 2\)") as info:
        dev.detect_gpu(3)
    assert not isinstance(info.value, MissingDependency)


def test_detect_gpu_integrated_looks_for_jetson(monkeypatch):
    install_cuda_runtime(monkeypatch, fake_cuda_runtime(name=b"Orin", cc=(8, 7), integrated=True))
    monkeypatch.setattr(dev, "jetson_info", lambda: {"module": "NVIDIA Jetson AGX Orin", "l4t": "36.4.3"})
    gpu = dev.detect_gpu()
    assert gpu.integrated and gpu.cc == "8.7" and gpu.jetson["l4t"] == "36.4.3"


@pytest.mark.parametrize(
    ("runtime", "message"),
    [
        (dict(count_error=cudaError_t.cudaErrorInsufficientDriver),
         "no usable NVIDIA GPU: cudaGetDeviceCount failed: cudaErrorInsufficientDriver"),
        (dict(count_error=cudaError_t.cudaErrorNoDevice), "no usable NVIDIA GPU: .*cudaErrorNoDevice"),
        (dict(count_error=cudaError_t.cudaErrorInitializationError),
         "no usable NVIDIA GPU: .*cudaErrorInitializationError.*driver installed"),
        (dict(count=0), "no usable NVIDIA GPU: CUDA sees no device"),
    ],
)
def test_detect_gpu_without_driver_or_device_is_exit_3(monkeypatch, runtime, message):
    install_cuda_runtime(monkeypatch, fake_cuda_runtime(**runtime))
    with pytest.raises(MissingDependency, match=message) as info:
        dev.detect_gpu()
    assert info.value.exit_code == 3 and "\n" not in str(info.value)


def test_detect_gpu_without_cuda_python_is_exit_3(monkeypatch):
    import sys

    from trt_res2net.cuda import device as cuda_util

    monkeypatch.setattr(cuda_util, "cuda_modules", cuda_util.cuda_modules.__wrapped__)  # no cached modules
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependency, match="cuda-python is not installed: pip install") as info:
        dev.detect_gpu()
    assert info.value.exit_code == 3


def test_real_cuda_python_if_installed_reports_no_gpu_cleanly():
    """Where cuda-python is installed without a driver (CI), detection is exit 3, not a traceback."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python not installed")
    try:
        gpu = dev.detect_gpu()
    except MissingDependency as e:
        assert e.exit_code == 3
    else:  # a machine with a GPU
        assert gpu.name and "." in gpu.cc
