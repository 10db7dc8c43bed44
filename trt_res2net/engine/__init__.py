"""ONNX to TensorRT / TensorRT-RTX engine: which library and what it can do (trt_compat), the plan of a build
(plan: the target, then the engine plan; precision_path), the build (build, builder), its manifest (manifest,
manifest_parts, describe) and TensorRT's calibrator.
"""
