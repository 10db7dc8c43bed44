"""The TensorRT calls of an engine build, one step per function: parse → configure → build → describe.

One code path serves TensorRT 8.6, 10.x, 11.x and TensorRT-RTX 1.x; every family- and release-dependent name is
asked of ``trt_compat`` first. The library module comes from ``trt_compat.import_library`` (``import
trt_res2net.engine.builder`` stays light).

TensorRT's Python API is used directly rather than polygraphy's loaders: the version gates, the calibration-cache
checks and the progress reporting must be exercised by CPU tests against fake TensorRT modules (and the real
TensorRT-RTX builder), and polygraphy's ``Calibrator``/``CreateNetwork`` need a real TensorRT even to be
constructed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import log
from ..core.errors import UserError
from ..data.preprocess_spec import SPEC, PreprocessSpec
from ..model.contract import OnnxIO
from . import progress as build_progress
from . import trt_compat
from .commands import equivalent_commands
from .manifest import BuildOptions, CalibrationRecord, EngineTensors, ProfileRecord, TensorRecord
from .options import BatchProfile, EngineOptions, MiB
from .precision_path import BuildPlan
from .progress import BuildProgress
from .timing_cache import TimingCacheFile
from .trt_callbacks import make_entropy_calibrator, make_logger, make_progress_monitor

if TYPE_CHECKING:  # the API the code below is written against (trt-api-check reads this import); at run time
    import tensorrt as trt  # noqa: F401  the module is trt_compat.import_library(...).module, of either family


@dataclass
class BuildResult:
    """What a build made: the serialized plan (not yet on disk) and what the manifest says of it."""

    serialized: memoryview
    build_time_s: float
    io: EngineTensors
    profiles: tuple[ProfileRecord, ...]
    build_options: BuildOptions
    compute_capabilities: list[str]  # what the engine runs on: the build GPU's, or TensorRT-RTX's targets
    and_later: bool = False  # TensorRT-RTX default targets: also GPUs newer than the newest listed
    compute_capabilities_source: str | None = None  # where compute_capabilities were read
    calibration: CalibrationRecord | None = None  # TensorRT's INT8 calibrator, when the plan has one
    log: log.Collapsed | None = None  # TensorRT's messages during the build
    network: dict = field(default_factory=dict)  # network_summary(): what the parsed network declares


# --------------------------------------------------------------------------------------------------------
# Names behind gates


def _builder_flag(trt, name: str, version):
    """BuilderFlag members by name, each behind the gate of the releases that have it."""
    if name in ("FP16", "INT8"):
        if not trt_compat.has_precision_flags(version):
            raise UserError(f"{version.label} has no BuilderFlag.{name} (strongly typed: precisions come "
                            "from the ONNX)")
        return trt.BuilderFlag.FP16 if name == "FP16" else trt.BuilderFlag.INT8
    if name == "GPU_FALLBACK":
        return trt.BuilderFlag.GPU_FALLBACK
    raise ValueError(f"unknown builder flag {name}")


def network_creation_flags(trt, plan: BuildPlan, version) -> int:
    """EXPLICIT_BATCH on 8.x (the ONNX parser needs it; 11.x no longer has the name); STRONGLY_TYPED on
    9.x/10.x for a pre-typed (AutoCast/Q/DQ) ONNX (11.x is always strongly typed)."""
    flags = 0
    if plan.explicit_batch and trt_compat.needs_explicit_batch_flag(version):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if (plan.strongly_typed and trt_compat.has_strongly_typed_flag(version)
            and not trt_compat.always_strongly_typed(version)):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags


def _dims(shape) -> list[int]:
    return [int(d) for d in shape]


def _dtype_name(dtype) -> str:
    return str(getattr(dtype, "name", dtype)).split(".")[-1].lower()


# --------------------------------------------------------------------------------------------------------
# Step 1: parse


@dataclass
class ParsedNetwork:
    """The network TensorRT parsed from the ONNX, with the objects that must outlive it; ``log`` gathers
    TensorRT's messages (core.log.Collapsed)."""

    logger: object
    builder: object
    network: object
    parser: object
    input: object  # ITensor
    output: object  # ITensor
    log: log.Collapsed | None = None

    @property
    def input_shape(self) -> list[int]:
        return _dims(self.input.shape)

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.input_shape)


