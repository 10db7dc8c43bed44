"""Triton Inference Server on a model repository: check the repository and the ports, choose the models this server
can load, start it, wait until it is ready, and stop it cleanly (``serve.py`` is the command line over
:func:`serve`; which server runs and what it needs: ``server_setup``; its processes and files: ``server_processes``).

Models whose backend the server lacks are not loaded (one line says which), nor an ensemble's steps when none of
their ensembles can load; the rest are loaded explicitly, and each ensemble answers its warm-up image before the
server is called ready. The configs are read with Triton's ModelConfig proto (``triton_proto.read_configs``).
The server listens on loopback unless ``ServerOptions.host`` says otherwise.

Stopping leaves nothing, at any moment. Each run has a folder (``$TMPDIR/trt_res2net-triton-*``, with this process's
pid) and names the Python backend's shared-memory regions after this process
(``--backend-config=python,shm-region-prefix-name=trt_res2net_<pid>_<token>_``). SIGTERM, SIGHUP or Ctrl-C stops the
server: SIGTERM to it (models unload, their Python stubs stop), a bounded wait (``stop_timeout``; a server still
loading gets ``LOADING_STOP_GRACE`` s: it has nothing in flight), then SIGKILL; then whatever is left of its process
group is stopped and reaped, its ``/dev/shm`` regions removed, and the folder removed. The server gets SIGTERM if
this process dies (Linux's parent-death signal), and ``serve`` makes this process the reaper of the server's
orphans; after a SIGKILL, which leaves no chance to clean up, the next start removes what a run whose process is
gone left: its folder, its regions, any process still running from its folder.
"""

from __future__ import annotations

import collections
import math
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import log
from ..core.errors import EXIT_OK, EXIT_SOME_FAILED, UserError
from .server_processes import become_subreaper, parent_death_signal, remove_shm_regions, stop_server
from .server_setup import find_server
from .triton_proto import model_config_pb2, read_configs

# Which backend a platform needs (Triton's model configuration docs).
PLATFORM_BACKENDS = {"tensorrt_plan": "tensorrt", "onnxruntime_onnx": "onnxruntime", "pytorch_libtorch": "pytorch",
                     "tensorflow_savedmodel": "tensorflow", "tensorflow_graphdef": "tensorflow"}
DEFAULT_STOP_TIMEOUT = 30.0
DEFAULT_READY_TIMEOUT = 300.0
WARMUP_ROUNDS = 2  # of requests through each ensemble before it is called ready
LOADING_STOP_GRACE = 3.0  # seconds a server that is still loading gets to stop before SIGKILL
DEFAULT_HOST = "127.0.0.1"  # loopback: serving to other machines is asked for with ServerOptions.host
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal went away; stop the same way
PORT_FIELDS = {"HTTP": "http_port", "gRPC": "grpc_port", "metrics": "metrics_port"}


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


# --------------------------------------------------------------------------------------------------------
# The repository: which models this server can load


@dataclass(frozen=True)
class ServedModel:
    """One model of a repository as the server sees it: the backend it needs (``ensemble`` for an ensemble), the
    models an ensemble runs, and its ModelConfig."""

    backend: str
    steps: tuple[str, ...]
    config: Any  # Triton's ModelConfig message


def read_repository(repo: Path) -> dict[str, ServedModel]:
    """Name → :class:`ServedModel` for every model of ``repo`` (its configs read by ``triton_proto.read_configs``:
    a config Triton's ModelConfig proto cannot parse is a UserError with the parser's line)."""
    models = {}
    for name, config in read_configs(repo).items():
        if config.platform == "ensemble":
            models[name] = ServedModel("ensemble", tuple(s.model_name for s in config.ensemble_scheduling.step),
                                       config)
        else:
            models[name] = ServedModel(config.backend or PLATFORM_BACKENDS.get(config.platform, config.platform), (),
                                       config)
    return models


