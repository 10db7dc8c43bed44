"""The Python-backend models that ``trt_res2net.serving.repository`` copies into a Triton model repository.

Each ``*_model.py`` here becomes a ``<model>/1/model.py``; they run inside Triton's Python backend (the
``triton_python_backend_utils`` module exists only there) and import the steps they run (``steps.py``: decode and
preprocess, ONNX Runtime, top-k) and this project's own preprocessing and postprocessing from
``trt_res2net_vendored/``, a byte-for-byte copy of those modules written beside them, so the repository needs only
numpy, OpenCV (and ONNX Runtime for the pipeline model) in the server's Python environment.

They are templates: nothing in the package imports them (``steps.py`` imports, as
``trt_res2net.serving.triton_models.steps``, for the tests).
"""
