"""What every CLI shares: one-line errors instead of tracebacks, and the exit statuses."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..errors import EXIT_USAGE, UserError


def run_main(body: Callable[[], int]) -> int:
    """Run a CLI body; a UserError becomes ``error: <message>`` and its exit status; Ctrl-C exits 130."""
    try:
        return body()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def usage_error(message: str) -> UserError:
    return UserError(message, EXIT_USAGE)
