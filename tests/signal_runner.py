"""build.py (or infer.py) with a real signal sent to its own process at a chosen moment, for the interrupt tests.

    python tests/signal_runner.py SIGNAL TARGET WHEN [MATCH] -- build.py-arguments...

``TARGET`` is ``module:function`` or ``module:Class.method``; the signal (``INT``, ``TERM``, ``HUP`` or ``KILL``) is
sent to this process ``before`` or ``after`` its Nth call (``WHEN`` = ``before:N`` / ``after:N``), counting only the
calls whose last positional argument ends with ``MATCH`` when one is given (e.g. ``.rtx.engine``: the rename of the
engine). The rest is build.py's (or, when the arguments start with ``infer.py``, infer.py's) ``main`` in this
process, so the moment is exact: inside TensorRT's progress callback, between two renames of a commit, in the middle
of a calibration, after the Nth annotated frame of a stream.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    args = sys.argv[1:]
    split = args.index("--")
    head, argv = args[:split], args[split + 1:]
    signame, target, when = head[:3]
    match = head[3] if len(head) > 3 else None
    signum = {"INT": signal.SIGINT, "KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "HUP": signal.SIGHUP}[signame]
    moment, _, nth = when.partition(":")
    nth = int(nth or 1)
    module_name, _, attr = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*a, **k):
        counted = match is None or (a and str(a[-1]).endswith(match))
        if counted:
            calls[0] += 1
        fire = counted and calls[0] == nth
        if fire and moment == "before":
            os.kill(os.getpid(), signum)
        result = original(*a, **k)
        if fire and moment == "after":
            os.kill(os.getpid(), signum)
        return result

    setattr(owner, name, wrapper)
    if argv and argv[0] == "infer.py":
        from trt_res2net.cli.infer import main as entry

        return entry(argv[1:])
    from trt_res2net.cli.build import main as entry

    return entry(argv[1:] if argv and argv[0] == "build.py" else argv)


if __name__ == "__main__":
    sys.exit(main())
