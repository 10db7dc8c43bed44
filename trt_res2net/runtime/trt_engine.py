"""Loading a TensorRT or TensorRT-RTX engine for a backend: which library runs it, whether its manifest and the
library accept it on this GPU, what its I/O is (the ONNX contract again, read from the engine), and its execution
context — through an ``IRuntimeConfig`` with a runtime cache for TensorRT-RTX.

The engine's family (its manifest, else its first bytes) chooses the library, through
``trt_compat.import_library``; the manifest is checked before anything is deserialized, and an engine without one
is refused unless the caller says so (``check_manifest=False``, infer.py's ``--no-manifest-check``): build.py writes
the two as one unit, and a pair a killed build left half-replaced is completed first (``core.commit``). A
TensorRT-RTX engine is first asked ``Runtime.get_engine_validity`` (a refusal names the library's diagnostics and
what each asks for); it runs through an ``IRuntimeConfig`` whose runtime cache (a file beside the engine, keyed by
library version and GPU) keeps the kernels it compiles just in time on this GPU, whose CUDA-graph strategy replaces
our own capture, and whose kernel specialisation for dynamic shapes can be made eager (the benchmark: every timed
run then uses the kernels specialised for its shape, the compilation paid in the first run).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core import log
from ..core.errors import MissingDependency, UserError
from ..core.files import write_bytes
from ..engine import manifest as manifest_mod
from ..engine import trt_compat
from ..engine.manifest import EngineManifest
from ..model.contract import TensorSpec, check_classifier_io

if TYPE_CHECKING:  # the API the code below is written against (trt-api-check reads this import); at run time
    import tensorrt as trt  # noqa: F401  the module is trt_compat.import_library(...).module, of either family

# TensorRT I/O data types that the runtime can feed from numpy, by enum member name.
_NUMPY_DTYPES = {"FLOAT": np.float32, "HALF": np.float16}


# --------------------------------------------------------------------------------------------------
# The engine's manifest and library


def engine_family(engine_path: Path, manifest: EngineManifest | None) -> str:
    """The family named by the manifest, else the one the file's first bytes show."""
    if manifest is not None:
        return manifest.engine_family
    return trt_compat.engine_family_of(engine_path)


def import_engine_library(engine_path: Path, family_key: str) -> trt_compat.Library:
    """The library that runs this engine's family, or MissingDependency (exit 3) naming the family."""
    label = trt_compat.family(family_key).label
    try:
        return trt_compat.import_library(family_key)
    except MissingDependency as e:
        raise MissingDependency(f"cannot run {engine_path}, a {label} engine: {e}; .onnx files run anywhere "
                                "with ONNX Runtime") from e


def check_engine_manifest(manifest: EngineManifest, version: trt_compat.TrtVersion, gpu_name: str,
                          compute_capability: str, engine_path: Path | None = None) -> None:
    """Refuse (UserError naming the difference) an engine of another family, built for another release or GPU,
    or a file that is not the engine its manifest describes (the preprocessing it records is the one it is fed:
    ``data.recipe``)."""
    manifest_mod.check_engine_compatible(manifest, version, gpu_name, compute_capability,
                                         engine=str(engine_path) if engine_path else None)
    if engine_path is not None:
        manifest_mod.check_engine_file(manifest, engine_path)


def _outputs_probabilities(manifest: EngineManifest | None, output_name: str) -> bool:
    """Whether the engine's output is already softmax probabilities: the manifest says so, else the name."""
    if manifest is not None and manifest.outputs_probabilities is not None:
        return manifest.outputs_probabilities
    lowered = output_name.lower()
    return "prob" in lowered or "softmax" in lowered


# --------------------------------------------------------------------------------------------------
# TensorRT-RTX: engine validity and the runtime cache


# What each EngineInvalidityDiagnostics flag asks for (NVIDIA's "Engine Compatibility" page, TensorRT-RTX 1.7).
RTX_DIAGNOSTIC_REMEDIES = {
    "VERSION_MISMATCH": "rebuild it with this TensorRT-RTX (engines run only on the release that built them)",
    "UNSUPPORTED_CC": "rebuild it for this GPU's compute capability (build.py --compute-capability)",
    "OLD_CUDA_DRIVER": "update the NVIDIA driver",
    "OLD_CUDA_RUNTIME": "update the CUDA runtime (or build with a TensorRT-RTX for this CUDA)",
    "INSUFFICIENT_GPU_MEMORY": "free GPU memory or use a GPU with more",
    "MALFORMED_ENGINE": "the file is damaged or not a TensorRT-RTX engine: rebuild it",
    "CUDA_ERROR": "check the GPU and driver (nvidia-smi)",
}


