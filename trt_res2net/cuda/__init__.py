"""cuda-python: devices, buffers, streams, and the preprocessing and top-k kernels."""
