"""ONNX to TensorRT / TensorRT-RTX engine: which library and what it can do (trt_compat), the build, its manifest,
TensorRT's calibrator.
"""