def rtx_validity_diagnostics(trt, diagnostics) -> list[str]:
    """The names of the EngineInvalidityDiagnostics flags set in ``diagnostics``."""
    bits = int(diagnostics)
    return [name for name, member in trt.EngineInvalidityDiagnostics.__members__.items() if bits & int(member)]


def _rtx_package() -> str:
    """The installed TensorRT-RTX distribution ("tensorrt-rtx-cu13"), which names the CUDA it was built for."""
    from importlib import metadata

    for name in ("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        return name
    return "tensorrt-rtx"


def check_rtx_validity(trt, runtime, data: bytes, engine_path: Path, library_log: log.Collapsed | None = None) -> None:
    """``Runtime.get_engine_validity`` on the plan's header before deserializing: INVALID → one line naming the
    library's diagnostics and what each asks for; SUBOPTIMAL → a warning naming them.

    INVALID with no diagnostic is what the library answers when it cannot read the GPU at all (its log names the
    CUDA error, e.g. a driver too old for its CUDA): that is said as such (MissingDependency, exit status 3), with
    the CUDA error from ``library_log``, not as a bad engine."""
    size = int(runtime.engine_header_size)
    if library_log is not None:
        library_log.muted = True  # what it logs here is said in the one line below
    try:
        validity, diagnostics = runtime.get_engine_validity(memoryview(data)[:size])
    finally:
        if library_log is not None:
            library_log.muted = False
    if validity == trt.EngineValidity.VALID:
        return
    names = rtx_validity_diagnostics(trt, diagnostics)
    why = ", ".join(names) or "no diagnostic given"
    if validity == trt.EngineValidity.SUBOPTIMAL:
        log.warn(f"TensorRT-RTX says {engine_path} runs suboptimally on this GPU ({why})")
        return
    if not names:
        logged = " ".join(library_log.messages()) if library_log is not None else ""
        cuda = re.search(r"cudaError \d+: [^)]*", logged)
        package = _rtx_package()
        needs = {"tensorrt-rtx-cu13": "CUDA 13 (r580 or newer)", "tensorrt-rtx-cu12": "CUDA 12"}.get(package)
        raise MissingDependency(
            f"TensorRT-RTX could not read this GPU ({cuda.group(0) if cuda else 'no diagnostic given'}), so it "
            f"could not judge {engine_path}: check the GPU and driver (nvidia-smi)"
            + (f"; {package} needs a driver for {needs}" if needs else ""))
    fixes = "; ".join(f"{name}: {RTX_DIAGNOSTIC_REMEDIES[name]}" for name in names if name in RTX_DIAGNOSTIC_REMEDIES)
    raise UserError(f"TensorRT-RTX says {engine_path} cannot run here ({why})"
                    + (f" — {fixes}" if fixes else "; rebuild it here with build.py, for TensorRT-RTX"))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


class RuntimeCacheFile:
    """The TensorRT-RTX runtime cache beside an engine: the kernels compiled just in time on one GPU, so that
    the compilation is paid once. One file per (library version, GPU), named after both — caches from other
    GPUs or releases sit beside it untouched — written atomically."""

    def __init__(self, engine_path: Path, library_version: str, gpu_name: str, compute_capability: str):
        cc = compute_capability.replace(".", "")
        self.path = Path(engine_path).with_name(
            f"{Path(engine_path).name}.{_slug(gpu_name)}-sm{cc}.rtx-{library_version}.runtime-cache")
        self.loaded = b""

    def load(self) -> bytes:
        try:
            self.loaded = self.path.read_bytes()
        except FileNotFoundError:
            self.loaded = b""
        except OSError as e:
            log.warn(f"runtime cache {self.path} is unreadable ({e.strerror or e}); kernels are compiled again")
            self.loaded = b""
        return self.loaded

    def save(self, data: bytes) -> bool:
        """Write ``data`` when it differs from what was loaded; False (with a warning) when the folder is not
        writable — the engine still runs, compiling again next time."""
        if not data or data == self.loaded:
            return False
        try:
            write_bytes(self.path, data)
        except OSError as e:
            log.warn(f"could not write the runtime cache {self.path} ({e.strerror or e})")
            return False
        self.loaded = data
        return True


# --------------------------------------------------------------------------------------------------
# The engine's I/O


@dataclass(frozen=True)
class EngineIO:
    """The engine's image input and class output, checked against the ONNX contract."""

    input_name: str
    output_name: str
    input_hw: tuple[int, int]
    min_batch: int
    opt_batch: int
    max_batch: int
    input_dtype: np.dtype
    output_dtype: np.dtype


def _dtype_key(trt_dtype) -> str:
    return getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])


