"""A client for the served image models (the ensembles, the pipeline model): send encoded images, get ``infer.py``'s
answer (the same JSON form).

    python -m trt_res2net.cli.client IMAGE_OR_DIR... --model res2net50_vd_26w_4s_python \\
        [--url 127.0.0.1:8000] [--protocol http|grpc] [--concurrency N] [--json out.json]

Each image is one request (the server batches concurrent requests); an image the server cannot decode fails
its own request and is reported, the rest are classified. Before the first image, ``check_ready`` asks the server
whether it is there and serves the model: one line says when it is not, and why (a model left unloaded because
the server lacks its backend), naming the image models it does serve. Needs ``tritonclient[grpc,http]`` (the
``serve`` extra). Exit status: 0 all classified, 1 some failed (or no server, or the model not served), 2 usage
error, 3 tritonclient missing.
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


class NotServed(UserError):
    """No server answers, or it does not serve the model asked for."""

    exit_code = EXIT_SOME_FAILED


# How a classifier variant's model is named in build.py's repositories, and the backend it needs.
VARIANT_BACKENDS = {"onnx": "the ONNX Runtime backend (onnxruntime)", "plan": "the TensorRT backend (tensorrt)"}


def _modules(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
        from tritonclient.utils import InferenceServerException
    except Exception as e:  # ImportError, or tritonclient.grpc's RuntimeError when grpcio is missing
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MissingDependency(f"talking to Triton needs tritonclient[{protocol}] ({first}): run the client from the "
                                "serving environment (.venv-serve/bin/python -m trt_res2net.cli.client ...; README), "
                                "or pip install 'tritonclient[grpc,http]'") from None
    return client, InferenceServerException


def _message(e: BaseException) -> str:
    message = getattr(e, "message", None)  # tritonclient's InferenceServerException.message()
    text = message() if callable(message) else str(e)
    return (str(text).strip().splitlines() or [type(e).__name__])[0]


class TritonClassifier:
    """Requests to one served image model (``IMAGE`` bytes in; top-k, labels and probabilities out).

    Thread-safe: each thread gets its own connection."""

    def __init__(self, model: str, url: str | None = None, protocol: str = "http", timeout: float = 120.0):
        if protocol not in DEFAULT_PORTS:
            raise UserError(f"TritonClassifier.protocol must be http or grpc, not {protocol!r}")
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
            if str(e.status()) in ("503", "StatusCode.UNAVAILABLE"):  # rejected by a full or timed-out queue
                why = "waited past its queue timeout" if "timeout" in _message(e).lower() else "its queue is full"
                raise RemoteError(f"the server is busy ({why}; retry later): {_message(e)}") from None
            raise RemoteError(_message(e)) from None
        except (OSError, ConnectionError) as e:  # the server went away mid-run: this request's error, one line
            raise RemoteError(f"no answer from {self.url} ({_message(e)})") from None
        return {o: result.as_numpy(o) for o in outputs}

    # ---------------------------------------------------------------------------------------------- readiness

    def _index(self) -> list[dict]:
        client = self._client()
        if self.protocol == "grpc":
            return client.get_model_repository_index(as_json=True).get("models", [])
        return client.get_model_repository_index()

    def _takes_images(self, name: str) -> bool:
        """Whether a model answers on image bytes as build.py's ensembles and pipeline model do."""
        client = self._client()
        config = (client.get_model_config(name, as_json=True).get("config", {}) if self.protocol == "grpc"
                  else client.get_model_config(name))
        return ([t.get("name") for t in config.get("input", [])] == ["IMAGE"]
                and "TOPK_IDS" in {t.get("name") for t in config.get("output", [])})

    def served_image_models(self) -> list[str]:
        """The models the server has loaded that take images (the ensembles, the pipeline model)."""
        ready = [m["name"] for m in self._index() if m.get("state") == "READY"]
        return [name for name in ready if self._takes_images(name)]

    def check_ready(self) -> None:
        """NotServed (one line) when no server answers at the URL, or when it does not serve the model: why (a
        load error the server reports, or a classifier left unloaded because this server lacks its backend) and
        which image models it serves."""
        try:
            live = self._client().is_server_live()
        except Exception as e:  # connection refused, no such host, timeout
            raise NotServed(f"no Triton server answers at {self.url} over {self.protocol} ({_message(e)}): start one "
                            "with serve.py REPO_DIR (README, \"Serving with Triton\"), or pass TritonClassifier.url"
                            ) from None
        if not live:
            raise NotServed(f"the Triton server at {self.url} is not live (it is starting or stopping)")
        try:
            if self._client().is_model_ready(self.model):
                return
            index = {m["name"]: m for m in self._index()}
            served = self.served_image_models()
        except self._error as e:
            raise NotServed(f"the Triton server at {self.url}: {_message(e)}") from None
        hint = (f"it serves {', '.join(served)}: pass TritonClassifier.model='{served[0]}'" if served
                else "it serves no model that takes images")
        entry = index.get(self.model)
        if entry is None:
            raise NotServed(f"{self.model} is not in the repository of the Triton server at {self.url}; {hint}")
        reason = entry.get("reason", "")
        if entry.get("state") not in (None, "", "UNAVAILABLE") or (reason and reason != "unloaded"):
            raise NotServed(f"{self.model} is not loaded on the Triton server at {self.url} ({entry.get('state')}: "
                            f"{reason}); {hint}")
        raise NotServed(f"{self.model} is not loaded on the Triton server at {self.url}: "
                        f"{self._why_not_loaded(index)}; {hint}")

    def _why_not_loaded(self, index: dict) -> str:
        """What build.py's repository layout says about a model serve.py left out: its classifier needs a backend
        this server does not have."""
        variant = self.model.rsplit("_", 1)[-1]
        base = self.model.rsplit("_", 1)[0]
        candidates = ([f"{base}_classifier_{variant}"] if variant in VARIANT_BACKENDS
                      else [f"{self.model}_classifier_plan", f"{self.model}_classifier_onnx"])
        for classifier in candidates:
            entry = index.get(classifier)
            if entry is not None and entry.get("state") != "READY":
                backend = VARIANT_BACKENDS[classifier.rsplit("_", 1)[-1]]
                return (f"it runs {classifier}, which needs {backend}, and serve.py loads only what this server can "
                        "run (nvidia-pytriton's tritonserver has only the Python backend)")
        return "it is in the server's repository but was not loaded (serve.py loads only what the server can run)"

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
