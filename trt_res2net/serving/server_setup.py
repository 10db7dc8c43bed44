"""Which tritonserver runs, and what it needs: the one on PATH (NVIDIA's Triton container, JetPack's Triton), or
else the one that ``nvidia-pytriton`` ships (the ``serve`` extra: Triton 2.51 with the Python backend only). For
the latter the run folder gets what it needs (its Python backend with the stub for this interpreter), its shared
libraries go on LD_LIBRARY_PATH, and this interpreter's environment serves the models.

What is taken from pytriton is what it sets up for its server (``pytriton.triton``): the Python backend with the
stub built for this interpreter beside it, its libraries on LD_LIBRARY_PATH, this interpreter's ``bin/`` first on
PATH, the parent-death signal, and a shared-memory prefix unique to the server. Its own start-up
(``pytriton.server.triton_server.TritonServer``) is not used: it stops the server with SIGINT and kills only the
server's pid (the Python stubs and the ``/dev/shm`` regions of a killed server stay), starts it in the caller's
process group, needs ``sh`` and pyzmq for its proxy, and copies its whole distribution per start.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from pathlib import Path

from ..core import log
from ..core.errors import MissingDependency, UserError
from .server_processes import SHM_PREFIX, remove_shm_regions, run_folder

INSTALL_HINT = ("no tritonserver found: run inside NVIDIA's Triton container (nvcr.io/nvidia/tritonserver) or "
                "JetPack's Triton, or create the serving environment: python3 -m venv .venv-serve && "
                ". .venv-serve/bin/activate && pip install -e '.[serve]' (README, docs/triton.md)")


class ServerSetup:
    """The command line, environment and run folder of one tritonserver run."""

    def __init__(self, binary: Path, backend_dir: Path | None, env: dict, tmp: Path | None, backends: set[str],
                 origin: str):
        self.binary, self.backend_dir, self.env, self.tmp = binary, backend_dir, env, tmp
        self.backends, self.origin = backends, origin
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{secrets.token_hex(3)}_"  # this process's, this server's

    def cleanup(self) -> None:
        """The run folder and this run's shared-memory regions (call once the server's processes are gone)."""
        remove_shm_regions(self.shm_prefix)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _backends_in(directory: Path | None) -> set[str]:
    if directory is None or not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if p.is_dir()}


def _pytriton_dist() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return dist if (dist / "bin" / "tritonserver").is_file() else None


def _prepend(env: dict, key: str, *paths) -> None:
    parts = [str(p) for p in paths if p] + [p for p in env.get(key, "").split(os.pathsep) if p]
    env[key] = os.pathsep.join(dict.fromkeys(parts))


def find_server(binary: str | None, backend_directory: str | None) -> ServerSetup:
    """The tritonserver to run: ``binary`` (``ServerOptions.tritonserver``), PATH, /opt/tritonserver, else
    nvidia-pytriton's. Removes first what runs killed before left (``server_processes.remove_stale_runs``)."""
    env = os.environ.copy()
    if binary is None:
        found = shutil.which("tritonserver") or (
            "/opt/tritonserver/bin/tritonserver" if Path("/opt/tritonserver/bin/tritonserver").is_file() else None)
        if found is None:
            dist = _pytriton_dist()
            if dist is None:
                raise MissingDependency(INSTALL_HINT)
            return _pytriton_setup(dist, env, backend_directory)
        binary = found
    path = Path(binary)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UserError(f"ServerOptions.tritonserver='{path}': not an executable file")
    dist = _pytriton_dist()
    if dist is not None and path.resolve() == (dist / "bin" / "tritonserver").resolve():
        return _pytriton_setup(dist, env, backend_directory)
    backend_dir = Path(backend_directory) if backend_directory else path.resolve().parent.parent / "backends"
    return ServerSetup(path, Path(backend_directory) if backend_directory else None, env, run_folder(),
                       _backends_in(backend_dir), f"{path}")


def _pytriton_setup(dist: Path, env: dict, backend_directory: str | None) -> ServerSetup:
    """nvidia-pytriton's server: its Python backend needs the stub built for this Python beside it, this
    interpreter's shared library and pytriton's own libraries on LD_LIBRARY_PATH, and this interpreter first on
    PATH (the stub's embedded Python then finds this environment's site-packages)."""
    import sysconfig

    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise MissingDependency(f"nvidia-pytriton has no Python backend stub for Python {version} (it has "
                                f"{', '.join(sorted(p.name for p in (dist / 'python_backend_stubs').iterdir()))}): "
                                "create the serving environment with one of those")
    import numpy

    if int(numpy.__version__.split(".")[0]) >= 2:
        raise UserError(f"this Python has numpy {numpy.__version__}; the Python backend of nvidia-pytriton's "
                        "tritonserver returns empty outputs with numpy 2: run serve.py from the serving environment "
                        "(pip install -e '.[serve]' pins numpy < 2; README)")
    tmp = run_folder()
    try:
        python_backend = tmp / "backends" / "python"
        python_backend.mkdir(parents=True)
        for item in (dist / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, python_backend / item.name)
        shutil.copy2(stub, python_backend / "triton_python_backend_stub")
        if backend_directory:
            log.warn("ServerOptions.backend_directory is ignored for nvidia-pytriton's tritonserver (Python backend "
                     "only)")
        libs = dist.parent.parent / "nvidia_pytriton.libs"
        _prepend(env, "LD_LIBRARY_PATH", sysconfig.get_config_var("LIBDIR"), libs if libs.is_dir() else None)
        _prepend(env, "PATH", Path(sys.executable).parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ServerSetup(dist / "bin" / "tritonserver", tmp / "backends", env, tmp, {"python"},
                       f"nvidia-pytriton's tritonserver (Python backend only; models run in {sys.prefix})")
