#!/usr/bin/env python3
"""Which pipeline stage of ``trt_res2net`` imports which, as a Mermaid flowchart, from grimp's import graph; and
each stage's plan → run shape with the artefact types, from the package's public API.

    python tools/import_graph.py                                  # print the blocks
    python tools/import_graph.py --check docs/architecture.md     # exit 1 if a block there is stale
    python tools/import_graph.py --write docs/architecture.md     # replace the blocks there

A stage is a subpackage ``trt_res2net.<stage>``; its node says how many modules it holds (its ``__init__``
included). There is an edge A --> B when any module of A imports any module of B, at module level or inside a
function (grimp sees both). The top-level ``trt_res2net`` module itself is left out. The block is what lies
between ``<!-- import-graph:begin -->`` and ``<!-- import-graph:end -->`` in the file: a ```mermaid fence.

The stages block, between ``<!-- stages:begin -->`` and ``<!-- stages:end -->`` where the file has them: every
``plan_<stage>`` of ``trt_res2net.__all__`` with its ``run_<stage>`` and the types they return, and every artefact
type of the package (a class with ``FORMAT`` and ``SCHEMA_VERSION``), with its format and version.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "trt_res2net"
BEGIN = "<!-- import-graph:begin -->"
END = "<!-- import-graph:end -->"
STAGES_BEGIN = "<!-- stages:begin -->"
STAGES_END = "<!-- stages:end -->"
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


def _returns(function) -> str:
    """The return annotation as written (the package's modules postpone their annotations)."""
    hint = inspect.signature(function).return_annotation
    return hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))


def _artifact_types(package: str = PACKAGE) -> list[type]:
    """Classes of the package with a FORMAT and a SCHEMA_VERSION of their own (the Triton models' files run
    inside Triton's Python backend, not here, and are left out)."""
    root = importlib.import_module(package)
    found = {}
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        if ".triton_models" in info.name:
            continue
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and "FORMAT" in vars(cls) and "SCHEMA_VERSION" in vars(cls):
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[k] for k in sorted(found)]


def stages_block(package: str = PACKAGE) -> str:
    """Markdown: each stage's plan and run with what they return, then the artefact types."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    api = importlib.import_module(package)
    lines = ["| stage | plan (pure: every refusal) | returns | run (the work) | returns |",
             "| --- | --- | --- | --- | --- |"]
    for name in api.__all__:
        if not name.startswith("plan_"):
            continue
        stage = name.removeprefix("plan_")
        plan, run = getattr(api, name), getattr(api, f"run_{stage}")
        module = plan.__module__.removeprefix(f"{package}.")
        lines.append(f"| {stage} | `{module}.{name}` | `{_returns(plan)}` | `run_{stage}` | `{_returns(run)}` |")
    lines += ["", "| artefact | module | `format` | `format_version` |", "| --- | --- | --- | --- |"]
    for cls in _artifact_types(package):
        module = cls.__module__.removeprefix(f"{package}.")
        lines.append(f"| `{cls.__qualname__}` | `{module}` | `{cls.FORMAT}` | {cls.SCHEMA_VERSION} |")
    return "\n".join(lines) + "\n"


def split_markers(text: str, path: Path, begin_marker: str = BEGIN, end_marker: str = END) -> tuple[str, str, str]:
    """(before and including BEGIN's line, the block, from END on); SystemExit with one line when malformed."""
    begin, end = text.find(begin_marker), text.find(end_marker)
    if begin < 0 or end < 0 or end < begin or text.count(begin_marker) != 1 or text.count(end_marker) != 1:
        raise SystemExit(f"{path}: needs exactly one {begin_marker} followed by one {end_marker}")
    head_end = text.find("\n", begin)
    head_end = len(text) if head_end < 0 or head_end > end else head_end + 1
    return text[:head_end], text[head_end:end], text[end:]


def _blocks(path: Path) -> list[tuple[str, str, str, str]]:
    """(what, begin, end, text) of each block the file holds: the import graph always, the stages where marked."""
    blocks = [("the import graph", BEGIN, END, mermaid_block())]
    if STAGES_BEGIN in path.read_text(encoding="utf-8"):
        blocks.append(("the stages table", STAGES_BEGIN, STAGES_END, stages_block()))
    return blocks


def check(path: Path) -> int:
    for what, begin, end, block in _blocks(path):
        _, current, _ = split_markers(path.read_text(encoding="utf-8"), path, begin, end)
        if current.strip() != block.strip():
            print(f"{path}: {what} is out of date; run: python tools/import_graph.py --write {path}",
                  file=sys.stderr)
            return 1
    return 0


def write(path: Path) -> None:
    for _, begin, end, block in _blocks(path):
        _write_block(path, block, begin, end)


def _write_block(path: Path, block: str, begin: str, end: str) -> None:
    """Replace the block between the markers, atomically (a temporary file beside it, then os.replace)."""
    head, current, tail = split_markers(path.read_text(encoding="utf-8"), path, begin, end)
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
    group.add_argument("--check", metavar="FILE", type=Path, help="exit 1 if a block of FILE differs from the code")
    group.add_argument("--write", metavar="FILE", type=Path, help="replace the blocks between the markers in FILE")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.check)
    if args.write:
        write(args.write)
        return 0
    sys.stdout.write(mermaid_block() + "\n" + stages_block())
    return 0


if __name__ == "__main__":
    sys.exit(main())
