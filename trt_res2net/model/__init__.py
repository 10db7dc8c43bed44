"""The Res2Net zoo, its PaddleClas weights, the exact ONNX export and an independent numpy reference; the ONNX contract
every model file must meet.
"""
