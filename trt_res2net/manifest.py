"""The JSON manifest beside every engine, the compatibility check that reads it, and GPU/Jetson detection.

A TensorRT engine only runs under the TensorRT release and on the GPU (compute capability) it was built for;
TensorRT notices some mismatches itself, late and cryptically. The manifest ``<engine>.json`` records what the
engine was built with, and :func:`check_engine_compatible` refuses another TensorRT or GPU before anything is
deserialized, naming the field that differs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import re
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from . import __version__
from .atomic import read_json, write_json
from .errors import MissingDependency, UserError

MANIFEST_FORMAT = "trt_res2net.engine-manifest"
MANIFEST_VERSION = 1


# --------------------------------------------------------------------------------------------------------
# Paths and I/O


def manifest_path_for(engine_path: str | os.PathLike) -> Path:
    """``engines/x_int8_b32.engine`` → ``engines/x_int8_b32.engine.json``."""
    p = Path(engine_path)
    return p if p.name.endswith(".json") else p.with_name(p.name + ".json")


manifest_path = manifest_path_for  # the name trt_runtime looks for


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_manifest(engine_path: str | os.PathLike, manifest: dict) -> Path:
    """Write ``<engine>.json`` atomically; returns its path."""
    return write_json(manifest_path_for(engine_path), manifest)


def read_manifest(path: str | os.PathLike) -> dict:
    """Read a manifest, given the engine's path or the manifest's own; UserError when missing or damaged."""
    mpath = manifest_path_for(path)
    data = read_json(mpath, "engine manifest",
                     missing=f"engine manifest {mpath} not found (build.py writes it beside the engine)")
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{mpath} is not a trt_res2net engine manifest")
    if int(data.get("format_version", 0)) > MANIFEST_VERSION:
        raise UserError(f"{mpath} has manifest format {data.get('format_version')}; this trt_res2net reads "
                        f"≤ {MANIFEST_VERSION} — upgrade trt_res2net")
    return data


def find_manifest(engine_path: str | os.PathLike) -> dict | None:
    """The engine's manifest, or None when there is none (an engine built elsewhere, e.g. by trtexec)."""
    if not manifest_path_for(engine_path).exists():
        return None
    return read_manifest(engine_path)


def build_manifest(
    *,
    engine_path: str | os.PathLike,
    model: str,
    precision: str,
    int8_mode: str | None,
    tensorrt_version: str,
    gpu: GpuInfo | dict,
    onnx_path: str | os.PathLike,
    onnx_sha256: str,
    io: dict,
    profiles: list[dict],
    build_options: dict,
    build_time_s: float,
    calibration: dict | None = None,
    preprocess=None,
    fp32_onnx_sha256: str | None = None,
    outputs_probabilities: bool = False,
) -> dict:
    """The manifest as a dict (keys in a readable order). ``preprocess`` defaults to the one SPEC."""
    from .preprocess import SPEC

    spec = preprocess or SPEC
    engine_path = Path(engine_path)
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "engine": engine_path.name,
        "engine_sha256": sha256_file(engine_path) if engine_path.exists() else None,
        "engine_bytes": engine_path.stat().st_size if engine_path.exists() else None,
        "model": model,
        "precision": precision,
        "int8_mode": int8_mode,
        "tensorrt_version": tensorrt_version,
        "gpu": gpu.to_manifest() if isinstance(gpu, GpuInfo) else dict(gpu),
        "onnx": str(onnx_path),
        "onnx_sha256": onnx_sha256,
        "fp32_onnx_sha256": fp32_onnx_sha256,
        "io": io,
        "outputs_probabilities": bool(outputs_probabilities),
        "profiles": profiles,
        "calibration": calibration,
        "preprocess": spec.to_dict(),
        "preprocess_sha256": spec.sha256(),
        "build_options": build_options,
        "build_time_s": round(float(build_time_s), 3),
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "system": platform.system(),
                 "python": platform.python_version()},
        "trt_res2net_version": __version__,
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }


# --------------------------------------------------------------------------------------------------------
# Compatibility


def normalize_cc(cc) -> str:
    """(8, 7) / "8.7" / "sm_87" / 8.7 → "8.7"."""
    if isinstance(cc, (tuple, list)):
        return f"{int(cc[0])}.{int(cc[1])}"
    text = str(cc).strip()
    m = re.fullmatch(r"(?:sm_|compute_)?(\d)(\d)", text)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    m = re.fullmatch(r"(\d+)\.(\d+)", text)
    if m:
        return f"{int(m.group(1))}.{int(m.group(2))}"
    raise ValueError(f"not a compute capability: {cc!r}")


def _release(version: str) -> tuple[int, ...]:
    from .trt_compat import parse_version

    return tuple(parse_version(version)[:3])