def parse_network(library: trt_compat.Library, plan: BuildPlan, log_level: str,
                  collapsed: log.Collapsed | None = None) -> ParsedNetwork:
    """Parse ``plan.onnx_path`` (the ONNX contract was checked before: one input, one output) from its path, so that
    the parser finds external data files beside it (``parse`` of the bytes would not). TensorRT's log goes to
    ``collapsed`` (a new one when None; the caller flushes it when the build ends)."""
    trt = library.module
    collapsed = collapsed if collapsed is not None else log.Collapsed(library.family.label)
    logger = make_logger(trt, log_level, collapsed)
    trt.init_libnvinfer_plugins(logger, "")
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(trt, plan, library.version))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors)) or "no detail"
        raise UserError(f"{library.family.label}'s ONNX parser rejected {plan.onnx_path}: {errors}")
    return ParsedNetwork(logger, builder, network, parser, network.get_input(0), network.get_output(0), collapsed)


# --------------------------------------------------------------------------------------------------------
# Step 2: configure


@dataclass
class BuildSetup:
    """The builder config and everything it points to that Python must keep alive until the build ends."""

    config: object
    workspace_bytes: int  # what the build really had (the library's default when none was asked for)
    profiles: tuple[ProfileRecord, ...]
    progress: BuildProgress
    use_monitor: bool
    timing: TimingCacheFile | None = None
    feed: object = None  # calibrator.CalibrationFeed
    calib_shape: tuple[int, ...] | None = None
    keep_alive: list = field(default_factory=list)  # the progress monitor and the calibrator


def _set_targets(trt, config, targets: list[str]) -> None:
    """TensorRT-RTX: build for these compute capabilities (``["current"]``: this machine's GPU)."""
    members = ["CURRENT"] if targets == ["current"] else [trt_compat.RTX_TARGETS[cc] for cc in targets]
    config.num_compute_capabilities = len(members)
    for index, member in enumerate(members):
        if config.set_compute_capability(getattr(trt.ComputeCapability, member), index) is False:
            raise UserError(f"TensorRT-RTX refused the build target {member}")


