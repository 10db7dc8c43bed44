"""SHA-256 of files and bytes: how manifests, caches and sidecars say which file they describe.

An ONNX is hashed with its weights wherever they are (:func:`sha256_onnx`): the file's own SHA-256 when its weights
are inside it, so that every hash recorded before stays what it was; with external data, the SHA-256 of its files'
SHA-256s, one hex line each — the ``.onnx`` first, then each data file in the order the model names them (what
``sha256sum X.onnx X.onnx.data | cut -d' ' -f1 | sha256sum`` prints). A data file that changes alone changes it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (engines and ONNX files are hundreds of MB), read into one reused buffer: no allocation
    per block, so hashing beside a build (a thread) does not grow the process."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_onnx(path: str | os.PathLike) -> str:
    """Hex SHA-256 of an ONNX with its external data files (module docstring); a file that is not an ONNX model
    is hashed as a file."""
    from .onnx_files import external_data_files

    path = Path(path)
    try:
        data_files = external_data_files(path)
    except ValueError:
        data_files = ()
    if not data_files:
        return sha256_file(path)
    return sha256_bytes("".join(f"{sha256_file(p)}\n" for p in (path, *data_files)).encode())
