#!/usr/bin/env python3
"""Which pipeline stage of ``trt_res2net`` imports which, as a Mermaid flowchart, from grimp's import graph.

    python tools/import_graph.py                                  # print the block
    python tools/import_graph.py --check docs/architecture.md     # exit 1 if the block there is stale
    python tools/import_graph.py --write docs/architecture.md     # replace the block there

A stage is a subpackage ``trt_res2net.<stage>``; its node says how many modules it holds (its ``__init__``
included). There is an edge A --> B when any module of A imports any module of B, at module level or inside a
function (grimp sees both). The top-level ``trt_res2net`` module itself is left out. The block is what lies
between ``<!-- import-graph:begin -->`` and ``<!-- import-graph:end -->`` in the file: a ```mermaid fence.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "trt_res2net"
BEGIN = "<!-- import-graph:begin -->"
END = "<!-- import-graph:end -->"
# Top to bottom as in the layers contract of pyproject.toml; a stage not listed here goes last, by name.
STAGE_ORDER = ("cli", "serving", "runtime", "engine", "precision", "cuda", "model", "data", "core")
_RANK = {stage: i for i, stage in enumerate(STAGE_ORDER)}


def stage_graph(package: str = PACKAGE) -> tuple[Counter, set[tuple[str, str]]]:
    """(modules per stage, the (importer, imported) pairs of different stages)."""
    if str(ROOT) not in sys.path:  # this checkout's package, whatever is installed
        sys.path.insert(0, str(ROOT))
    import grimp

    graph = grimp.build_graph(package, cache_dir=None)
    stage_of = {m: m.split(".")[1] for m in graph.modules if m.count(".") >= 1}
    edges = set()
    for module, stage in stage_of.items():
        for imported in graph.find_modules_directly_imported_by(module):
            other = stage_of.get(imported)
            if other is not None and other != stage:
                edges.add((stage, other))
    return Counter(stage_of.values()), edges


def mermaid_block(package: str = PACKAGE) -> str:
    """The fenced Mermaid flowchart (no markers), newline-terminated; sorted, so the same imports give the same text."""
    counts, edges = stage_graph(package)

    def key(stage: str):
        return _RANK.get(stage, len(_RANK)), stage

    lines = ["```mermaid", "flowchart TD"]
    for stage in sorted(counts, key=key):
        n = counts[stage]
        lines.append(f'    {stage}["{stage} ({n} module{"" if n == 1 else "s"})"]')
    for a, b in sorted(edges, key=lambda e: (key(e[0]), key(e[1]))):
        lines.append(f"    {a} --> {b}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def split_markers(text: str, path: Path) -> tuple[str, str, str]:
    """(before and including BEGIN's line, the block, from END on); SystemExit with one line when malformed."""
    begin, end = text.find(BEGIN), text.find(END)
    if begin < 0 or end < 0 or end < begin or text.count(BEGIN) != 1 or text.count(END) != 1:
        raise SystemExit(f"{path}: needs exactly one {BEGIN} followed by one {END}")
    head_end = text.find("\n", begin)
    head_end = len(text) if head_end < 0 or head_end > end else head_end + 1
    return text[:head_end], text[head_end:end], text[end:]


def check(path: Path, block: str) -> int:
    _, current, _ = split_markers(path.read_text(encoding="utf-8"), path)
    if current.strip() != block.strip():
        print(f"{path}: the import graph is out of date; run: python tools/import_graph.py --write {path}",
              file=sys.stderr)
        return 1
    return 0


def write(path: Path, block: str) -> None:
    """Replace the block between the markers, atomically (a temporary file beside it, then os.replace)."""
    head, current, tail = split_markers(path.read_text(encoding="utf-8"), path)
    if current == block:
        return
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(head + block + tail)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--check", metavar="FILE", type=Path, help="exit 1 if FILE's block differs from the imports")
    group.add_argument("--write", metavar="FILE", type=Path, help="replace the block between the markers in FILE")
    args = parser.parse_args(argv)
    block = mermaid_block()
    if args.check:
        return check(args.check, block)
    if args.write:
        write(args.write, block)
        return 0
    sys.stdout.write(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
