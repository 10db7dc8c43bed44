"""The TensorRT calibrator's logic without TensorRT: re-batching, the feed, cache header checks, CUDA buffer."""

from __future__ import annotations

import numpy as np
import pytest
from fake_gpu_runtime import cudaError_t, fake_cuda_runtime, install_cuda_runtime

from trt_res2net.core.errors import UserError
from trt_res2net.cuda.device import CudaError
from trt_res2net.engine import calibrator as tc

from trt_fakes import FakeDeviceBuffer, write_images  # isort: skip


def test_exact_batches_rechunks_and_drops_remainder():
    parts = [np.full((n, 1), i, np.float32) for i, n in enumerate([3, 0, 2, 4, 1])]  # 10 rows
    out = list(tc.exact_batches(parts, 4))
    assert [b.shape for b in out] == [(4, 1), (4, 1)]
    assert out[0][:, 0].tolist() == [0, 0, 0, 2] and out[1][:, 0].tolist() == [2, 3, 3, 3]
    assert all(b.flags.c_contiguous and b.dtype == np.float32 for b in out)
    assert list(tc.exact_batches([np.zeros((3, 1))], 4)) == []


def test_default_cache_path_and_key():
    assert str(tc.default_cache_path("res2net50_vd_26w_4s", "8.6.1")) == "calib/res2net50_vd_26w_4s.trt8601.cache"
    assert str(tc.default_cache_path("m", "10.3.0")) == "calib/m.trt100300.cache"
    key = tc.calibration_key(onnx_sha256="ab", trt_version="10.3.0", manifest_sha256="cd")
    assert list(key) == ["onnx_sha256", "preprocess_sha256", "calibration_manifest_sha256", "method", "tools"]
    assert key["tools"] == {"tensorrt": "10.3.0"} and key["method"] == tc.METHOD
    assert "calibration_manifest_sha256" not in tc.calibration_key(onnx_sha256="ab", trt_version="10.3.0")


def _setup(tmp_path, batch=2, images=5):
    return tc.CalibrationSetup(cache_path=tmp_path / "c.cache", version_tag="100300",
                               key=tc.calibration_key(onnx_sha256="ab", trt_version="10.3.0"), batch=batch,
                               images=[tmp_path / f"{i}.png" for i in range(images)])


def test_feed_serves_batches_then_none(tmp_path):
    arrays = [np.full((2, 3, 4, 4), i, np.float32) for i in range(2)]
    feed = tc.CalibrationFeed(_setup(tmp_path), (2, 3, 4, 4), batches=lambda: iter(arrays),
                              device_buffer=FakeDeviceBuffer, progress=False)
    assert feed.batch_size == 2 and feed.read_cache() is None
    p1 = feed.next_batch(["input"])
    p2 = feed.next_batch(["input"])
    assert isinstance(p1[0], int) and p1 != p2
    assert feed.next_batch(["input"]) is None and feed.error is None and feed.batches_fed == 2
    buf = FakeDeviceBuffer.instances[-1]
    assert buf.nbytes == 2 * 3 * 4 * 4 * 4 and buf.uploads[1][0, 0, 0, 0] == 1
    feed.close()
    assert buf.freed


def test_feed_errors_end_calibration_and_are_kept(tmp_path):
    def bad():
        yield np.zeros((3, 3, 4, 4), np.float32)  # wrong batch

    feed = tc.CalibrationFeed(_setup(tmp_path), (2, 3, 4, 4), batches=bad, device_buffer=FakeDeviceBuffer,
                              progress=False)
    assert feed.next_batch(["input"]) is None
    assert isinstance(feed.error, ValueError) and "profile needs" in str(feed.error)
    feed.write_cache(b"TRT-100300-EntropyCalibration2\ninput: 3c010204\n")  # ignored after an error
    assert not (tmp_path / "c.cache").exists()


