"""NVIDIA's perf_analyzer, runnable from the serving environment, and its input data for the served image models.

tritonclient 2.50's wheel (the ``serve`` extra) ships ``bin/perf_analyzer``, but the binary needs two libraries the
wheel lacks — ``libb64.so.0d`` and ``libcudart.so.12`` — so run directly it stops with "error while loading shared
libraries: libb64.so.0d". nvidia-pytriton (the same extra) bundles both under mangled names
(``nvidia_pytriton.libs/libb64-<hash>.so.0d``, ``libcudart-<hash>.so.12.*``): :func:`perf_analyzer_command` links
them under the names perf_analyzer asks for, in a folder of the cache (``$TRT_RES2NET_CACHE/perf_analyzer_libs/``),
and puts that folder on LD_LIBRARY_PATH. ``python -m trt_res2net.cli.perf_analyzer`` is the command line over it.

The image models take ``IMAGE`` (BYTES): :func:`write_input_data` writes perf_analyzer's ``--input-data`` JSON for
image files (each element base64 of Triton's serialized form, a 4-byte length and the bytes).
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from ..core.errors import MissingDependency

# perf_analyzer's missing library → the file nvidia-pytriton bundles for it
BUNDLED_LIBRARIES = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
HINT = ("perf_analyzer comes with tritonclient 2.50 in the serving environment: python3 -m venv .venv-serve && "
        ".venv-serve/bin/pip install -e '.[serve]' (README, \"Serving with Triton\")")


def find_perf_analyzer() -> Path:
    """This interpreter's environment's perf_analyzer, else the one on PATH."""
    here = Path(sys.prefix) / "bin" / "perf_analyzer"
    found = here if here.is_file() else (Path(p) if (p := shutil.which("perf_analyzer")) else None)
    if found is None:
        raise MissingDependency(f"no perf_analyzer here: {HINT}")
    return found


def _pytriton_libs() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = Path(next(iter(spec.submodule_search_locations))).parent / "nvidia_pytriton.libs"
    return libs if libs.is_dir() else None


def library_folder() -> Path | None:
    """A folder where perf_analyzer's missing libraries resolve (links to nvidia-pytriton's copies), made once per
    nvidia-pytriton install; None without nvidia-pytriton."""
    from ..core.paths import cache_dir

    libs = _pytriton_libs()
    if libs is None:
        return None
    links = {}
    for name, pattern in BUNDLED_LIBRARIES.items():
        found = sorted(glob.glob(str(libs / pattern)))
        if found:
            links[name] = found[0]
    if not links:
        return None
    key = hashlib.sha256(json.dumps(links, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache_dir() / "perf_analyzer_libs" / key
    if all((folder / name).exists() for name in links):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=folder.parent))
    try:
        for name, target in links.items():
            (tmp / name).symlink_to(target)
        try:
            os.rename(tmp, folder)  # atomic; another process may have made it first
        except OSError:
            if not all((folder / name).exists() for name in links):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def perf_analyzer_command() -> tuple[list[str], dict]:
    """(argv prefix, environment) that run perf_analyzer here."""
    binary = find_perf_analyzer()
    env = dict(os.environ)
    folder = library_folder()
    if folder is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(folder), env.get("LD_LIBRARY_PATH")]))
    return [str(binary)], env


def check_runs(cmd: list[str], env: dict) -> None:
    """MissingDependency with the loader's own line when perf_analyzer cannot start here."""
    probe = subprocess.run([*cmd, "--version"], capture_output=True, text=True, env=env)
    if probe.returncode != 0:
        lines = (probe.stderr or probe.stdout).strip().splitlines() or [f"exit status {probe.returncode}"]
        raise MissingDependency(f"perf_analyzer does not start here ({lines[0][:200]}): {HINT}")


def write_input_data(images, out: str | os.PathLike, input_name: str = "IMAGE") -> Path:
    """perf_analyzer's ``--input-data`` JSON: one BYTES element per image file, in order (perf_analyzer sends them
    in turn); base64 of Triton's serialized form (a 4-byte little-endian length, then the bytes)."""
    data = []
    for p in images:
        raw = Path(p).read_bytes()
        data.append({input_name: {"b64": base64.b64encode(struct.pack("<I", len(raw)) + raw).decode()}})
    out = Path(out)
    out.write_text(json.dumps({"data": data}))
    return out
