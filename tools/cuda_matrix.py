#!/usr/bin/env python3
"""The CUDA toolchains that Jetson and CUDA 12/13 machines run, installed side by side and tried on this project.

    python tools/cuda_matrix.py install              # NVRTC 12.2/12.6/12.9/13.0 and cuda-python 12.6/12.9/13.x
    python tools/cuda_matrix.py nvrtc [--json F]     # release × target table: what the kernels compile to
    python tools/cuda_matrix.py nvrtc --no-installed --write docs/cuda_toolchains.md   # the table in the docs
    python tools/cuda_matrix.py list                 # what is installed

No GPU is needed. Everything goes into ``.cuda-toolchains/`` in the checkout (or ``--dir``):

- ``nvrtc-<release>/``: NVIDIA's ``nvidia-cuda-nvrtc-cu12`` / ``nvidia-cuda-nvrtc`` wheel of that release, unpacked.
  A row of the table runs in its own process, which loads that ``libnvrtc.so`` by path before cuda-python does
  (the bindings then use the library already loaded under its name), and compiles the project's kernels
  exactly as ``kernels.cached_kernel_image`` does on a GPU of each compute capability: the target
  ``kernels.choose_target`` picks (the GPU's own CUBIN, else PTX of the newest architecture below it), then
  ``kernels.compile_source``.
- ``cuda-python-<release>-py<XY>/``: a virtual environment holding only that cuda-python release, which sees
  the rest of this interpreter's environment (the project, numpy, TensorRT-RTX) through a ``.pth`` file. Its
  own site-packages is the only one that cuda-python's library search (cuda.pathfinder) looks in, so NVRTC is
  absent there unless a test puts one on the library path. ``tests/test_cuda_releases.py`` runs the project's
  device layer and entry points in each, against a stub ``libcuda.so.1`` (tests/stub_libcuda.c).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = ROOT / ".cuda-toolchains"
BEGIN = "<!-- nvrtc-matrix:begin -->"
END = "<!-- nvrtc-matrix:end -->"


@dataclass(frozen=True)
class NvrtcRelease:
    release: str
    requirement: str  # the pip requirement of the wheel
    library: str  # the library's path inside the unpacked wheel
    who: str  # who ships this CUDA


NVRTC_RELEASES = (
    NvrtcRelease("12.2", "nvidia-cuda-nvrtc-cu12==12.2.140", "nvidia/cuda_nvrtc/lib/libnvrtc.so.12", "JetPack 6.0"),
    NvrtcRelease("12.6", "nvidia-cuda-nvrtc-cu12==12.6.85", "nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
                 "JetPack 6.1 / 6.2"),
    NvrtcRelease("12.9", "nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia/cuda_nvrtc/lib/libnvrtc.so.12",
                 "the last CUDA 12"),
    NvrtcRelease("13.0", "nvidia-cuda-nvrtc==13.0.88", "nvidia/cu13/lib/libnvrtc.so.13", "JetPack 7 (Thor)"),
)

# cuda-python as each platform gets it: 12.6 is JetPack 6.1/6.2's (the old single package); 12.9.10 is the newest
# with JetPack 6's Python 3.10 aarch64 wheels (the [trt] extra resolves to 12.9 on x86); 13.x needs a CUDA 13 driver.
CUDA_PYTHON_RELEASES = {
    "12.6": ("cuda-python==12.6.2.post1",),
    "12.9": ("cuda-bindings==12.9.10",),
    "13": ("cuda-bindings==13.4.4",),
}

# GPUs the project can meet, by compute capability (the Jetson Thor reports 10.1 under CUDA 12, 11.0 under 13).
TARGETS = (
    ((7, 2), "Xavier"), ((7, 5), "Turing"), ((8, 0), "A100"), ((8, 6), "Ampere RTX"), ((8, 7), "Orin"),
    ((8, 9), "Ada"), ((9, 0), "Hopper"), ((10, 0), "B200"), ((10, 1), "Thor (CUDA 12)"), ((11, 0), "Thor (CUDA 13)"),
    ((12, 0), "RTX 50"), ((12, 1), "GB10"),
)


def python_tag() -> str:
    return f"py{sys.version_info.major}{sys.version_info.minor}"


def nvrtc_library(directory: Path, release: NvrtcRelease) -> Path:
    return directory / f"nvrtc-{release.release}" / release.library


def cuda_python_site(directory: Path, release: str, tag: str | None = None) -> Path:
    """The virtual environment of one cuda-python release for this Python version."""
    return directory / f"cuda-python-{release}-{tag or python_tag()}"


def site_python(site: Path) -> Path:
    return site / "bin" / "python"


# --------------------------------------------------------------------------------------------------
# install


def _pip(*args: str) -> None:
    pip = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-warn-conflicts"]
    subprocess.run([*pip, *args], check=True)


def install(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for release in NVRTC_RELEASES:
        if not nvrtc_library(directory, release).is_file():
            print(f"NVRTC {release.release}: {release.requirement}", file=sys.stderr)
            _pip("--no-deps", "--target", str(directory / f"nvrtc-{release.release}"), release.requirement)
    base = sysconfig.get_paths()["purelib"]  # this environment: the project and everything else it needs
    for release, requirements in CUDA_PYTHON_RELEASES.items():
        site = cuda_python_site(directory, release)
        if site_python(site).exists():
            continue
        print(f"cuda-python {release}: {' '.join(requirements)}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(site)], check=True)
        purelib = subprocess.run([str(site_python(site)), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                  "['purelib'])"], check=True, capture_output=True, text=True).stdout.strip()
        _pip("--target", purelib, *requirements)
        # A regular package found anywhere on sys.path wins over a namespace package: cuda-bindings 12.9/13 install
        # ``cuda`` as a namespace, and a base environment with cuda-python 12.6 (a regular ``cuda``) would shadow it.
        Path(purelib, "cuda", "__init__.py").touch()
        # After its own site-packages, so that its cuda-python is the one imported.
        Path(purelib, "zz_trt_res2net_base.pth").write_text(f"import site; site.addsitedir({base!r})\n")


def installed(directory: Path) -> dict:
    return {
        "nvrtc": {r.release: str(nvrtc_library(directory, r)) for r in NVRTC_RELEASES
                  if nvrtc_library(directory, r).is_file()},
        "cuda_python": {r: str(cuda_python_site(directory, r)) for r in CUDA_PYTHON_RELEASES
                        if site_python(cuda_python_site(directory, r)).exists()},
    }


# --------------------------------------------------------------------------------------------------
# the NVRTC table


def compile_row(library: str | None) -> dict:
    """In this process: load ``library`` (None: whatever cuda-python finds) and compile the kernels for every
    target as a GPU of that compute capability would have them compiled. Returns the row as JSON-ready data."""
    import ctypes

    if library:
        # NVRTC 13.0 opens its builtins library by name: where a toolkit is installed, the library path finds it.
        for builtins in sorted(Path(library).parent.glob("libnvrtc-builtins.so.*")):
            ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(library, mode=ctypes.RTLD_GLOBAL)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from trt_res2net.core.errors import UserError
    from trt_res2net.cuda import kernels

    version = kernels.nvrtc_version()
    supported = kernels.nvrtc_supported_archs()
    source = kernels.kernel_source()
    cells = {}
    for cc, _ in TARGETS:
        key = f"{cc[0]}.{cc[1]}"
        try:
            output, arch = kernels.choose_target(cc, supported)
        except ValueError:
            cells[key] = {"result": "unsupported"}
            continue
        try:
            image = kernels.compile_source(source, arch, output)
        except UserError as e:
            cells[key] = {"result": "fails", "output": output, "arch": arch, "error": str(e)}
            continue
        missing = [k for k in (kernels.PREPROCESS_KERNEL, kernels.TOPK_KERNEL) if k.encode() not in image]
        cells[key] = {"result": "fails" if missing else "compiles", "output": output, "arch": arch,
                      "bytes": len(image), **({"error": f"no {', '.join(missing)} in the image"} if missing else {})}
    return {"nvrtc": f"{version[0]}.{version[1]}", "library": library, "supported_archs": supported, "cells": cells}


def _bindings_major(python: str) -> int | None:
    """The major version of the cuda-python that ``python`` imports (None: none)."""
    done = subprocess.run([python, "-c", "from cuda.bindings import __version__ as v; print(v)"],
                          capture_output=True, text=True)
    return int(done.stdout.split(".")[0]) if done.returncode == 0 and done.stdout.strip() else None


def _python_for(directory: Path, major: int) -> str | None:
    """A python whose cuda-python loads NVRTC of this major version (12.x bindings load libnvrtc.so.12 only):
    this one when its release fits, else the toolchain's release of that major."""
    if _bindings_major(sys.executable) == major:
        return sys.executable
    site = site_python(cuda_python_site(directory, "12.9" if major == 12 else str(major)))
    return str(site) if site.exists() else None