def _configure_dla(trt, builder, config, dla_core: int, version) -> None:
    available = int(builder.num_DLA_cores)
    if dla_core >= available:
        hint = "" if available else " (DLA exists on Jetson AGX/NX Orin and Xavier only)"
        raise UserError(f"EngineOptions.dla_core={dla_core}: this device has {available} DLA core(s){hint}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(dla_core)
    config.set_flag(_builder_flag(trt, "GPU_FALLBACK", version))


def _configure_calibrator(trt, parsed: ParsedNetwork, config, setup: BuildSetup, calibration, chw, version,
                          progress: bool, device_buffer) -> None:
    if calibration is None:
        raise ValueError("a calibrator plan needs a CalibrationSetup")
    if not trt_compat.has_int8_calibrator(version):
        raise UserError(f"{version.label} has no INT8 calibrator: use EngineOptions.int8_mode='qdq'")
    from .calibrator import CalibrationFeed

    setup.calib_shape = (calibration.batch, *chw)
    kwargs = {"device_buffer": device_buffer} if device_buffer is not None else {}
    setup.feed = CalibrationFeed(calibration, setup.calib_shape, progress=progress, **kwargs)
    if parsed.dynamic:
        # The calibration profile is its own min = opt = max profile, not one of the engine's.
        calib_profile = parsed.builder.create_optimization_profile()
        calib_profile.set_shape(parsed.input.name, setup.calib_shape, setup.calib_shape, setup.calib_shape)
        if config.set_calibration_profile(calib_profile) is False:
            raise UserError(f"TensorRT refused the calibration profile {list(setup.calib_shape)}")
    calibrator = make_entropy_calibrator(trt, setup.feed)
    config.int8_calibrator = calibrator
    setup.keep_alive.append(calibrator)


def configure(library: trt_compat.Library, parsed: ParsedNetwork, plan: BuildPlan, profile: BatchProfile,
              options: EngineOptions, *, chw: tuple[int, int, int], gpu=None, targets: list[str] | None = None,
              calibration=None, device_buffer=None, progress: BuildProgress | None = None) -> BuildSetup:
    """The builder config: workspace, targets, precision flags, the optimization profile, builder level, DLA,
    timing cache, INT8 calibrator and progress monitor (``progress``: the build's BuildProgress, else a new one)."""
    trt, version = library.module, library.version
    config = parsed.builder.create_builder_config()
    if options.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_bytes))
    workspace = int(config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE))
    if trt_compat.is_rtx(version) and targets:
        _set_targets(trt, config, targets)
    for name in plan.flags:
        config.set_flag(_builder_flag(trt, name, version))
    min_s, opt_s, max_s = profile.shapes(chw)
    profiles = (ProfileRecord(parsed.input.name, min_s, opt_s, max_s),)
    if parsed.dynamic:
        opt_profile = parsed.builder.create_optimization_profile()
        opt_profile.set_shape(parsed.input.name, min_s, opt_s, max_s)
        config.add_optimization_profile(opt_profile)
    if options.builder_opt_level is not None:
        if not trt_compat.has_builder_optimization_level(version):
            raise UserError(f"{version.label} has no builder optimization level (added in 8.6)")
        config.builder_optimization_level = int(options.builder_opt_level)
    if options.dla_core is not None:
        _configure_dla(trt, parsed.builder, config, options.dla_core, version)

    setup = BuildSetup(config, workspace, profiles,
                       progress if progress is not None else build_progress.BuildProgress(enabled=options.progress),
                       use_monitor=trt_compat.has_progress_monitor(version))
    if options.timing_cache is not None:
        setup.timing = TimingCacheFile(options.timing_cache, str(version), gpu.name, gpu.cc)
        cache = config.create_timing_cache(setup.timing.load())
        if config.set_timing_cache(cache, False) is False:
            raise UserError(f"TensorRT refused timing cache {options.timing_cache} (made on another "
                            "device?): pass another EngineOptions.timing_cache path or delete it")
    if plan.calibrator:
        _configure_calibrator(trt, parsed, config, setup, calibration, chw, version, options.progress, device_buffer)
    if setup.use_monitor:
        # pybind11 does not keep a Python subclass alive through the config: hold it until the build ends.
        monitor = make_progress_monitor(trt, setup.progress)
        config.progress_monitor = monitor
        setup.keep_alive.append(monitor)
    return setup


# --------------------------------------------------------------------------------------------------------
# Step 3: build


def build_serialized(parsed: ParsedNetwork, setup: BuildSetup, library: trt_compat.Library, plan: BuildPlan,
                     spinner_label: str) -> tuple[memoryview, float]:
    """Run the build: (serialized plan, seconds).

    Ctrl-C during it (in the main thread) is only recorded while TensorRT runs: the progress monitor then asks
    TensorRT to cancel, the calibrator stops feeding and writes no cache, and KeyboardInterrupt is raised once
    TensorRT has returned, before anything else is looked at (a plan made anyway is discarded). Otherwise a
    calibration error is re-raised; no plan at all is a UserError pointing at the library's log."""
    spinner = (contextlib.nullcontext() if setup.use_monitor
               else build_progress.Spinner(spinner_label, enabled=setup.progress.enabled))

    def interrupted() -> None:  # the SIGINT handler: record, never raise (it may run inside a TensorRT callback)
        setup.progress.interrupt()
        if parsed.log is not None:
            parsed.log.muted = True  # TensorRT's messages about stopping are not news: Ctrl-C says one line
        if setup.feed is not None and setup.feed.error is None:
            setup.feed.error = KeyboardInterrupt()  # next_batch ends calibration, write_cache keeps nothing

    serialized = None
    started = time.perf_counter()
    try:
        with build_progress.sigint_recorded(interrupted), spinner:
            serialized = parsed.builder.build_serialized_network(parsed.network, setup.config)
    except Exception:
        if not setup.progress.cancelled:
            raise
    finally:
        setup.progress.close()
        if setup.feed is not None:
            setup.feed.close()
    seconds = time.perf_counter() - started
    setup.keep_alive.clear()  # TensorRT is done with the monitor and the calibrator
    if setup.progress.cancelled:  # Ctrl-C during the build: whatever TensorRT returned, nothing is written
        del serialized
        raise KeyboardInterrupt
    if setup.feed is not None and setup.feed.error is not None:
        err = setup.feed.error
        raise err if isinstance(err, (UserError, KeyboardInterrupt)) else UserError(
            f"INT8 calibration failed: {type(err).__name__}: {err}") from err
    if serialized is None:
        raise UserError(f"building the engine from {plan.onnx_path} failed ({library.family.label}'s log above "
                        "says why)")
    return memoryview(serialized), seconds


