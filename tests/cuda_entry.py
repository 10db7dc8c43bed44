"""Entry points for tests/test_cuda_releases.py, run under a chosen cuda-python and libcuda.so.1:

    python tests/cuda_entry.py init                   # the runtime's device set-up, with the CLIs' one-line errors
    python tests/cuda_entry.py infer-seen-gpu ARGS    # infer.py ARGS where cuda-python's device set-up reports an
                                                      # RTX 4090 (everything else real: TensorRT-RTX, the driver)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trt_res2net.cli.common import run_main  # noqa: E402
from trt_res2net.cuda import device as cu  # noqa: E402


def _init() -> int:
    cu.init_device(0)
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "init":
        sys.exit(run_main(_init))
    from trt_res2net.cli import infer

    seen = cu.DeviceInfo(0, "NVIDIA GeForce RTX 4090", (8, 9), 24 << 30, 23 << 30, False, 128)
    cu.init_device = lambda device=0: seen
    sys.exit(infer.main(sys.argv[2:]))
