"""The README's "Serving with Triton" section, run as a newcomer would: its bash commands extracted and run in order,
in a copy of the checkout (what a fresh clone has), the server in the background where the README says it stays in
the foreground, the commands of the "second terminal" while it serves, then Ctrl-C.

Two things are stood in for, not re-run: creating a venv links the environment this test runs in (``.venv``) or
the serving environment (``.venv-serve``, ``$TRT_RES2NET_SERVE_PYTHON``), and ``pip install -e '.[EXTRA]'`` checks
that the extra exists and that the environment has every package it names — .ci/run runs those very installs from
a fresh clone. The default ports are used when they are free, else free ones are put in the commands.
"""

from __future__ import annotations

import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "Serving with Triton"
DEFAULT_PORTS = (8000, 8001, 8002)


def serve_python() -> str | None:
    """The serving environment's python, as tests/test_triton_server.py finds it."""
    env = os.environ.get("TRT_RES2NET_SERVE_PYTHON")
    if env:
        return env if Path(env).is_file() else None
    local = ROOT / ".venv-serve" / "bin" / "python"
    return str(local) if local.is_file() else None


SERVE_PYTHON = serve_python()

pytestmark = [
    pytest.mark.skipif(SERVE_PYTHON is None, reason="no serving environment: set TRT_RES2NET_SERVE_PYTHON (README)"),
    pytest.mark.skipif(__import__("importlib").util.find_spec("tritonclient") is None,
                       reason="build.py --triton-repo needs tritonclient here (the triton/dev extra)"),
]

CHECK_EXTRA = """
import sys
try:
    import tomllib
except ImportError:  # Python 3.10: pip's own TOML reader
    from pip._vendor import tomli as tomllib
from importlib.metadata import PackageNotFoundError, version
from pip._vendor.packaging.requirements import Requirement
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
missing = []
for extra in sys.argv[1].split(","):
    if extra not in extras:
        sys.exit(f"no extra {extra!r} in pyproject.toml")
    for req in map(Requirement, extras[extra]):
        try:
            if not req.specifier.contains(version(req.name), prereleases=True):
                missing.append(f"{req} (has {version(req.name)})")
        except PackageNotFoundError:
            missing.append(str(req))
if missing:
    sys.exit(f"{sys.prefix} lacks what pip install -e '.[{sys.argv[1]}]' installs: {', '.join(missing)}")
"""


def section_commands() -> list[list[str]]:
    """The section's bash blocks, each a list of command lines."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {SECTION}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)
    # Comments dropped (no command here has a "#" of its own).
    return [[re.sub(r"\s+#\s.*$", "", ln) for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]
            for block in blocks]


def copy_checkout(dest: Path) -> None:
    """What a clone of this checkout holds: tracked files and new ones git does not ignore (working-tree versions)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def stand_in(command: str, envs: dict[str, Path]) -> str:
    """A command with its venv creations and pip installs stood in for (module docstring)."""
    parts = []
    for part in [p.strip() for p in command.split("&&")]:
        m = re.fullmatch(r"python3? -m venv (\S+)", part)
        if m:
            parts.append(f"ln -sfn {shlex.quote(str(envs[m.group(1)]))} {m.group(1)}")
            continue
        m = re.fullmatch(r"(?:(\S+)/bin/)?pip install -e '\.\[([\w,]+)\]'", part)
        if m:
            python = f"{m.group(1)}/bin/python" if m.group(1) else "python"
            parts.append(f"{python} -c {shlex.quote(CHECK_EXTRA)} {m.group(2)}")
            continue
        parts.append(part)
    return " && ".join(parts)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ports_free(ports) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def with_ports(command: str, http: int, grpc: int, metrics: int) -> str:
    if "serve.py" in command:
        return f"{command} --http-port {http} --grpc-port {grpc} --metrics-port {metrics}"
    command = command.replace("127.0.0.1:8001", f"127.0.0.1:{grpc}")
    if "trt_res2net.cli.client" in command and "--url" not in command:
        command += f" --url 127.0.0.1:{http}"
    return command


def run(script: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-ec", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{script}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_section_has_what_a_newcomer_needs():
    flat = [c for block in section_commands() for c in block]
    assert any("pip install -e '.[triton]'" in c for c in flat) and any("'.[serve]'" in c for c in flat)
    serve = next(i for i, c in enumerate(flat) if "serve.py" in c)
    assert any("--triton-repo triton_repo" in c for c in flat[:serve])  # the repository before the server
    after = flat[serve + 1:]
    assert any(c.startswith("mkdir -p photos") for c in after)  # the photos the client reads exist
    assert any("trt_res2net.cli.client photos/" in c for c in after)
    assert any("trt_res2net.cli.perf_analyzer" in c for c in after)


def test_the_serving_section_runs_as_written(tmp_path):
    clone = tmp_path / "clone"
    copy_checkout(clone)
    envs = {".venv": Path(sys.prefix), ".venv-serve": Path(SERVE_PYTHON).absolute().parents[1]}
    ports = DEFAULT_PORTS if ports_free(DEFAULT_PORTS) else tuple(free_ports(3))
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["TMPDIR"] = str(tmp_path / "tmp")
    (tmp_path / "tmp").mkdir()
    blocks = [[with_ports(stand_in(c, envs), *ports) for c in block] for block in section_commands()]
    flat = [c for block in blocks for c in block]
    serve_at = next(i for i, c in enumerate(flat) if "serve.py" in c)
    # The first terminal: everything up to the server, in one shell (the venv activation carries over).
    run("\n".join(flat[:serve_at]), clone, env)
    assert (clone / "triton_repo" / "res2net50_vd_26w_4s_python" / "config.pbtxt").is_file()
    server = subprocess.Popen(["bash", "-c", f"exec {flat[serve_at]}"], cwd=clone, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in server.stdout], daemon=True).start()
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if lines.get(timeout=0.5).startswith("ready;"):
                    break
            except queue.Empty:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
        # The second terminal.
        out = run("\n".join(flat[serve_at + 1:]), clone, env)
        for photo in sorted((clone / "tests" / "data").glob("*.jpg")):
            assert f"photos/{photo.name}" in out.stdout, out.stdout  # each photograph's top-5 table
        assert "4 of 4 images classified by res2net50_vd_26w_4s_python" in out.stderr
        assert "Concurrency: 4, throughput:" in out.stdout, out.stdout[-2000:]  # perf_analyzer's summary
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)  # Ctrl-C in the first terminal
        code = server.wait(60)
    err = server.stderr.read()
    assert code == 0 and "tritonserver stopped (exit status 0)" in err and "Traceback" not in err, err
