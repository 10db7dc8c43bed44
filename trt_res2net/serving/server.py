"""Triton Inference Server on a model repository: find the server, set up what it needs, start it, wait until it
is ready, and stop it cleanly (``serve.py`` is the command line over :func:`serve`).

The ``tritonserver`` is the one on PATH (NVIDIA's Triton container, JetPack's Triton), or else the one that
``nvidia-pytriton`` ships (the ``serve`` extra: Triton 2.51 with the Python backend only). For the latter this
sets up what it needs in a temporary folder (its Python backend with the stub for this interpreter, the shared
libraries on LD_LIBRARY_PATH, this interpreter's environment for the models) and removes it when the server stops.

Models whose backend the server lacks are not loaded (one line says which), nor an ensemble's steps when none of
their ensembles can load; the rest are loaded explicitly, and each ensemble answers its warm-up image before the
server is called ready. The configs are read with Triton's
ModelConfig proto (``model_config_pb2``). The server listens on loopback unless ``--host`` says otherwise.

Stopping leaves nothing, at any moment. Each run has a folder (``$TMPDIR/trt_res2net-triton-*``, with this process's
pid) and names the Python backend's shared-memory regions after this process
(``--backend-config=python,shm-region-prefix-name=trt_res2net_<pid>_<token>_``). SIGTERM, SIGHUP or Ctrl-C stops the
server: SIGTERM to it (models unload, their Python stubs stop), a bounded wait (``--stop-timeout``; a server still
loading gets ``LOADING_STOP_GRACE`` s: it has nothing in flight), then SIGKILL; then whatever is left of its process
group is stopped and reaped, its ``/dev/shm`` regions removed, and the folder removed. The server gets SIGTERM if
this process dies (Linux's parent-death signal), and ``serve`` makes this process the reaper of the server's
orphans; after a SIGKILL, which leaves no chance to clean up, the next start removes what a run whose process is
gone left: its folder, its regions, any process still running from its folder.

Why not pytriton's own start-up (``pytriton.server.triton_server.TritonServer``): it stops the server with SIGINT
and kills only the server's pid after 30 s (the Python stubs and the ``/dev/shm`` regions of a killed server stay),
starts it in the caller's process group, needs ``sh`` and pyzmq for its proxy, and copies its whole 29 MB
distribution per start; importing ``pytriton`` alone takes about a second. What is taken from it is what it sets
up for its server (``pytriton.triton``): the Python backend with the stub built for this interpreter beside it,
its libraries on LD_LIBRARY_PATH, this interpreter's ``bin/`` first on PATH, the parent-death signal, and a
shared-memory prefix unique to the server.
"""

from __future__ import annotations

import collections
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..core import log
from ..core.errors import EXIT_OK, EXIT_SOME_FAILED, MissingDependency, UserError

INSTALL_HINT = ("no tritonserver found: run inside NVIDIA's Triton container (nvcr.io/nvidia/tritonserver) or "
                "JetPack's Triton, or create the serving environment: python3 -m venv .venv-serve && "
                ". .venv-serve/bin/activate && pip install -e '.[serve]' (README, docs/triton.md)")
# Which backend a platform needs (Triton's model configuration docs).
PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
                     "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow"}
DEFAULT_STOP_TIMEOUT = 30.0
DEFAULT_READY_TIMEOUT = 300.0
WARMUP_ROUNDS = 2  # of requests through each ensemble before it is called ready
LOADING_STOP_GRACE = 3.0  # seconds a server that is still loading gets to stop before SIGKILL
GROUP_STOP_GRACE = 1.0  # seconds the server's leftover processes (orphaned stubs) get, once it is gone
DEFAULT_HOST = "127.0.0.1"  # loopback: serving to other machines is asked for with --host
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "trt_res2net_"  # + this process's pid + "_" + a server's token + "_": the Python backend's regions


# --------------------------------------------------------------------------------------------------------
# Finding the server


