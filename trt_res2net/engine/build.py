"""The engine stage: an ONNX → a TensorRT or TensorRT-RTX engine and its manifest (``trt_res2net.build_engine``).

``plan.plan_engine`` makes every check and decision first (the options the library refuses, the batch profile, the
GPU or the RTX targets, the precision path); :func:`run_engine` then does the work: under a lock against a second
build of the same engine, the build (``builder``), and the engine and its manifest written as one unit
(``core.commit``: the manifest hashes the serialized bytes; Ctrl-C leaves the previous pair, SIGKILL the previous
or the new one). The ONNX's hashes cover its external data files (``core.hashing.sha256_onnx``); the library's
parser is given the ONNX's path, so that it reads them from the ONNX's folder.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import log
from ..core.commit import commit_files, recover, write_new_file
from ..core.errors import user_error_from_os_error
from ..core.files import temp_name
from ..core.hashing import sha256_onnx
from . import trt_compat
from .builder import BuildResult, build
from .describe import build_manifest
from .manifest import EngineManifest, manifest_bytes
from .options import EngineOptions, MiB
from .plan import EnginePlan, plan_engine
from .precision_path import same_file

if TYPE_CHECKING:
    from ..precision.convert import ConvertedOnnx
    from .calibrator import CalibrationSetup


@dataclass(frozen=True)
class BuiltEngine:
    """An engine on disk with its manifest (``manifest`` is what ``manifest_path`` holds)."""

    path: Path
    manifest_path: Path
    manifest: EngineManifest

    @property
    def family(self) -> str:
        return self.manifest.engine_family


def build_engine(onnx: str | os.PathLike | ConvertedOnnx, precision: str | None = None,
                 options: EngineOptions | None = None, *, fp32_onnx_path: str | os.PathLike | None = None,
                 model_name: str | None = None) -> BuiltEngine:
    """Build the engine of ``onnx`` and write it with its manifest: ``run_engine(plan_engine(...))``.

    ``onnx`` is what the engine is built from: what ``trt_res2net.convert_precision`` returned (its precision and
    FP32 source come with it), or a path — the FP32 ONNX, or an FP16 / INT8 Q/DQ ONNX made from ``fp32_onnx_path``
    (default: the ONNX itself; TensorRT ≤ 10 builds FP16 and calibrator INT8 from the FP32 one), with
    ``precision`` (default fp32). ``model_name`` names the engine file (default: the FP32 ONNX's stem). Without the
    library (or, for TensorRT, without a GPU): MissingDependency (exit status 3) whose one line says which ONNX
    files exist and what to install.
    """
    return run_engine(plan_engine(onnx, options, precision=precision, fp32_onnx_path=fp32_onnx_path,
                                  model_name=model_name))


def run_engine(plan: EnginePlan) -> BuiltEngine:
    """Build what ``plan`` says and write the engine with its manifest, under the engine's lock."""
    try:
        lock = plan.target.lock().acquire()
    except OSError as e:
        raise user_error_from_os_error(e, "write the engine to") from None
    # The ONNX files are hashed while TensorRT builds (hashlib and TensorRT both release the GIL): the manifest
    # needs the hashes, the build does not wait for them — except TensorRT's calibrator, whose cache they key.
    pool = ThreadPoolExecutor(2, thread_name_prefix="engine-io")
    staged = temp_name(plan.engine_path)  # the engine's bytes, before the commit moves them in
    try:
        onnx_sha = pool.submit(sha256_onnx, plan.build.onnx_path)  # with its external data files, if any
        fp32_sha = (onnx_sha if same_file(plan.build.onnx_path, plan.fp32_onnx_path)
                    else pool.submit(sha256_onnx, plan.fp32_onnx_path))
        result = _build(plan, onnx_sha)
        # the engine goes to the staged file while its bytes are hashed for the manifest (two cores, one pass
        # each); the two files then become visible together (commit_files)
        staging = pool.submit(write_new_file, staged, result.serialized)
        manifest = build_manifest(plan, result, onnx_sha256=onnx_sha.result(), fp32_onnx_sha256=fp32_sha.result())
        _commit(plan, staging, staged, manifest)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        staged.unlink(missing_ok=True)  # moved by the commit; left only when the build stopped on the way
        lock.release()
    _report(plan, result, manifest)
    return BuiltEngine(plan.engine_path, plan.manifest_path, manifest)


def _build(plan: EnginePlan, onnx_sha: Future) -> BuildResult:
    """The build itself, once a pair a killed build left half-replaced is completed."""
    recovered = recover(plan.engine_path)
    if recovered:
        log.note(f"{plan.engine_path}: the pair an interrupted build left was {recovered}")
    calibration = _calibration(plan, onnx_sha.result()) if plan.calibration_batch is not None else None
    for note in plan.build.notes:
        log.note(f"build: {note}")
    for caveat in plan.build.caveats:
        log.warn_once(caveat)
    return build(plan.library, plan.build, plan.io, plan.profile, plan.options, engine_path=plan.engine_path,
                 gpu=plan.gpu, targets=list(plan.targets) if plan.targets else None, calibration=calibration,
                 spec=plan.recipe.spec)


def _calibration(plan: EnginePlan, onnx_sha256: str) -> CalibrationSetup:
    """TensorRT's calibrator: the cache to reuse, or the images to calibrate on (keyed by the ONNX's hash)."""
    from .calibrator import prepare_calibration

    opts = plan.options
    return prepare_calibration(model=plan.model_name, trt_version=plan.version, onnx_sha256=onnx_sha256,
                               batch=plan.calibration_batch, calib_dir=opts.calibration.directory,
                               calib_images=opts.calibration.count, seed=opts.calibration.seed,
                               cache_path=opts.calib_cache, spec=plan.recipe.spec)


def _commit(plan: EnginePlan, staging: Future, staged: Path, manifest: EngineManifest) -> None:
    try:
        staging.result()
        commit_files({plan.engine_path: staged, plan.manifest_path: manifest_bytes(manifest)})
    except OSError as e:
        raise user_error_from_os_error(e, "write the engine") from None


def _report(plan: EnginePlan, result: BuildResult, manifest: EngineManifest) -> None:
    engine_path, version = plan.engine_path, plan.version
    size = memoryview(result.serialized).nbytes
    log.note(f"wrote {engine_path} ({size / MiB:.1f} MiB, built in {result.build_time_s:.1f}s) and "
             f"{plan.manifest_path}")
    for tool, command in result.build_options.equivalent_commands.items():  # to cross-check with NVIDIA's
        log.note(f"{tool} equivalent: {command}")
    quant, compute = manifest.quantization, manifest.compute_precision
    if quant is not None and quant.source != "none":
        log.note(f"{engine_path}: {quant.label}; computes in: {compute.summary if compute else None}")
    if trt_compat.is_rtx(version):
        log.note(f"{engine_path} is a TensorRT-RTX engine: it runs on GPUs of "
                 f"{trt_compat.rtx_targets_sentence(result.compute_capabilities, result.and_later)}, with TensorRT-RTX "
                 f"{version} (the release that built it) and a driver for CUDA 13; its kernels are compiled on the "
                 "first run there (kept in a runtime cache beside the engine). Data-center Hopper GPUs (H100, H200) "
                 "and Jetson need standard TensorRT: install it there and rerun with EngineOptions.family='tensorrt'")
