"""Errors that the command-line tools report as one line, without a traceback."""

# Exit statuses shared by build.py and infer.py (docs/design: 0 ok, 1 some inputs failed,
# 2 usage or input error, 3 finished what this machine can do but TensorRT/GPU is missing).
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_TENSORRT = 3


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