# --------------------------------------------------------------------------------------------------------
# Step 4: describe


def describe_build(library: trt_compat.Library, parsed: ParsedNetwork, setup: BuildSetup, plan: BuildPlan,
                   profile: BatchProfile, options: EngineOptions, serialized: memoryview, seconds: float, *,
                   engine_path: Path, chw, gpu, targets: list[str] | None, calibration) -> BuildResult:
    """What the manifest records of this build; the timing cache is saved now that the build succeeded."""
    trt, version = library.module, library.version
    ccs_source = None
    if trt_compat.is_rtx(version):
        head, size = bytes(serialized[:64]), memoryview(serialized).nbytes
        header = trt_compat.read_rtx_plan_header(head, size)
        if header is not None:
            ccs, and_later = list(header.compute_capabilities), header.and_later
            ccs_source = f"plan header (layout {header.layout})"
        else:
            why = trt_compat.rtx_plan_header_problem(head, size)
            if targets:
                ccs, and_later = list(targets), False
                ccs_source = f"requested (the plan header was not read: {why})"
            else:
                ccs, and_later = list(trt_compat.RTX_DOCUMENTED_DEFAULT_TARGETS), True
                ccs_source = f"the library's documented default (the plan header was not read: {why})"
            log.warn(f"{engine_path}: targets not read back from the plan ({why}); recording the {ccs_source}")
    else:
        ccs, and_later = [gpu.cc], False
        ccs_source = "the build GPU"
    if setup.timing is not None:
        setup.timing.save(bytes(memoryview(setup.config.get_timing_cache().serialize())))
    io = EngineTensors(
        TensorRecord(parsed.input.name, tuple(parsed.input_shape), _dtype_name(parsed.input.dtype)),
        TensorRecord(parsed.output.name, tuple(_dims(parsed.output.shape)), _dtype_name(parsed.output.dtype)))
    build_options = BuildOptions(
        flags=plan.flags, strongly_typed=plan.strongly_typed,
        network_flags=network_creation_flags(trt, plan, version), workspace_mib=setup.workspace_bytes // MiB,
        workspace_default=options.workspace_bytes is None,
        compute_capabilities_requested=None if targets is None else tuple(targets),
        builder_opt_level=options.builder_opt_level,
        timing_cache=str(options.timing_cache) if options.timing_cache else None, dla_core=options.dla_core,
        calibration_profile=setup.calib_shape, progress="monitor" if setup.use_monitor else "spinner",
        equivalent_commands=equivalent_commands(
            plan, profile, parsed.input.name, chw, engine_path, workspace_bytes=options.workspace_bytes,
            dynamic=parsed.dynamic, calib_cache=calibration.cache_path if calibration is not None else None,
            timing_cache=options.timing_cache, builder_opt_level=options.builder_opt_level,
            dla_core=options.dla_core, version=version, compute_capabilities=targets))
    return BuildResult(serialized=serialized, build_time_s=seconds, io=io, profiles=setup.profiles,
                       build_options=build_options, compute_capabilities=ccs, and_later=and_later,
                       compute_capabilities_source=ccs_source,
                       calibration=calibration.manifest() if calibration is not None else None, log=parsed.log,
                       network=network_summary(trt, parsed))


