"""The JSON manifest beside every engine, and the compatibility check that reads it.

A TensorRT engine only runs under the TensorRT release and on the GPU (compute capability) it was built for; a
TensorRT-RTX engine runs on the list of compute capabilities it was built for, under the same TensorRT-RTX release
(NVIDIA: "TensorRT-RTX engines are not compatible between different releases of TensorRT-RTX"). The libraries
notice some mismatches themselves, late and cryptically. The manifest ``<engine>.json`` records the engine family,
the library version and the compute capabilities, what the engine was quantized from (``quantization``) and, as
far as the library tells, what it computes in (``compute_precision``); :func:`check_engine_compatible` refuses
another family, release or GPU before anything is deserialized, naming the field that differs.

The engine and its manifest are written as one unit (``core.commit``), the manifest hashing the serialized bytes.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.errors import UserError
from ..core.files import read_json, write_json
from ..core.hashing import sha256_file
from ..core.version import __version__

if TYPE_CHECKING:
    from ..cuda.device import DeviceInfo

MANIFEST_FORMAT = "trt_res2net.engine-manifest"
MANIFEST_VERSION = 2  # the version that names the engine family, the library version and the compute capabilities


# --------------------------------------------------------------------------------------------------------
# Paths and I/O


def manifest_path_for(engine_path: str | os.PathLike) -> Path:
    """``engines/x_int8_b32.engine`` → ``engines/x_int8_b32.engine.json``."""
    p = Path(engine_path)
    return p if p.name.endswith(".json") else p.with_name(p.name + ".json")


def write_manifest(engine_path: str | os.PathLike, manifest: dict) -> Path:
    """Write ``<engine>.json`` atomically; returns its path (the build writes it with its engine, as one unit)."""
    return write_json(manifest_path_for(engine_path), manifest)


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as written (``write_json``'s form)."""
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()


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
    if int(data.get("format_version", 0)) < 2:  # format 1: standard TensorRT only, one build GPU
        data.setdefault("engine_family", "tensorrt")
        data.setdefault("library_version", data.pop("tensorrt_version", None))
        cc = (data.get("gpu") or {}).get("compute_capability")
        data.setdefault("compute_capabilities", [normalize_cc(cc)] if cc else [])
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
    engine_family: str,
    library_version: str,
    gpu: DeviceInfo | dict | None,
    compute_capabilities: list[str],
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
    compute_capabilities_and_later: bool = False,
    caveats: list[str] | None = None,
    engine_data: bytes | memoryview | None = None,
    engine_sha256: str | None = None,
    engine_size: int | None = None,
    quantization: dict | None = None,
    compute_precision: dict | None = None,
    compute_capabilities_source: str | None = None,
) -> dict:
    """The manifest as a dict (keys in a readable order). ``preprocess`` defaults to the one SPEC.

    ``engine_data``: the serialized engine, hashed here (the file on disk is not read: the two are written as one
    unit afterwards) — or its hash and size given as ``engine_sha256`` and ``engine_size``; without either the file
    at ``engine_path`` is hashed, when it exists. ``gpu`` is the GPU the
    engine was built on (None for a TensorRT-RTX build without one); ``compute_capabilities`` are those it runs on
    (TensorRT: the build GPU's; TensorRT-RTX: its targets, and with ``compute_capabilities_and_later`` newer GPUs
    too), ``compute_capabilities_source`` where they were read. ``quantization``: what the engine's precision came
    from (:data:`QUANTIZATION_SOURCES`); ``compute_precision``: what it computes in, as far as the library says."""
    from ..core.hashing import sha256_bytes
    from ..data.preprocess import SPEC

    spec = preprocess or SPEC
    engine_path = Path(engine_path)
    if engine_sha256 is not None:
        engine_sha = engine_sha256
    elif engine_data is not None:
        engine_sha, engine_size = sha256_bytes(engine_data), memoryview(engine_data).nbytes
    elif engine_path.exists():
        engine_sha, engine_size = sha256_file(engine_path), engine_path.stat().st_size
    else:
        engine_sha = engine_size = None
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "engine": engine_path.name,
        "engine_sha256": engine_sha,
        "engine_bytes": engine_size,
        "model": model,
        "precision": precision,
        "int8_mode": int8_mode,
        "quantization": quantization,
        "compute_precision": compute_precision,
        "engine_family": engine_family,
        "library_version": library_version,
        "compute_capabilities": [normalize_cc(cc) for cc in compute_capabilities],
        "compute_capabilities_and_later": bool(compute_capabilities_and_later),
        "compute_capabilities_source": compute_capabilities_source,
        "gpu": gpu.to_manifest() if hasattr(gpu, "to_manifest") else (dict(gpu) if gpu else None),
        "caveats": list(caveats or []),
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


