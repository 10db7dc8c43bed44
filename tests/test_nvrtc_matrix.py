"""The preprocessing and top-k kernels compile with every NVRTC the project meets — 12.2 (JetPack 6.0), 12.6
(JetPack 6.1/6.2), 12.9 (the last CUDA 12), 13.0 (JetPack 7) and this environment's — for every GPU it can meet,
through the project's own target choice and compile call (tools/cuda_matrix.py, each NVRTC loaded by path in its
own process); docs/cuda_toolchains.md holds the table these rows make."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import cuda_matrix  # noqa: E402

REQUIRED = bool(os.environ.get("TRT_RES2NET_REQUIRE_TOOLCHAINS"))
TOOLCHAINS = Path(os.environ.get("TRT_RES2NET_CUDA_TOOLCHAINS", cuda_matrix.DEFAULT_DIR))
DOC = ROOT / "docs" / "cuda_toolchains.md"


@pytest.fixture(scope="module")
def rows():
    missing = [r.release for r in cuda_matrix.NVRTC_RELEASES
               if not cuda_matrix.nvrtc_library(TOOLCHAINS, r).is_file()]
    if missing:
        message = f"NVRTC {', '.join(missing)} not in {TOOLCHAINS}: python tools/cuda_matrix.py install"
        (pytest.fail if REQUIRED else pytest.skip)(message)
    return cuda_matrix.nvrtc_rows(TOOLCHAINS, include_installed=False)


def _cc(key: str) -> int:
    major, minor = key.split(".")
    return int(major) * 10 + int(minor)


def test_every_release_loads_the_nvrtc_it_names(rows):
    assert [row["nvrtc"] for row in rows] == [r.release for r in cuda_matrix.NVRTC_RELEASES]
    assert all("error" not in row for row in rows), rows


def test_every_target_compiles_to_what_the_gpu_runs(rows):
    for row in rows:
        supported = row["supported_archs"]
        for key, cell in row["cells"].items():
            cc = _cc(key)
            if not any(a <= cc for a in supported):  # e.g. Xavier (7.2) after CUDA 12: no target at all
                assert cell["result"] == "unsupported", (row["nvrtc"], key, cell)
                continue
            assert cell["result"] == "compiles", (row["nvrtc"], key, cell)
            # The GPU's own CUBIN where this NVRTC knows the GPU, else PTX of the newest architecture below it.
            expected = f"sm_{cc}" if cc in supported else f"compute_{max(a for a in supported if a <= cc)}"
            assert cell["arch"] == expected, (row["nvrtc"], key, cell)


def test_jetson_and_server_gpus_get_their_own_cubin_from_every_release(rows):
    by_release = {row["nvrtc"]: row["cells"] for row in rows}
    for release in ("12.2", "12.6", "12.9"):
        for key in ("7.2", "8.7", "7.5", "8.0", "8.6", "8.9", "9.0"):  # Xavier, Orin, Turing..Hopper
            assert by_release[release][key]["output"] == "cubin", (release, key)
    for key in ("10.0", "12.0", "12.1"):  # Blackwell, from the first release that knows it
        assert by_release["12.9"][key]["output"] == "cubin" and by_release["13.0"][key]["output"] == "cubin"
    assert by_release["13.0"]["11.0"]["output"] == "cubin"  # Thor under JetPack 7
    assert by_release["13.0"]["7.2"]["result"] == "unsupported"  # CUDA 13 dropped Volta and Xavier


def test_the_documented_table_is_the_measured_one(rows):
    assert cuda_matrix.read_block(DOC) == cuda_matrix.format_table(rows), (
        "docs/cuda_toolchains.md is stale: python tools/cuda_matrix.py nvrtc --no-installed --write "
        "docs/cuda_toolchains.md")
