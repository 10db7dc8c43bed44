"""The Python-backend models that ``trt_res2net.serving.repository`` copies into a Triton model repository.

Each module here becomes a ``<model>/1/model.py``; they run inside Triton's Python backend (the
``triton_python_backend_utils`` module exists only there) and import this project's own preprocessing and
postprocessing from ``trt_res2net_vendored/``, a byte-for-byte copy of ``trt_res2net/core/errors.py``,
``data/preprocess.py`` and ``data/postprocess.py`` written beside them, so the repository needs only numpy, OpenCV
(and ONNX Runtime for the Python-backend classifier) in the server's Python environment.

They are templates: nothing in the package imports them.
"""
