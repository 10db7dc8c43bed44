"""The project's cache folder: downloaded weights and compiled CUDA kernels live under it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$TRT_RES2NET_CACHE, else $XDG_CACHE_HOME/trt_res2net, else ~/.cache/trt_res2net."""
    if os.environ.get("TRT_RES2NET_CACHE"):
        return Path(os.environ["TRT_RES2NET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trt_res2net"
