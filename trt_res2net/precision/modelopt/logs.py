"""ModelOpt's and ONNX Runtime's output while they run (per-batch progress bars, INFO lines, C++ warnings), kept
off stdout: their warnings and errors through the project's log (collapsed), the rest in a buffer written to a
log file on failure, so the error can point to it; with ``--verbose`` all of it on stderr."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
from pathlib import Path

from ...core import log
from ...core.errors import UserError

_LEVEL = re.compile(r" - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - (.*)$")
# ModelOpt messages that say nothing about this run (logged at ERROR while the run goes on): to --verbose only.
_HARMLESS = ("Failed to get GPU count",)


def _warning_of(line: str) -> str | None:
    """The message of a line ModelOpt's handlers format as a warning or error (``... - WARNING - message``)."""
    m = _LEVEL.search(line)
    if m and m.group(1) in ("WARNING", "ERROR", "CRITICAL") and not m.group(2).startswith(_HARMLESS):
        return m.group(2)
    return None


class _LineStream(io.TextIOBase):
    """A text stream that hands each complete line to :meth:`line`."""

    def __init__(self):
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = re.split(r"[\r\n]", self._partial)
        for line in lines:
            self.line(line)
        return len(text)

    def line(self, line: str) -> None:
        raise NotImplementedError


class _ModelOptSink(_LineStream):
    """Where ModelOpt's and ONNX Runtime's Python output goes while they run: every line kept (the failure log); the
    warnings and errors ModelOpt's handlers format passed to the project's log through ``collapsed`` (warnings once
    each with their count, errors at once); with ``--verbose`` everything to stderr."""

    def __init__(self, collapsed: log.Collapsed):
        super().__init__()
        self.buffer_ = io.StringIO()
        self.collapsed = collapsed
        self.stderr = sys.stderr  # the real one, before the redirection

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        if log.verbose():
            self.stderr.write(text)
            return len(text)
        return super().write(text)

    def line(self, line: str) -> None:
        message = _warning_of(line)
        if message is not None:
            # ModelOpt's real failures raise; what it logs at ERROR while going on is a warning here
            self.collapsed.emit("warning", message)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return self.buffer_.getvalue()


class _LogStream(_LineStream):
    """Where ModelOpt's logging handlers point between our calls: its warnings and errors into the project's log
    (stderr), the rest at the debug level. Never closed (a handler may outlive any stream we were given)."""

    def line(self, line: str) -> None:
        message = _warning_of(line)
        if message is not None:
            log.warn(f"ModelOpt: {message}")
        elif line.strip():
            log.debug(f"ModelOpt: {line}")


_BETWEEN_CALLS = _LogStream()


def _point(handler: logging.StreamHandler, stream) -> None:
    """``handler.setStream`` without flushing the old stream (which may be closed by now)."""
    handler.acquire()
    try:
        handler.stream = stream
    finally:
        handler.release()


def _modelopt_stream_handlers() -> list[logging.StreamHandler]:
    handlers = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("modelopt") and isinstance(logger, logging.Logger):
            handlers += [h for h in logger.handlers
                         if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    return handlers


@contextlib.contextmanager
def captured_output(log_path: Path | None = None):
    """ModelOpt's and ONNX Runtime's output kept off stdout for the body (module docstring); ``log_path`` gets all
    of it when the body fails."""
    import onnxruntime

    collapsed = log.Collapsed("ModelOpt")
    sink = _ModelOptSink(collapsed)
    old = onnxruntime.get_default_logger_severity() if hasattr(onnxruntime, "get_default_logger_severity") else 2
    onnxruntime.set_default_logger_severity(0 if log.verbose() else 3)
    for h in _modelopt_stream_handlers():  # bound to a stream at import or configure: ours while ModelOpt runs
        _point(h, sink)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    except BaseException as e:
        collapsed.muted = isinstance(e, KeyboardInterrupt)
        if log_path is not None and not isinstance(e, KeyboardInterrupt):
            with contextlib.suppress(OSError):
                log_path.write_text(sink.getvalue())
        raise
    finally:
        for h in _modelopt_stream_handlers():  # and the project's log between calls
            _point(h, _BETWEEN_CALLS)
        onnxruntime.set_default_logger_severity(old)
        collapsed.flush()


def modelopt_failed(what: str, e: Exception, log_path: Path | None) -> UserError:
    """The one line for a ModelOpt call that raised: what it could not do, its first line, the log kept."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = f" (log: {log_path})" if log_path is not None and log_path.exists() else ""
    return UserError(f"ModelOpt could not {what}: {type(e).__name__}: {first[:200]}{where}")
