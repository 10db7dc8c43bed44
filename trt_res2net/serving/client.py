"""A client for the served ensembles: send encoded images, get ``infer.py``'s answer (the same JSON form).

    python -m trt_res2net.cli.client IMAGE_OR_DIR... --model res2net50_vd_26w_4s_python \\
        [--url 127.0.0.1:8000] [--protocol http|grpc] [--concurrency N] [--json out.json]

Each image is one request (the server batches concurrent requests); an image the server cannot decode fails
its own request and is reported, the rest are classified. Needs ``tritonclient[grpc,http]`` (the ``serve`` extra).
Exit status: 0 all classified, 1 some failed, 2 usage error, 3 tritonclient missing.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import EXIT_SOME_FAILED, MissingDependency, UserError

OUTPUTS = ("TOPK_IDS", "TOPK_SCORES", "TOPK_LABELS", "PROBABILITIES")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


class RemoteError(UserError):
    """The server refused one request (e.g. an image it could not decode); the message is the server's."""

    exit_code = EXIT_SOME_FAILED


def _modules(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
        from tritonclient.utils import InferenceServerException
    except ImportError as e:
        raise MissingDependency(f"talking to Triton needs tritonclient[{protocol}] ({e}): pip install "
                                "'trt-res2net[serve]' in the serving environment (README)") from None
    return client, InferenceServerException


class TritonClassifier:
    """Requests to one served ensemble (``IMAGE`` bytes in; top-k, labels and probabilities out).

    Thread-safe: each thread gets its own connection."""

    def __init__(self, model: str, url: str | None = None, protocol: str = "http", timeout: float = 120.0):
        if protocol not in DEFAULT_PORTS:
            raise UserError(f"protocol must be http or grpc, not {protocol!r}")
        self.model, self.protocol, self.timeout = model, protocol, timeout
        self.url = url or f"127.0.0.1:{DEFAULT_PORTS[protocol]}"
        self._client_module, self._error = _modules(protocol)
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every connection (HTTP clients left to the garbage collector complain at exit)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "grpc":
                client = self._client_module.InferenceServerClient(self.url)
            else:
                client = self._client_module.InferenceServerClient(
                    self.url, connection_timeout=self.timeout, network_timeout=self.timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def infer(self, images: Sequence[bytes], outputs: Sequence[str] = OUTPUTS, input_name: str = "IMAGE",
              model: str | None = None) -> dict[str, np.ndarray]:
        """One request with ``len(images)`` rows; output name → array. RemoteError with the server's message."""
        m = self._client_module
        data = np.array([[bytes(b)] for b in images], dtype=object)
        inp = m.InferInput(input_name, list(data.shape), "BYTES")
        if self.protocol == "grpc":
            inp.set_data_from_numpy(data)
            requested = [m.InferRequestedOutput(o) for o in outputs]
            call = dict(client_timeout=self.timeout)
        else:
            inp.set_data_from_numpy(data, binary_data=True)
            requested = [m.InferRequestedOutput(o, binary_data=True) for o in outputs]
            call = {}
        try:
            result = self._client().infer(model or self.model, [inp], outputs=requested, **call)
        except self._error as e:
            raise RemoteError(e.message() if callable(getattr(e, "message", None)) else str(e)) from None
        return {o: result.as_numpy(o) for o in outputs}

    def classify_one(self, image: bytes) -> list[dict]:
        """One image → its top-k entries ``[{"class_id", "label", "score"}]`` as infer.py writes them."""
        out = self.infer([image], outputs=OUTPUTS[:3])
        labels = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in out["TOPK_LABELS"][0]]
        return [{"class_id": int(cid), "label": label, "score": round(float(score), 6)}  # postprocess.topk_entries
                for cid, label, score in zip(out["TOPK_IDS"][0], labels, out["TOPK_SCORES"][0], strict=True)]

    def classify(self, items: Sequence, concurrency: int = 1) -> list[dict]:
        """Paths (or bytes) → ``{"image", "topk"}`` or ``{"image", "error"}`` per item, in input order; up to
        ``concurrency`` requests in flight."""
        from concurrent.futures import ThreadPoolExecutor

        def one(i_item):
            i, item = i_item
            name = str(item) if not isinstance(item, (bytes, bytearray)) else f"<item {i}>"
            try:
                data = item if isinstance(item, (bytes, bytearray)) else Path(item).read_bytes()
            except OSError as e:
                return {"image": name, "error": str(e.strerror or e)}
            try:
                return {"image": name, "topk": self.classify_one(data)}
            except RemoteError as e:
                return {"image": name, "error": str(e)}

        with ThreadPoolExecutor(max(1, concurrency)) as pool:
            return list(pool.map(one, enumerate(items)))
