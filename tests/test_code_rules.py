"""Rules of the code base a reader can check by running this file: the library speaks through one logger (no
print outside cli/; core/log writes the lines)."""

from __future__ import annotations

import ast
import re
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


# --------------------------------------------------------------------------------------------------------
# Size: no library module over 500 lines, no function over 60 (a long one is several jobs)

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _oversized():
    found = []
    for relative, tree in _all_modules():
        lines = len((PACKAGE / relative).read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            found.append(f"{relative}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{relative}:{node.lineno} {node.name}(): {length} lines")
    return found


def _all_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE), ast.parse(path.read_text(encoding="utf-8"))


def test_no_module_over_500_lines_and_no_function_over_60():
    assert _oversized() == []


# --------------------------------------------------------------------------------------------------------
# The library speaks in option fields (EngineOptions.max_batch), not in a command's flags (--max-batch): each CLI
# shows a refusal with its own flags (cli/common.FieldFlags)

_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


# Exempt: one argument of another program's command line (trtexec's ``--saveEngine=``, tritonserver's
# ``--http-port=``: the library builds those), and a command line quoted whole for the user to run
# (``build.py --triton-repo DIR``, ``pip install … --index-url …``).
_ARGUMENT = re.compile(r"--[\w-]+(=.*)?")
_QUOTED_COMMAND = re.compile(r"\b(?:build\.py|infer\.py|serve\.py|pip install|trtexec|polygraphy)\b[^;:()]*")


def _docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                yield first.value


def _flags_in_library_strings():
    """Strings of the library outside cli/ (messages, warnings, notes, what a plan records; not docstrings) that
    name a ``--flag``."""
    found = []
    for relative, tree in _library_modules():
        docstrings = {id(node) for node in _docstrings(tree)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in docstrings:
                continue
            if _ARGUMENT.fullmatch(node.value):
                continue
            for flag in _FLAG.findall(_QUOTED_COMMAND.sub("", node.value)):
                found.append(f"{relative}:{node.lineno} {flag}")
    return found


def test_no_library_string_outside_cli_names_a_flag():
    """The library names option fields (``EngineOptions.max_batch``); each command shows them as its flags."""
    assert _flags_in_library_strings() == []


def _commands():
    import importlib

    for path in sorted((PACKAGE / "cli").glob("*.py")):
        module = importlib.import_module(f"trt_res2net.cli.{path.stem}")
        if hasattr(module, "FLAGS") and hasattr(module, "build_parser"):
            yield path.stem, module.FLAGS, module.build_parser()


def test_each_commands_field_table_names_its_own_flags():
    """Every flag of a command's table (cli/common.FieldFlags) is one of its parser's, with the dest the table
    reads; every field names an options class's field or a stage function's parameter."""
    import dataclasses
    import inspect

    import trt_res2net as tr
    from trt_res2net.data.calibration_set import CalibrationImages, synthetic_calibration_images

    owners = {name: getattr(tr, name) for name in tr.__all__}
    owners.update(CalibrationImages=CalibrationImages, synthetic_calibration_images=synthetic_calibration_images)
    checked = 0
    for command, flags, parser in _commands():
        dests = {option: action.dest for action in parser._actions for option in action.option_strings}
        for field, flag in flags.table.items():
            assert dests.get(flag) == flags.dest(flag), f"{command}: {flag} ({field})"
            owner, name = field.split(".")
            target = owners.get(owner)
            assert target is not None, f"{command}: {field}: no {owner} in trt_res2net"
            names = ({f.name for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target)
                     else set(inspect.signature(target).parameters))
            assert name in names, f"{command}: {field}"
            checked += 1
    assert checked > 0


# --------------------------------------------------------------------------------------------------------
# No import circles between modules, the imports inside functions included (grimp's graph has both); the layers
# contract (tests/test_layers.py) orders the stages, this orders the modules within one


def _import_cycles():
    import grimp

    graph = grimp.build_graph("trt_res2net", cache_dir=None)
    imports = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in sorted(graph.modules)}
    order, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(module):  # Tarjan's strongly connected components
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for imported in imports[module]:
            if imported not in order:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], order[imported])
        if low[module] == order[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in imports:
        if module not in order:
            visit(module)
    return cycles


def test_no_import_circles():
    assert _import_cycles() == []
