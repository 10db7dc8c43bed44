"""A full disk at every step of a commit (core/commit.py) and of the ONNX export (model/onnx_export.py): the
previous files stay as they were, no temporary, backup or journal is left, and the error is one line that names
the file. ENOSPC is injected at each step (each write, flush, fsync, hard link, rename and file creation, counted
in a dry run), once or from that step on (a disk that stays full); a process killed while a failed commit is
undone leaves what the next writer completes; temporaries of dead processes are removed by the next writer; and,
where this machine may mount one (root), the same on a real small tmpfs.
"""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from trt_res2net.core import commit
from trt_res2net.core.errors import UserError, describe_os_error
from trt_res2net.core.files import temp_name

DATA_STEPS = ("write", "flush", "fsync", "link", "create")  # what a full disk refuses
OLD = {"x.engine": b"old engine " * 500, "x.engine.json": b'{"old": "manifest"}'}
NEW = {"x.engine": b"new engine " * 700, "x.engine.json": b'{"new": "manifest"}'}


class FullDisk:
    """Counts the steps of the writes made while it is active (``with``) and fails step ``fail_at`` with ENOSPC
    (a removal is counted but never fails) — and, when ``sticky``, every write, flush, fsync, link and file creation
    after it (renames and removals still work, as on a full disk). ``die_after``: that many steps after the
    failure, the process ends (os._exit), as if killed. ``steps`` lists the kinds, in order."""

    def __init__(self, fail_at: int | None = None, sticky: bool = False, die_after: int | None = None):
        self.fail_at, self.sticky, self.die_after = fail_at, sticky, die_after
        self.steps: list[str] = []
        self.failed_at: int | None = None

    def step(self, kind: str) -> None:
        self.steps.append(kind)
        n = len(self.steps)
        if self.failed_at is not None and self.die_after is not None and n - self.failed_at >= self.die_after:
            os._exit(0)
        if kind == "unlink":  # a removal frees space: counted (to die at), never refused
            return
        if n == self.fail_at or (self.sticky and self.failed_at is not None and kind in DATA_STEPS):
            if self.failed_at is None:
                self.failed_at = n
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> FullDisk:
        real = {name: getattr(os, name) for name in ("fsync", "replace", "rename", "link", "open", "unlink",
                                                     "fdopen")}
        real_open = builtins.open
        self._real, self._real_open = real, real_open
        disk = self

        def counted(kind, fn):
            def wrapper(*args, **kwargs):
                disk.step(kind)
                return fn(*args, **kwargs)
            return wrapper

        def os_open(path, flags, *args, **kwargs):
            if flags & os.O_CREAT and not str(path).endswith(".lock"):  # the lock: not the commit's writes
                disk.step("create")
            return real["open"](path, flags, *args, **kwargs)

        def wrap_file(opener):
            def wrapper(file, mode="r", *args, **kwargs):
                f = opener(file, mode, *args, **kwargs)
                return _CountedFile(f, disk) if any(c in mode for c in "wax+") else f
            return wrapper

        # fsync counted, not done: what is tested is what each failure leaves, and a test of fsyncs would be slow
        os.fsync, os.replace, os.rename = counted("fsync", lambda fd: None), counted("rename", real["replace"]), \
            counted("rename", real["rename"])
        os.link, os.unlink = counted("link", real["link"]), counted("unlink", real["unlink"])
        os.open, os.fdopen, builtins.open = os_open, wrap_file(real["fdopen"]), wrap_file(real_open)
        return self

    def __exit__(self, *exc) -> None:
        for name, fn in self._real.items():
            setattr(os, name, fn)
        builtins.open = self._real_open


class _CountedFile:
    """A file object whose writes and flushes are steps of a :class:`FullDisk`."""

    def __init__(self, f, disk: FullDisk):
        self._f, self._disk = f, disk

    def write(self, data):
        self._disk.step("write")
        return self._f.write(data)

    def flush(self):
        self._disk.step("flush")
        return self._f.flush()

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _files(folder: Path, content: dict[str, bytes], staged: bool = False) -> dict[Path, object]:
    """The unit to commit; ``staged``: the engine as engine/build.py gives it (a file written beside it, moved in)."""
    files: dict[Path, object] = {folder / name: data for name, data in content.items()}
    if staged:
        engine = folder / "x.engine"
        path = temp_name(engine)
        path.write_bytes(content["x.engine"])
        files[engine] = path
    return files


def _boundaries(steps: list[str]) -> list[int]:
    """The steps (1-based) that begin or end a run of steps of one kind (the JSON journal is written in tens of
    small writes: its first and last stand for them)."""
    return [i for i in range(1, len(steps) + 1)
            if i in (1, len(steps)) or steps[i - 2] != steps[i - 1] or steps[i] != steps[i - 1]]


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _steps_of(fn) -> list[str]:
    with FullDisk() as disk:
        fn()
    return disk.steps


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


