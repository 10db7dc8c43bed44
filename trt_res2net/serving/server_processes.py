"""The processes and files of a tritonserver run, and their removal: the run folder (``$TMPDIR/trt_res2net-triton-*``,
recording this process's pid), the Python backend's ``/dev/shm`` regions (named after this process), the stop
(SIGTERM, a bounded wait, SIGKILL, then whatever is left of the server's process group), and after a SIGKILL of
serve.py, which leaves no chance to clean up, the removal at the next start of what that run left.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

GROUP_STOP_GRACE = 1.0  # seconds the server's leftover processes (orphaned stubs) get, once it is gone
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "trt_res2net_"  # + this process's pid + "_" + a server's token + "_": the Python backend's regions
TMP_PREFIX = "trt_res2net-triton-"


def run_folder() -> Path:
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


def parent_death_signal():
    """Runs in the child before exec: SIGTERM it when this process dies (Linux); nothing elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def become_subreaper() -> None:
    """Linux: orphaned descendants (the server's Python stubs, if the server exits before them) become this
    process's children, so :func:`stop_server` reaps them instead of leaving zombies to init."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    except Exception:
        pass


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
    running: list[int] = []
    zombies: list[int] = []
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
