"""The GPU path under each cuda-python release that Jetson and CUDA 12/13 machines run, with the real bindings and
a stub driver (tests/stub_libcuda.c, compiled here with gcc): every device-layer call reaches the driver, and every
way the GPU can be missing ends in one line with exit status 3 — no device, a driver older than the bindings, no
libcuda, no NVRTC, and a TensorRT-RTX engine the library cannot validate.

The releases: the cuda-python installed here, and each one that ``python tools/cuda_matrix.py install`` put in
``.cuda-toolchains/`` for this Python (12.6, 12.9, 13.x), each in its own environment that sees this one's
packages but not its NVRTC. ``TRT_RES2NET_REQUIRE_TOOLCHAINS=1`` (CI) turns a missing release into a failure.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import cuda_matrix  # noqa: E402

REQUIRED = bool(os.environ.get("TRT_RES2NET_REQUIRE_TOOLCHAINS"))
TOOLCHAINS = Path(os.environ.get("TRT_RES2NET_CUDA_TOOLCHAINS", cuda_matrix.DEFAULT_DIR))
ENTRY = ROOT / "tests" / "cuda_entry.py"


def _releases() -> list[tuple[str, str]]:
    found = [("installed", sys.executable)]
    for release in cuda_matrix.CUDA_PYTHON_RELEASES:
        python = cuda_matrix.site_python(cuda_matrix.cuda_python_site(TOOLCHAINS, release))
        found.append((release, str(python)))
    return found


RELEASES = _releases()


def _python_of(release: str, python: str) -> str:
    if release != "installed" and not Path(python).exists():
        message = f"cuda-python {release} is not installed in {TOOLCHAINS}: python tools/cuda_matrix.py install"
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    return python


def _run(python: str, *argv, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "STUB_CUDA_DRIVER_VERSION")}
    full.update(env)
    return subprocess.run([python, *map(str, argv)], capture_output=True, text=True, env=full, cwd=cwd or ROOT,
                          timeout=300)


def _query(python: str, code: str) -> str:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else ""


@pytest.fixture(scope="module")
def stub_driver(tmp_path_factory) -> Path:
    """A folder holding the stub libcuda.so.1."""
    gcc = shutil.which("gcc")
    if gcc is None:
        (pytest.fail if REQUIRED else pytest.skip)("gcc is needed to build the stub libcuda.so.1")
    folder = tmp_path_factory.mktemp("stub_driver")
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-Wl,-soname,libcuda.so.1", "-o",
                    str(folder / "libcuda.so.1"), str(ROOT / "tests" / "stub_libcuda.c")], check=True)
    return folder


@pytest.fixture(scope="module")
def no_real_driver():
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return
    pytest.skip("this machine has an NVIDIA driver: the stub would not be the libcuda found")


@pytest.fixture(scope="module")
def rtx_engine(tmp_path_factory, tiny_onnx) -> Path:
    """A real TensorRT-RTX engine of the tiny Res2Net (and photos beside it), or a skip without TensorRT-RTX."""
    pytest.importorskip("tensorrt_rtx")
    work = tmp_path_factory.mktemp("rtx_engine")
    done = subprocess.run([sys.executable, str(ROOT / "build.py"), "--onnx", str(tiny_onnx), "--engine-family",
                           "tensorrt-rtx", "--max-batch", "2", "--quiet"], cwd=work, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    shutil.copy(tiny_onnx, work / "tiny.onnx")
    (work / "photos").mkdir()
    for photo in sorted((ROOT / "tests" / "data").glob("*.jpg"))[:2]:
        shutil.copy(photo, work / "photos")
    return next((work / "engines").glob("*.rtx.engine"))


def _entry_points(python: str, engine: Path | None) -> list[list]:
    """The commands that reach the GPU first thing, with this release's python: when it can import TensorRT-RTX,
    classification, the benchmark and stream mode on an engine, and a TensorRT-RTX build for this machine's GPU;
    else the runtime's device set-up alone."""
    if engine is None or not _query(python, "import tensorrt_rtx; print(1)"):
        return [[ENTRY, "init"]]
    work = engine.parent.parent
    return [
        [ROOT / "infer.py", engine, work / "photos"],
        [ROOT / "infer.py", engine, "--benchmark", "--batch", "1", "--iterations", "2", "--warmup", "1"],
        [ROOT / "infer.py", engine, work / "photos", "--jsonl", work / "frames.jsonl"],
        [ROOT / "build.py", "--onnx", work / "tiny.onnx", "--engine-family", "tensorrt-rtx", "--compute-capability",
         "current"],
    ]


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def _bindings_major(python: str, release: str = "installed") -> int:
    version = _query(python, "from trt_res2net.cuda.device import cuda_python_version as v; print(v())")
    if not version:
        pytest.skip("cuda-python is not installed here")
    if release != "installed":  # the release's own bindings, not the base environment's
        assert version == release or version.startswith(f"{release}."), (release, version)
    return int(version.split(".")[0])


