"""What every JSON artefact shares (the engine manifest, the precision sidecar, the calibration key, the repository
record, the benchmark report): a ``format`` name and a ``format_version``, checked in one place when a file written
by another release is read.

Each artefact is a frozen dataclass with ``to_json() -> dict`` and ``from_json(data, where)``; ``from_json``
calls :func:`check_format` first, upgrades what an older supported version lacks, and refuses a newer one.
"""

from __future__ import annotations

from typing import Any

from .errors import UserError


def check_format(data: Any, fmt: str, version: int, where: str, kind: str, *, oldest: int = 1) -> int:
    """The ``format_version`` of ``data`` when it is a ``fmt`` document this release reads (``oldest`` to
    ``version``); else one line naming ``where`` and what to do."""
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise UserError(f"{where} is not a trt_res2net {kind}")
    found = data.get("format_version", oldest)
    if not isinstance(found, int) or isinstance(found, bool):
        raise UserError(f"{where}: its {kind} format_version is {found!r}, not a number")
    if found > version:
        raise UserError(f"{where} has {kind} format {found}; this trt_res2net reads ≤ {version}: upgrade "
                        "trt_res2net")
    if found < oldest:
        raise UserError(f"{where} has {kind} format {found}, which this trt_res2net no longer reads (oldest "
                        f"{oldest}): make it again")
    return found


def header(fmt: str, version: int) -> dict:
    """The first two keys of every artefact's JSON."""
    return {"format": fmt, "format_version": version}
