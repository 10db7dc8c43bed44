"""The README's Jetson install, run as written in a simulated JetPack 6: a Python 3.10 (JetPack 6's) whose own
site-packages holds what JetPack's apt packages put there — numpy 1.x (with its package metadata, as
python3-numpy has), an OpenCV with no pip metadata (as JetPack's nvidia-opencv) and a ``tensorrt`` module with none
(as python3-libnvinfer) — and the README's lines in a copy of the checkout. After them the venv imports JetPack's
cv2, numpy 1.x and tensorrt from the system, pip has installed no OpenCV, numpy or TensorRT of its own, and
infer.py classifies photographs on the CPU.

The base interpreter is a copy of pyenv's 3.10, so that the simulated system packages go into a site-packages of
its own; pip downloads the rest from PyPI, as on a Jetson.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "### Jetson (JetPack 6)"
REQUIRED = bool(os.environ.get("TRT_RES2NET_REQUIRE_TOOLCHAINS"))

pytestmark = pytest.mark.slow


def _pyenv_310() -> Path | None:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob("3.10.*/bin/python3.10"))
    return found[-1].parents[1] if found else None


def readme_jetson_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"{SECTION}\n")
    end = text.find("\n#", start + len(SECTION))
    block = re.search(r"```bash\n(.*?)```", text[start:end], flags=re.S)
    assert block, f"no bash block under {SECTION!r} in the README"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _run(argv, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def jetpack(tmp_path_factory) -> dict:
    """The simulated JetPack: its python, its site-packages, and an environment with it first on PATH."""
    source = _pyenv_310()
    if source is None:
        (pytest.fail if REQUIRED else pytest.skip)("no Python 3.10 under pyenv (JetPack 6's Python)")
    base = tmp_path_factory.mktemp("jetpack") / "usr"
    shutil.copytree(source, base, symlinks=True)
    python = base / "bin" / "python3.10"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PIP_"))}
    env["PATH"] = f"{base / 'bin'}:{env['PATH']}"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base,
                     env).stdout.strip())
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    _run([*pip, "numpy==1.26.4"], base, env)  # python3-numpy: numpy 1.x, with its metadata
    _run([*pip, "opencv-python-headless==4.11.0.86"], base, env)  # built against numpy 1, like JetPack's cv2
    for meta in site.glob("opencv_python_headless-*.dist-info"):
        shutil.rmtree(meta)  # JetPack's OpenCV comes from apt: pip sees no distribution
    (site / "tensorrt").mkdir()
    (site / "tensorrt" / "__init__.py").write_text('__version__ = "10.3.0"  # stands for python3-libnvinfer\n')
    return {"python": python, "site": site, "env": env}


@pytest.fixture(scope="module")
def installed(jetpack, tmp_path_factory) -> Path:
    """A copy of the checkout (what a fresh clone holds) after the README's Jetson lines."""
    checkout = tmp_path_factory.mktemp("clone") / "trt_res2net"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    script = "set -e\n" + "\n".join(readme_jetson_lines()) + "\n"
    _run(["bash", "-c", script], checkout, jetpack["env"])
    return checkout


def _venv_python(checkout: Path) -> Path:
    return checkout / ".venv" / "bin" / "python"


def test_the_readme_lines_keep_jetpacks_opencv_numpy_and_tensorrt(jetpack, installed):
    code = ("import cv2, numpy, tensorrt, sys; print(cv2.__file__); print(numpy.__file__); print(tensorrt.__file__);"
            "print(numpy.__version__); print(sys.version_info[:2]); import cv2; print(cv2.__version__)")
    out = _run([_venv_python(installed), "-c", code], installed, jetpack["env"]).stdout.split("\n")
    cv2_file, numpy_file, trt_file, numpy_version, version, cv2_version = out[:6]
    site = str(jetpack["site"])
    assert cv2_file.startswith(site), cv2_file  # JetPack's cv2, not a pip OpenCV in the venv
    assert trt_file.startswith(site), trt_file
    assert int(numpy_version.split(".")[0]) == 1, numpy_version
    assert version == "(3, 10)" and cv2_version.startswith("4.11")
    listed = _run([_venv_python(installed), "-m", "pip", "list", "--local", "--format=freeze"], installed,
                  jetpack["env"]).stdout.lower()
    for name in ("opencv", "tensorrt", "numpy==2"):
        assert name not in listed, listed
    assert re.search(r"^cuda-python==12\.", listed, re.M), listed
    assert numpy_file.startswith((site, str(installed / ".venv"))), numpy_file


def test_infer_py_classifies_photographs_there_as_here(jetpack, installed, tiny_onnx):
    photos = installed / "photos"
    photos.mkdir(exist_ok=True)
    for photo in sorted((ROOT / "tests" / "data").glob("*.jpg")):
        shutil.copy(photo, photos)
    done = _run([_venv_python(installed), "infer.py", tiny_onnx, "photos", "--topk", "5", "--json", "there.json"],
                installed, jetpack["env"])
    assert "Traceback" not in done.stderr
    here = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(tiny_onnx), "photos", "--topk", "5",
                           "--json", "here.json"], capture_output=True, text=True, cwd=installed)
    assert here.returncode == 0, here.stderr
    there, ours = (json.loads((installed / name).read_text()) for name in ("there.json", "here.json"))
    assert len(there) == 4
    for a, b in zip(there, ours, strict=True):
        assert a["image"] == b["image"]
        assert [t["class_id"] for t in a["topk"]] == [t["class_id"] for t in b["topk"]]
        assert max(abs(s["score"] - t["score"]) for s, t in zip(a["topk"], b["topk"], strict=True)) <= 2e-6
