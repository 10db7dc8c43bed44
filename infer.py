#!/usr/bin/env python3
"""Classify images with an ONNX model (ONNX Runtime) or a TensorRT engine; see ``--help``."""

from trt_res2net.cli.infer import main

if __name__ == "__main__":
    raise SystemExit(main())