_DTYPE_BYTES = {"TYPE_BOOL": 1, "TYPE_UINT8": 1, "TYPE_INT8": 1, "TYPE_UINT16": 2, "TYPE_INT16": 2, "TYPE_FP16": 2,
                "TYPE_BF16": 2, "TYPE_UINT32": 4, "TYPE_INT32": 4, "TYPE_FP32": 4, "TYPE_UINT64": 8, "TYPE_INT64": 8,
                "TYPE_FP64": 8}
MIB = 1 << 20


def python_shm_bytes(configs) -> int:
    """Shared memory for one Python-backend instance to hold its largest batch: max_batch_size × the bytes of its
    fixed-size inputs and outputs (TYPE_STRING tensors, of unknown size, grow the region when they come), plus one
    MiB for the backend's own messages; rounded up to MiB. 1 MiB (the backend's default) without Python models."""
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


def choose_models(models: dict[str, ServedModel], backends: set[str],
                  wanted: list[str] | tuple[str, ...] | None) -> tuple[list, dict]:
    """(models to load, {skipped model: why}). An ensemble is loadable when all of its steps are."""
    skipped: dict[str, str] = {}

    def loadable(name: str, seen=()) -> bool:
        info = models.get(name)
        if info is None:
            skipped.setdefault(name, "not in the repository")
            return False
        if info.backend == "ensemble":
            bad = [s for s in info.steps if s in seen or not loadable(s, (*seen, name))]
            if bad:
                why = skipped.get(bad[0], "")
                skipped.setdefault(name, f"needs {', '.join(bad)}" + (f" ({why})" if why else ""))
            return not bad
        if backends and info.backend not in backends:
            skipped.setdefault(name, f"this tritonserver has no {info.backend} backend")
            return False
        return True

    if wanted:
        unknown = [w for w in wanted if w not in models]
        if unknown:
            raise UserError(f"ServerOptions.models='{', '.join(unknown)}': not in the repository (it has "
                            f"{', '.join(models)})")
        for w in wanted:
            if not loadable(w):
                raise UserError(f"ServerOptions.models='{w}' cannot be served here: {skipped[w]}")
        needed: set[str] = set()
        todo = list(wanted)
        while todo:
            name = todo.pop()
            if name not in needed:
                needed.add(name)
                todo.extend(models[name].steps)
        return sorted(needed), {}
    chosen = [name for name in models if loadable(name)]
    # A step serves only its ensembles: left out when none of them loads here (the pipeline model runs its own).
    users = {name: [e for e, info in models.items() if name in info.steps] for name in chosen}
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
                raise UserError(f"{what} port {port} on {host} is in use; choose another with "
                                f"ServerOptions.{PORT_FIELDS[what]}") from None
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


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


class TritonServer:
    """One tritonserver process on a repository: checked and set up here, then ``start()`` (returns once the
    models are ready), ``wait()`` (returns only by an exception: a signal, or the server stopping by itself),
    ``stop()``; ``close()`` (or ``with``) stops it and removes its run folder and shared-memory regions."""

    def __init__(self, repo: str | os.PathLike, options: ServerOptions | None = None):
        self.repo = Path(repo)
        self.options = options = options or ServerOptions()
        models = read_repository(self.repo)
        self.configs = {name: info.config for name, info in models.items()}
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
                                     preexec_fn=parent_death_signal)
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


def serve(repo: str | os.PathLike, options: ServerOptions | None = None) -> int:
    """Serve ``repo`` until SIGTERM, SIGHUP or Ctrl-C (exit status 0), printing where the server listens once it is
    ready. A second signal during the shutdown does not cut it short; the server's run folder and shared-memory
    regions are always removed."""
    server = TritonServer(repo, options)
    stop_requested: list[int] = []

    def on_signal(signum, frame):
        stop_requested.append(signum)
        raise _Stop(signum)

    become_subreaper()  # the server's Python stubs, orphaned when it exits first, are then reaped here
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
