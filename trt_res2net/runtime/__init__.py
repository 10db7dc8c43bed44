"""Running model files: ONNX Runtime and TensorRT backends, the classifier, benchmark, evaluation."""
