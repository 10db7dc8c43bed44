"""One GPU as the builder, the runtime and the manifests describe it, and the Jetson module around it.

Pure data and file reads: :func:`trt_res2net.cuda.device.detect_gpu` fills these in from CUDA.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DeviceInfo:
    """One GPU, as the builder, the runtime and the manifests describe it (the project's only GPU description)."""

    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int  # bytes
    free_memory: int | None  # bytes, when queried
    integrated: bool  # Jetson: the GPU shares memory with the CPU
    multiprocessors: int = 0
    memory_bus_width_bits: int | None = None
    memory_clock_khz: int | None = None
    jetson: dict | None = None  # {"module": ..., "l4t": ...} on a Jetson (detect_gpu fills it in)

    @property
    def cc(self) -> str:
        """Compute capability as "8.7"."""
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def peak_bandwidth_bytes_per_s(self) -> float | None:
        """The datasheet DRAM bandwidth from clock × bus width × 2 (DDR), when the driver reports both."""
        if not self.memory_bus_width_bits or not self.memory_clock_khz:
            return None
        return 2.0 * self.memory_clock_khz * 1e3 * self.memory_bus_width_bits / 8

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "name": self.name,
            "compute_capability": self.cc,
            "total_memory": self.total_memory,
            "integrated": self.integrated,
            "multiprocessors": self.multiprocessors,
        }

    def to_manifest(self) -> dict:
        """The build GPU as an engine manifest records it."""
        return {"name": self.name, "compute_capability": self.cc, "integrated": self.integrated,
                "device": self.index, "jetson": self.jetson, "total_memory_mib": self.total_memory // (1 << 20)}


def jetson_info(root: str | os.PathLike = "/") -> dict | None:
    """On a Jetson: ``{"module": "NVIDIA Jetson AGX Orin Developer Kit", "l4t": "36.4.0"}``; else None.

    Reads /proc/device-tree/model (the module/carrier name) and /etc/nv_tegra_release (the L4T release of
    JetPack); ``root`` lets tests point at a fake file tree.
    """
    root = Path(root)
    model = l4t = None
    try:
        model = (root / "proc/device-tree/model").read_bytes().decode("utf-8", "replace").strip("\x00 \n")
    except OSError:
        pass
    try:
        first = (root / "etc/nv_tegra_release").read_text(errors="replace").splitlines()[0]
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", first)
        if m:
            rev = m.group(2).split(".")
            l4t = ".".join([m.group(1), *rev] + ["0"] * max(0, 2 - len(rev)))
    except (OSError, IndexError):
        pass
    if l4t is None and not (model and "jetson" in model.lower()):
        return None
    return {"module": model, "l4t": l4t}