def nvrtc_rows(directory: Path, include_installed: bool = True) -> list[dict]:
    """One row per NVRTC release found (each in its own process, under a cuda-python of its major version), and
    the one this environment's cuda-python finds by itself."""
    libraries: list[tuple[str, str | None, str | None]] = [
        (r.who, str(nvrtc_library(directory, r)), _python_for(directory, int(r.release.split(".")[0])))
        for r in NVRTC_RELEASES if nvrtc_library(directory, r).is_file()]
    if include_installed:
        libraries.append(("this environment", None, sys.executable))
    rows = []
    for who, library, python in libraries:
        if python is None:
            rows.append({"nvrtc": "?", "who": who, "library": library, "cells": {},
                         "error": "no cuda-python of its major version: python tools/cuda_matrix.py install"})
            continue
        cmd = [python, __file__, "_row"] + (["--library", library] if library else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"nvrtc": "?", "who": who, "library": library, "error": last, "cells": {}})
            continue
        rows.append({**json.loads(done.stdout), "who": who})
    return rows


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "?"
    if cell["result"] == "unsupported":
        return "—"
    if cell["result"] == "fails":
        return "FAILS"
    return "cubin" if cell["output"] == "cubin" else f"PTX {cell['arch'].removeprefix('compute_')}"


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per NVRTC, one column per target GPU."""
    head = "| NVRTC | shipped by | " + " | ".join(f"{cc[0]}.{cc[1]} {name}" for cc, name in TARGETS) + " |"
    lines = [head, "|" + "---|" * (len(TARGETS) + 2)]
    for row in rows:
        cells = [_cell_text(row["cells"].get(f"{cc[0]}.{cc[1]}")) if row["cells"] else "?" for cc, _ in TARGETS]
        lines.append(f"| {row['nvrtc']} | {row['who']} | " + " | ".join(cells) + " |")
    failures = [(row, key, cell) for row in rows for key, cell in row["cells"].items() if cell["result"] == "fails"]
    failures += [(row, None, {"error": row["error"]}) for row in rows if "error" in row]
    for row, key, cell in failures:
        lines.append(f"\nNVRTC {row['nvrtc']}{f' for {key}' if key else ''}: {cell['error']}")
    return "\n".join(lines)


def write_block(path: Path, table: str) -> None:
    """Replace what lies between BEGIN and END in ``path`` with ``table``."""
    text = path.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def read_block(path: Path) -> str:
    return path.read_text().split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the toolchains live (%(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install the NVRTC wheels and cuda-python releases")
    sub.add_parser("list", help="print what is installed, as JSON")
    table = sub.add_parser("nvrtc", help="compile the kernels with every NVRTC; print the table")
    table.add_argument("--json", type=Path, help="also write the rows as JSON")
    table.add_argument("--no-installed", action="store_true", help="leave out the NVRTC of this environment")
    table.add_argument("--write", type=Path, metavar="MD", help="replace the table block in this Markdown file")
    row = sub.add_parser("_row", help=argparse.SUPPRESS)
    row.add_argument("--library")
    args = parser.parse_args(argv)
    if args.command == "install":
        install(args.dir)
        print(json.dumps(installed(args.dir), indent=2))
    elif args.command == "list":
        print(json.dumps(installed(args.dir), indent=2))
    elif args.command == "_row":
        print(json.dumps(compile_row(args.library)))
    else:
        rows = nvrtc_rows(args.dir, include_installed=not args.no_installed)
        print(format_table(rows))
        if args.write:
            write_block(args.write, format_table(rows))
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
        bad = any("error" in r or any(c["result"] == "fails" for c in r["cells"].values()) for r in rows)
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