@pytest.mark.parametrize("previous", [True, False], ids=["replacing", "first"])
@pytest.mark.parametrize("staged", [False, True], ids=["bytes", "staged-engine"])
@pytest.mark.parametrize("sticky", [False, True], ids=["once", "stays-full"])
def test_a_full_disk_at_each_step_of_a_commit_leaves_the_previous_pair_and_nothing_else(tmp_path, previous, staged,
                                                                                         sticky):
    folder = tmp_path / "engines"
    folder.mkdir()
    steps = _steps_of(lambda: commit.commit_files(_files(folder, NEW, staged)))
    assert {"write", "fsync", "rename", "create"} <= set(steps)
    for p in folder.iterdir():
        p.unlink()
    before = {}
    if previous:
        commit.commit_files(_files(folder, OLD))
        before = _listing(folder)
        steps = _steps_of(lambda: commit.commit_files(_files(folder, NEW, staged)))
        assert "link" in steps  # the backups of the files it replaces
        commit.commit_files(_files(folder, OLD))
    names = {str(folder / n) for n in NEW} | {str(folder)}
    refused = []
    for k in _boundaries(steps):
        files = _files(folder, NEW, staged)
        with FullDisk(fail_at=k, sticky=sticky) as disk:
            try:
                commit.commit_files(files)
                e = None
            except OSError as err:
                e = err
        for source in files.values():  # engine/build.py removes its staged file when the commit did not take it
            if isinstance(source, Path):
                source.unlink(missing_ok=True)
        step = f"step {k}: {disk.steps[k - 1]}"
        if e is None:  # a step that cannot fail the commit (a removal, the last fsync): the new pair stands
            assert disk.steps[k - 1] in ("unlink", "fsync") and _listing(folder) == NEW, step
            for p in folder.iterdir():
                p.unlink()
            if previous:
                commit.commit_files(_files(folder, OLD))
            continue
        refused.append(disk.steps[k - 1])
        assert e.errno == errno.ENOSPC and os.fspath(e.filename) in names and e.filename2 is None, step
        assert describe_os_error(e, "write the engine") == \
            f"cannot write the engine {e.filename}: No space left on device (the disk is full)"
        assert _listing(folder) == before, step
    assert {"create", "write", "flush", "fsync", "rename"} <= set(refused)
    commit.commit_files(_files(folder, NEW))  # and the disk, once freed, takes the new pair
    assert _listing(folder) == {n: NEW[n] for n in NEW}


def test_killed_while_a_failed_commit_is_undone_the_next_writer_completes_one_pair(tmp_path):
    """A full disk at the second rename (the first file already replaced), and the process killed at each step of
    putting the previous pair back: a reader then finds a matching pair — the previous one once the undo has begun
    (it writes nothing: no journal rewrite a full disk could refuse) — and the next commit leaves only the pair."""
    folder = tmp_path / "engines"
    folder.mkdir()
    commit.commit_files(_files(folder, OLD))
    steps = _steps_of(lambda: commit.commit_files(_files(folder, NEW)))
    commit.commit_files(_files(folder, OLD))
    second_rename = [i for i, kind in enumerate(steps, 1) if kind == "rename"][-1]  # the journal's, then the files'
    outcomes = set()
    for die_after in range(1, 12):
        pid = os.fork()
        if pid == 0:
            try:
                with FullDisk(fail_at=second_rename, die_after=die_after):
                    commit.commit_files(_files(folder, NEW))
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        outcome = commit.ensure_complete(folder / "x.engine")
        pair = _listing(folder)
        assert {pair["x.engine"], pair["x.engine.json"]} in ({OLD["x.engine"], OLD["x.engine.json"]},
                                                            {NEW["x.engine"], NEW["x.engine.json"]}), die_after
        outcomes.add(outcome)
        commit.commit_files(_files(folder, OLD))  # and its temporaries (a dead process's) are removed
        assert _listing(folder) == OLD, die_after
    assert "rolled back" in outcomes and None in outcomes  # killed during the undo, and after it


def test_temporaries_of_a_dead_commit_are_removed_by_the_next_build_of_that_engine(tmp_path):
    """What a commit killed at any moment (or refused by a full disk before this version) leaves — the journal's
    temporary (``..x.engine.commit.<pid>-<random>.part``, zero bytes), the files' temporaries and backups — is
    removed by the next commit of the same files, and by recover(), which engine/build.py runs under the lock before
    it builds; a live process's temporary stays."""
    folder = tmp_path / "engines"
    folder.mkdir()
    commit.commit_files(_files(folder, OLD))
    pid = _dead_pid()
    stale = [folder / f"..x.engine.commit.{pid}-0123abcd.part", folder / f".x.engine.{pid}-4567abcd.part",
             folder / f".x.engine.{pid}-89abcdef.old", folder / f".x.engine.json.{pid}-01234567.part"]
    for p in stale:
        p.write_bytes(b"")
    live = temp_name(folder / "x.engine.json")
    live.write_bytes(b"")
    with commit.PathLock(folder / "x.engine"):
        commit.recover(folder / "x.engine")
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, "x.engine", "x.engine.json",
                                                               f".x.engine.json.{pid}-01234567.part"])
    commit.commit_files(_files(folder, NEW))
    assert sorted(p.name for p in folder.iterdir()) == sorted([live.name, "x.engine", "x.engine.json"])


