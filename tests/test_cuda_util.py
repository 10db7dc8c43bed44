"""The cuda-python shim without a GPU: error checking, the no-GPU path, argument packing."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_gpu_runtime import cudaError_t

from trt_res2net.core.errors import EXIT_NO_TENSORRT, MissingDependency, UserError
from trt_res2net.cuda import device as cu


def test_check_unwraps_values():
    assert cu.check((cudaError_t.cudaSuccess,)) is None
    assert cu.check(cudaError_t.cudaSuccess) is None
    assert cu.check((cudaError_t.cudaSuccess, 42)) == 42
    assert cu.check((cudaError_t.cudaSuccess, 1, 2)) == (1, 2)


def test_check_raises_one_line_naming_call_and_code():
    with pytest.raises(cu.CudaError) as err:
        cu.check((cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc")
    assert isinstance(err.value, UserError)
    assert "cudaMalloc failed: cudaErrorMemoryAllocation" in str(err.value)
    assert err.value.code_name == "cudaErrorMemoryAllocation"
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("code", [cudaError_t.cudaErrorInsufficientDriver, cudaError_t.cudaErrorNoDevice])
def test_no_gpu_codes_are_a_missing_dependency(code):
    with pytest.raises(cu.CudaUnavailable) as err:
        cu.check((code, None), "cudaSetDevice")
    assert isinstance(err.value, MissingDependency) and err.value.exit_code == EXIT_NO_TENSORRT


def test_call_reports_missing_libraries():
    class DynamicLibNotFoundError(Exception):  # what cuda.pathfinder raises
        pass

    def nvrtcVersion():
        raise DynamicLibNotFoundError("libnvrtc.so.13 not found")

    def cuInit(flags):
        raise DynamicLibNotFoundError("libcuda.so.1 not found")

    with pytest.raises(cu.CudaUnavailable, match=r"NVRTC \(libnvrtc\.so\.\d+, for cuda-python [\d.]+\w*\) is missing"):
        cu.call(nvrtcVersion)
    with pytest.raises(cu.CudaUnavailable, match="driver"):
        cu.call(cuInit, 0)

    def other():
        raise KeyError("not a CUDA problem")

    with pytest.raises(KeyError):
        cu.call(other)


def test_call_passes_arguments_and_names_the_function():
    def cudaMalloc(n):
        if n > 10:
            return cudaError_t.cudaErrorMemoryAllocation, None
        return cudaError_t.cudaSuccess, 1000 + n

    assert cu.call(cudaMalloc, 5) == 1005
    with pytest.raises(cu.CudaError, match="^cudaMalloc failed"):
        cu.call(cudaMalloc, 11)


def test_kernel_args_point_at_each_value():
    values = [cu.ptr_arg(0xDEADBEEF000), cu.i32_arg(-7), np.array([2.5], np.float64)]
    params, held = cu.kernel_args(*values)
    assert params.dtype == np.uint64 and len(params) == 3
    assert ctypes.c_uint64.from_address(int(params[0])).value == 0xDEADBEEF000
    assert ctypes.c_int32.from_address(int(params[1])).value == -7
    assert ctypes.c_double.from_address(int(params[2])).value == 2.5
    assert len(held) == 3


def test_native_handle_passes_ints_through():
    assert cu.native_handle(0) == 0 and cu.native_handle(1234) == 1234


def test_device_info_derived_fields():
    info = cu.DeviceInfo(0, "NVIDIA H200", (9, 0), 141 << 30, 140 << 30, False, 132, 6144, 2_619_000)
    assert info.cc == "9.0" and info.sm == "sm_90"
    assert info.peak_bandwidth_bytes_per_s == pytest.approx(2 * 2_619_000e3 * 6144 / 8)
    assert info.to_dict()["compute_capability"] == "9.0"
    jetson = cu.DeviceInfo(0, "Orin", (8, 7), 8 << 30, 5 << 30, True, 8, None, None)
    assert jetson.peak_bandwidth_bytes_per_s is None and jetson.to_dict()["integrated"]


def test_without_a_gpu_device_count_is_zero_and_init_says_so():
    try:
        cu.cuda_modules()
    except cu.CudaUnavailable:
        assert cu.device_count() == 0
        return
    if cu.device_count() > 0:
        pytest.skip("this machine has a GPU")
    with pytest.raises(cu.CudaUnavailable) as err:
        cu.init_device(0)
    assert err.value.exit_code == EXIT_NO_TENSORRT and "\n" not in str(err.value)


def test_importing_the_gpu_modules_stays_light():
    code = (
        "import sys, trt_res2net.cuda.device, trt_res2net.cuda.kernels, trt_res2net.runtime.tensorrt_backend, "
        "trt_res2net.runtime.benchmark\n"
        "heavy = ('cuda', 'cuda.bindings', 'tensorrt', 'cv2', 'matplotlib', 'onnxruntime', 'tqdm')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == ""