def test_feed_with_no_readable_image_says_so(tmp_path):
    feed = tc.CalibrationFeed(_setup(tmp_path), (2, 3, 4, 4), batches=lambda: iter([]),
                              device_buffer=FakeDeviceBuffer, progress=False)
    assert feed.next_batch(["input"]) is None
    assert isinstance(feed.error, UserError) and "no calibration batch" in str(feed.error)


def test_feed_write_cache_checks_header_and_writes_sidecar(tmp_path):
    import json

    setup = _setup(tmp_path)
    feed = tc.CalibrationFeed(setup, (2, 3, 4, 4), batches=lambda: iter([]), progress=False)
    feed.write_cache(b"TRT-8601-EntropyCalibration2\ninput: 3c010204\n")
    assert isinstance(feed.error, ValueError) and "expected 100300" in str(feed.error)
    assert not setup.cache_path.exists()

    feed = tc.CalibrationFeed(setup, (2, 3, 4, 4), batches=lambda: iter([]), progress=False)
    data = b"TRT-100300-EntropyCalibration2\ninput: 3c010204\nconv: 0\n"  # TensorRT's unpadded zero
    feed.write_cache(data)
    assert feed.error is None and setup.cache_path.read_bytes() == data  # TensorRT's exact bytes
    side = json.loads((tmp_path / "c.cache.json").read_text())
    assert side["key"]["tools"] == {"tensorrt": "10.3.0"} and side["info"]["tool"] == "tensorrt"
    assert tc.cache_mismatch(setup.cache_path, "100300", setup.key) is None
    assert "written by TensorRT 100300" in tc.cache_mismatch(setup.cache_path, "101303", setup.key)


def test_cache_mismatch_on_other_algorithm_and_garbage(tmp_path):
    c = tmp_path / "c.cache"
    c.write_text("TRT-100300-MinMaxCalibration\ninput: 3c010204\n")
    assert "made by MinMaxCalibration" in tc.cache_mismatch(c, "100300", {})
    c.write_bytes(b"\x89PNG...")
    assert tc.cache_mismatch(c, "100300", {}) is not None


def test_prepare_calibration_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = write_images(tmp_path / "imgs", n=5)
    with pytest.raises(UserError, match="fewer than one calibration batch"):
        tc.prepare_calibration(model="m", trt_version="10.3.0", onnx_sha256="ab", batch=8, calib_dir=images[0].parent)
    with pytest.raises(UserError, match="EngineOptions.calib_batch must be"):
        tc.prepare_calibration(model="m", trt_version="10.3.0", onnx_sha256="ab", batch=0)
    s = tc.prepare_calibration(model="m", trt_version="10.3.0", onnx_sha256="ab", batch=2,
                               calib_dir=images[0].parent, calib_images=4)
    assert not s.reuse and len(s.images) == 4 and str(s.cache_path) == "calib/m.trt100300.cache"
    record = s.manifest()
    assert (record.images, record.reused, record.batch, record.cache) == (4, False, 2, "calib/m.trt100300.cache")


def test_cuda_device_buffer_with_fake_cudart(monkeypatch):
    rt = install_cuda_runtime(monkeypatch, fake_cuda_runtime())
    buf = tc.CudaDeviceBuffer(64)
    assert buf.upload(np.zeros(16, np.float32)) == buf.address == 0x1000
    with pytest.raises(ValueError, match="does not fit"):
        buf.upload(np.zeros(17, np.float32))
    buf.free()
    buf.free()  # idempotent
    assert rt.calls == [("cudaMalloc", 64), ("cudaMemcpy", 0x1000, 64, "cudaMemcpyHostToDevice"),
                        ("cudaFree", 0x1000)]


def test_cuda_device_buffer_errors_are_one_line(monkeypatch):
    rt = install_cuda_runtime(monkeypatch, fake_cuda_runtime())

    def cudaMalloc(nbytes):
        return cudaError_t.cudaErrorMemoryAllocation, None

    monkeypatch.setattr(rt, "cudaMalloc", cudaMalloc)
    with pytest.raises(CudaError, match="^cudaMalloc failed: cudaErrorMemoryAllocation") as info:
        tc.CudaDeviceBuffer(1 << 40)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
