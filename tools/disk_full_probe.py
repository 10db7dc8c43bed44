"""What a full disk leaves (root only: it mounts two small tmpfs). Prints, for the trt_res2net on the import path:

1. a commit of an engine and its manifest whose temporaries fit on a 64 KiB tmpfs but whose journal does not: the
   error, and what is left in the folder; then what is left after two more once the space is freed (each commit in a
   process of its own, as builds are);
2. the ONNX export of a tiny Res2Net to a 1 MiB tmpfs: the command line's error line and exit status, what is left.

    sudo python tools/disk_full_probe.py                       # this checkout
    sudo PYTHONPATH=/tmp/old python tools/disk_full_probe.py   # another version (git archive REV trt_res2net | ...)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def _mounted(size: str) -> Path:
    disk = Path(tempfile.mkdtemp()) / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    return disk


def _commit(engine: Path, manifest: Path, data: bytes) -> str:
    """commit_files in a process of its own, as a build: its error line, or "no error"."""
    code = ("import sys; from trt_res2net.core import commit\n"
            "try:\n commit.commit_files({sys.argv[1]: sys.argv[3].encode() * 2000, sys.argv[2]: b'{}'})\n"
            "except OSError as e:\n print(e)\nelse:\n print('no error')")
    out = subprocess.run([sys.executable, "-c", code, str(engine), str(manifest), data.decode()], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def _commit_journal_does_not_fit() -> None:
    disk = _mounted("64k")
    try:
        engine, manifest = disk / "x.engine", disk / "x.engine.json"
        _commit(engine, manifest, b"old")
        st = os.statvfs(disk)
        # room for the two temporaries (2 + 1 pages) and the lock file's pid (1 page), none for the journal
        (disk / "filler").write_bytes(b"\0" * ((st.f_bavail - 4) * st.f_bsize))
        print("commit:", _commit(engine, manifest, b"new"))
        print("left:", sorted((p.name, p.stat().st_size) for p in disk.iterdir()))
        (disk / "filler").unlink()
        for i in range(2):  # two later builds
            print(f"commit {i + 1} once freed:", _commit(engine, manifest, b"new"), "— left:",
                  sorted(p.name for p in disk.iterdir()))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def _export_does_not_fit() -> None:
    from trt_res2net.cli.common import run_main
    from trt_res2net.model import weights, zoo
    from trt_res2net.model.onnx_export import write_onnx

    spec = zoo.get_model("res2net50_vd_26w_4s").reduced(width=4, depths=(1, 1, 1, 1))  # a 21 MB ONNX
    state = weights.random_weights(spec, seed=0)
    disk = _mounted("1m")
    try:
        status = run_main(lambda: write_onnx(spec, state, disk / "x.onnx") and 0)
        print("export exit status:", status, "left:", sorted(p.name for p in disk.iterdir()))
    finally:
        subprocess.run(["umount", str(disk)], check=False)


if __name__ == "__main__":
    import trt_res2net

    print("trt_res2net from", Path(trt_res2net.__file__).parent)
    _commit_journal_does_not_fit()
    _export_does_not_fit()
