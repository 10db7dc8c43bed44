"""Several files written as one unit — an engine and its manifest, an ONNX and its sidecar — with a lock against
concurrent writers of the same files.

:func:`commit_files` writes every file to a temporary sibling first. Then, with Ctrl-C deferred, it links the files
it replaces to backups, writes a journal ``.<first name>.commit`` (the commit point), renames the temporaries onto
the final names and removes the journal and the backups. So:

- Ctrl-C before the commit point removes the temporaries; Ctrl-C during the renames is honoured once they are done,
  by putting the backups back: the previous files stay as they were, and KeyboardInterrupt is raised.
- An OSError at any step (a full disk at a write, an fsync, a link, a rename) leaves the previous files and no
  temporary, journal or backup: before the commit point they are removed, after it the backups are put back. The
  error names the file of the unit it was writing.
- SIGKILL at any moment leaves either the previous files (no journal: only temporaries, which carry the dead
  process's id and are removed by the next writer) or a journal from which :func:`recover` completes the new set
  (or finishes a rollback that had begun). The next writer recovers first; so does a reader that can take the lock
  (:func:`ensure_complete`, which the engine runtime calls before it reads a manifest).

A rollback writes nothing (a full disk cannot stop it): the journal records each temporary's inode, so a file set
in which one entry is neither its temporary nor the new file is one whose rollback had begun, and :func:`recover`
finishes it.

:class:`PathLock` is an advisory ``flock`` on ``.<name>.lock`` beside the file: a second build of the same engine is
refused in one line, naming the process that holds it. Linux and macOS (``fcntl``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import clean_stale_temps, fsync_dir, name_the_path, remove_path, temp_name, temp_owner

JOURNAL_FORMAT = "trt_res2net.commit-journal"


def _rename(src, dst) -> None:
    """Every rename of a commit (one place, so that tests can interrupt between two of them)."""
    os.replace(src, dst)


class Busy(UserError):
    """Another process holds the lock of a file this run would write."""


def lock_path_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def journal_path_for(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.commit")


# --------------------------------------------------------------------------------------------------------
# The lock


_HELD: dict[Path, list] = {}  # lock file → [fd, depth]; re-entrant within this process
_HELD_GUARD = threading.Lock()


class PathLock:
    """``with PathLock(engine_path, what="build"):`` — exclusive among processes (``flock`` on ``.<name>.lock``),
    re-entrant within one. Busy (exit status 2) when another process holds it; the lock file is removed on release.
    """

    def __init__(self, path: str | os.PathLike, what: str = "write"):
        self.path = Path(path)
        self.lock_path = lock_path_for(self.path)
        self.what = what
        self._made: list[Path] = []  # folders made for the lock file, removed on release when still empty

    def _holder(self) -> str:
        try:
            text = self.lock_path.read_text().strip()
        except OSError:
            return ""
        return f" (pid {text})" if text.isdigit() else ""

    def acquire(self) -> PathLock:
        import fcntl

        key = self.lock_path.absolute()
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key][1] += 1
                return self
        missing = []
        folder = self.path.parent
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._made = missing  # deepest first
        for _ in range(20):  # the file may be removed between open and flock by a releasing holder: retry
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise Busy(f"another process{self._holder()} is writing {self.path}: wait for it to finish, or "
                               f"choose another path") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            with contextlib.suppress(OSError):  # the holder's pid is for the message only (a full disk refuses it)
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            with _HELD_GUARD:
                _HELD[key] = [fd, 1]
            return self
        raise Busy(f"could not lock {self.path}: its lock file {self.lock_path} keeps changing")

    def release(self) -> None:
        key = self.lock_path.absolute()
        with _HELD_GUARD:
            entry = _HELD.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[key]
        with contextlib.suppress(OSError):
            os.unlink(self.lock_path)  # while still holding it: a waiting process re-checks the inode
        os.close(entry[0])
        for folder in self._made:  # a run that wrote nothing leaves no empty folder behind
            try:
                folder.rmdir()
            except OSError:
                break
        self._made = []

    def __enter__(self) -> PathLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------------------------------------
# Deferring Ctrl-C


@contextlib.contextmanager
def sigint_deferred() -> Iterator[list]:
    """While the body runs, SIGINT is recorded instead of raised (the body sees ``flag`` non-empty); the previous
    handler is restored on the way out. Only the main thread can do this: elsewhere the body runs as it is."""
    flag: list = []
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


# --------------------------------------------------------------------------------------------------------
# The commit


@dataclass
class _Entry:
    final: Path
    temp: Path
    backup: Path | None = None
    existed: bool = False
    temp_inode: int | None = None  # the temporary's, so that recovery can tell the new file from the previous one

    def to_json(self) -> dict:
        return {"final": self.final.name, "temp": self.temp.name,
                "backup": self.backup.name if self.backup else None, "existed": self.existed,
                "temp_inode": self.temp_inode}

    @classmethod
    def from_json(cls, directory: Path, doc: dict) -> _Entry:
        return cls(directory / doc["final"], directory / doc["temp"],
                   directory / doc["backup"] if doc.get("backup") else None, bool(doc.get("existed")),
                   doc.get("temp_inode"))

    def undone(self) -> bool:
        """Neither the temporary nor the new file is there: a rollback has begun (journals that record inodes)."""
        if self.temp_inode is None or os.path.lexists(self.temp):
            return False
        try:
            return os.lstat(self.final).st_ino != self.temp_inode
        except FileNotFoundError:
            return True


def _write_journal(journal: Path, state: str, entries: list[_Entry]) -> None:
    tmp = temp_name(journal)
    try:
        with open(tmp, "x") as f:
            json.dump({"format": JOURNAL_FORMAT, "pid": os.getpid(), "state": state,
                       "entries": [e.to_json() for e in entries]}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, journal)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise name_the_path(e, entries[0].final, tmp) from None
        raise
    fsync_dir(journal.parent)


def write_new_file(path: str | os.PathLike, data: bytes | memoryview) -> None:
    """``data`` to the new file ``path`` (never an existing one), flushed to the disk; nothing is left behind when
    it fails. What a commit's temporaries are written with, and what a writer stages a file for a commit with."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # open()'s permissions, less the umask
    except OSError as e:
        raise name_the_path(e, temp_owner(path), path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        if isinstance(e, OSError):  # named as the file it stands for, not as a hidden temporary
            raise name_the_path(e, temp_owner(path), path) from None
        raise


def _write_temp(final: Path, source) -> Path:
    """``source`` (bytes, memoryview, or a Path on the same filesystem to move) → a temporary beside ``final``."""
    tmp = temp_name(final)
    if isinstance(source, (str, os.PathLike)):
        try:
            _rename(source, tmp)
        except OSError as e:
            raise name_the_path(e, final, tmp) from None
    else:
        write_new_file(tmp, source)
    return tmp


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _roll_back(entries: list[_Entry]) -> None:
    for e in entries:
        if e.temp.exists():
            remove_path(e.temp)
        if e.backup is not None and e.backup.exists():
            if _same_file(e.backup, e.final):  # not replaced yet: the backup is a second link to it
                os.unlink(e.backup)  # (rename() between two links of one file does nothing)
            else:
                _rename(e.backup, e.final)
        elif not e.existed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.final)


