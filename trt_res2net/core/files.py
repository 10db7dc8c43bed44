"""Atomic file writes: a temporary file in the same directory, fsync, then rename.

An interrupted run therefore never leaves a file under the final name that looks complete. Temporaries are named
``.<name>.<pid>-<random>.<kind>`` (kind ``part``, ``old`` or ``tmpdir``): a later write of the same file removes
those whose process is gone (:func:`clean_stale_temps`), so a run killed with SIGKILL leaves nothing that later runs
do not clean. A write that fails (a full disk, a failing fsync) removes its temporary and raises an OSError that
names the file it was writing (:func:`name_the_path`). Several files written as one unit:
:mod:`trt_res2net.core.commit`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import time
from pathlib import Path

TEMP_KINDS = ("part", "old", "tmpdir")
# Temporaries of this module before they carried the writer's pid (mkstemp's 8 random characters): removed once
# they are this old, since nothing tells whether their writer still runs.
LEGACY_TEMP_AGE_S = 3600.0


def temp_name(path: str | os.PathLike, kind: str = "part") -> Path:
    """A fresh temporary sibling of ``path``: ``.<name>.<pid>-<random>.<kind>``."""
    path = Path(path)
    token = os.urandom(4).hex()
    return path.with_name(f".{path.name}.{os.getpid()}-{token}.{kind}")


_TEMP_NAME = re.compile(r"^\.(.+)\.\d+-[0-9a-f]{8}\.(" + "|".join(TEMP_KINDS) + r")$")


def temp_owner(path: str | os.PathLike) -> Path:
    """The file a temporary of :func:`temp_name` stands for (``.x.onnx.123-ab12cd34.part`` → ``x.onnx``); any other
    path as it is."""
    path = Path(path)
    m = _TEMP_NAME.match(path.name)
    return path.with_name(m.group(1)) if m else path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporaries of ``path`` (see the module docstring) whose writing process no longer runs."""
    path = Path(path)
    ours = re.compile(r"^\." + re.escape(path.name) + r"\.(\d+)-[0-9a-f]{8}\.(" + "|".join(TEMP_KINDS) + r")$")
    legacy = re.compile(r"^\." + re.escape(path.name) + r"\.[A-Za-z0-9_]{8}\.part$")
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return []
    found = []
    now = time.time()
    for name in names:
        m = ours.match(name)
        candidate = path.with_name(name)
        if m:
            if not _pid_alive(int(m.group(1))):
                found.append(candidate)
        elif legacy.match(name):
            with contextlib.suppress(OSError):
                if now - candidate.lstat().st_mtime > LEGACY_TEMP_AGE_S:
                    found.append(candidate)
    return sorted(found)


def name_the_path(e: OSError, path: str | os.PathLike, temp: str | os.PathLike | None = None) -> OSError:
    """``e`` naming ``path`` — a new OSError of the same errno — where the system raised it without a file name (a
    write, an fsync) or named ``temp``, the temporary that stands for ``path``; else ``e`` itself. So every OS error
    a user sees names the file. Raise it ``from None``."""
    names = {os.fspath(n) for n in (e.filename, e.filename2) if n is not None}
    if e.filename is None or (temp is not None and os.fspath(temp) in names):
        return OSError(e.errno, e.strerror or os.strerror(e.errno or 0), os.fspath(path))
    return e


def remove_path(path: str | os.PathLike) -> None:
    """Remove a file, link or folder tree; nothing when it is already gone."""
    path = Path(path)
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``path`` left behind; returns what was removed."""
    removed = []
    for stale in stale_temps(path):
        with contextlib.suppress(OSError):
            remove_path(stale)
            removed.append(stale)
    return removed


def make_temp_dir(near: str | os.PathLike) -> Path:
    """A scratch folder beside ``near`` (same filesystem, so results are moved, not copied), named as a temporary
    of ``near``; stale ones of killed runs are removed first."""
    near = temp_owner(near)  # a scratch folder for a temporary is named after the file it will become
    near.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(near)
    path = temp_name(near, "tmpdir")
    path.mkdir()
    return path


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make renames in ``directory`` durable (a no-op where folders cannot be opened for it)."""
    try:
        fd = os.open(str(directory) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise name_the_path(e, directory) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", suffix: str = ".part"):
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_name(path, suffix.lstrip(".") if suffix.lstrip(".") in TEMP_KINDS else "part")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # open()'s permissions, less the umask
    except OSError as e:
        raise name_the_path(e, path, tmp) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise name_the_path(e, path, tmp) from None
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, what: str, missing: str | None = None):
    """A JSON document written by ``write_json``; one-line UserError naming ``what`` when missing or damaged.

    ``missing`` replaces the default "<what> <path> not found" message."""
    from .errors import UserError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(missing or f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{what} {path} is unreadable: {e}") from None


# --------------------------------------------------------------------------------------------------------
# Checks before any long work: the paths the user named


def check_input_file(path: str | os.PathLike, what: str, noun: str = "a file") -> Path:
    """A file the user named, checked before it is read: it exists, is a regular file (not a folder, a FIFO, a
    device), and can be opened; UserError (exit status 2) with one line otherwise — a symbolic link loop and a
    permission problem named as such."""
    import stat as _stat

    from .errors import UserError, describe_os_error

    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file") from None
    except OSError as e:
        raise UserError(f"{what} {describe_os_error(e)}") from None
    if _stat.S_ISDIR(st.st_mode):
        raise UserError(f"{what} {path}: is a folder, not {noun}")
    if not _stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if _stat.S_ISFIFO(st.st_mode) else "a socket" if _stat.S_ISSOCK(st.st_mode)
                else "a device" if _stat.S_ISCHR(st.st_mode) or _stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise UserError(f"{what} {path}: is {kind}, not {noun}")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise UserError(f"{what} {describe_os_error(e, 'read')}") from None
    return path


def check_writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """A folder this run will write into, checked before any long work: it (or, when it does not exist yet, the
    nearest existing folder above it, where it would be made) is a folder and accepts a new file; UserError
    (exit status 2) with one line otherwise. Nothing is left behind."""
    from .errors import UserError, describe_os_error

    folder = Path(folder) if str(folder) else Path(".")
    probe = folder
    while True:
        try:
            st = os.stat(probe)
            break
        except FileNotFoundError:
            if probe.parent == probe:
                raise UserError(f"{what} {folder}: no existing folder above it") from None
            probe = probe.parent
        except OSError as e:
            raise UserError(f"{what} {folder}: {describe_os_error(e)}") from None
    import stat as _stat

    if not _stat.S_ISDIR(st.st_mode):
        where = "" if probe == folder else f" ({probe} is not a folder)"
        raise UserError(f"{what} {folder}: not a folder{where}")
    test = probe / f".trt_res2net-write-test.{os.getpid()}-{os.urandom(4).hex()}.part"
    try:
        fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(test)
    except OSError as e:
        raise UserError(f"{what} {folder}: {describe_os_error(OSError(e.errno, e.strerror, str(probe)), 'write in')}") \
            from None
    return folder
