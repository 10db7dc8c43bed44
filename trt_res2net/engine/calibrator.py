"""INT8 through TensorRT's own entropy calibrator (TensorRT 8.6 and 10.x; the path a Jetson takes).

It uses the same calibration images (``trt_res2net.data.calibration_set.select_calibration_images``), the same
batcher and preprocessing (``trt_res2net.data.images.ImageBatcher`` → ``trt_res2net.data.preprocess``) as the
ModelOpt Q/DQ path, and writes ``calib/<model>.trt<tag>.cache`` in TensorRT's own text format
(``trt_res2net.precision.calib_cache``) with a ``.json`` sidecar that keys it. TensorRT silently skips a cache it
considers stale; this module refuses one whose header or key does not match *before* the build, naming the
difference. No TensorRT import here: ``trt_res2net.engine.builder`` wraps :class:`CalibrationFeed` in a
``tensorrt.IInt8EntropyCalibrator2`` subclass.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import log
from ..core.errors import UserError
from ..core.files import write_bytes
from ..cuda import device as cuda_util
from ..data.calibration_set import DEFAULT_CALIB_IMAGES
from ..data.preprocess_spec import SPEC, PreprocessSpec
from .manifest import CalibrationRecord
from .options import DEFAULT_CALIB_BATCH

ALGORITHM = "EntropyCalibration2"  # what IInt8EntropyCalibrator2 writes in the cache header
METHOD = "tensorrt-entropy2"


def default_cache_path(model: str, trt_version, calib_root: str | os.PathLike = "calib") -> Path:
    """``calib/<model>.trt<tag>.cache``; ``<tag>`` is TensorRT's cache-header version (8.6.1 → 8601,
    10.3.0 → 100300), so each TensorRT release keeps its own cache."""
    from ..precision.calib_cache import trt_version_tag

    return Path(calib_root) / f"{model}.trt{trt_version_tag(str(trt_version))}.cache"


def calibration_key(*, onnx_sha256: str, trt_version, manifest_sha256: str | None = None,
                    spec: PreprocessSpec = SPEC) -> dict:
    """What a TensorRT calibration cache is valid for (the model's preprocessing, ``spec``, included). The manifest
    hash is left out when the build reuses a cache without images (then it cannot be recomputed, and the sidecar's
    value stands)."""
    key = {"onnx_sha256": onnx_sha256, "preprocess_sha256": spec.sha256()}
    if manifest_sha256 is not None:
        key["calibration_manifest_sha256"] = manifest_sha256
    key.update({"method": METHOD, "tools": {"tensorrt": str(trt_version)}})
    return key


@dataclass
class CalibrationSetup:
    """What the calibrator will do: reuse a checked cache (``reuse_bytes``) or calibrate on ``images``."""

    cache_path: Path
    version_tag: str
    key: dict
    batch: int
    images: list[Path] = field(default_factory=list)
    reuse_bytes: bytes | None = None
    image_manifest: dict | None = None  # calibration.build_manifest(...) of ``images``
    replaced_reason: str | None = None  # set when an existing cache did not match and is recalibrated
    spec: PreprocessSpec = SPEC  # the model's preprocessing, which the images get

    @property
    def reuse(self) -> bool:
        return self.reuse_bytes is not None

    def manifest(self) -> CalibrationRecord:
        """The calibration part of the engine manifest."""
        return CalibrationRecord(str(self.cache_path), self.reuse, len(self.images) if not self.reuse else None,
                                 self.batch, self.key)


def cache_mismatch(cache_path: Path, version_tag: str, key: dict) -> str | None:
    """Why the cache at ``cache_path`` cannot be reused for ``key`` (None = it can)."""
    from ..precision import calib_cache

    try:
        cache = calib_cache.read_cache(cache_path)
    except UserError as e:
        return str(e)
    except (OSError, ValueError) as e:
        return f"calibration cache {cache_path} is unreadable ({e})"
    if str(cache.version_tag) != version_tag:
        return (f"calibration cache {cache_path} was written by TensorRT {cache.version_tag} "
                f"(header TRT-{cache.version_tag}-{cache.algorithm}), this TensorRT is {version_tag}")
    if cache.algorithm != ALGORITHM:
        return f"calibration cache {cache_path} was made by {cache.algorithm}, this build uses {ALGORITHM}"
    try:
        calib_cache.check_cache_key(cache_path, key)
    except UserError as e:
        return str(e)
    return None


def prepare_calibration(
    *,
    model: str,
    trt_version,
    onnx_sha256: str,
    batch: int = DEFAULT_CALIB_BATCH,
    calib_dir: str | os.PathLike | None = None,
    calib_images: int = DEFAULT_CALIB_IMAGES,
    seed: int = 0,
    cache_path: str | os.PathLike | None = None,
    spec: PreprocessSpec = SPEC,
) -> CalibrationSetup:
    """Decide between reusing the cache and calibrating; refuse a stale cache when there is nothing to
    recalibrate with, and say what to pass when there is neither cache nor images."""
    from ..precision.calib_cache import trt_version_tag

    tag = trt_version_tag(str(trt_version))
    cache_path = Path(cache_path) if cache_path else default_cache_path(model, trt_version)
    if batch < 1:
        raise UserError(f"EngineOptions.calib_batch must be ≥ 1, not {batch}")

    images: list[Path] = []
    manifest_sha = image_manifest = None
    if calib_dir is not None:
        images, image_manifest = select_images(calib_dir, calib_images, seed)
        manifest_sha = image_manifest["sha256"]
        if len(images) < batch:
            raise UserError(f"CalibrationImages.directory='{calib_dir}' gave {len(images)} images, fewer than one "
                            f"calibration batch ({batch}); add images or lower EngineOptions.calib_batch")
    key = calibration_key(onnx_sha256=onnx_sha256, trt_version=trt_version, manifest_sha256=manifest_sha, spec=spec)
    setup = CalibrationSetup(cache_path=cache_path, version_tag=tag, key=key, batch=batch, images=images,
                             image_manifest=image_manifest, spec=spec)

    if cache_path.exists():
        reason = cache_mismatch(cache_path, tag, key)
        if reason is None:
            setup.reuse_bytes = cache_path.read_bytes()
            setup.images, setup.image_manifest = [], None
            return setup
        reason = reason.split("; delete it")[0]  # calib_cache's messages end with this hint; said once below
        if calib_dir is None:
            raise UserError(f"{reason}; delete it or pass CalibrationImages.directory to recalibrate")
        setup.replaced_reason = reason
        log.note(f"note: {reason}; recalibrating from {calib_dir} and replacing it")
        return setup
    if calib_dir is None:
        raise UserError(
            f"INT8 through TensorRT's calibrator needs calibration images and there is no cache "
            f"{cache_path}: pass CalibrationImages.directory=DIR (e.g. 500 ImageNet training photos), or use "
            "EngineOptions.int8_mode='qdq'"
        )
    return setup


def select_images(calib_dir, n: int, seed: int) -> tuple[list[Path], dict]:
    """The calibration image set and its manifest (image paths, sizes, SHA-256s), from
    ``trt_res2net.data.calibration_set`` — shared with the ModelOpt path, so both INT8 paths use the same images."""
    from ..data import calibration_set as calibration

    images = calibration.select_calibration_images(calib_dir, n=n, seed=seed)
    if not images:
        raise UserError(f"no images found under CalibrationImages.directory='{calib_dir}'")
    return images, calibration.build_manifest(images, calib_dir, seed=seed, requested=n)


def exact_batches(batches: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Re-chunk arrays of any length into ``[batch_size, ...]`` arrays (the calibration profile's one shape);
    the remainder that does not fill a batch is dropped."""
    pending: list[np.ndarray] = []
    have = 0
    for arr in batches:
        if len(arr) == 0:
            continue
        pending.append(arr)
        have += len(arr)
        while have >= batch_size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(joined[:batch_size], dtype=np.float32)
            rest = joined[batch_size:]
            pending = [rest] if len(rest) else []
            have = len(rest)


def image_batches(images: list[Path], batch: int, *, threads: int = 2, spec: PreprocessSpec = SPEC
                  ) -> Iterator[np.ndarray]:
    """Preprocessed arrays from the shared batcher (``calibration.iter_batches`` → ``images.ImageBatcher`` →
    ``preprocess``); unreadable images are named and skipped."""
    from ..data.calibration_set import iter_batches

    for array, _paths, failures in iter_batches(images, batch, spec, threads=threads):
        for path, error in failures:
            log.warn(f"calibration: skipped {path}: {error}")
        yield array


class CudaDeviceBuffer(cuda_util.DeviceBuffer):
    """One device allocation (``cuda_util.DeviceBuffer``) that calibration batches are copied into."""

    def upload(self, array: np.ndarray) -> int:
        """Copy ``array`` to the start of the buffer (synchronously: TensorRT reads it next); its address."""
        array = np.ascontiguousarray(array)
        if array.nbytes > self.nbytes:
            raise ValueError(f"batch of {array.nbytes} bytes does not fit a {self.nbytes}-byte buffer")
        runtime = cuda_util.cuda_modules().runtime
        cuda_util.call(runtime.cudaMemcpy, self.address, array.ctypes.data, array.nbytes,
                       runtime.cudaMemcpyKind.cudaMemcpyHostToDevice)
        return self.address


class CalibrationFeed:
    """The calibrator's logic, without TensorRT: batches in, device pointers out, the cache read and written.

    Exceptions never escape into TensorRT (a Python exception in a calibrator callback aborts the build
    with an unhelpful message): they end calibration, are kept in ``error``, and the builder re-raises them.
    """

    def __init__(
        self,
        setup: CalibrationSetup,
        input_shape: tuple[int, ...],
        *,
        batches: Callable[[], Iterator[np.ndarray]] | None = None,
        device_buffer: Callable[[int], object] | None = None,
        progress: bool = True,
    ):
        self.setup = setup
        self.shape = (setup.batch, *input_shape[1:])
        self._make_batches = batches or (lambda: exact_batches(
            image_batches(setup.images, setup.batch, spec=setup.spec), setup.batch))
        self._device_buffer = device_buffer or CudaDeviceBuffer  # looked up now: tests replace it
        self._buffer = None
        self._iter: Iterator[np.ndarray] | None = None
        self._bar = None
        self._progress = progress
        self.batches_fed = 0
        self.error: BaseException | None = None
        self.cache_written: Path | None = None

    @property
    def batch_size(self) -> int:
        return self.setup.batch

    def read_cache(self) -> bytes | None:
        return self.setup.reuse_bytes

    def next_batch(self, names=None) -> list[int] | None:
        if self.error is not None:
            return None
        try:
            if self._iter is None:
                self._iter = iter(self._make_batches())
                if self._progress:
                    from tqdm import tqdm

                    self._bar = tqdm(total=len(self.setup.images) // self.setup.batch, unit="batch",
                                     desc="INT8 calibration", file=sys.stderr)
            arr = next(self._iter, None)
            if arr is None:
                self._close_bar()
                if self.batches_fed == 0:
                    raise UserError(f"no calibration batch of {self.setup.batch} readable images could be "
                                    "made (see the skipped images above)")
                return None
            if tuple(arr.shape) != self.shape:
                raise ValueError(f"calibration batch has shape {tuple(arr.shape)}, the profile needs "
                                 f"{self.shape}")
            if self._buffer is None:
                self._buffer = self._device_buffer(int(np.prod(self.shape)) * 4)
            ptr = self._buffer.upload(arr.astype(np.float32, copy=False))
            self.batches_fed += 1
            if self._bar is not None:
                self._bar.update(1)
            return [int(ptr)] * max(1, len(names or ()))
        except BaseException as e:  # noqa: BLE001 — stored and re-raised by the builder after the build
            self.error = e
            self._close_bar()
            return None

    def write_cache(self, data: bytes) -> None:
        """TensorRT hands over the finished cache: check its header, write it and its key atomically."""
        if self.error is not None:
            return  # calibration stopped early: never keep a cache made from part of the images
        try:
            from ..precision.calib_cache import CalibrationCache

            parsed = CalibrationCache.from_bytes(bytes(data))
            if str(parsed.version_tag) != self.setup.version_tag:
                raise ValueError(f"TensorRT wrote cache header tag {parsed.version_tag}, expected "
                                 f"{self.setup.version_tag}")
            write_bytes(self.setup.cache_path, bytes(data))  # TensorRT's exact bytes
            write_calibration_sidecar(self.setup, images=len(self.setup.images), batches=self.batches_fed)
            if self.setup.image_manifest is not None:
                from ..data.calibration_set import manifest_path_for, write_manifest

                write_manifest(manifest_path_for(self.setup.cache_path), self.setup.image_manifest)
            self.cache_written = self.setup.cache_path
        except BaseException as e:  # noqa: BLE001 — see class docstring
            self.error = e

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()
        if self._buffer is not None:
            self._buffer.free()
            self._buffer = None


def write_calibration_sidecar(setup: CalibrationSetup, **extra) -> Path:
    """``<cache>.json`` through ``calib_cache.write_cache_key``: the key that decides validity, and how the
    cache was made (which does not)."""
    from ..precision.calib_cache import write_cache_key

    info = {
        "tool": "tensorrt",
        "algorithm": ALGORITHM,
        "cache_header_tag": setup.version_tag,
        "calibration_batch": setup.batch,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    return Path(write_cache_key(setup.cache_path, setup.key, info))
