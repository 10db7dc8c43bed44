"""Triton Inference Server: the model repository, its Python models, the server process, a client."""
