"""FP32 ONNX to FP16 / INT8 ONNX (ModelOpt), calibration caches, accuracy against FP32, layer fallback."""
