"""Rules of the code base a reader can check by running this file: the library speaks through one logger (no
print outside cli/; core/log writes the lines)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "trt_res2net"


def _library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "cli":  # the command lines print their results and errors
            continue
        yield relative, ast.parse(path.read_text(encoding="utf-8"))


def test_the_library_prints_nothing_itself():
    """Results, notes and warnings go through trt_res2net.core.log (warnings collapsed, --quiet silences them)."""
    printing = [f"{relative}:{node.lineno}" for relative, tree in _library_modules() for node in ast.walk(tree)
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert printing == []
