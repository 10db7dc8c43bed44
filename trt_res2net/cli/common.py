"""What every CLI shares: one-line errors instead of tracebacks, and the exit statuses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..core.errors import EXIT_INTERRUPTED, EXIT_OS_ERROR, EXIT_USAGE, UserError, describe_os_error


def run_main(body: Callable[[], int]) -> int:
    """Run a CLI body; the one place that maps errors to exit statuses, each as one line on stderr:

    a UserError → ``error: <message>`` and its exit status (2 usage or input, 3 missing library, 1 accuracy budget);
    an OSError the user can cause (permission denied, not a folder, a FIFO, a symbolic link loop, disk full) →
    ``error: cannot ...: <reason>``, exit status 2, no traceback; Ctrl-C → ``interrupted``, exit status 130."""
    try:
        return body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return EXIT_OS_ERROR


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
