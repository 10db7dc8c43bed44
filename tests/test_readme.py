"""The README's "Use from Python" examples, run as written: extracted from README.md and executed in order as one
script, in a fresh interpreter, in a folder with ``photos/`` and ``calib_images/`` (the README says so) — ONNX Runtime
for the classifier, NVIDIA's real TensorRT-RTX builder for the engine, ModelOpt for FP16/INT8, tritonclient's proto
for the repository. The GPU block prints what is missing where there is no GPU."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trt_fakes import write_images  # isort: skip

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def readme_python_blocks(section: str = "Use from Python") -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], flags=re.S)


def _require(module: str, extra: str) -> None:
    if os.environ.get("TRT_RES2NET_REQUIRE_RTX"):  # CI installs every extra these examples use
        __import__(module)
    else:
        pytest.importorskip(module, reason=f"the README's examples need the {extra} extra")


def test_readme_has_an_example_per_step():
    blocks = "\n".join(readme_python_blocks())
    for call in ("tr.export_onnx(", "tr.convert_precision(", "tr.plan_engine(", "tr.run_engine(", "tr.Classifier(",
                 ".classify(", ".classify_image(", ".predict(", "tr.benchmark_engine(", "tr.write_triton_repository("):
        assert call in blocks, call


def test_every_name_the_readme_uses_is_public():
    import trt_res2net

    used = set(re.findall(r"\btr\.(\w+)", "\n".join(readme_python_blocks())))
    assert used <= set(trt_res2net.__all__), used - set(trt_res2net.__all__)


@pytest.mark.slow
def test_use_from_python_runs_as_written(tmp_path):
    for module, extra in (("tensorrt_rtx", "rtx"), ("modelopt.onnx.quantization", "quant"),
                          ("tritonclient", "triton")):
        _require(module, extra)
    photos = tmp_path / "photos"
    photos.mkdir()
    for jpg in sorted(DATA.glob("*.jpg"))[:3]:
        shutil.copy(jpg, photos / jpg.name)
    write_images(tmp_path / "calib_images", n=16, seed=5, size=(320, 240))
    script = tmp_path / "readme_example.py"
    script.write_text("\n".join(readme_python_blocks()))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "engines/res2net50_vd_26w_4s.onnx" in out
    assert f"({len(list(photos.iterdir()))}, 1000)" in out  # predict() on the preprocessed batch
    assert (tmp_path / "engines" / "res2net50_vd_26w_4s_fp16.onnx").is_file()
    assert (tmp_path / "engines" / "res2net50_vd_26w_4s_int8.onnx").is_file()
    assert (tmp_path / "engines" / "res2net50_vd_26w_4s_fp16_b8.rtx.engine").is_file()
    assert (tmp_path / "triton_repo" / "res2net50_vd_26w_4s_python" / "config.pbtxt").is_file()
    assert "not run here:" in out or "latency in ms" in out  # the GPU block: run, or why not