def check_engine_compatible(manifest: dict, version, gpu_name: str, cc, *, engine: str | None = None) -> None:
    """Refuse an engine of another family, built under another release, or not built for this GPU, naming what
    differs. ``version`` is the running library's ``trt_compat.TrtVersion`` (its family included).

    TensorRT: the release must be the same major.minor.patch (plans are not portable across releases), the
    compute capability the build GPU's (kernels are compiled for it), and the GPU name the same (tactics are
    tuned per device). TensorRT-RTX: the same release (major.minor.patch: NVIDIA documents that TensorRT-RTX
    engines are not compatible between releases), and this GPU's compute capability one of the engine's targets (a
    portable engine is not tied to one GPU).
    """
    from . import trt_compat as tc

    what = engine or manifest.get("engine", "the engine")
    built_family = manifest.get("engine_family", tc.TENSORRT.key)
    built_label = tc.FAMILIES[built_family].label if built_family in tc.FAMILIES else built_family
    if built_family != version.family:
        raise UserError(f"{what} is a {built_label} engine; {version.label} cannot run it (each family runs only "
                        f"its own engines): install {tc.FAMILIES[built_family].install}"
                        if built_family in tc.FAMILIES else f"{what} has an unknown engine family {built_family!r}")
    cc = normalize_cc(cc)
    built = str(manifest.get("library_version") or "?")
    try:
        built_v = tc.parse_version(built, built_family)
    except ValueError:
        built_v = None
    if built_family == tc.TENSORRT_RTX.key:
        if built_v is None or tuple(built_v[:3]) != tuple(version[:3]):
            raise UserError(f"{what} was built with TensorRT-RTX {built}, but this machine has TensorRT-RTX "
                            f"{version}, and TensorRT-RTX engines run only on the release that built them: rebuild "
                            f"it with build.py --engine-family tensorrt-rtx here (or install TensorRT-RTX {built})")
        targets = [normalize_cc(c) for c in manifest.get("compute_capabilities") or []]
        later = bool(manifest.get("compute_capabilities_and_later"))
        if targets and not tc.rtx_runs_on(cc, targets, later):
            fix = (f"rebuild it with --compute-capability {cc}" if cc in tc.RTX_TARGETS else
                   "this GPU is not a TensorRT-RTX target: build with TensorRT (--engine-family tensorrt)")
            raise UserError(f"{what} runs on GPUs of {tc.rtx_targets_sentence(targets, later)}, but this GPU "
                            f"({gpu_name}) is {cc}; {fix}")
        return
    rebuild = "; rebuild it on this machine with build.py"
    if built_v is None or tuple(built_v[:3]) != tuple(version[:3]):
        raise UserError(f"{what} was built with TensorRT {built}, but this machine has TensorRT "
                        f"{version}{rebuild}")
    gpu = manifest.get("gpu") or {}
    built_cc = gpu.get("compute_capability")
    if built_cc is not None and normalize_cc(built_cc) != cc:
        raise UserError(f"{what} was built for compute capability {normalize_cc(built_cc)} "
                        f"({gpu.get('name', '?')}), but this GPU ({gpu_name}) is {cc}{rebuild}")
    built_name = gpu.get("name")
    if built_name is not None and built_name.strip() != str(gpu_name).strip():
        raise UserError(f"{what} was built on GPU {built_name!r}, but this GPU is {gpu_name!r}{rebuild}")


def check_engine_file(manifest: dict, engine_path: str | os.PathLike) -> None:
    """Refuse an engine file that is not the one the manifest describes (replaced or truncated)."""
    expected = manifest.get("engine_sha256")
    if expected and sha256_file(engine_path) != expected:
        raise UserError(f"{engine_path} does not match its manifest {manifest_path_for(engine_path)} "
                        "(engine_sha256 differs); rebuild it with build.py")
