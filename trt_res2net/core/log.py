"""The project's log: on stderr, at levels, with the chatter of NVIDIA's libraries collapsed.

stdout carries results only (what was written, the accuracy report, the engine's path); everything else — progress
notes, warnings, TensorRT's and ModelOpt's logs — goes through the ``trt_res2net`` logger to stderr:

- ``configure("quiet")`` errors only, ``"normal"`` (default) warnings and notes, ``"verbose"`` everything;
- a warning prints as ``warning: ...``, an error as ``error: ...``, a note as it is;
- :class:`Collapsed` gathers a library's warnings while a step runs and prints each distinct message once, with
  its count (``warning: TensorRT-RTX (674×): Converting conv weight scales to fp32``); with ``verbose`` every
  message passes through as it comes.

The handler writes to whatever ``sys.stderr`` is when a record is emitted (pytest's capture included).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from collections.abc import Callable

LOGGER_NAME = "trt_res2net"
VERBOSITIES = ("quiet", "normal", "verbose")
_LEVELS = {"quiet": logging.ERROR, "normal": logging.INFO, "verbose": logging.DEBUG}

log = logging.getLogger(LOGGER_NAME)


class _StderrHandler(logging.Handler):
    """``warning: message`` / ``error: message`` / ``message`` on the current sys.stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = _state["wording"](record.getMessage())
            if record.levelno >= logging.ERROR:
                text = f"error: {text}"
            elif record.levelno >= logging.WARNING:
                text = f"warning: {text}"
            stream = sys.stderr
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # a log line must never take the program down
            self.handleError(record)


_handler = _StderrHandler()
_state: dict = {"verbosity": "normal", "wording": str}


def _install() -> None:
    if _handler not in log.handlers:
        log.addHandler(_handler)
        log.propagate = False
    if log.level == logging.NOTSET:
        log.setLevel(_LEVELS[_state["verbosity"]])


_install()


def configure(verbosity: str = "normal") -> None:
    """Set what reaches stderr: ``quiet`` (errors), ``normal`` (warnings and notes) or ``verbose`` (everything)."""
    if verbosity not in VERBOSITIES:
        raise ValueError(f"verbosity must be one of {VERBOSITIES}, not {verbosity!r}")
    _state["verbosity"] = verbosity
    log.setLevel(_LEVELS[verbosity])
    _install()


def set_wording(wording: Callable[[str], str] | None) -> None:
    """Rewrite each line as it is written (None: as it is): a command shows the option fields the library names
    as its own flags (``cli/common.FieldFlags.message``)."""
    _state["wording"] = wording or str


def verbosity() -> str:
    return _state["verbosity"]


def quiet() -> bool:
    return _state["verbosity"] == "quiet"


def verbose() -> bool:
    return _state["verbosity"] == "verbose"


def result(message: str) -> None:
    """A result line (what was written, a report, where a server listens): on stdout, whatever the verbosity."""
    stream = sys.stdout
    stream.write(_state["wording"](message) + "\n")
    stream.flush()


def note(message: str) -> None:
    log.info(message)


def warn(message: str) -> None:
    log.warning(message)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A warning printed at most once per process (e.g. a caveat said before the long work and again at the end)."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def debug(message: str) -> None:
    log.debug(message)


def error(message: str) -> None:
    log.error(message)


class Collapsed:
    """A library's log while one step runs: errors pass at once; warnings are counted per distinct message and
    printed when the step ends (:meth:`flush`), one line each with its count; info and verbose messages pass at the
    debug level. With ``verbose`` everything passes at once. ``records`` keeps every message (tests, diagnostics).
    Thread-safe: libraries log from their worker threads."""

    def __init__(self, source: str):
        self.source = source
        self.counts: Counter = Counter()
        self.records: list[tuple[str, str]] = []
        self.muted = False  # e.g. after Ctrl-C: the library's messages about stopping are not news
        self._lock = threading.Lock()

    def emit(self, level: str, message: str) -> None:
        message = str(message).strip()
        with self._lock:
            self.records.append((level, message))
            if self.muted:
                return
            if level == "error":
                log.error(f"{self.source}: {message}")
            elif level == "warning":
                if verbose():
                    log.warning(f"{self.source}: {message}")
                else:
                    self.counts[message] += 1
            else:
                log.debug(f"{self.source}: {message}")

    def flush(self) -> None:
        with self._lock:
            counts, self.counts = self.counts, Counter()
            if self.muted:
                return
        for message, n in counts.items():
            log.warning(f"{self.source}{f' ({n}×)' if n > 1 else ''}: {message}")

    def messages(self, level: str | None = None) -> list[str]:
        return [m for lv, m in self.records if level is None or lv == level]
