"""The pipeline stages import only downward (docs/architecture.md): lint-imports keeps the contract in pyproject.toml
and catches an upward import, the import diagram in docs/architecture.md is current, argparse stays in cli/."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11) or tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "trt_res2net"
TOOL = ROOT / "tools" / "import_graph.py"
DOC = ROOT / "docs" / "architecture.md"


def _lint_imports() -> Path:
    pytest.importorskip("importlinter", reason="import-linter is not installed (the dev extra)")
    bin_dir = Path(sys.executable).parent
    for name in ("lint-imports", "lint-imports.exe"):
        if (bin_dir / name).is_file():
            return bin_dir / name
    pytest.skip(f"import-linter is installed but there is no lint-imports in {bin_dir}")


def _run(cmd, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")])))
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return contract


def test_contract_lists_every_stage():
    layers = [stage.strip() for layer in _contract()["layers"] for stage in layer.split("|")]
    stages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert sorted(layers) == stages
    assert layers[0] == "cli" and layers[-1] == "core"


def test_lint_imports_passes():
    result = _run([_lint_imports(), "--no-cache"], cwd=ROOT, pythonpath=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_lint_imports_catches_an_upward_import(tmp_path):
    lint_imports = _lint_imports()
    copy = tmp_path / "trt_res2net"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "core" / "hashing.py", "a", encoding="utf-8") as f:
        f.write("\nfrom ..cli import common  # deliberately upward\n")
    # The same configuration as the repository's: its pyproject.toml, whose [tool.importlinter] lint-imports reads.
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _contract()["layers"][0] == "cli"

    result = _run([lint_imports, "--no-cache"], cwd=tmp_path, pythonpath=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "BROKEN" in output
    assert "trt_res2net.core" in output and "trt_res2net.cli" in output
    assert "trt_res2net.core.hashing -> trt_res2net.cli.common" in output  # the copy was analysed, not the repo


def test_import_diagram_is_current():
    result = subprocess.run([sys.executable, str(TOOL), "--check", str(DOC)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_diagram_check_and_write(tmp_path):
    """--check names a stale block in one line and exits 1; --write replaces only the block."""
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- import-graph:begin -->\nstale\n<!-- import-graph:end -->\noutro\n", encoding="utf-8")
    check = [sys.executable, str(TOOL), "--check", str(doc)]
    stale = subprocess.run(check, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert stale.returncode == 1
    assert len(stale.stderr.strip().splitlines()) == 1 and "--write" in stale.stderr
    subprocess.run([sys.executable, str(TOOL), "--write", str(doc)], cwd=tmp_path, check=True, timeout=60)
    assert subprocess.run(check, cwd=tmp_path, timeout=60).returncode == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("intro\n<!-- import-graph:begin -->\n```mermaid\nflowchart TD\n")
    assert text.endswith("```\n<!-- import-graph:end -->\noutro\n")
    assert "    cli --> engine\n" in text and "    data --> core\n" in text
    assert "core -->" not in text  # core imports no other stage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.md"]  # no temporary file left


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" not in path.parts:
            yield path, path.read_text(encoding="utf-8")


def test_argparse_only_in_cli():
    outside = []
    for path, text in _modules():
        rel = path.relative_to(PACKAGE)
        for node in ast.walk(ast.parse(text, str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "argparse" or n.startswith("argparse.") for n in names) and rel.parts[0] != "cli":
                outside.append(f"{rel}:{node.lineno}")
    assert not outside, f"argparse imported outside trt_res2net/cli/: {outside}"


def test_no_module_reads_options_from_args_by_name():
    offenders = [str(path.relative_to(ROOT)) for path, text in _modules() if "getattr(args" in text]
    assert not offenders, f"getattr(args ...) in {offenders}: map flags onto options in cli/ explicitly"
