"""``python -m trt_res2net.cli.perf_analyzer [--images IMAGE_OR_DIR...] PERF_ANALYZER_ARGS...``: NVIDIA's
perf_analyzer from the serving environment (``trt_res2net.serving.perf_analyzer`` supplies the two libraries
tritonclient's wheel lacks), with ``--images`` turned into its ``--input-data`` for the image models' ``IMAGE`` input.

    .venv-serve/bin/python -m trt_res2net.cli.perf_analyzer --images photos/ -m res2net50_vd_26w_4s_python \\
        -u 127.0.0.1:8001 -i grpc --concurrency-range 4

Every other argument goes to perf_analyzer as it is; its exit status is this command's.
Exit status otherwise: 2 usage error (no images), 3 perf_analyzer missing or unable to start.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from ..core.errors import UserError
from ..serving.perf_analyzer import check_runs, perf_analyzer_command, write_input_data
from .common import FieldFlags, run_main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trt_res2net.cli.perf_analyzer", add_help=False,
                                description="perf_analyzer from the serving environment; other arguments are its own.")
    p.add_argument("--images", nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files or folders: sent as the image models' IMAGE input (perf_analyzer's --input-data)")
    p.add_argument("--wrapper-help", action="help", help="this help (perf_analyzer's own: --help)")
    return p


# The library's perf_analyzer functions take no options: no field of theirs has a flag here.
FLAGS = FieldFlags({})


def main(argv=None) -> int:
    def body() -> int:
        from ..data.images import find_images

        args, rest = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
        cmd, env = perf_analyzer_command()
        check_runs(cmd, env)
        with tempfile.TemporaryDirectory(prefix="trt_res2net-perf-") as tmp:
            if args.images:
                paths = find_images(args.images)
                if not paths:
                    raise UserError(f"no images found in {', '.join(args.images)}")
                rest = ["--input-data", str(write_input_data(paths, Path(tmp) / "images.json")), *rest]
            try:
                return subprocess.run([*cmd, *rest], env=env).returncode
            except KeyboardInterrupt:  # perf_analyzer got the Ctrl-C too and has stopped
                return 130

    return run_main(body, FLAGS)


if __name__ == "__main__":
    raise SystemExit(main())
