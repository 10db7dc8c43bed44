"""trt_res2net: PaddleClas Res2Net classifiers → exact ONNX → FP16/INT8 → TensorRT engines.

Importing the package is light: numpy only. onnx, onnxruntime, OpenCV, TensorRT, cuda-python and
ModelOpt are imported inside the functions that need them.
"""

from .core.version import __version__

__all__ = ["__version__"]