def _roll_forward(entries: list[_Entry]) -> None:
    for e in entries:
        if e.temp.exists():
            _rename(e.temp, e.final)
    for e in entries:
        if e.backup is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(e.backup)


def clean_commit_temps(paths: list[Path]) -> list[Path]:
    """Remove what killed commits of the unit whose files are ``paths`` left (their temporaries, backups and the
    journal's temporaries, named with a process id that no longer runs); returns what was removed. Run after
    :func:`recover`, which may still need a backup."""
    removed = []
    for p in [*paths, journal_path_for(paths[0])]:
        removed += clean_stale_temps(p)
    return removed


def recover(path: str | os.PathLike) -> str | None:
    """Finish what a killed :func:`commit_files` whose first file is ``path`` left: the new set when its journal was
    written (``"completed"``), the previous one when a rollback had begun (``"rolled back"``); None when there was
    nothing to do. Then remove the temporaries of killed writers of the unit. The caller holds the lock."""
    path = Path(path)
    journal = journal_path_for(path)
    try:
        doc = json.loads(journal.read_text())
    except FileNotFoundError:
        clean_commit_temps([path])
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{journal}: an unreadable commit journal ({e}); remove it and rebuild {path}") from None
    entries = [_Entry.from_json(journal.parent, d) for d in doc.get("entries", [])]
    if doc.get("state") == "rollback" or any(e.undone() for e in entries):
        _roll_back(entries)
        outcome = "rolled back"
    else:
        _roll_forward(entries)
        outcome = "completed"
    fsync_dir(journal.parent)
    journal.unlink()
    fsync_dir(journal.parent)
    clean_commit_temps([path, *(e.final for e in entries)])
    return outcome


def ensure_complete(path: str | os.PathLike) -> str | None:
    """For readers: if a killed build left ``path``'s file set half-replaced, complete it (taking the lock) and say
    what was done; UserError when that is impossible here (another process writes it now, or the folder is
    read-only)."""
    journal = journal_path_for(path)
    if not journal.exists():
        return None
    try:
        with PathLock(path, "recover"):
            return recover(path)
    except Busy:
        raise UserError(f"{path} is being replaced by another process right now; try again when it has finished") \
            from None
    except OSError as e:
        raise UserError(f"{path}: a build was interrupted while replacing it and this folder cannot be repaired "
                        f"here ({e.strerror or e}); rebuild it with build.py") from None


