"""The public API as an editor and a type checker see it: every name of ``trt_res2net.__all__`` is importable,
declared for static analysis in the package's ``TYPE_CHECKING`` block (the run-time import stays lazy), typed, and
the package ships ``py.typed``; mypy accepts the README's chain of calls and refuses a wrong one."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import trt_res2net as tr

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "trt_res2net" / "__init__.py"


def _type_checking_names() -> set[str]:
    tree = ast.parse(INIT.read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
                 "TYPE_CHECKING")
    return {alias.asname or alias.name for node in block.body if isinstance(node, ast.ImportFrom)
            for alias in node.names}


def test_every_public_name_is_declared_for_type_checkers_and_loads():
    assert set(tr.__all__) == {"__version__", *tr._API}
    assert _type_checking_names() == set(tr._API)
    for name in tr.__all__:
        assert getattr(tr, name) is not None, name
    assert (ROOT / "trt_res2net" / "py.typed").is_file()


def test_each_step_has_typed_parameters_and_returns_its_result_type():
    expected = {"export_onnx": "ExportedOnnx", "plan_export": "ExportPlan", "run_export": "ExportedOnnx",
                "convert_precision": "ConvertedOnnx", "build_engine": "BuiltEngine",
                "benchmark_engine": "BenchmarkReport", "write_triton_repository": "TritonRepository"}
    for name, result in expected.items():
        signature = inspect.signature(getattr(tr, name))
        assert signature.return_annotation == result, name
        assert result in tr.__all__
        untyped = [p.name for p in signature.parameters.values() if p.annotation is inspect.Parameter.empty]
        assert not untyped, (name, untyped)


USAGE = """
    from pathlib import Path

    import trt_res2net as tr

    onnx: tr.ExportedOnnx = tr.export_onnx("res2net50_vd_26w_4s", "m.onnx", random_weights=True)
    plan: tr.ExportPlan = tr.plan_export(tr.ExportOptions("res2net50_vd_26w_4s", random_weights=True, path="m.onnx"))
    onnx = tr.run_export(plan)
    target: Path = plan.path
    fp16: tr.ConvertedOnnx = tr.convert_precision(onnx.path, "fp16")
    built: tr.BuiltEngine = tr.build_engine(fp16, options=tr.EngineOptions(family="tensorrt-rtx", max_batch=8))
    engine: Path = built.path
    repo: tr.TritonRepository = tr.write_triton_repository("repo", onnx.path, options=tr.TritonOptions(topk=3))
    models: list[str] = repo.models
    report: tr.BenchmarkReport = tr.benchmark_engine(engine, options=tr.BenchmarkOptions(batches=(1, 8)))
    with tr.Classifier(onnx.path, topk=3) as clf:
        clf.classify([Path("a.jpg")])
"""


def _mypy(tmp_path: Path, code: str) -> subprocess.CompletedProcess:
    pytest.importorskip("mypy", reason="mypy is in the dev extra")
    usage = tmp_path / "usage.py"
    usage.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--ignore-missing-imports",
                           "--no-error-summary", "--cache-dir", str(tmp_path / ".mypy_cache"), str(usage)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_mypy_accepts_the_readme_chain_and_refuses_a_wrong_call(tmp_path):
    done = _mypy(tmp_path, USAGE)
    assert done.returncode == 0, done.stdout + done.stderr
    wrong = USAGE + ("\n    tr.build_engine(fp16, options=8)\n    bad: str = built.path\n"
                     "    tr.run_export(tr.ExportOptions('res2net50_vd_26w_4s'))\n")
    done = _mypy(tmp_path, wrong)
    assert done.returncode == 1
    assert 'Argument "options" to "build_engine" has incompatible type "int"' in done.stdout, done.stdout
    assert 'Incompatible types in assignment (expression has type "Path", variable has type "str")' in done.stdout
    assert 'Argument 1 to "run_export" has incompatible type "ExportOptions"; expected "ExportPlan"' in done.stdout