class ServerSetup:
    """The command line, environment and run folder of one tritonserver run."""

    def __init__(self, binary: Path, backend_dir: Path | None, env: dict, tmp: Path, backends: set[str],
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
    """The tritonserver to run: ``--tritonserver``, PATH, /opt/tritonserver, else nvidia-pytriton's. Removes first
    what runs killed before left (:func:`remove_stale_runs`)."""
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
        raise UserError(f"--tritonserver {path}: not an executable file")
    dist = _pytriton_dist()
    if dist is not None and path.resolve() == (dist / "bin" / "tritonserver").resolve():
        return _pytriton_setup(dist, env, backend_directory)
    backend_dir = Path(backend_directory) if backend_directory else path.resolve().parent.parent / "backends"
    return ServerSetup(path, Path(backend_directory) if backend_directory else None, env, _run_folder(),
                       _backends_in(backend_dir), f"{path}")


TMP_PREFIX = "trt_res2net-triton-"


def _run_folder() -> Path:
    """This run's folder, after removing what killed runs left; it records this process's pid."""
    remove_stale_runs()
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
    (tmp / "serve.pid").write_text(str(os.getpid()))
    return tmp


def _alive(pid: int) -> bool | None:
    """True / False; None when it cannot be told (another user's process)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except OSError:
        return None


def _proc_state(pid: str) -> tuple[int, str] | None:
    """(process group, state letter) of /proc/PID, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[2]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def _processes_using(folder: Path) -> list[int]:
    """Live processes whose command line names ``folder`` (a killed run's server and Python stubs)."""
    needle = str(folder).encode()
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes() and (_proc_state(cmdline.parent.name) or (0, "Z"))[1] != "Z":
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return [pid for pid in found if pid != os.getpid()]


def remove_shm_regions(prefix: str) -> list[str]:
    """Remove the ``/dev/shm`` regions whose names start with ``prefix``; their names."""
    removed = []
    for region in SHM_DIR.glob(prefix + "*") if SHM_DIR.is_dir() else []:
        try:
            region.unlink()
            removed.append(region.name)
        except OSError:
            pass
    return removed


def remove_stale_runs() -> None:
    """What serve.py runs that were killed (SIGKILL leaves no chance to clean up) left behind: for each run folder
    whose process is gone, the processes still running from it (killed), its shared-memory regions, the folder;
    and regions named after a process that is gone."""
    for folder in Path(tempfile.gettempdir()).glob(TMP_PREFIX + "*"):
        try:
            pid = int((folder / "serve.pid").read_text())
        except (OSError, ValueError):
            continue  # not ours to judge (unreadable, or being written)
        if _alive(pid) is not False:
            continue
        for orphan in _processes_using(folder):
            try:
                os.kill(orphan, signal.SIGKILL)
            except OSError:
                pass
        remove_shm_regions(f"{SHM_PREFIX}{pid}_")
        shutil.rmtree(folder, ignore_errors=True)
    for region in SHM_DIR.glob(SHM_PREFIX + "*") if SHM_DIR.is_dir() else []:
        m = re.match(re.escape(SHM_PREFIX) + r"(\d+)_", region.name)
        if m and _alive(int(m.group(1))) is False:
            remove_shm_regions(m.group(0))


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
    tmp = _run_folder()
    try:
        python_backend = tmp / "backends" / "python"
        python_backend.mkdir(parents=True)
        for item in (dist / "backends" / "python").iterdir():
            if item.is_file():
                shutil.copy2(item, python_backend / item.name)
        shutil.copy2(stub, python_backend / "triton_python_backend_stub")
        if backend_directory:
            _warn("--backend-directory is ignored for nvidia-pytriton's tritonserver (Python backend only)")
        libs = dist.parent.parent / "nvidia_pytriton.libs"
        _prepend(env, "LD_LIBRARY_PATH", sysconfig.get_config_var("LIBDIR"), libs if libs.is_dir() else None)
        _prepend(env, "PATH", Path(sys.executable).parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ServerSetup(dist / "bin" / "tritonserver", tmp / "backends", env, tmp, {"python"},
                       f"nvidia-pytriton's tritonserver (Python backend only; models run in {sys.prefix})")


# --------------------------------------------------------------------------------------------------------
# The repository: which models this server can load


def read_repository(repo: Path) -> dict[str, dict]:
    """name → {"backend": ..., "steps": [...], "config": ModelConfig} for every model folder with a config.pbtxt,
    parsed by Triton's ModelConfig proto (a config it cannot parse is a UserError with the parser's line)."""
    from .repository import parse_config

    if not repo.exists():
        raise UserError(f"{repo}: no such model repository")
    if not repo.is_dir():
        raise UserError(f"{repo}: not a folder (a model repository is one: build.py ... --triton-repo DIR)")
    models = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = parse_config(path.read_text(encoding="utf-8", errors="replace"), str(path))
        ensemble = config.platform == "ensemble"
        backend = config.backend or PLATFORM_BACKENDS.get(config.platform, config.platform)
        steps = [step.model_name for step in config.ensemble_scheduling.step] if ensemble else []
        models[path.parent.name] = {"backend": "ensemble" if ensemble else backend, "steps": steps, "config": config}
    if not models:
        raise UserError(f"{repo}: no models in it (no */config.pbtxt); write one with build.py ... --triton-repo DIR")
    return models


_DTYPE_BYTES = {"TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_UINT16": 2, "TYPE_INT16": 2, "TYPE_FP16": 2,
                "TYPE_BF16": 2, "TYPE_UINT32": 4, "TYPE_INT32": 4, "TYPE_FP32": 4, "TYPE_UINT64": 8, "TYPE_INT64": 8,
                "TYPE_FP64": 8}
MIB = 1 << 20


def python_shm_bytes(configs) -> int:
    """Shared memory for one Python-backend instance to hold its largest batch: max_batch_size × the bytes of its
    fixed-size inputs and outputs (TYPE_STRING tensors, of unknown size, grow the region when they come), plus one
    MiB for the backend's own messages; rounded up to MiB. 1 MiB (the backend's default) without Python models."""
    from .repository import model_config_pb2

    name_of = model_config_pb2().DataType.Name
    largest = 0
    for config in configs:
        if config.backend != "python":
            continue
        per_item = 0
        for tensor in [*config.input, *config.output]:
            size = _DTYPE_BYTES.get(name_of(tensor.data_type))
            if size is not None and all(d > 0 for d in tensor.dims):
                per_item += size * math.prod(tensor.dims)
        largest = max(largest, max(1, config.max_batch_size) * per_item)
    return (math.ceil(largest / MIB) + 1) * MIB if largest else MIB


def python_shm_growth_bytes(configs, size: int) -> int:
    """How much a Python-backend region grows when a request does not fit: at least ``size``, and enough to hold the
    largest image a loaded model accepts (its ``max_image_bytes`` parameter) plus a MiB in one step — the region
    grew in 2 MiB steps to take a 60 MB request, which then took 1.8 s instead of 0.8."""
    largest = 0
    for config in configs:
        if config.backend == "python" and "max_image_bytes" in config.parameters:
            largest = max(largest, int(config.parameters["max_image_bytes"].string_value or 0))
    return max(size, (math.ceil(largest / MIB) + 1) * MIB)


def choose_models(models: dict[str, dict], backends: set[str], wanted: list[str] | None) -> tuple[list, dict]:
    """(models to load, {skipped model: why}). An ensemble is loadable when all of its steps are."""
    skipped: dict[str, str] = {}

    def loadable(name: str, seen=()) -> bool:
        info = models.get(name)
        if info is None:
            skipped.setdefault(name, "not in the repository")
            return False
        if info["backend"] == "ensemble":
            bad = [s for s in info["steps"] if s in seen or not loadable(s, (*seen, name))]
            if bad:
                why = skipped.get(bad[0], "")
                skipped.setdefault(name, f"needs {', '.join(bad)}" + (f" ({why})" if why else ""))
            return not bad
        if backends and info["backend"] not in backends:
            skipped.setdefault(name, f"this tritonserver has no {info['backend']} backend")
            return False
        return True

    if wanted:
        unknown = [w for w in wanted if w not in models]
        if unknown:
            raise UserError(f"--model {', '.join(unknown)}: not in the repository (it has {', '.join(models)})")
        for w in wanted:
            if not loadable(w):
                raise UserError(f"--model {w} cannot be served here: {skipped[w]}")
        chosen = set()
        todo = list(wanted)
        while todo:
            name = todo.pop()
            if name not in chosen:
                chosen.add(name)
                todo.extend(models[name]["steps"])
        return sorted(chosen), {}
    chosen = [name for name in models if loadable(name)]
    # A step serves only its ensembles: left out when none of them loads here (the pipeline model runs its own).
    users = {name: [e for e, info in models.items() if name in info["steps"]] for name in chosen}
    for name in list(chosen):
        if users[name] and not any(e in chosen for e in users[name]):
            chosen.remove(name)
            skipped[name] = f"a step of {', '.join(users[name])}, which cannot load here"
    return chosen, {k: v for k, v in skipped.items() if k in models}


# --------------------------------------------------------------------------------------------------------
# Running


def _check_port_free(host: str, port: int, what: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == 98:  # EADDRINUSE
                raise UserError(f"{what} port {port} on {host} is in use; choose another with --{what.lower()}-port"
                                ) from None
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def _parent_death_signal():
    """Runs in the child before exec: SIGTERM it when this process dies (Linux); nothing elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class LogPump(threading.Thread):
    """Reads the server's output: echoes it with --verbose, keeps the last lines for error reports."""

    def __init__(self, stream, verbose: bool):
        super().__init__(daemon=True, name="tritonserver-log")
        self.stream, self.verbose = stream, verbose
        self.lines: collections.deque[str] = collections.deque(maxlen=400)

    def run(self):
        for raw in iter(self.stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.lines.append(line)
            if self.verbose:
                log.note(line)

    def errors(self, limit: int = 6) -> list[str]:
        """The server's error lines (``E...`` log lines, and what its stubs printed), without CPU-only noise."""
        noise = ("CudaDriverHelper", "CUDA driver", "pinned memory", "cuda_memory_manager", "Failed to initialize "
                 "CUDA", "libcuda", "GPU metrics", "DCGM", "nvml")
        picked = [ln for ln in self.lines if re.match(r"^E\d{4} ", ln) or "rror" in ln]
        picked = [ln for ln in picked if not any(n in ln for n in noise)]
        return [re.sub(r"^[EWI]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ", "", ln).strip() for ln in picked[-limit:]]


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _warmup_sample(model_dir: Path, config) -> bytes | None:
    """The serialized BYTES (4-byte length + data) of a model's first warm-up input read from a file, if any."""
    for sample in config.model_warmup:
        for tensor in sample.inputs.values():
            if tensor.input_data_file:
                try:
                    return (model_dir / "warmup" / tensor.input_data_file).read_bytes()
                except OSError:
                    return None
    return None


def _infer_bytes(options: ServerOptions, model: str, input_name: str, serialized: bytes, batched: bool) -> None:
    """One HTTP request of one BYTES element (already serialized) by Triton's binary-data extension; errors are
    ignored (see :meth:`TritonServer.warm_up_ensembles`)."""
    import json
    import urllib.request

    header = json.dumps({"inputs": [{"name": input_name, "shape": [1, 1] if batched else [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(serialized)}}]}).encode()
    request = urllib.request.Request(
        f"http://{_url_host(options.host)}:{options.http_port}/v2/models/{model}/infer", data=header + serialized,
        headers={"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"},
        method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
    except Exception:
        pass


def _ready(host: str, port: int) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{_url_host(host)}:{port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class _Stop(Exception):
    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass(frozen=True)
class ServerOptions:
    """How to serve (serve.py's flags map onto these). The server listens on loopback unless ``host`` says otherwise;
    ``models`` None loads every model whose backend the server has; ``extra_args`` go to tritonserver as they are."""

    host: str = DEFAULT_HOST
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    metrics: bool = True
    models: tuple[str, ...] | None = None
    tritonserver: str | None = None
    backend_directory: str | None = None
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    verbose: bool = False
    extra_args: tuple[str, ...] = ()

    def ports(self) -> list[tuple[str, int]]:
        return [("HTTP", self.http_port), ("gRPC", self.grpc_port)] + (
            [("metrics", self.metrics_port)] if self.metrics else [])


def _warn(message: str) -> None:
    log.warn(message)


class TritonServer:
    """One tritonserver process on a repository: checked and set up here, then ``start()`` (returns once the
    models are ready), ``wait()`` (returns only by an exception: a signal, or the server stopping by itself),
    ``stop()``; ``close()`` (or ``with``) stops it and removes its run folder and shared-memory regions."""

    def __init__(self, repo: str | os.PathLike, options: ServerOptions | None = None):
        self.repo = Path(repo)
        self.options = options = options or ServerOptions()
        models = read_repository(self.repo)
        self.configs = {name: info["config"] for name, info in models.items()}
        for what, port in options.ports():
            _check_port_free(options.host, port, what)
        ports = [port for _, port in options.ports()]
        if len(set(ports)) != len(ports):
            raise UserError(f"the HTTP, gRPC and metrics ports must differ, got {', '.join(map(str, ports))}")
        self.setup = find_server(options.tritonserver, options.backend_directory)
        try:
            self.models, self.skipped = choose_models(models, self.setup.backends, options.models)
            if not self.models:
                why = "; ".join(f"{k}: {v}" for k, v in self.skipped.items())
                raise UserError(f"{self.repo}: this tritonserver can load none of its models ({why})")
        except BaseException:
            self.setup.cleanup()
            raise
        self.proc: subprocess.Popen | None = None
        self.pump: LogPump | None = None
        self.ready = False

    def python_backend_config(self) -> list[str]:
        """The Python backend's shared memory: this run's region prefix, and each instance's region sized to hold
        the largest batch of the models loaded, growing in one step by enough for the largest image they accept."""
        if self.setup.backends and "python" not in self.setup.backends:
            return []
        loaded = [self.configs[m] for m in self.models]
        size = python_shm_bytes(loaded)
        return [f"--backend-config=python,shm-region-prefix-name={self.setup.shm_prefix}",
                f"--backend-config=python,shm-default-byte-size={size}",
                f"--backend-config=python,shm-growth-byte-size={python_shm_growth_bytes(loaded, size)}"]

    def command(self) -> list[str]:
        o, setup = self.options, self.setup
        cmd = [str(setup.binary), f"--model-repository={self.repo.resolve()}", "--model-control-mode=explicit",
               *[f"--load-model={m}" for m in self.models],
               f"--http-address={o.host}", f"--http-port={o.http_port}",
               f"--grpc-address={o.host}", f"--grpc-port={o.grpc_port}",
               f"--exit-timeout-secs={max(1, int(o.stop_timeout) - 1)}", "--strict-readiness=true"]
        if not o.metrics:
            cmd.append("--allow-metrics=false")
        else:
            cmd += [f"--metrics-address={o.host}", f"--metrics-port={o.metrics_port}", "--allow-gpu-metrics=false"]
        if setup.backend_dir is not None:
            cmd.append(f"--backend-directory={setup.backend_dir}")
        cmd += self.python_backend_config()
        if not o.verbose:
            cmd.append("--log-info=false")
        return cmd + list(o.extra_args)

    def start(self) -> None:
        """Start the server and wait until it is ready; UserError (exit 1) when it stops or times out first."""
        o = self.options
        if self.skipped:
            shown = ", ".join(sorted(self.skipped))
            reasons = sorted(set(re.findall(r"this tritonserver has no \S+ backend", " ".join(self.skipped.values())))
                             ) or sorted(set(self.skipped.values()))
            log.note(f"not loading {shown} ({'; '.join(reasons)})")
        self.proc = subprocess.Popen(self.command(), env=self.setup.env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_parent_death_signal)
        if self.setup.tmp is not None:
            (self.setup.tmp / "tritonserver.pid").write_text(str(self.proc.pid))
        log.result(f"starting tritonserver (pid {self.proc.pid}): loading {len(self.models)} models")
        self.pump = LogPump(self.proc.stdout, o.verbose)
        self.pump.start()
        deadline = time.monotonic() + o.ready_timeout
        while not _ready(o.host, o.http_port):
            if self.proc.poll() is not None:
                self.pump.join(timeout=2)
                reasons = self.pump.errors() or [f"exit status {self.proc.returncode}"]
                raise UserError("tritonserver stopped while loading: " + " | ".join(reasons), EXIT_SOME_FAILED)
            if time.monotonic() > deadline:
                raise UserError(f"tritonserver was not ready after {o.ready_timeout:g} s"
                                + (": " + " | ".join(self.pump.errors()) if self.pump.errors() else ""),
                                EXIT_SOME_FAILED)
            time.sleep(0.1)
        self.warm_up_ensembles()
        self.ready = True

    def warm_up_ensembles(self) -> None:
        """Send each loaded ensemble its first step's warm-up image, WARMUP_ROUNDS times as many at once as its
        busiest step has instances. Triton cannot warm an ensemble (``model_warmup`` is per model), and a fresh
        ensemble's first request paid about 40 ms more than the next (measured: 74 ms, then 33-36; after one round,
        32-36). A failure here is the server's first request failing: reported by the request that meets it."""
        for name in self.models:
            config = self.configs[name]
            if config.platform != "ensemble" or not config.ensemble_scheduling.step:
                continue
            first = self.configs.get(config.ensemble_scheduling.step[0].model_name)
            sample = _warmup_sample(self.repo / first.name, first) if first is not None else None
            if sample is None or len(config.input) != 1:
                continue
            at_once = max(sum(max(1, g.count) for g in self.configs[s.model_name].instance_group) or 1
                          for s in config.ensemble_scheduling.step)
            for _ in range(WARMUP_ROUNDS):
                threads = [threading.Thread(target=_infer_bytes, daemon=True,
                                            args=(self.options, name, config.input[0].name, sample,
                                                  config.max_batch_size > 0))
                           for _ in range(at_once)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()

    def endpoints(self) -> list[str]:
        """Where it listens, for people."""
        o, h = self.options, _url_host(self.options.host)
        lines = [f"tritonserver (pid {self.proc.pid}, {self.setup.origin}) serving {self.repo} on {o.host}:",
                 f"  HTTP    http://{h}:{o.http_port}/v2/models/<model>/infer",
                 f"  gRPC    {h}:{o.grpc_port}"]
        if o.metrics:
            lines.append(f"  metrics http://{h}:{o.metrics_port}/metrics")
        lines.append(f"  models  {', '.join(self.models)}")
        return lines

    def wait(self) -> None:
        """Block while the server runs; a server that stops by itself is a UserError (exit 1) with its errors."""
        while self.proc.poll() is None:
            time.sleep(0.2)
        self.pump.join(timeout=2)
        reasons = self.pump.errors()
        raise UserError(f"tritonserver stopped by itself (exit status {self.proc.returncode})"
                        + (": " + " | ".join(reasons) if reasons else ""), EXIT_SOME_FAILED)

    def stop(self) -> int | None:
        """SIGTERM, a bounded wait (``stop_timeout``, or ``LOADING_STOP_GRACE`` while the models still load: nothing
        is in flight then), then SIGKILL; then the rest of its process group and its shared-memory regions. The exit
        status (None when it never started)."""
        if self.proc is None:
            return None
        timeout = self.options.stop_timeout if self.ready else min(self.options.stop_timeout, LOADING_STOP_GRACE)
        code = stop_server(self.proc, timeout)
        remove_shm_regions(self.setup.shm_prefix)
        return code

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.setup.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal went away; stop the same way


def _become_subreaper() -> None:
    """Linux: orphaned descendants (the server's Python stubs, if the server exits before them) become this
    process's children, so :func:`stop_server` reaps them instead of leaving zombies to init."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


def serve(repo: str | os.PathLike, options: ServerOptions | None = None) -> int:
    """Serve ``repo`` until SIGTERM, SIGHUP or Ctrl-C (exit status 0), printing where the server listens once it is
    ready. A second signal during the shutdown does not cut it short; the server's run folder and shared-memory
    regions are always removed."""
    server = TritonServer(repo, options)
    stop_requested: list[int] = []

    def on_signal(signum, frame):
        stop_requested.append(signum)
        raise _Stop(signum)

    _become_subreaper()  # the server's Python stubs, orphaned when it exits first, are then reaped here
    try:
        previous = {s: signal.signal(s, on_signal) for s in STOP_SIGNALS}
        try:
            server.start()
            log.result("\n".join([*server.endpoints(), "ready; SIGTERM or Ctrl-C stops it"]))
            server.wait()
        except _Stop:
            pass
        finally:
            for s in previous:
                signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
            try:
                code = server.stop()
                if code is not None and stop_requested:
                    log.note(f"tritonserver stopped (exit status {code})")
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
    finally:
        server.setup.cleanup()
    return EXIT_OK


def stop_server(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _stop_group(proc.pid, GROUP_STOP_GRACE)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


def _group_members(pgid: int) -> tuple[list[int], list[int]]:
    """(running, exited but not reaped) processes of process group ``pgid``."""
    running, zombies = [], []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        state = _proc_state(stat.parent.name)
        if state is not None and state[0] == pgid:
            (zombies if state[1] in "ZX" else running).append(int(stat.parent.name))
    return running, zombies


def _reap(pids) -> None:
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)  # ours when this process is their reaper (serve); else not ours to reap
        except ChildProcessError:
            pass


def _stop_group(pgid: int, timeout: float) -> None:
    """What is left of the server's own process group once the server is gone (Python backend stubs it could not
    stop, having been killed): SIGTERM, a wait of at most ``timeout``, then SIGKILL; exited members that this
    process reaps are reaped."""
    deadline = time.monotonic() + timeout
    sig = signal.SIGTERM
    while True:
        running, zombies = _group_members(pgid)
        _reap(zombies)
        if not running:
            return
        for pid in running:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        if sig == signal.SIGKILL:
            time.sleep(0.05)
            _reap(_group_members(pgid)[1])
            return
        time.sleep(0.1)
        if time.monotonic() > deadline:
            sig = signal.SIGKILL