@pytest.mark.parametrize("release,python", RELEASES, ids=[r for r, _ in RELEASES])
def test_every_device_layer_call_reaches_the_driver(release, python, stub_driver, no_real_driver):
    python = _python_of(release, python)
    major = _bindings_major(python, release)
    done = _run(python, ROOT / "tests" / "cuda_probe.py", "layer",
                env={"LD_LIBRARY_PATH": str(stub_driver), "STUB_CUDA_DRIVER_VERSION": f"{major}000"})
    assert done.returncode == 0, done.stderr
    steps = {s["step"]: s for s in json.loads(done.stdout)}
    assert steps["versions"]["raised"] is None and f", {major}000)" in steps["versions"]["value"]
    assert steps["device_count"]["value"] == "0"
    for name, step in steps.items():
        if name in ("versions", "device_count"):
            continue
        # Reaching the driver means its answer, not the bindings' refusal of an argument (a TypeError).
        assert step["raised"] in ("CudaUnavailable", "MissingDependency"), (name, step)
        assert step["exit_code"] == 3 and "\n" not in step["message"], (name, step)
        assert "no CUDA-capable device is detected" in step["message"], (name, step)


@pytest.mark.parametrize("release,python", RELEASES, ids=[r for r, _ in RELEASES])
def test_no_device(release, python, stub_driver, no_real_driver, rtx_engine_or_none):
    python = _python_of(release, python)
    env = {"LD_LIBRARY_PATH": str(stub_driver), "STUB_CUDA_DRIVER_VERSION": f"{_bindings_major(python, release)}000"}
    commands = _entry_points(python, rtx_engine_or_none)
    for argv in commands:
        done = _run(python, *argv, env=env, cwd=rtx_engine_or_none.parent.parent if rtx_engine_or_none else None)
        line = _one_error_line(done)
        assert done.returncode == 3, (argv, done.stderr)
        assert "cudaErrorNoDevice (no CUDA-capable device is detected)" in line
        assert "a CUDA GPU and its driver are needed" in line


@pytest.mark.parametrize("release,python", RELEASES, ids=[r for r, _ in RELEASES])
def test_a_driver_older_than_the_bindings(release, python, stub_driver, no_real_driver, rtx_engine_or_none):
    python = _python_of(release, python)
    major = _bindings_major(python, release)
    driver = "12060" if major == 13 else "11080"
    env = {"LD_LIBRARY_PATH": str(stub_driver), "STUB_CUDA_DRIVER_VERSION": driver}
    commands = _entry_points(python, rtx_engine_or_none)
    for argv in commands:
        done = _run(python, *argv, env=env, cwd=rtx_engine_or_none.parent.parent if rtx_engine_or_none else None)
        line = _one_error_line(done)
        assert done.returncode == 3, (argv, done.stderr)
        shown = f"{int(driver) // 1000}.{int(driver) % 1000 // 10}"
        assert f"the NVIDIA driver supports CUDA {shown}, older than cuda-python {major}." in line, line
        if major == 13:
            assert "pip install 'cuda-python>=12.6,<13' (the trt extra) fits this driver" in line
        else:
            assert "install a driver for CUDA 12 (r525 or newer)" in line


@pytest.mark.parametrize("release,python", RELEASES, ids=[r for r, _ in RELEASES])
def test_no_libcuda(release, python, no_real_driver, rtx_engine_or_none):
    python = _python_of(release, python)
    _bindings_major(python, release)
    commands = _entry_points(python, rtx_engine_or_none)
    for argv in commands:
        done = _run(python, *argv, env={}, cwd=rtx_engine_or_none.parent.parent if rtx_engine_or_none else None)
        line = _one_error_line(done)
        assert done.returncode == 3, (argv, done.stderr)
        assert "the NVIDIA driver's libcuda.so.1 could not be loaded" in line


def _nvrtc_steps(python: str, env: dict, cache: Path) -> dict:
    done = _run(python, ROOT / "tests" / "cuda_probe.py", "nvrtc", cache, env=env)
    assert done.returncode == 0, done.stderr
    return {s["step"]: s for s in json.loads(done.stdout)}


