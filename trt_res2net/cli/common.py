"""What every CLI shares: one-line errors instead of tracebacks, and the exit statuses."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from collections.abc import Callable, Mapping

from ..core import log
from ..core.errors import EXIT_INTERRUPTED, EXIT_OS_ERROR, EXIT_USAGE, UserError, describe_os_error


class FieldFlags:
    """One command's table from the library's option fields to its flags — ``{"EngineOptions.max_batch":
    "--max-batch"}`` — the one place the command maps the two: :meth:`options` builds an options object from the
    parsed flags, and :meth:`message` shows a refusal of the library, which names fields, with the flags.

    In a message a field reads ``Owner.field`` or ``Owner.field=<value>`` (``'text'``, a number, ``True``); the
    flag reads ``--flag`` or ``--flag <value>`` (``True``: the flag alone)."""

    def __init__(self, table: Mapping[str, str], dests: Mapping[str, str] | None = None):
        self.table = dict(table)
        self.dests = dict(dests or {})  # argparse dests other than the flag's default one
        tokens = sorted(self.table, key=len, reverse=True)
        self._pattern = re.compile(
            r"(?<![\w.])(" + "|".join(map(re.escape, tokens)) + r")(?![\w])"
            r"(?:=(?:'([^']*)'|\"([^\"]*)\"|(True)\b|([^\s,;:)\]]+)))?") if tokens else None

    def flag(self, field: str) -> str:
        return self.table[field]

    def dest(self, flag: str) -> str:
        return self.dests.get(flag) or flag.lstrip("-").replace("-", "_")

    def message(self, text: str) -> str:
        """``text`` with every field of the table written as its flag."""
        if self._pattern is None:
            return text

        def flag(m: re.Match) -> str:
            value = next((g for g in m.groups()[1:] if g is not None), None)
            name = self.table[m.group(1)]
            negated = value == "False" and name.startswith("--no-")  # check_manifest=False → --no-manifest-check
            return name if value in (None, "True") or negated else f"{name} {value}"

        return self._pattern.sub(flag, text)

    def options(self, cls, args: argparse.Namespace, **computed):
        """``cls`` built from the flags the table maps onto its fields, with ``computed`` for the fields that are
        not one flag's value."""
        owner = cls.__name__ + "."
        names = {f.name for f in dataclasses.fields(cls)}
        values = {}
        for field, flag in self.table.items():
            if field.startswith(owner) and field[len(owner):] in names and field[len(owner):] not in computed:
                values[field[len(owner):]] = vars(args)[self.dest(flag)]
        return cls(**values, **computed)


def run_main(body: Callable[[], int], flags: FieldFlags | None = None) -> int:
    """Run a CLI body; the one place that maps errors to exit statuses, each as one line on stderr:

    a UserError → ``error: <message>``, the option fields it names written as the command's flags (``flags``), and
    its exit status (2 usage or input, 3 missing library, 1 accuracy budget);
    an OSError the user can cause (permission denied, not a folder, a FIFO, a symbolic link loop, disk full) →
    ``error: cannot ...: <reason>``, exit status 2, no traceback; Ctrl-C → ``interrupted``, exit status 130."""
    log.set_wording(flags.message if flags else None)  # the library's notes and warnings, in the command's words
    try:
        return body()
    except UserError as e:
        print(f"error: {flags.message(str(e)) if flags else e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return EXIT_OS_ERROR
    finally:
        log.set_wording(None)


def usage_error(message: str) -> UserError:
    return UserError(message, EXIT_USAGE)


def bounded_int(minimum: int, maximum: int | None = None, what: str | None = None):
    """An argparse ``type``: an integer in [minimum, maximum], else argparse's one-line usage error."""
    if what is None:
        what = ("a positive integer" if minimum == 1 and maximum is None
                else f"an integer ≥ {minimum}" if maximum is None else f"an integer {minimum}..{maximum}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = "integer"  # what argparse names in "invalid integer value"
    return parse


positive_int = bounded_int(1)


def write_json_output(path, obj) -> None:
    """Write a command's ``--json`` output; a path the system refuses is one line (UserError)."""
    from ..core.files import write_json

    try:
        write_json(path, obj)
    except OSError as e:
        raise UserError(f"{path}: cannot write the JSON ({e.strerror or e})") from None


def crop_size(text: str) -> tuple[int, int]:
    """``--crop``: ``S`` (square) or ``HxW`` pixels."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW pixels (e.g. 288 or 224x320), not {text!r}")
    return (values[0], values[-1])


def add_preprocess_arguments(group) -> None:
    """``--resize-short`` / ``--crop``: a model's own recipe (``data.recipe.PreprocessOptions``)."""
    group.add_argument("--resize-short", type=positive_int, metavar="N",
                       help="resize the short side to N before the centre crop (default: as the model records it, "
                       "else its input size ÷ 0.875: 224 → 256, 288 → 329)")
    group.add_argument("--crop", type=crop_size, metavar="S|HxW",
                       help="centre crop to S×S or H×W (default: the model's input size; needed for a model whose "
                       "input size is dynamic and not 224×224)")


PREPROCESS_FIELDS = {"PreprocessOptions.resize_short": "--resize-short", "PreprocessOptions.crop": "--crop"}
