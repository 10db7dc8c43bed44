"""The engine stage: an ONNX → a TensorRT or TensorRT-RTX engine and its manifest (``trt_res2net.build_engine``).

Checks come first (the options the library refuses, the batch profile, the GPU or the RTX targets, the precision
path), then the build (``builder``), then the engine and its manifest are written as one unit (``core.commit``:
the manifest hashes the serialized bytes; Ctrl-C leaves the previous pair, SIGKILL the previous or the new one),
under a lock against a second build of the same engine.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from ..core import log
from ..core.commit import PathLock, commit_files, recover
from ..core.errors import MissingDependency, UserError, user_error_from_os_error
from ..core.files import temp_name
from ..core.hashing import sha256_bytes, sha256_file
from ..model.contract import inspect_onnx
from ..precision.convert import ConvertedOnnx
from . import manifest as manifest_mod
from . import trt_compat
from .builder import build
from .options import EngineOptions, MiB, engine_path_for
from .plan import (
    check_engine_request,
    default_workspace_bytes,
    engine_label,
    fp32_gemm_nodes,
    plan_build,
    refuse_inapplicable_options,
    rtx_targets,
    same_file,
)


@dataclass(frozen=True)
class BuiltEngine:
    """An engine on disk with its manifest (``manifest`` is what ``manifest_path`` holds)."""

    path: Path
    manifest_path: Path
    manifest: dict

    @property
    def family(self) -> str:
        return self.manifest["engine_family"]


def planned_engine_path(model_name: str, precision: str, options: EngineOptions, version,
                        onnx_batch: int | None = None) -> Path:
    """Where :func:`build_engine` will write the engine (``options.engine_path``, else ``<engine_dir>/<model>_
    <label>_b<max>[.rtx].engine``), known before any work: build.py locks it first."""
    if options.engine_path is not None:
        return options.engine_path
    profile = options.batch_profile(onnx_batch=onnx_batch)
    return engine_path_for(model_name, engine_label(precision, version), profile.max, options.engine_dir,
                           family=version.family)


def nvidia_driver_present() -> bool:
    """Whether this Linux machine has an NVIDIA kernel driver loaded (its /proc entry or device nodes); without
    one no GPU can answer, and an ahead-of-time TensorRT-RTX build need not load CUDA to find that out."""
    import glob

    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*")) or \
        os.path.exists("/dev/dxg")  # WSL 2


def gpu_for_build(version, device: int, written: str):
    """The GPU TensorRT builds for (MissingDependency, exit 3, without one); for TensorRT-RTX, which needs no
    GPU, this machine's GPU when there is one, else None (without loading CUDA where no NVIDIA driver is)."""
    if trt_compat.builds_without_gpu(version) and not nvidia_driver_present():
        return None
    from ..cuda.device import detect_gpu

    try:
        return detect_gpu(device)
    except MissingDependency as e:
        if trt_compat.builds_without_gpu(version):
            return None
        raise MissingDependency(f"wrote {written}; {e}; to build the engine {trt_compat.INSTALL_HINT} "
                                "(or --engine-family tensorrt-rtx, which builds without a GPU)") from e