def read_engine_io(trt, engine, where: str) -> EngineIO:
    """The engine's tensors as the contract sees them (``model.contract.check_classifier_io``), its batch range
    (from the fixed batch or the first optimization profile) and the numpy types the runtime feeds."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]

    def spec(name: str) -> TensorSpec:
        key = _dtype_key(engine.get_tensor_dtype(name))
        dtype = np.dtype(_NUMPY_DTYPES[key]).name if key in _NUMPY_DTYPES else key.lower()
        shape = tuple(int(d) if int(d) > 0 else None for d in engine.get_tensor_shape(name))
        return TensorSpec(name, shape, dtype)

    io = check_classifier_io([spec(n) for n in inputs], [spec(n) for n in outputs], where)
    shape = tuple(int(d) for d in engine.get_tensor_shape(io.input.name))
    if shape[0] > 0:
        low = opt = high = shape[0]
    else:
        lows, opts, highs = engine.get_tensor_profile_shape(io.input.name, 0)
        low, opt, high = int(lows[0]), int(opts[0]), int(highs[0])
        shape = tuple(int(d) for d in opts)  # a dynamic H or W runs at the profile's size
    h, w = shape[2], shape[3]
    return EngineIO(io.input.name, io.output.name, (h, w), low, opt, high, np.dtype(io.input.dtype),
                    np.dtype(io.output.dtype))


# --------------------------------------------------------------------------------------------------
# Loading


KERNEL_SPECIALIZATIONS = ("lazy", "eager", "none")  # TensorRT-RTX DynamicShapesKernelSpecializationStrategy


def require_manifest(engine_path: Path, manifest: EngineManifest | None) -> None:
    """Refuse an engine without its manifest (one line): nothing then says which library, release and GPUs it was
    built for, nor that it is the file the build wrote."""
    if manifest is None:
        raise UserError(f"no manifest next to {engine_path} ({manifest_mod.manifest_path_for(engine_path).name}): "
                        "build.py writes the engine and its manifest together, so it was made elsewhere or its "
                        "manifest was removed; rebuild it, or run it unchecked with "
                        "TensorRTBackend.check_manifest=False")


class LoadedEngine:
    """A deserialized engine whose manifest, library and (for TensorRT-RTX) validity on this GPU were checked.

    ``check_manifest=False`` runs an engine without a manifest, or whose manifest differs, unchecked (the library
    still refuses a plan it cannot load); otherwise an engine without its manifest is refused."""

    def __init__(self, engine_path, device: int = 0, *, check_manifest: bool = True):
        from ..cuda.device import init_device
        from ..engine.trt_callbacks import make_logger

        self.path = Path(engine_path)
        if not self.path.is_file():
            raise UserError(f"engine not found: {self.path}")
        from ..core.commit import ensure_complete

        repaired = ensure_complete(self.path)  # a pair that a killed build left half-replaced
        if repaired:
            log.note(f"{self.path}: the engine and manifest an interrupted build left were {repaired}")
        self.manifest = manifest_mod.find_manifest(self.path)
        self.manifest_path = manifest_mod.manifest_path_for(self.path) if self.manifest else None
        self.library = import_engine_library(self.path, engine_family(self.path, self.manifest))
        if check_manifest:
            require_manifest(self.path, self.manifest)
        self.rtx = trt_compat.has_runtime_cache(self.library.version)
        self.device_info = device_info = init_device(device)
        if self.manifest is not None and check_manifest:
            check_engine_manifest(self.manifest, self.library.version, device_info.name, device_info.cc, self.path)
        elif not check_manifest:
            log.warn(f"{self.path}: manifest not checked (TensorRTBackend.check_manifest=False): nothing confirms "
                     f"it was built for {self.library.label} on {device_info.name}")
        trt = self.library.module
        self.log = log.Collapsed(self.library.family.label)
        self._logger = make_logger(trt, "warning", self.log)
        self.runtime = trt.Runtime(self._logger)  # must outlive the engine
        data = self.path.read_bytes()
        try:
            if self.rtx:
                check_rtx_validity(trt, self.runtime, data, self.path, self.log)
            self.engine = self.runtime.deserialize_cuda_engine(data)
        finally:
            self.log.flush()
        del data
        if self.engine is None:
            raise UserError(f"{self.library.label} could not load {self.path} (see its message above): "
                            "engines only run on the library version and GPUs they were built for")
        self.io = read_engine_io(trt, self.engine, str(self.path))
        self.runtime_cache: RuntimeCacheFile | None = None
        self._runtime_config = self._runtime_cache_object = None

    def outputs_probabilities(self) -> bool:
        return _outputs_probabilities(self.manifest, self.io.output_name)

    def create_context(self, *, cuda_graph: bool, use_runtime_cache: bool, kernel_specialization: str | None = None):
        """An execution context; for TensorRT-RTX through an IRuntimeConfig with the runtime cache beside the
        engine, the library's whole-graph CUDA-graph strategy when graphs are asked for, and
        ``kernel_specialization`` (``lazy``, ``eager`` or ``none``; None: the library's default, lazy) as its
        dynamic-shape kernel specialisation strategy."""
        if kernel_specialization is not None and kernel_specialization not in KERNEL_SPECIALIZATIONS:
            raise UserError(f"kernel specialisation must be one of {', '.join(KERNEL_SPECIALIZATIONS)}, not "
                            f"{kernel_specialization!r}")
        if not self.rtx:
            context = self.engine.create_execution_context()
        else:
            trt = self.library.module
            config = self.engine.create_runtime_config()
            if use_runtime_cache:
                self.runtime_cache = RuntimeCacheFile(self.path, self.library.version.full, self.device_info.name,
                                                      self.device_info.cc)
                cache = config.create_runtime_cache()
                blob = self.runtime_cache.load()
                if blob and not cache.deserialize(blob):
                    log.warn(f"runtime cache {self.runtime_cache.path} does not fit this GPU, driver or TensorRT-RTX; "
                             "kernels are compiled again and the cache replaced")
                    self.runtime_cache.loaded = b""
                config.set_runtime_cache(cache)
                self._runtime_cache_object = cache  # the config holds a pointer only: keep the object alive
            if cuda_graph:
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            if kernel_specialization is not None:
                strategies = trt.DynamicShapesKernelSpecializationStrategy
                config.dynamic_shapes_kernel_specialization_strategy = getattr(strategies,
                                                                               kernel_specialization.upper())
            self._runtime_config = config  # keeps the cache alive with the context
            context = self.engine.create_execution_context(config)
        if context is None:
            raise UserError(f"{self.library.label} could not create an execution context for "
                            f"{self.path} (out of GPU memory?)")
        return context

    def context_memory_size(self) -> int:
        """Bytes of device memory one execution context needs for its activations (its profile's largest shapes)."""
        if trt_compat.has_user_managed_context_memory(self.library.version):
            return int(self.engine.device_memory_size_v2)
        return int(self.engine.device_memory_size)

    def create_context_on(self, address: int, size: int):
        """A standard TensorRT execution context whose activations live at ``address`` (``size`` bytes): memory the
        caller shares between contexts that never run at the same time (one CUDA stream)."""
        trt = self.library.module
        if trt_compat.has_user_managed_context_memory(self.library.version):
            context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            if context is not None:
                context.set_device_memory(address, size)
        else:
            context = self.engine.create_execution_context_without_device_memory()
            if context is not None:
                context.device_memory = address
        if context is None:
            raise UserError(f"{self.library.label} could not create an execution context for {self.path}")
        return context

    def save_runtime_cache(self) -> bool:
        """Write the TensorRT-RTX runtime cache beside the engine (atomically) if it grew; True if written."""
        if self.runtime_cache is None or self._runtime_config is None:
            return False
        cache = self._runtime_config.get_runtime_cache()
        if cache is None:
            return False
        return self.runtime_cache.save(bytes(memoryview(cache.serialize())))
