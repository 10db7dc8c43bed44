#!/usr/bin/env python3
"""Serve a Triton model repository (build.py --triton-repo) with Triton Inference Server; see ``--help``."""

from trt_res2net.cli.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
