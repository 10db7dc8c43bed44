#!/usr/bin/env python3
"""Build an exact ONNX graph and a TensorRT engine for a PaddleClas Res2Net: ``python build.py --help``."""

from trt_res2net.cli.build import main

if __name__ == "__main__":
    raise SystemExit(main())
