"""The engine stage's plan: every check and decision before TensorRT builds anything (``plan_engine``), made once.

The plan has two parts, because build.py must refuse a build before its long work (the export, the calibration)
while the ONNX the engine is built from does not exist yet:

- :func:`plan_target` → :class:`EngineTarget`, what needs no ONNX but its batch: the request itself, the library
  and what it refuses, the GPU or the TensorRT-RTX targets, the batch profile, the default workspace, the engine's
  path (and the lock on it). ``onnx`` is the FP32 ONNX when it exists, else None: the zoo model's export, whose batch
  is dynamic and whose classifier head is an FP32 Gemm.
- :func:`plan_engine` → :class:`EnginePlan`, the target with the ONNX to build from: the precision path
  (``precision_path.plan_build``), the ONNX's I/O, the Turing FP32-GEMM check and the calibrator's batch. Given the
  ``target`` planned earlier it checks nothing twice; without one it plans the target first.

Both are pure apart from reading the ONNX's header, importing the library and asking the GPU what it is;
``build.run_engine`` does the work.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ..core.errors import MissingDependency, UserError
from ..core.onnx_files import check_onnx_files
from ..data.recipe import FROM_MODEL, InputRecipe, PreprocessOptions
from ..model.contract import OnnxIO, inspect_onnx, onnx_recipe
from . import trt_compat
from .manifest import manifest_path_for
from .options import EngineOptions, GiB, MiB, engine_path_for
from .precision_path import (  # noqa: F401  (engine_label, precision_onnx_needed: read through here too)
    RTX_INT8_CAVEAT,
    BuildPlan,
    check_precision,
    engine_label,
    plan_build,
    precision_onnx_needed,
    same_file,
)

if TYPE_CHECKING:
    from ..core.commit import PathLock
    from ..cuda.device import DeviceInfo
    from ..precision.convert import ConvertedOnnx
    from .options import BatchProfile


# --------------------------------------------------------------------------------------------------------
# The checks


def check_engine_request(options: EngineOptions, precision: str) -> None:
    """What can be refused without knowing the library: the precision, DLA in FP32, the batch profile."""
    check_precision(precision)
    if options.dla_core is not None and precision == "fp32":
        raise UserError("DLA runs FP16 or INT8 only: use build_engine.precision fp16 or int8 with "
                        "EngineOptions.dla_core")
    options.batch_profile()


def refuse_inapplicable_options(options: EngineOptions, version, precision: str) -> None:
    """One line for an option that means nothing to the library that will build (checked before any work)."""
    v = version
    label = trt_compat.FAMILIES[v.family].label
    if options.dla_core is not None and not trt_compat.has_dla(v):
        raise UserError(f"EngineOptions.dla_core: {label} has no DLA (DLA cores exist on Jetson, which needs "
                        "TensorRT: EngineOptions.family='tensorrt')")
    if options.timing_cache is not None and not trt_compat.has_timing_cache(v):
        raise UserError(f"EngineOptions.timing_cache: {label} times no tactics ahead of time (its runtime cache "
                        "beside the engine keeps the kernels compiled on the user's GPU); drop the option")
    if options.compute_capabilities and not trt_compat.has_compute_capability_targets(v):
        raise UserError(f"EngineOptions.compute_capabilities is for TensorRT-RTX engines; {label} builds for this "
                        "machine's GPU (use EngineOptions.family='tensorrt-rtx' for an engine that runs on a list "
                        "of GPUs)")
    if precision == "int8":
        trt_compat.resolve_int8_mode(options.int8_mode, v)  # e.g. the calibrator on TensorRT-RTX / 11.x
    given = options.calibrator_options_given
    if given and not trt_compat.has_int8_calibrator(v):
        raise UserError(f"{' and '.join(given)}: only for TensorRT's INT8 calibrator, which "
                        f"{label} {v.major}.{v.minor} does not have")


def rtx_targets(options: EngineOptions, gpu, written: str | None = None, why: str | None = None) -> list[str] | None:
    """The compute capabilities to build for (None = the library's default), checked against this machine's GPU
    where ``current`` is asked for (``written``: what the run wrote before; ``why``: why there is no GPU)."""
    ccs = list(options.compute_capabilities) if options.compute_capabilities else None
    if ccs != ["current"]:
        return ccs
    if gpu is None:
        head = f"wrote {written}; " if written else ""
        because = f" ({why})" if why else ""
        raise MissingDependency(f"{head}EngineOptions.compute_capabilities='current' needs an NVIDIA GPU on this "
                                f"machine{because}; name the targets instead (e.g. "
                                "EngineOptions.compute_capabilities='8.9')")
    cc = gpu.cc
    if cc not in trt_compat.RTX_TARGETS and trt_compat.cc_key(cc) < trt_compat.cc_key("12.1"):
        raise UserError(f"this GPU ({gpu.name}, compute capability {cc}) is not a TensorRT-RTX target; build "
                        "with TensorRT (EngineOptions.family='tensorrt')")
    return ccs


def refuse_fp32_gemm_on_turing(detail: str) -> NoReturn:
    raise UserError(f"TensorRT-RTX cannot compile FP32 GEMM for Turing (compute capability 7.5), and {detail}: "
                    "build build_engine.precision='fp16' for 7.5, or leave 7.5 out of "
                    "EngineOptions.compute_capabilities")


def default_workspace_bytes(free_bytes: int | None, total_bytes: int, integrated: bool) -> int:
    """Workspace limit when ``EngineOptions.workspace_mib`` is not given: half the free device memory on a discrete
    GPU (capped at 16 GiB: more buys a Res2Net nothing), a quarter on a Jetson, whose GPU shares memory with the
    OS (capped at 4 GiB), and never below 256 MiB."""
    free = free_bytes if free_bytes is not None else total_bytes
    share, cap = (0.25, 4 * GiB) if integrated else (0.5, 16 * GiB)
    return int(max(256 * MiB, min(free * share, cap)))


def fp32_gemm_nodes(path: str | os.PathLike) -> list[str]:
    """Names of the Gemm/MatMul nodes that compute in float32 (types from ONNX shape inference): TensorRT-RTX
    cannot compile those for Turing (compute capability 7.5)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an exotic graph: let the builder decide
        return []
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    return [n.name or n.output[0] for n in g.node
            if n.op_type in ("Gemm", "MatMul") and types.get(n.input[0]) == onnx.TensorProto.FLOAT]


def nvidia_driver_present() -> bool:
    """Whether this Linux machine has an NVIDIA kernel driver loaded (its /proc entry or device nodes); without
    one no GPU can answer, and an ahead-of-time TensorRT-RTX build need not load CUDA to find that out."""
    import glob

    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*")) or \
        os.path.exists("/dev/dxg")  # WSL 2


def gpu_for_build(version, device: int, *, asked: bool = False) -> tuple[DeviceInfo | None, str | None]:
    """(the GPU to build on, why there is none): TensorRT builds for a GPU (its absence is reported by
    :func:`plan_engine`, once it can say what the run wrote); TensorRT-RTX needs none and takes this machine's GPU
    when there is one (without loading CUDA where no NVIDIA driver is, unless the build ``asked`` for this GPU)."""
    if trt_compat.builds_without_gpu(version) and not nvidia_driver_present() and not asked:
        return None, None
    from ..cuda.device import detect_gpu

    try:
        return detect_gpu(device), None
    except MissingDependency as e:
        return None, str(e)


# --------------------------------------------------------------------------------------------------------
# Part 1: the target


@dataclass(frozen=True)
class EngineTarget:
    """What an engine build is for, known before its ONNX: see the module docstring. ``options`` has the default
    workspace filled in; ``requested`` is what was asked."""

    requested: EngineOptions
    options: EngineOptions
    precision: str
    model_name: str
    library: trt_compat.Library
    gpu: DeviceInfo | None
    gpu_missing: str | None  # why a standard TensorRT build has no GPU here (refused by plan_engine)
    targets: tuple[str, ...] | None  # TensorRT-RTX compute capabilities; None: the library's default
    profile: BatchProfile
    engine_path: Path

    @property
    def version(self) -> trt_compat.TrtVersion:
        return self.library.version

    @property
    def caveats(self) -> tuple[str, ...]:
        """What to warn about before the long work (the manifest records them after it)."""
        return (RTX_INT8_CAVEAT,) if self.precision == "int8" and trt_compat.is_rtx(self.version) else ()

    def lock(self) -> PathLock:
        """The lock against a second build of this engine (re-entrant: build.py holds it across the export and the
        precision step, ``run_engine`` takes it again)."""
        from ..core.commit import PathLock

        return PathLock(self.engine_path, "build")


def planned_engine_path(model_name: str, precision: str, options: EngineOptions, version,
                        profile: BatchProfile) -> Path:
    """``options.engine_path``, else ``<engine_dir>/<model>_<label>_b<max>[.rtx].engine``."""
    if options.engine_path is not None:
        return options.engine_path
    return engine_path_for(model_name, engine_label(precision, version), profile.max, options.engine_dir,
                           family=version.family)


def plan_target(options: EngineOptions, precision: str, *, model_name: str, onnx: str | os.PathLike | None = None,
                onnx_io: OnnxIO | None = None, written: str | None = None) -> EngineTarget:
    """Part 1 of the plan (module docstring). ``onnx_io`` describes ``onnx`` (read when None); ``written`` names
    what the run wrote before the engine, for the one line that says the library is missing."""
    from ..core.files import check_input_file, check_writable_folder

    check_engine_request(options, precision)
    if onnx is not None and onnx_io is None:
        onnx_io = inspect_onnx(onnx)
    if onnx is not None:
        check_onnx_files(onnx, "FP32 ONNX")  # its external data files: before the export or precision step's work
    library = trt_compat.import_library(options.family, what_was_written=written)
    version = library.version
    refuse_inapplicable_options(options, version, precision)
    gpu, gpu_missing = gpu_for_build(version, options.device, asked=options.compute_capabilities == ("current",))
    targets = None
    if trt_compat.is_rtx(version):
        targets = rtx_targets(options, gpu, written, why=gpu_missing)
        if targets and "7.5" in targets and precision == "fp32":  # other precisions: checked by plan_engine
            if onnx is None:
                refuse_fp32_gemm_on_turing("the zoo model computes its classifier head (Gemm) in FP32")
            gemm = fp32_gemm_nodes(onnx)
            if gemm:
                refuse_fp32_gemm_on_turing(f"{onnx} computes {gemm[0]!r} in FP32")
    profile = options.batch_profile(onnx_batch=onnx_io.batch if onnx_io is not None else None)
    planned = options
    if options.workspace_bytes is None and gpu is not None:
        workspace = default_workspace_bytes(gpu.free_memory, gpu.total_memory, gpu.integrated)
        planned = replace(options, workspace_mib=max(1, workspace // MiB))
    engine_path = planned_engine_path(model_name, precision, options, version, profile)
    check_writable_folder(engine_path.parent, "EngineOptions.engine_path" if options.engine_path is not None
                          else "EngineOptions.engine_dir")
    if options.timing_cache is not None and options.timing_cache.exists():
        check_input_file(options.timing_cache, "EngineOptions.timing_cache")
    if precision == "int8" and options.int8_mode == "calibrator":
        _check_calibrator_inputs(options, model_name, version)
    return EngineTarget(options, planned, precision, model_name, library, gpu, gpu_missing,
                        None if targets is None else tuple(targets), profile, engine_path)


def _check_calibrator_inputs(options: EngineOptions, model_name: str, version) -> None:
    """TensorRT's own calibrator: its images (when given) readable, its cache readable or its folder writable."""
    from ..core.files import check_input_file, check_writable_folder
    from .calibrator import default_cache_path

    cache = options.calib_cache or default_cache_path(model_name, version)
    if options.calib_cache is not None and os.path.lexists(cache):
        check_input_file(cache, "EngineOptions.calib_cache")
    check_writable_folder(cache.parent, "the calibration cache folder")
    if options.calibration.directory is not None:
        options.calibration.check()


# --------------------------------------------------------------------------------------------------------
# Part 2: the engine plan


@dataclass(frozen=True)
class EnginePlan:
    """Everything an engine build will do, decided (``plan_engine``); ``build.run_engine`` does it."""

    target: EngineTarget
    onnx_path: Path  # the ONNX given to the build (converted or FP32)
    fp32_onnx_path: Path  # its FP32 source (the same file for an FP32 build)
    build: BuildPlan  # the precision path: which ONNX, builder flags, strongly typed, calibrator
    io: OnnxIO  # of build.onnx_path
    calibration_batch: int | None  # images per batch of TensorRT's calibrator; None: no calibrator
    recipe: InputRecipe  # the preprocessing the engine is fed (data.recipe), recorded in its manifest

    # what the target decided, read through the plan
    @property
    def precision(self) -> str:
        return self.target.precision

    @property
    def model_name(self) -> str:
        return self.target.model_name

    @property
    def options(self) -> EngineOptions:
        return self.target.options

    @property
    def library(self) -> trt_compat.Library:
        return self.target.library

    @property
    def version(self) -> trt_compat.TrtVersion:
        return self.target.library.version

    @property
    def gpu(self) -> DeviceInfo | None:
        return self.target.gpu

    @property
    def targets(self) -> tuple[str, ...] | None:
        return self.target.targets

    @property
    def profile(self) -> BatchProfile:
        return self.target.profile

    @property
    def engine_path(self) -> Path:
        return self.target.engine_path

    @property
    def manifest_path(self) -> Path:
        return manifest_path_for(self.engine_path)


def _written(onnx_path: Path, fp32_onnx_path: Path) -> str:
    """The ONNX files that exist before the engine, for the lines that say what is missing to build it."""
    return str(fp32_onnx_path) + ("" if same_file(onnx_path, fp32_onnx_path) else f" and {onnx_path}")


def plan_engine(onnx: str | os.PathLike | ConvertedOnnx, options: EngineOptions | None = None, *,
                precision: str | None = None, fp32_onnx_path: str | os.PathLike | None = None,
                model_name: str | None = None, target: EngineTarget | None = None,
                preprocess: PreprocessOptions = FROM_MODEL) -> EnginePlan:
    """The plan of the engine of ``onnx`` (what ``trt_res2net.convert_precision`` returned, or a path; see
    ``build_engine``), every refusal made; ``target`` is part 1, planned before ``onnx`` existed (build.py);
    ``preprocess``: the model's recipe where its user states it (``data.recipe``; else the FP32 ONNX's)."""
    from ..precision.convert import ConvertedOnnx

    if isinstance(onnx, ConvertedOnnx):
        if precision is not None and precision != onnx.precision:
            raise UserError(f"build_engine.precision={precision!r} given for {onnx.path}, which convert_precision "
                            f"made {onnx.precision}")
        precision = onnx.precision
        fp32_onnx_path = onnx.source if fp32_onnx_path is None else fp32_onnx_path
    precision = precision or (target.precision if target is not None else "fp32")
    onnx_path = Path(onnx)
    fp32_onnx_path = Path(fp32_onnx_path) if fp32_onnx_path is not None else onnx_path
    model_name = model_name or (target.model_name if target is not None else fp32_onnx_path.stem)
    written = _written(onnx_path, fp32_onnx_path)
    given_io = inspect_onnx(onnx_path)
    check_onnx_files(onnx_path)  # a data file missing: refused now, not by the parser after the precision step
    if target is None:
        target = plan_target(options or EngineOptions(), precision, model_name=model_name, onnx=fp32_onnx_path,
                             onnx_io=given_io if same_file(onnx_path, fp32_onnx_path) else None, written=written)
    elif (target.precision, target.model_name) != (precision, model_name) or options not in (None, target.requested):
        raise ValueError("plan_engine: the target was planned for another build")
    if target.gpu_missing is not None:
        raise MissingDependency(f"wrote {written}; {target.gpu_missing}; to build the engine "
                                f"{trt_compat.INSTALL_HINT} (or EngineOptions.family='tensorrt-rtx', which builds "
                                "without a GPU)")
    opts = target.options
    build = plan_build(precision, target.version, onnx_path=onnx_path, fp32_onnx_path=fp32_onnx_path,
                       onnx_io=given_io, int8_mode=opts.int8_mode, high_precision=opts.high_precision)
    if same_file(build.onnx_path, onnx_path):
        io = given_io
    else:
        io = inspect_onnx(build.onnx_path)
        check_onnx_files(build.onnx_path)
    if precision != "fp32" and target.targets and "7.5" in target.targets:  # FP32: checked by plan_target
        gemm = fp32_gemm_nodes(build.onnx_path)
        if gemm:
            refuse_fp32_gemm_on_turing(f"{build.onnx_path} computes {gemm[0]!r} in FP32")
    if opts.batch_profile(onnx_batch=io.batch) != target.profile:
        raise ValueError(f"plan_engine: {build.onnx_path} has another batch than the target was planned for")
    calibration_batch = (opts.calibrator_batch if io.batch is None else io.batch) if build.calibrator else None
    recipe = onnx_recipe(fp32_onnx_path, preprocess)
    return EnginePlan(target, onnx_path, fp32_onnx_path, build, io, calibration_batch, recipe)
