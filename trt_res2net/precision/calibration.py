"""The INT8 calibration of the precision step: the cache to reuse (its key matches this build), or the images to
calibrate on — one pass through ModelOpt that gives the cache and, for entropy and max, the Q/DQ model too.

The cache (``PrecisionOptions.calib_cache``, default ``calib/<model>.<method>.cache``) is reused when its sidecar
key (ONNX SHA-256, preprocessing, image-manifest hash, method, tool versions) matches this build — then no images
are needed —, refused naming the differing field when it does not (recalibrated when images are given).
Calibration writes it with its key and the images' manifest ``<cache>.images.json``, as one unit. A cache that
TensorRT's own calibrator wrote (e.g. on a Jetson) makes the Q/DQ model too, and is never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..core import log
from ..core.commit import commit_files, ensure_complete, journal_path_for
from ..core.errors import UserError
from ..data.preprocess_spec import SPEC, PreprocessSpec
from .calib_cache import (
    CacheInfo,
    CacheKey,
    CacheKeyFile,
    CalibrationCache,
    check_cache_key,
    read_cache,
    read_cache_key,
)
from .options import PrecisionOptions
from .sidecar import now

CALIB_DIR = Path("calib")


def default_cache_path(model_name: str, opts: PrecisionOptions) -> Path:
    return CALIB_DIR / f"{model_name}.{opts.method_tag}.cache"


def cache_path_of(opts: PrecisionOptions, model_name: str) -> Path:
    """The calibration cache this build reuses or writes."""
    return Path(opts.calib_cache) if opts.calib_cache else default_cache_path(model_name, opts)


def check_cache_or_images(opts: PrecisionOptions, cache_path: Path) -> None:
    """Images given, or a cache to reuse (or one a killed run left half-replaced, which reading it completes); else
    the one line that says how to get images."""
    calib = opts.calibration
    if calib.directory is None and not cache_path.exists() and not journal_path_for(cache_path).exists():
        raise UserError(
            f"INT8 needs calibration: pass CalibrationImages.directory=DIR (a folder of ~{calib.count} real images "
            "like those the engine will see, e.g. from the ImageNet train set), PrecisionOptions.calib_cache=PATH to "
            f"a cache made earlier (none at {cache_path}), or synthetic_calibration_images.n=N to try the pipeline "
            "on N generated images (their scales are not for deployment)"
        )


def check_calibration_source(opts: PrecisionOptions, model_name: str) -> None:
    """What INT8 calibration will read, checked before any long work: images given (present and readable), or a
    cache to reuse; else the one line that says how to get images."""
    if opts.calibration.directory is not None:
        opts.calibration.check()
        return
    check_cache_or_images(opts, cache_path_of(opts, model_name))


def minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@dataclass
class Calibration:
    """The calibration of one INT8 conversion: the cache (None while the images are still to be calibrated), the key
    it matches, the selected images (when a folder was given) and how it was made."""

    cache_path: Path
    cache: CalibrationCache | None
    key: CacheKey
    images: list[Path] | None
    reused: bool
    seconds: float = 0.0
    manifest: dict | None = None  # the calibration images' manifest, when calibrating
    synthetic: bool = False
    count: int | None = None  # images calibrated on (decoded)
    made_synthetic: bool = False  # a reused cache that was calibrated on synthetic images
    spec: PreprocessSpec = SPEC  # the preprocessing the model is fed, and calibrated with

    @property
    def any_synthetic(self) -> bool:
        return self.synthetic or self.made_synthetic


def expected_key(opts: PrecisionOptions, fp32_sha: str, manifest: dict | None,
                 spec: PreprocessSpec = SPEC) -> CacheKey:
    from .modelopt import tool_versions
    from .modelopt.int8 import calibration_providers

    return CacheKey(onnx_sha256=fp32_sha, preprocess_sha256=spec.sha256(),
                    calibration_manifest_sha256=manifest["sha256"] if manifest is not None else None,
                    method=opts.method_tag, tools=tool_versions(calibration_providers()))


def resolve_calibration(opts: PrecisionOptions, cache_path: Path, fp32_sha: str,
                        spec: PreprocessSpec = SPEC) -> Calibration:
    """The cache to reuse (key matches), or what to calibrate (``cache`` None: the images and their manifest), for a
    model fed ``spec`` (part of the key: a cache of other preprocessing is not reused)."""
    from ..data import calibration_set as cal

    calib = opts.calibration
    ensure_complete(cache_path)  # a cache, key and manifest that a killed run left half-replaced
    check_cache_or_images(opts, cache_path)
    images = manifest = None
    if calib.directory:
        images = calib.materialize().select()  # synthetic images are written when first needed
        manifest = cal.build_manifest(images, calib.directory, seed=calib.seed, requested=calib.count)
    key = expected_key(opts, fp32_sha, manifest, spec)
    if cache_path.exists() and read_cache(cache_path).made_by_tensorrt:
        return dataclasses.replace(_tensorrt_cache(cache_path, key, images), spec=spec)
    if cache_path.exists():
        try:
            check_cache_key(cache_path, key)
        except UserError as e:
            if images is None:
                raise
            log.note(f"note: {e}; recalibrating from {calib.directory}")
        else:
            cache = read_cache(cache_path)
            log.note(f"reusing calibration cache {cache_path} ({len(cache.scales)} activation scales; key matches)")
            return Calibration(cache_path, cache, key, images, reused=True,
                               made_synthetic=bool(read_cache_key(cache_path).info.synthetic), spec=spec)
    if calib.synthetic:
        log.warn_once(cal.SYNTHETIC_WARNING.format(n=len(images)))
    return Calibration(cache_path, None, key, images, reused=False, manifest=manifest, synthetic=calib.synthetic,
                       spec=spec)


def _tensorrt_cache(cache_path: Path, key: CacheKey, images) -> Calibration:
    """A cache written by TensorRT's own calibrator makes the Q/DQ model too: its scales are TensorRT's, so only
    the model and the preprocessing must match; it is never overwritten."""
    try:
        check_cache_key(cache_path, {"onnx_sha256": key.onnx_sha256, "preprocess_sha256": key.preprocess_sha256})
    except UserError as e:
        if images is not None:
            raise UserError(f"{e} — it is TensorRT's cache, which this step does not overwrite: pass "
                            "PrecisionOptions.calib_cache with another path to calibrate with ModelOpt") from None
        raise
    cache = read_cache(cache_path)
    stored: CacheKeyFile = read_cache_key(cache_path)
    tools = stored.key.tools
    # (indexing, not a look-up with a default: trt-api-check would take the result for the tensorrt module)
    made_by = tools["tensorrt"] if "tensorrt" in tools else cache.version_tag
    log.note(f"using TensorRT {made_by}'s calibration cache {cache_path} ({cache.algorithm}, {len(cache.scales)} "
             "scales)")
    return Calibration(cache_path, cache, dataclasses.replace(key, method=stored.key.method, tools=stored.key.tools),
                       images, reused=True, made_synthetic=bool(stored.info.synthetic))


def _reader(opts: PrecisionOptions, calib: Calibration, failures: list, decoded: list):
    """A ModelOpt reader over the calibration images (preprocessed in threads, batch by batch), with its bar."""
    from tqdm import tqdm

    from ..data import calibration_set as cal
    from .modelopt.calibration_reader import CALIB_BATCH, make_reader

    bar = tqdm(total=len(calib.images), desc=f"calibrate ({opts.method_tag})", unit="img",
               disable=not opts.progress, dynamic_ncols=True)

    def batches():
        for arr, _names, bad in cal.iter_batches(calib.images, CALIB_BATCH, calib.spec):
            for path, reason in bad:
                if (path, reason) not in failures:
                    failures.append((path, reason))
                    log.warn(f"skipped calibration image {path}: {reason}")
                    bar.update(1)
            if len(arr):
                decoded[0] += len(arr)
                yield arr

    return make_reader(batches, on_batch=bar.update), bar


def calibrate(opts: PrecisionOptions, calib: Calibration, fp32_onnx: Path, model_name: str, staged: Path):
    """One pass over the images: ``calib.cache`` set and stored with its key and manifest; returns the Q/DQ model
    written to ``staged`` when the method makes it in the same ModelOpt call (entropy, max), else None."""
    from .modelopt import int8

    failures: list = []
    decoded = [0]
    t0 = time.perf_counter()
    cache_log = calib.cache_path.with_name(calib.cache_path.name + ".modelopt.log")
    reader, bar = _reader(opts, calib, failures, decoded)
    try:
        if opts.calib_method == "percentile":
            calib.cache = int8.calibrate(fp32_onnx, reader, "percentile", opts.calib_percentile, log_path=cache_log,
                                         work_near=calib.cache_path)
            model = None
        else:
            calib.cache, model = int8.calibrate_and_quantize(fp32_onnx, reader, staged, method=opts.calib_method,
                                                             high_precision=opts.high_precision, log_path=cache_log)
    finally:
        bar.close()
    if decoded[0] == 0:
        raise UserError(f"none of the {len(calib.images)} calibration images could be read")
    calib.seconds = time.perf_counter() - t0
    _store(calib, fp32_onnx, model_name, failures, decoded[0])
    return model


def _store(calib: Calibration, fp32_onnx: Path, model_name: str, failures: list, decoded: int) -> None:
    """The cache, its key sidecar and the images' manifest, written as one unit."""
    from ..data import calibration_set as cal
    from .calib_cache import sidecar_path

    manifest = calib.manifest
    manifest["unreadable"] = [{"path": p, "error": r} for p, r in failures]
    manifest_path = cal.manifest_path_for(calib.cache_path)
    key = dataclasses.replace(calib.key, calibration_manifest_sha256=manifest["sha256"],
                              preprocess=calib.spec.to_dict())
    info = CacheInfo(model=model_name, source_onnx=str(fp32_onnx), images=decoded, unreadable_images=len(failures),
                     manifest=manifest_path.name, synthetic=calib.synthetic,
                     calibration_seconds=round(calib.seconds, 1), activation_scales=len(calib.cache.scales),
                     created=now())

    def as_json(obj) -> bytes:
        return (json.dumps(obj, indent=2) + "\n").encode()

    commit_files({calib.cache_path: calib.cache.to_bytes(),
                  sidecar_path(calib.cache_path): as_json(CacheKeyFile(key, info).to_json()),
                  manifest_path: as_json(manifest)})
    calib.count = decoded
    log.result(f"calibrated on {decoded} images in {minutes(calib.seconds)} → {calib.cache_path} "
               f"({len(calib.cache.scales)} activation scales; manifest {manifest_path.name})")