@pytest.mark.parametrize("release,python", RELEASES, ids=[r for r, _ in RELEASES])
def test_no_libnvrtc(release, python, stub_driver, tmp_path):
    python = _python_of(release, python)
    major = _bindings_major(python, release)
    steps = _nvrtc_steps(python, {"LD_LIBRARY_PATH": str(stub_driver)}, tmp_path)
    if steps["nvrtc_version"]["raised"] is None:
        pytest.skip(f"NVRTC is installed beside cuda-python here ({steps['nvrtc_version']['value']})")
    step = steps["cached_kernel_image"]
    assert step["raised"] == "CudaUnavailable" and step["exit_code"] == 3 and "\n" not in step["message"]
    assert step["message"].startswith(f"NVRTC (libnvrtc.so.{major}, for cuda-python {major}.")
    assert "export LD_LIBRARY_PATH=/usr/local/cuda/lib64:$LD_LIBRARY_PATH" in step["message"]
    assert list(tmp_path.iterdir()) == []  # nothing half-written in the kernel cache


def _nvrtc_for(major: int) -> Path:
    release = {12: "12.6", 13: "13.0"}[major]
    library = cuda_matrix.nvrtc_library(TOOLCHAINS, next(r for r in cuda_matrix.NVRTC_RELEASES
                                                          if r.release == release))
    if not library.is_file():
        (pytest.fail if REQUIRED else pytest.skip)(f"NVRTC {release} is not in {TOOLCHAINS}: python "
                                                   "tools/cuda_matrix.py install")
    return library.parent


@pytest.mark.parametrize("release,python", RELEASES, ids=[r for r, _ in RELEASES])
def test_kernels_compile_with_nvrtc_on_the_library_path(release, python, stub_driver, no_real_driver, tmp_path):
    """As on a Jetson: JetPack's NVRTC on the library path, cuda-python's NVRTC calls, and the driver loads it."""
    python = _python_of(release, python)
    major = _bindings_major(python, release)
    library = _nvrtc_for(major)
    steps = _nvrtc_steps(python, {"LD_LIBRARY_PATH": f"{stub_driver}:{library}"}, tmp_path)
    if release == "installed" and steps["nvrtc_version"]["value"] != f"({major}, {0 if major == 13 else 6})":
        pytest.skip(f"cuda-python found its own NVRTC here ({steps['nvrtc_version']['value']})")
    assert steps["cached_kernel_image"]["raised"] is None, steps
    assert [p.suffix for p in tmp_path.joinpath("kernels").iterdir()] == [".cubin"]
    assert steps["Module"]["raised"] == "CudaUnavailable" and "cuModuleLoadData failed: CUDA_ERROR_NO_DEVICE" in \
        steps["Module"]["message"]


@pytest.mark.parametrize("release,python", RELEASES, ids=[r for r, _ in RELEASES])
@pytest.mark.parametrize("driver,cuda_error", [("12060", "cudaError 35: CUDA driver version is insufficient"),
                                               ("13000", "cudaError 100: no CUDA-capable device is detected")])
def test_an_rtx_engine_that_cannot_be_validated(release, python, driver, cuda_error, stub_driver, no_real_driver,
                                                rtx_engine_or_none):
    """cuda-python sees a GPU (tests/cuda_entry.py says it does) that the real TensorRT-RTX cannot read: its
    get_engine_validity answers INVALID with no diagnostic, which is said as an unreadable GPU, not a bad engine."""
    python = _python_of(release, python)
    _bindings_major(python, release)
    if rtx_engine_or_none is None or not _query(python, "import tensorrt_rtx; print(1)"):
        pytest.skip("TensorRT-RTX is not installed here")
    engine = rtx_engine_or_none
    done = _run(python, ENTRY, "infer-seen-gpu", engine, engine.parent.parent / "photos",
                env={"LD_LIBRARY_PATH": str(stub_driver), "STUB_CUDA_DRIVER_VERSION": driver})
    line = _one_error_line(done)
    assert done.returncode == 3, done.stderr
    assert line.startswith(f"error: TensorRT-RTX could not read this GPU ({cuda_error}")
    assert f"so it could not judge {engine}: check the GPU and driver (nvidia-smi)" in line
    assert "rebuild" not in line


@pytest.fixture(scope="module")
def rtx_engine_or_none(request):
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return None
    return request.getfixturevalue("rtx_engine")