def network_summary(trt, parsed: ParsedNetwork) -> dict:
    """What the parsed network declares about precision: its layer types and, for explicit quantization, the
    convolutions and matrix multiplies whose data input and weights both come through DequantizeLayers (what a
    Q/DQ graph asks to run in INT8). The library decides what it really runs; this is the request."""
    network = parsed.network
    layers = [network.get_layer(i) for i in range(int(getattr(network, "num_layers", 0) or 0))]
    dq_outputs = set()
    counts: dict[str, int] = {}
    for layer in layers:
        kind = str(getattr(layer.type, "name", layer.type)).split(".")[-1]
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "DEQUANTIZE":
            for j in range(layer.num_outputs):
                dq_outputs.add(layer.get_output(j).name)
    weighted = [layer for layer in layers
                if str(getattr(layer.type, "name", layer.type)).split(".")[-1] in ("CONVOLUTION", "MATRIX_MULTIPLY")]

    def through_dq(layer, index) -> bool:
        tensor = layer.get_input(index) if index < layer.num_inputs else None
        return tensor is not None and tensor.name in dq_outputs

    both = [layer.name for layer in weighted if through_dq(layer, 0) and through_dq(layer, 1)]
    return {"layers": len(layers), "quantize_layers": counts.get("QUANTIZE", 0),
            "dequantize_layers": counts.get("DEQUANTIZE", 0), "weighted_layers": len(weighted),
            "weighted_layers_qdq": len(both)}


def build(library: trt_compat.Library, plan: BuildPlan, io: OnnxIO, profile: BatchProfile, options: EngineOptions,
          *, engine_path: Path, gpu=None, targets: list[str] | None = None, calibration=None,
          device_buffer=None, spec: PreprocessSpec = SPEC) -> BuildResult:
    """Parse, configure, build and describe; nothing is written but TensorRT's calibration and timing caches.
    ``gpu`` is None for an ahead-of-time TensorRT-RTX build on a machine without one; ``targets`` are its compute
    capabilities (None = the library's default). ``device_buffer`` replaces the CUDA allocation of calibration
    batches (tests). ``spec``: the preprocessing the engine is fed (its crop sizes a dynamic H×W)."""
    chw = io.chw(spec)
    collapsed = log.Collapsed(library.family.label)
    progress = build_progress.BuildProgress(enabled=options.progress)

    def interrupted() -> None:  # Ctrl-C while parsing or configuring: recorded, raised between TensorRT calls
        progress.interrupt()
        collapsed.muted = True

    try:
        with build_progress.sigint_recorded(interrupted):
            parsed = parse_network(library, plan, options.log_level, collapsed)
            if progress.cancelled:
                raise KeyboardInterrupt
            setup = configure(library, parsed, plan, profile, options, chw=chw, gpu=gpu, targets=targets,
                              calibration=calibration, device_buffer=device_buffer, progress=progress)
            if progress.cancelled:
                raise KeyboardInterrupt
        mode = f", {plan.int8_mode}" if plan.int8_mode else ""
        if trt_compat.is_rtx(library.version):
            where = ("for " + ", ".join(targets) if targets else "for the library's default targets") + (
                f", on {gpu.name}" if gpu is not None else ", ahead of time (no GPU needed)")
        else:
            where = gpu.name
        log.note(f"build: {plan.onnx_path} → {engine_path} ({library.label}, {where}, {plan.precision}{mode}, "
                 f"batch {profile.min}/{profile.opt}/{profile.max})")
        serialized, seconds = build_serialized(parsed, setup, library, plan, f"building {engine_path.name}")
        return describe_build(library, parsed, setup, plan, profile, options, serialized, seconds,
                              engine_path=engine_path, chw=chw, gpu=gpu, targets=targets, calibration=calibration)
    except KeyboardInterrupt:
        collapsed.muted = True
        raise
    finally:
        collapsed.flush()