def commit_files(files: Mapping[str | os.PathLike, object], *, lock: bool = True) -> list[Path]:
    """Write ``files`` (final path → bytes, memoryview, or a Path on the same filesystem to move in) as one unit, in
    the order given (readers look at the first file's journal). All of them must be in one folder.

    Ctrl-C during it: the previous files stay as they were and KeyboardInterrupt is raised. See the module
    docstring for SIGKILL."""
    finals = [Path(p) for p in files]
    if not finals:
        return []
    directory = finals[0].parent
    if any(p.parent != directory for p in finals):
        raise ValueError("commit_files writes files of one folder")
    directory.mkdir(parents=True, exist_ok=True)
    lock_cm = PathLock(finals[0], "write") if lock else contextlib.nullcontext()
    with lock_cm:
        recover(finals[0])
        clean_commit_temps(finals)
        entries: list[_Entry] = []
        try:
            for p, source in zip(finals, files.values(), strict=True):
                entries.append(_Entry(p, _write_temp(p, source)))
        except BaseException as e:
            for entry in entries:
                remove_path(entry.temp)
            if isinstance(e, OSError):
                raise name_the_path(e, finals[len(entries)]) from None
            raise
        journal = journal_path_for(finals[0])
        with sigint_deferred() as interrupted:
            _prepare(entries, journal, interrupted)
            _switch(entries, journal, interrupted)
        if interrupted:
            raise KeyboardInterrupt
    return finals


def _prepare(entries: list[_Entry], journal: Path, interrupted: list) -> None:
    """Link the files to be replaced to backups and write the journal (the commit point); on any failure, or Ctrl-C
    before it, remove the temporaries and backups and raise."""
    try:
        if interrupted:
            raise KeyboardInterrupt
        for e in entries:
            e.temp_inode = os.lstat(e.temp).st_ino
            if os.path.lexists(e.final):
                e.existed = True
                backup = temp_name(e.final, "old")
                try:
                    os.link(e.final, backup)
                    e.backup = backup
                except OSError as err:  # no hard links here: the previous file cannot be restored after Ctrl-C
                    if err.errno not in _NO_HARD_LINKS:
                        raise name_the_path(err, e.final, backup) from None
                    e.backup = None
        fsync_dir(journal.parent)
        _write_journal(journal, "prepared", entries)  # the commit point
    except BaseException:
        with contextlib.suppress(FileNotFoundError):  # first: a journal without its temporaries means nothing
            journal.unlink()
        for e in entries:
            remove_path(e.temp)
            if e.backup is not None:
                remove_path(e.backup)
        raise


# os.link's errors that say the filesystem has no hard links (rather than a full disk, say)
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.ENOSYS, errno.EXDEV})


def _switch(entries: list[_Entry], journal: Path, interrupted: list) -> None:
    """Rename the temporaries onto the final names; then, when Ctrl-C came meanwhile and every previous file has its
    backup, put the previous set back (``interrupted`` stays set), else keep the new set (``interrupted`` cleared).
    An OSError on the way puts the previous set back and is raised (without backups: the new set is completed)."""
    directory = journal.parent
    restorable = all(e.backup is not None or not e.existed for e in entries)
    current = entries[0]
    try:
        for current in entries:
            _rename(current.temp, current.final)
        fsync_dir(directory)
    except OSError as e:
        if restorable:
            with contextlib.suppress(OSError):  # what cannot be undone here, the next writer or reader finishes
                _undo(entries, journal)
            raise name_the_path(e, current.final, current.temp) from None
        # without backups only the new set can stand: a second try, and else the journal for the next writer
        interrupted.clear()
        _finish(entries, journal)
        return
    if interrupted and restorable:
        _undo(entries, journal)
    else:
        interrupted.clear()  # nothing to restore to: the new set stands
        _finish(entries, journal)


def _undo(entries: list[_Entry], journal: Path) -> None:
    """The previous set back, the journal removed. It writes nothing: its first step marks the set as being rolled
    back (:meth:`_Entry.undone`), so a process killed during it leaves what :func:`recover` rolls back."""
    _roll_back(entries)
    _try_sync(journal.parent)
    journal.unlink()
    _try_sync(journal.parent)


def _finish(entries: list[_Entry], journal: Path) -> None:
    """The new set in place (the temporaries not renamed yet renamed), the backups and the journal removed."""
    _roll_forward(entries)
    journal.unlink()
    _try_sync(journal.parent)


def _try_sync(directory: Path) -> None:
    """Renames and removals made durable where the folder lets it. A disk that refuses even this (full) does not
    stop an undo or the end of a commit: the files are already what they stay, and a journal that a crash brings
    back finds its work done (or finishes the undo)."""
    with contextlib.suppress(OSError):
        fsync_dir(directory)
