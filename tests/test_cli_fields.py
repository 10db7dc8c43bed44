"""The library names option fields; each command shows them as its flags (cli/common.FieldFlags). And the one
check of an artefact's format and version (core/artifact.check_format)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from trt_res2net.cli.common import FieldFlags, run_main
from trt_res2net.core.artifact import check_format, header
from trt_res2net.core.errors import UserError

FLAGS = FieldFlags({"EngineOptions.family": "--engine-family", "EngineOptions.batch": "--batch",
                    "EngineOptions.dla_core": "--dla-core", "TritonOptions.instances": "--triton-instances",
                    "PrecisionOptions.eval_list": "--eval", "export_onnx.random_weights": "--random-weights"},
                   dests={"--eval": "eval_list"})


@pytest.mark.parametrize("library, command", [
    ("EngineOptions.dla_core: no DLA", "--dla-core: no DLA"),
    ("use EngineOptions.family='tensorrt' instead", "use --engine-family tensorrt instead"),
    ('use EngineOptions.family="tensorrt-rtx"', "use --engine-family tensorrt-rtx"),
    ("EngineOptions.batch=8, or none", "--batch 8, or none"),
    ("pass export_onnx.random_weights=True", "pass --random-weights"),
    ("TritonOptions.instances must be ≥ 1, not 0", "--triton-instances must be ≥ 1, not 0"),
    ("(PrecisionOptions.eval_list)", "(--eval)"),
    # only whole tokens of the table: a longer field, a prefixed name and an unknown class stay as they are
    ("EngineOptions.batch_profile, x.EngineOptions.batch, MyOptions.batch",
     "EngineOptions.batch_profile, x.EngineOptions.batch, MyOptions.batch"),
])
def test_a_library_message_reads_with_the_commands_flags(library, command):
    assert FLAGS.message(library) == command


def test_run_main_shows_the_flags_and_keeps_the_exit_status(capsys):
    def body():
        raise UserError("EngineOptions.family='tensorrt' has no DLA", 3)

    assert run_main(body, FLAGS) == 3
    assert capsys.readouterr().err == "error: --engine-family tensorrt has no DLA\n"
    assert run_main(body) == 3  # without a table the library's words are shown
    assert capsys.readouterr().err == "error: EngineOptions.family='tensorrt' has no DLA\n"


@dataclass(frozen=True)
class PrecisionOptions:
    eval_list: str | None = None
    progress: bool = True


def test_options_are_built_from_the_table():
    args = argparse.Namespace(eval_list="val.txt", quiet=True)
    assert FLAGS.options(PrecisionOptions, args, progress=not args.quiet) == PrecisionOptions("val.txt", False)


def test_check_format_reads_older_and_refuses_newer_or_foreign():
    assert check_format({**header("trt_res2net.x", 2)}, "trt_res2net.x", 3, "f.json", "thing") == 2
    assert check_format({"format": "trt_res2net.x"}, "trt_res2net.x", 3, "f.json", "thing") == 1
    with pytest.raises(UserError, match=r"^f\.json has thing format 4; this trt_res2net reads ≤ 3: upgrade"):
        check_format(header("trt_res2net.x", 4), "trt_res2net.x", 3, "f.json", "thing")
    with pytest.raises(UserError, match=r"^f\.json is not a trt_res2net thing$"):
        check_format({"format": "other"}, "trt_res2net.x", 3, "f.json", "thing")
    with pytest.raises(UserError, match="not a number"):
        check_format({"format": "trt_res2net.x", "format_version": "2"}, "trt_res2net.x", 3, "f.json", "thing")
    with pytest.raises(UserError, match="no longer reads"):
        check_format(header("trt_res2net.x", 1), "trt_res2net.x", 3, "f.json", "thing", oldest=2)
