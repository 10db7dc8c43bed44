"""The TensorRT interfaces this project implements in Python, for either family: the logger (``trt.ILogger``), the
progress monitor (``trt.IProgressMonitor``, 9.0+) and TensorRT's INT8 entropy calibrator
(``trt.IInt8EntropyCalibrator2``, 8.6 and 10.x). Each forwards to the project's own object; the library module comes
from ``trt_compat.import_library``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core import log

if TYPE_CHECKING:  # the API the code below is written against (trt-api-check reads this import); at run time
    import tensorrt as trt  # noqa: F401  the module is trt_compat.import_library(...).module, of either family

    from .progress import BuildProgress


def _severity(trt, level: str):
    return {
        "error": trt.Logger.ERROR,
        "warning": trt.Logger.WARNING,
        "info": trt.Logger.INFO,
        "verbose": trt.Logger.VERBOSE,
    }[level]


# TensorRT's severities, most severe first (ILogger.Severity: INTERNAL_ERROR 0 … VERBOSE 4), as core.log's levels.
_SEVERITY_KINDS = ("error", "error", "warning", "info", "verbose")


_LOGGERS: dict[int, object] = {}  # one ILogger per library module, kept alive for the process's life


def make_logger(trt, level: str, collapsed: log.Collapsed | None):
    """The ``trt.ILogger`` that sends TensorRT's messages at ``level`` and above (``EngineOptions.log_level``) to the
    project's log through ``collapsed``: errors at once, warnings counted and printed once each with their count
    when the step ends, info and verbose at the debug level. Never on stdout, never raising inside TensorRT.

    TensorRT keeps the first logger a process gives it ("the current new logger is ignored" afterwards), so there is
    one per library, created once and kept alive; each call points it at this step's ``collapsed`` (None: straight
    to the project's log) and level."""
    logger = _LOGGERS.get(id(trt))
    if logger is None:

        class _Logger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.threshold = 2
                self.target: log.Collapsed | None = None

            def log(self, severity, msg):
                try:
                    rank = int(severity)
                    if rank > self.threshold:
                        return
                    kind = _SEVERITY_KINDS[min(max(rank, 0), 4)]
                    target = self.target
                    if target is not None:
                        target.emit(kind, msg)
                    elif kind == "error":
                        log.error(f"TensorRT: {msg}")
                    elif kind == "warning":
                        log.warn(f"TensorRT: {msg}")
                    else:
                        log.debug(f"TensorRT: {msg}")
                except BaseException:  # noqa: BLE001 — an exception cannot unwind through TensorRT
                    pass

        logger = _LOGGERS[id(trt)] = _Logger()
        logger._module = trt  # the id stays this module's while the logger lives
    logger.threshold = int(_severity(trt, level))
    logger.target = collapsed
    return logger


def make_progress_monitor(trt, progress: BuildProgress):
    """A ``trt.IProgressMonitor`` (9.0+) forwarding to a :class:`~trt_res2net.engine.progress.BuildProgress`."""

    class _ProgressMonitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.on_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return progress.on_step(phase_name, step)

        def phase_finish(self, phase_name):
            progress.on_finish(phase_name)

    return _ProgressMonitor()


def make_entropy_calibrator(trt, feed):
    """A ``trt.IInt8EntropyCalibrator2`` (8.6/10.x) forwarding to a ``calibrator.CalibrationFeed``."""

    class _EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self):
            return feed.batch_size

        def get_batch(self, names):
            return feed.next_batch(names)

        def read_calibration_cache(self):
            return feed.read_cache()

        def write_calibration_cache(self, cache):
            feed.write_cache(bytes(memoryview(cache)))

    return _EntropyCalibrator()