def check_engine_compatible(manifest: dict, trt_version: str, gpu_name: str, cc, *,
                            engine: str | None = None) -> None:
    """Refuse an engine built under another TensorRT release or for another GPU, naming what differs.

    TensorRT versions are compared on major.minor.patch (plans are not portable across releases); the GPU on
    its compute capability first (kernels are compiled for it), then on its name (TensorRT tunes tactics per
    device, and warns at best).
    """
    what = engine or manifest.get("engine", "the engine")
    rebuild = "; rebuild it on this machine with build.py"
    built_trt = str(manifest.get("tensorrt_version", "?"))
    try:
        same_trt = _release(built_trt) == _release(trt_version)
    except ValueError:
        same_trt = False
    if not same_trt:
        raise UserError(f"{what} was built with TensorRT {built_trt}, but this machine has TensorRT "
                        f"{trt_version}{rebuild}")
    gpu = manifest.get("gpu") or {}
    built_cc = gpu.get("compute_capability")
    if built_cc is not None and normalize_cc(built_cc) != normalize_cc(cc):
        raise UserError(f"{what} was built for compute capability {normalize_cc(built_cc)} "
                        f"({gpu.get('name', '?')}), but this GPU ({gpu_name}) is {normalize_cc(cc)}{rebuild}")
    built_name = gpu.get("name")
    if built_name is not None and built_name.strip() != str(gpu_name).strip():
        raise UserError(f"{what} was built on GPU {built_name!r}, but this GPU is {gpu_name!r}{rebuild}")


def check_engine_file(manifest: dict, engine_path: str | os.PathLike) -> None:
    """Refuse an engine file that is not the one the manifest describes (replaced or truncated)."""
    expected = manifest.get("engine_sha256")
    if expected and sha256_file(engine_path) != expected:
        raise UserError(f"{engine_path} does not match its manifest {manifest_path_for(engine_path)} "
                        "(engine_sha256 differs); rebuild it with build.py")


# --------------------------------------------------------------------------------------------------------
# GPU and Jetson detection


@dataclass
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    total_memory: int  # bytes
    free_memory: int | None  # bytes, at detection time
    integrated: bool  # shares memory with the CPU (Jetson)
    device: int = 0
    jetson: dict | None = None  # {"module": ..., "l4t": ...} on a Jetson

    def to_manifest(self) -> dict:
        d = asdict(self)
        d["total_memory_mib"] = self.total_memory // (1 << 20)
        del d["total_memory"], d["free_memory"]
        return d


def jetson_info(root: str | os.PathLike = "/") -> dict | None:
    """On a Jetson: ``{"module": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.0"}``; else None.

    Reads /proc/device-tree/model (the module/carrier name) and /etc/nv_tegra_release (the L4T release of
    JetPack); ``root`` lets tests point at a fake file tree.
    """
    root = Path(root)
    model = l4t = None
    try:
        model = (root / "proc/device-tree/model").read_bytes().decode("utf-8", "replace").strip("\x00 \n")
    except OSError:
        pass
    try:
        first = (root / "etc/nv_tegra_release").read_text(errors="replace").splitlines()[0]
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
        if m:
            rev = m.group(2).split(".")
            l4t = ".".join([m.group(1), *rev] + ["0"] * max(0, 2 - len(rev)))
    except (OSError, IndexError):
        pass
    if l4t is None and not (model and "jetson" in model.lower()):
        return None
    return {"module": model, "l4t": l4t}


def detect_gpu(device: int = 0) -> GpuInfo:
    """The CUDA device TensorRT will build for (through ``trt_res2net.cuda_util``).

    MissingDependency (exit 3) when cuda-python, the driver or a GPU is missing; UserError for a device index
    this machine does not have.
    """
    from . import cuda_util as cu

    runtime = cu.cuda_modules().runtime  # CudaUnavailable (exit 3) without cuda-python
    try:
        count = int(cu.call(runtime.cudaGetDeviceCount))
    except cu.CudaUnavailable as e:  # no driver, no device, no libcuda: the message says which
        raise MissingDependency(f"no usable NVIDIA GPU: {e}") from None
    except cu.CudaError as e:  # any other failure to count devices also leaves no GPU to build for
        raise MissingDependency(f"no usable NVIDIA GPU: {e}; is the NVIDIA driver installed?") from None
    if count == 0:
        raise MissingDependency("no usable NVIDIA GPU: CUDA sees no device; is the NVIDIA driver installed?")
    if not 0 <= device < count:
        raise UserError(f"CUDA device {device} does not exist (this machine has {count})")
    cu.set_device(device)  # the free memory reported is the device's own
    info = cu.device_info(device)
    return GpuInfo(
        name=info.name,
        compute_capability=info.cc,
        total_memory=info.total_memory,
        free_memory=info.free_memory,
        integrated=info.integrated,
        device=device,
        jetson=jetson_info() if info.integrated or platform.machine() == "aarch64" else None,
    )
