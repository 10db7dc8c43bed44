"""TensorRT-RTX's build targets (compute capabilities, ``EngineOptions.compute_capabilities``) and what a
TensorRT-RTX plan's first bytes say about them. Pure: no library is imported here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import UserError

# ComputeCapability members by "major.minor"; "current" asks for the GPU of the building machine.
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120", "12.1": "SM121"}

# The plan header, as observed on TensorRT-RTX 1.7.1 (undocumented; docs/tensorrt_rtx.md): magic at offset
# 0, the plan's size as a little-endian u64 at 16, the library version as three bytes at 24, and a bitmask of
# target compute capabilities at 32 whose bits follow RTX_TARGETS's order; bit 6 is set only by the default
# targets, which "run on 12.0 and later". The layout is read only for the releases it was observed on
# (RTX_HEADER_LAYOUTS); any other is "unknown" and the build falls back to what it asked for.
RTX_PLAN_MAGIC = b"vtrt"
_RTX_SIZE_OFFSET, _RTX_VERSION_OFFSET, _RTX_MASK_OFFSET, _RTX_LATER_BIT = 16, 24, 32, 6
RTX_HEADER_LAYOUTS = {(1, 7): "1.7"}  # (major, minor) of the library that wrote the plan → layout name
# What NVIDIA documents as the default targets of an ahead-of-time build ("8.0, 8.6, 8.9, 12.0, and later"): the
# fallback when the plan header cannot be read and no targets were asked for.
RTX_DOCUMENTED_DEFAULT_TARGETS = ("8.0", "8.6", "8.9", "12.0")


def parse_compute_capabilities(text: str) -> list[str]:
    """``"8.6,8.9,12.0"`` → ["8.6", "8.9", "12.0"]; ``current`` → ["current"]; sorted,
    without repeats; UserError for anything TensorRT-RTX cannot target."""
    items = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    if not items:
        raise UserError("EngineOptions.compute_capabilities needs a list such as 8.6,8.9,12.0 (or current)")
    if "current" in items:
        if len(items) > 1:
            raise UserError("EngineOptions.compute_capabilities='current' means this machine's GPU alone; list no "
                            "others with it")
        return ["current"]
    out = []
    for item in items:
        m = re.fullmatch(r"(?:sm_?)?(\d+)\.?(\d)", item)
        cc = f"{int(m.group(1))}.{m.group(2)}" if m else item
        if cc not in RTX_TARGETS:
            hint = " (Hopper: build with TensorRT)" if cc == "9.0" else ""
            raise UserError(f"EngineOptions.compute_capabilities='{item}': TensorRT-RTX targets "
                            f"{', '.join(RTX_TARGETS)} or current{hint}")
        if cc not in out:
            out.append(cc)
    return sorted(out, key=lambda c: tuple(map(int, c.split("."))))


@dataclass(frozen=True)
class RtxPlanHeader:
    version: tuple[int, int, int]
    compute_capabilities: tuple[str, ...]
    and_later: bool  # also runs on GPUs newer than the newest listed (the library's default targets)
    layout: str = "1.7"  # the header layout it was read with (RTX_HEADER_LAYOUTS)


def rtx_plan_header_problem(data: bytes, size: int | None = None) -> str | None:
    """Why :func:`read_rtx_plan_header` cannot read ``data`` (a plan's first bytes; ``size`` the whole plan's, when
    known), or None when it can."""
    if len(data) <= _RTX_MASK_OFFSET:
        return f"only {len(data)} bytes"
    if not data.startswith(RTX_PLAN_MAGIC):
        return "no TensorRT-RTX plan magic"
    version = tuple(data[_RTX_VERSION_OFFSET:_RTX_VERSION_OFFSET + 3])
    if tuple(version[:2]) not in RTX_HEADER_LAYOUTS:
        known = ", ".join(f"{a}.{b}" for a, b in RTX_HEADER_LAYOUTS)
        return f"written by TensorRT-RTX {'.'.join(map(str, version))}, whose header layout is unknown here ({known})"
    recorded = int.from_bytes(data[_RTX_SIZE_OFFSET:_RTX_SIZE_OFFSET + 8], "little")
    if size is not None and recorded != size:
        return f"the header gives a plan size of {recorded} bytes, the plan has {size}"
    mask = data[_RTX_MASK_OFFSET]
    if mask >> (len(RTX_TARGETS) + 1):
        return f"unknown target bits in 0x{mask:02x}"
    if not mask & ((1 << len(RTX_TARGETS)) - 1):
        return "no target bit set"
    return None


def read_rtx_plan_header(data: bytes, size: int | None = None) -> RtxPlanHeader | None:
    """The targets and version written in a TensorRT-RTX plan's first bytes (``size``: the whole plan's, checked
    against the header when given); None when ``data`` does not start like one, or was written in a header layout
    this code does not know (:func:`rtx_plan_header_problem` says why)."""
    if rtx_plan_header_problem(data, size) is not None:
        return None
    mask = data[_RTX_MASK_OFFSET]
    targets = tuple(cc for bit, cc in enumerate(RTX_TARGETS) if mask >> bit & 1)
    version = tuple(data[_RTX_VERSION_OFFSET:_RTX_VERSION_OFFSET + 3])
    return RtxPlanHeader(version, targets, bool(mask >> _RTX_LATER_BIT & 1),  # type: ignore[arg-type]
                         RTX_HEADER_LAYOUTS[tuple(version[:2])])


def cc_key(cc: str) -> tuple[int, int]:
    major, minor = str(cc).split(".")
    return int(major), int(minor)


# Example GPUs per TensorRT-RTX target, for messages.
RTX_TARGET_EXAMPLES = {
    "7.5": "T4, RTX 20", "8.0": "A100, A30", "8.6": "A10, A40, RTX 30, RTX A6000", "8.9": "L4, L40S, RTX 40",
    "12.0": "RTX 50, RTX PRO Blackwell", "12.1": "GB10",
}


def rtx_targets_sentence(targets, and_later: bool) -> str:
    """``compute capability 8.6 (A10, ...), 8.9 (...) and later`` for people; never an empty list (no targets
    recorded: the library's documented default set)."""
    targets = list(targets)
    if not targets:
        return rtx_targets_sentence(RTX_DOCUMENTED_DEFAULT_TARGETS, True) + " (the library's documented default)"
    parts = [f"{cc} ({RTX_TARGET_EXAMPLES[cc]})" if cc in RTX_TARGET_EXAMPLES else cc for cc in targets]
    return "compute capability " + ", ".join(parts) + (" and later" if and_later else "")


def rtx_runs_on(cc: str, targets, and_later: bool) -> bool:
    """Whether an engine built for ``targets`` runs on a GPU of compute capability ``cc``."""
    targets = list(targets)
    if cc in targets:
        return True
    return and_later and bool(targets) and cc_key(cc) > max(map(cc_key, targets))