def test_a_full_disk_when_the_lock_records_its_holder_still_locks(tmp_path):
    """The lock file's pid is for the message only: a disk too full to take it does not stop the lock."""
    target = tmp_path / "x.engine"
    real = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    os.write = full
    try:
        with commit.PathLock(target):
            assert commit.lock_path_for(target).exists()
    finally:
        os.write = real
    assert list(tmp_path.iterdir()) == []


def _export_steps(steps: list[str]) -> list[int]:
    """The steps to fail in the export: the first and last of each kind, and the middle write."""
    chosen = set()
    for kind in set(steps):
        at = [i for i, s in enumerate(steps, 1) if s == kind]
        chosen |= {at[0], at[-1]}
        if kind == "write":
            chosen.add(at[len(at) // 2])
    return sorted(chosen)


def test_a_full_disk_during_the_onnx_export_names_the_file_in_one_line(tmp_path, tiny_spec, tiny_weights):
    from trt_res2net.model.onnx_export import write_onnx

    path = tmp_path / "engines" / "x.onnx"
    path.parent.mkdir()
    path.write_bytes(b"the previous ONNX")
    steps = _steps_of(lambda: write_onnx(tiny_spec, tiny_weights, tmp_path / "dry.onnx"))
    (tmp_path / "dry.onnx").unlink()
    assert {"create", "write", "flush", "fsync", "rename"} <= set(steps)
    for k in _export_steps(steps):
        with FullDisk(fail_at=k), pytest.raises(UserError) as info:
            write_onnx(tiny_spec, tiny_weights, path)
        assert str(info.value) == f"cannot write {path}: No space left on device (the disk is full)", steps[k - 1]
        assert info.value.exit_code == 2
        assert _listing(path.parent) == {"x.onnx": b"the previous ONNX"}, steps[k - 1]


def test_the_export_error_through_the_command_line_is_one_line_exit_2(tmp_path, tiny_spec, tiny_weights, capsys):
    from trt_res2net.cli.common import run_main
    from trt_res2net.model.onnx_export import write_onnx

    path = tmp_path / "x.onnx"
    with FullDisk(fail_at=2):
        assert run_main(lambda: write_onnx(tiny_spec, tiny_weights, path) and 0) == 2
    assert capsys.readouterr().err == f"error: cannot write {path}: No space left on device (the disk is full)\n"
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------------
# A real full disk: a small tmpfs (root only)


@pytest.fixture
def small_disk(tmp_path):
    """Mounts tmpfs filesystems of a given size under tmp_path; unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small file system needs root")
    mounted = []

    def mount(size: str) -> Path:
        disk = tmp_path / f"disk{len(mounted)}"
        disk.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(disk)
        return disk

    yield mount
    for disk in mounted:
        subprocess.run(["umount", str(disk)], check=False, capture_output=True)


def _fill(disk: Path, leave_pages: int) -> Path:
    """A file that leaves ``leave_pages`` free pages on ``disk``."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * ((st.f_bavail - leave_pages) * st.f_bsize))
    assert os.statvfs(disk).f_bavail == leave_pages
    return filler


def test_a_real_full_disk_at_the_commit_journal_leaves_nothing(small_disk, monkeypatch):
    """The issue's case: the new files fit, the journal does not (a 64 KiB tmpfs, left with the pages of the two
    temporaries and the lock file's) — ENOSPC naming the engine, the previous pair and the filler only; freed, the
    next commit leaves the new pair and nothing else."""
    disk = small_disk("64k")
    commit.commit_files(_files(disk, OLD))
    pages = sum(-(-len(data) // os.statvfs(disk).f_bsize) for data in NEW.values())
    filler = _fill(disk, pages + 1)
    journals = []
    real = commit._write_journal
    monkeypatch.setattr(commit, "_write_journal", lambda *a: journals.append(a[1]) or real(*a))
    with pytest.raises(OSError) as info:
        commit.commit_files(_files(disk, NEW))
    assert journals == ["prepared"]  # it is the journal that did not fit
    assert info.value.errno == errno.ENOSPC and os.fspath(info.value.filename) == str(disk / "x.engine")
    assert _listing(disk) == {**OLD, "filler": filler.read_bytes()}
    filler.unlink()
    commit.commit_files(_files(disk, NEW))
    assert _listing(disk) == NEW


def test_a_real_full_disk_during_the_onnx_export(small_disk, tiny_spec, tiny_weights):
    from trt_res2net.model.onnx_export import write_onnx

    disk = small_disk("1m")
    (disk / "x.onnx").write_bytes(b"the previous ONNX")
    with pytest.raises(UserError) as info:
        write_onnx(tiny_spec, tiny_weights, disk / "x.onnx")
    assert str(info.value) == f"cannot write {disk / 'x.onnx'}: No space left on device (the disk is full)"
    assert _listing(disk) == {"x.onnx": b"the previous ONNX"}