def build_engine(onnx: str | os.PathLike | ConvertedOnnx, precision: str | None = None,
                 options: EngineOptions | None = None, *, fp32_onnx_path: str | os.PathLike | None = None,
                 model_name: str | None = None) -> BuiltEngine:
    """Build the engine of ``onnx`` and write it with its manifest.

    ``onnx`` is what the engine is built from: what ``trt_res2net.convert_precision`` returned (its precision and
    FP32 source come with it), or a path — the FP32 ONNX, or an FP16 / INT8 Q/DQ ONNX made from ``fp32_onnx_path``
    (default: the ONNX itself; TensorRT ≤ 10 builds FP16 and calibrator INT8 from the FP32 one), with
    ``precision`` (default fp32). ``model_name`` names the engine file (default: the FP32 ONNX's stem). Without the
    library (or, for TensorRT, without a GPU): MissingDependency (exit status 3) whose one line says which ONNX
    files exist and what to install.
    """
    options = options or EngineOptions()
    if isinstance(onnx, ConvertedOnnx):
        if precision is not None and precision != onnx.precision:
            raise UserError(f"precision {precision!r} given for {onnx.path}, which convert_precision made "
                            f"{onnx.precision}")
        precision = onnx.precision
        fp32_onnx_path = onnx.source if fp32_onnx_path is None else fp32_onnx_path
    precision = precision or "fp32"
    onnx_path = Path(onnx)
    fp32_onnx_path = Path(fp32_onnx_path) if fp32_onnx_path is not None else onnx_path
    model_name = model_name or fp32_onnx_path.stem
    check_engine_request(options, precision)  # usage errors are exit 2 even without TensorRT
    io_converted = inspect_onnx(onnx_path)
    onnx_written = str(fp32_onnx_path) + ("" if same_file(onnx_path, fp32_onnx_path) else f" and {onnx_path}")

    library = trt_compat.import_library(options.family, what_was_written=onnx_written)
    version = library.version
    refuse_inapplicable_options(options, version, precision)
    gpu = gpu_for_build(version, options.device, onnx_written)
    targets = rtx_targets(options, gpu, onnx_written) if trt_compat.is_rtx(version) else None

    plan = plan_build(precision, version, onnx_path=onnx_path, fp32_onnx_path=fp32_onnx_path,
                      onnx_io=io_converted, int8_mode=options.int8_mode, high_precision=options.high_precision)
    io = io_converted if same_file(plan.onnx_path, onnx_path) else inspect_onnx(plan.onnx_path)
    if targets and "7.5" in targets:
        fp32 = fp32_gemm_nodes(plan.onnx_path)
        if fp32:
            raise UserError(f"TensorRT-RTX cannot compile FP32 GEMM for Turing (compute capability 7.5), and "
                            f"{plan.onnx_path} computes {fp32[0]!r} in FP32: build --precision fp16 for 7.5, or "
                            "leave 7.5 out of --compute-capability")
    profile = options.batch_profile(onnx_batch=io.batch)
    if options.workspace_bytes is None and gpu is not None:
        workspace = default_workspace_bytes(gpu.free_memory, gpu.total_memory, gpu.integrated)
        options = replace(options, workspace_mib=max(1, workspace // MiB))

    # The ONNX files are hashed while TensorRT builds (hashlib and TensorRT both release the GIL): the manifest
    # needs the hashes, the build does not wait for them — except TensorRT's calibrator, whose cache they key.
    pool = ThreadPoolExecutor(2, thread_name_prefix="engine-io")
    onnx_sha_later = pool.submit(sha256_file, plan.onnx_path)
    fp32_sha_later = (onnx_sha_later if same_file(plan.onnx_path, fp32_onnx_path)
                      else pool.submit(sha256_file, fp32_onnx_path))
    calibration = None
    if plan.calibrator:
        from .calibrator import prepare_calibration

        calibration = prepare_calibration(
            model=model_name, trt_version=version, onnx_sha256=onnx_sha_later.result(),
            batch=options.calibrator_batch if io.batch is None else io.batch,
            calib_dir=options.calibration.directory, calib_images=options.calibration.count,
            seed=options.calibration.seed,
            cache_path=options.calib_cache,
        )

    engine_path = planned_engine_path(model_name, precision, options, version, io.batch)
    mpath = manifest_mod.manifest_path_for(engine_path)
    try:
        lock = PathLock(engine_path, "build").acquire()
    except OSError as e:
        pool.shutdown(wait=False, cancel_futures=True)
        raise user_error_from_os_error(e, "write the engine to") from None
    staged = None
    try:
        recovered = recover(engine_path)  # a pair a killed build left half-replaced is completed first
        if recovered:
            log.note(f"{engine_path}: the pair an interrupted build left was {recovered}")
        for note in plan.notes:
            log.note(f"build: {note}")
        for caveat in plan.caveats:
            log.warn_once(caveat)
        result = build(library, plan, io, profile, options, engine_path=engine_path, gpu=gpu, targets=targets,
                       calibration=calibration)
        # the engine's bytes go to a temporary file while they are hashed for the manifest (two cores, one pass
        # each); the two files then become visible together (commit_files)
        staged = temp_name(engine_path)
        staged_write = pool.submit(_write_staged, staged, result.serialized)
        engine_sha = sha256_bytes(result.serialized)
        onnx_sha = onnx_sha_later.result()
        quantization = describe_quantization(precision, plan, onnx_sha, calibration, io)
        manifest = manifest_mod.build_manifest(
            engine_path=engine_path, model=model_name, precision=precision, int8_mode=plan.int8_mode,
            engine_family=version.family, library_version=version.full, gpu=gpu,
            compute_capabilities=result.compute_capabilities, compute_capabilities_and_later=result.and_later,
            compute_capabilities_source=result.compute_capabilities_source,
            onnx_path=plan.onnx_path, onnx_sha256=onnx_sha, fp32_onnx_sha256=fp32_sha_later.result(),
            io=result.io, outputs_probabilities=io.outputs_probabilities, profiles=result.profiles,
            build_options=result.build_options, caveats=plan.caveats,
            build_time_s=result.build_time_s, calibration=calibration.manifest() if calibration else None,
            engine_sha256=engine_sha, engine_size=memoryview(result.serialized).nbytes, quantization=quantization,
            compute_precision=describe_compute_precision(precision, plan, version, result),
        )
        try:
            staged_write.result()
            commit_files({engine_path: staged, mpath: manifest_mod.manifest_bytes(manifest)})
        except OSError as e:
            raise user_error_from_os_error(e, "write the engine") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if staged is not None:
            staged.unlink(missing_ok=True)  # moved by the commit; left only when the build stopped on the way
        lock.release()
    _report(engine_path, mpath, result, version, manifest)
    return BuiltEngine(engine_path, mpath, manifest)


def _write_staged(path: Path, data) -> None:
    """The serialized engine to ``path`` (a temporary of the engine's name), flushed to the disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------------
# What the engine is: where its precision came from, and what it computes in


QUANTIZATION_SOURCES = {
    "none": "FP32: nothing quantized",
    "fp16-builder-flag": "FP16 by TensorRT's builder flag on the FP32 ONNX",
    "autocast-fp16": "FP16 by ModelOpt AutoCast here",
    "external-fp16": "FP16 as the given ONNX has it (converted elsewhere)",
    "calibrated": "INT8 Q/DQ calibrated here (ModelOpt PTQ)",
    "external-qdq": "INT8 Q/DQ as the given ONNX has it (quantized elsewhere; not calibrated here)",
    "tensorrt-calibrator": "INT8 calibrated here by TensorRT's entropy calibrator",
}


def describe_quantization(precision: str, plan, onnx_sha: str, calibration=None, onnx_io=None) -> dict:
    """Where the engine's precision came from (``QUANTIZATION_SOURCES``): the ONNX it was built from (``onnx_io``,
    what it declares), and the precision step's sidecar beside it when that sidecar describes these very bytes."""
    from ..precision.convert import read_precision_sidecar

    built_from_fp16 = onnx_io is not None and onnx_io.has_fp16 and not onnx_io.has_qdq
    if precision == "fp32":
        source = "none"
    elif plan.calibrator:
        source = "tensorrt-calibrator"
    elif "FP16" in plan.flags and precision == "fp16" and not built_from_fp16:
        source = "fp16-builder-flag"
    else:
        side = read_precision_sidecar(plan.onnx_path, onnx_sha)
        if side is not None:
            doc = {"source": side.get("quantization_source") or ("calibrated" if precision == "int8"
                                                                  else "autocast-fp16")}
            for key in ("calibration_method", "calibration_cache", "calibration_images", "calibration_synthetic",
                        "high_precision", "excluded_layers"):
                if side.get(key) is not None:
                    doc[key] = side[key]
            doc["label"] = QUANTIZATION_SOURCES.get(doc["source"], doc["source"])
            if doc.get("calibration_synthetic"):
                doc["label"] += " on synthetic images: its scales are only for trying the pipeline"
            return doc
        source = "external-qdq" if precision == "int8" else "external-fp16"
    doc = {"source": source, "label": QUANTIZATION_SOURCES[source]}
    if calibration is not None:
        doc["calibration_cache"] = str(calibration.cache_path)
    return doc


def describe_compute_precision(precision: str, plan, version, result) -> dict:
    """What the engine computes in, as far as the library lets a build find out. A standard TensorRT build follows
    documented rules; a TensorRT-RTX build compiles its kernels on the user's GPU, and its INT8 is documented as
    weight-only quantization: for an INT8 Q/DQ graph that is recorded as not known, with what the build did see."""
    net = result.network or {}
    requested = None
    if net.get("weighted_layers"):
        requested = (f"{net['weighted_layers_qdq']} of {net['weighted_layers']} convolutions and matrix multiplies "
                     "with INT8 Q/DQ on their data and weights") if precision == "int8" else None
    rtx = trt_compat.is_rtx(version)
    if precision == "fp32":
        return {"known": True, "summary": "FP32, TF32 allowed in convolutions and matrix multiplies (the "
                                          "library's default)"}
    if precision == "fp16":
        if "FP16" in plan.flags:
            return {"known": True, "summary": "FP16 where TensorRT finds it faster (builder flag), FP32 elsewhere"}
        return {"known": True, "summary": "the types the FP16 ONNX declares (strongly typed): FP16, with the nodes "
                                          "kept in FP32 and the float32 input and output"}
    if plan.calibrator:
        return {"known": True, "summary": "INT8 where TensorRT has an INT8 kernel for the calibrated ranges (implicit "
                                          "quantization), " + ("FP16 or FP32" if "FP16" in plan.flags else "FP32")
                                          + " elsewhere"}
    if not rtx:
        return {"known": True, "requested": requested,
                "summary": "INT8 where the Q/DQ nodes ask and TensorRT has an INT8 kernel (explicit quantization), "
                           "the types the ONNX declares elsewhere"}
    warnings = {}
    if result.log is not None:
        for message in result.log.messages("warning"):
            warnings[message] = warnings.get(message, 0) + 1
    return {
        "known": False,
        "label": "int8qdq",
        "requested": requested,
        "summary": "not known ahead of time: the engine was built from an INT8 Q/DQ graph; TensorRT-RTX documents "
                   "INT8 as weight-only quantization (of GEMMs; its 1.7 release notes add INT8 weight-only-quantized "
                   "convolutions) and does not say what the activations of a Q/DQ convolution compute in",
        "build_log": {"warnings": warnings, "note": "the builder compiles the network as one fused node and "
                                                    "reports no per-layer precision"},
        "engine_inspector": "needs the engine deserialized on a GPU it targets (IEngineInspector): not available "
                            "to an ahead-of-time build; measure on the target GPU",
    }


def _report(engine_path: Path, manifest_path: Path, result, version, manifest: dict) -> None:
    size = memoryview(result.serialized).nbytes
    log.note(f"wrote {engine_path} ({size / MiB:.1f} MiB, built in {result.build_time_s:.1f}s) and {manifest_path}")
    for tool, command in result.build_options["equivalent_commands"].items():  # to cross-check with NVIDIA's
        log.note(f"{tool} equivalent: {command}")
    quant = manifest.get("quantization") or {}
    compute = manifest.get("compute_precision") or {}
    if quant.get("source") not in (None, "none"):
        log.note(f"{engine_path}: {quant.get('label')}; computes in: {compute.get('summary')}")
    if trt_compat.is_rtx(version):
        log.note(f"{engine_path} is a TensorRT-RTX engine: it runs on GPUs of "
                 f"{trt_compat.rtx_targets_sentence(result.compute_capabilities, result.and_later)}, with TensorRT-RTX "
                 f"{version} (the release that built it) and a driver for CUDA 13; its kernels are compiled on the "
                 "first run there (kept in a runtime cache beside the engine). Data-center Hopper GPUs (H100, H200) "
                 "and Jetson need standard TensorRT: install it there and rerun with --engine-family tensorrt")
