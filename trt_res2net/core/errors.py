"""Errors that the command-line tools report as one line, without a traceback."""

# Exit statuses shared by build.py and infer.py (docs/design: 0 ok, 1 some inputs failed,
# 2 usage or input error — a path the operating system refuses included —, 3 finished what this machine can do but
# TensorRT/GPU is missing, 130 interrupted by Ctrl-C).
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_TENSORRT = 3
EXIT_OS_ERROR = EXIT_USAGE  # permission denied, not a folder, disk full, ...: the user can fix it, as a usage error
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with what the user asked for or gave us (a name, a file, an option).

    The CLIs print ``error: <message>`` and exit with ``exit_code``; no traceback.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class MissingDependency(UserError):
    """An optional extra (TensorRT, cuda-python, ModelOpt) is not installed or has no GPU to use."""

    exit_code = EXIT_NO_TENSORRT


def describe_os_error(e: OSError, doing: str | None = None) -> str:
    """One line for an OSError: ``cannot write engines/x.engine: Permission denied`` (``doing`` = "write", ...)."""
    import errno as _errno
    import os as _os

    what = e.strerror or (_os.strerror(e.errno) if e.errno else None) or str(e) or type(e).__name__
    hints = {
        _errno.ENOSPC: " (the disk is full)",
        _errno.EDQUOT: " (disk quota exceeded)",
        _errno.EROFS: " (a read-only file system)",
        _errno.ELOOP: " (a symbolic link loop)",
        _errno.ENOTDIR: " (a part of the path is a file, not a folder)",
    }
    hint = hints.get(e.errno, "") if e.errno is not None else ""
    if getattr(e, "filename", None) is not None:
        where = str(e.filename)
        if getattr(e, "filename2", None) is not None:
            where += f" → {e.filename2}"
        head = f"cannot {doing} {where}" if doing else where
        return f"{head}: {what}{hint}"
    return f"cannot {doing}: {what}{hint}" if doing else f"{what}{hint}"


def user_error_from_os_error(e: OSError, doing: str | None = None) -> UserError:
    """The one-line UserError (exit status 2) for an OSError the user can fix (permissions, space, paths)."""
    return UserError(describe_os_error(e, doing), EXIT_OS_ERROR)
