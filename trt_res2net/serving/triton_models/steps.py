"""The steps the Python-backend models run: decode and preprocess, classify with ONNX Runtime, top-k.

Plain numpy in, plain numpy out: the ``model.py`` templates beside this file turn Triton's requests into these calls
and the results into responses, so one step's code serves both the ensembles' separate models and the one-process
pipeline model. Copied byte for byte into each Python model's ``1/trt_res2net_vendored/`` with the preprocessing and
postprocessing it imports (relative imports: the same code runs as ``trt_res2net.serving.triton_models.steps``).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ...core.errors import UserError
from ...data.postprocess import is_probability, softmax, topk
from ...data.preprocess import (
    SPEC,
    ImageDecodeError,
    ImageLimits,
    PreprocessSpec,
    check_encoded,
    limit_opencv_pixels,
    preprocess,
)
from .decode_lane import DEFAULT_COSTLY_PIXELS, DEFAULT_DECODE_DEADLINE_MS, DecodeLane, LaneBusy, decode_work


class StepError(Exception):
    """A request that fails: ``client`` when the request is at fault (Triton's INVALID_ARG: HTTP 400 / gRPC
    INVALID_ARGUMENT), ``busy`` when the server cannot take it now (UNAVAILABLE: 503, retry later), else the server
    (INTERNAL: 500)."""

    def __init__(self, message: str, client: bool, busy: bool = False):
        super().__init__(message)
        self.client, self.busy = client, busy


def served_spec(params: dict[str, str]) -> PreprocessSpec:
    """The preprocessing a model was exported with (its ``preprocess_spec`` parameter, checked against its
    ``preprocess_sha256``): raised in ``initialize``, Triton fails the load with the line."""
    recorded, text = params.get("preprocess_sha256"), params.get("preprocess_spec")
    if not text:
        return SPEC
    try:
        spec = PreprocessSpec.from_dict(json.loads(text), "parameter preprocess_spec")
    except (ValueError, UserError) as e:
        raise RuntimeError(f"{e}; export the repository again (build.py --triton-repo)") from None
    if recorded and recorded != spec.sha256():
        raise RuntimeError(f"the preprocessing spec {text} is not the one this repository was exported with (sha256 "
                           f"{recorded}); export the repository again (trt_res2net.write_triton_repository, which "
                           "build.py runs)")
    return spec


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parameters(config: dict) -> dict[str, str]:
    """A model config's ``parameters`` (as Triton hands them to ``initialize``) as plain strings."""
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def instance_threads(config: dict, key: str) -> int:
    """Threads per instance: the config's ``key`` parameter, or 0 there for the machine's cores ÷ the model's
    instances (each instance is its own process: instances × threads ≤ cores)."""
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
    return int(parameters(config).get(key, "0") or 0) or max(1, cores() // instances)


@dataclass(frozen=True)
class DecodeJob:
    """A request's decoding: its Future (of the pixels) and whether it decodes in the costly images' lane."""

    future: Future
    costly: bool


class Preprocessing:
    """Encoded images → float32 [n, 3, H, W], ``infer.py``'s preprocessing bit for bit, with the spec the repository
    was exported with (``served_spec``).

    Every image is checked against the limits (its size, the pixels its header declares, a JPEG's scans) before
    anything is decoded: an image bomb is refused in microseconds and never reaches the decoding threads. A request
    whose declared work is over ``costly_pixels`` decodes in its own lane (``decode_lane``, under the deadline
    ``decode_deadline_ms``), so that costly images delay no other request; the others decode on ``threads`` threads
    (OpenCV releases the GIL), or on the caller's (``one``)."""

    def __init__(self, params: dict[str, str], threads: int, model_name: str):
        self.spec = served_spec(params)
        defaults = ImageLimits()
        self.limits = ImageLimits(
            max_pixels=int(params.get("max_image_pixels") or defaults.max_pixels),
            max_bytes=int(params.get("max_image_bytes") or defaults.max_bytes),
            pixels_option=f"parameter max_image_pixels of {model_name}; build.py --triton-max-image-pixels",
            bytes_option=f"parameter max_image_bytes of {model_name}; build.py --triton-max-image-bytes")
        # OpenCV's own pixel limit at this model's (cv2 is imported by the first decode, after this): OpenCV checks
        # the size its decoder parsed, before it allocates, whatever image_header makes of the header.
        limit_opencv_pixels(self.limits.max_pixels)
        self.costly_pixels = int(params.get("costly_pixels") or DEFAULT_COSTLY_PIXELS)
        deadline_ms = int(params.get("decode_deadline_ms") or DEFAULT_DECODE_DEADLINE_MS)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")
        self.lane = DecodeLane(deadline_s=deadline_ms / 1e3)

    def check(self, images: np.ndarray) -> int:
        """A request's declared decoding work (pixel passes); StepError (the client's) when one of its images is
        over the limits, from its size and header."""
        refused, work = [], 0
        for i, data in enumerate(images.reshape(-1)):
            try:
                declared = check_encoded(data, self.limits)  # the size and the header's dimensions: microseconds
                work += decode_work(data, declared)
            except ImageDecodeError as e:
                refused.append(f"image {i} of the request: {e.reason}")
        if refused:
            raise StepError("; ".join(refused), client=True)
        return work

    def submit(self, images: np.ndarray, inline: bool = False) -> DecodeJob:
        """A request's images → its decoding job (``decoded`` reads it): in the lane when they are costly, else on
        the decoding threads, or at once on the caller's (``inline``)."""
        future: Future = Future()
        try:
            work = self.check(images)
        except StepError as e:
            future.set_exception(e)
            return DecodeJob(future, False)
        if work > self.costly_pixels:
            return DecodeJob(self.lane.submit(self._decode, images), True)
        if not inline:
            return DecodeJob(self.pool.submit(self._decode, images), False)
        try:
            future.set_result(self._decode(images))
        except Exception as e:
            future.set_exception(e)
        return DecodeJob(future, False)

    def _decode(self, images: np.ndarray) -> np.ndarray:
        images = images.reshape(-1)
        out = np.empty((len(images), 3, *self.spec.crop_hw), np.float32)
        client, server = [], []
        for i, data in enumerate(images):
            try:
                preprocess(bytes(data), self.spec, out[i], self.limits)
            except ImageDecodeError as e:
                client.append(f"image {i} of the request: {e.reason}")
            except Exception as e:  # not the image's fault (e.g. out of memory): a server error
                server.append(f"image {i} of the request: {type(e).__name__}: {str(e)[:200]}")
        if server or client:
            raise StepError("; ".join(server or client), client=not server)
        return out

    def run(self, requests: list[np.ndarray]) -> list[np.ndarray | StepError]:
        """Per request (an array of encoded images), its pixels or why it fails; the requests are independent.
        Every request is checked before any is decoded, so a refused one never reaches the decoding threads."""
        return [decoded(job) for job in [self.submit(images).future for images in requests]]

    def close(self) -> None:
        self.lane.close()
        self.pool.shutdown(wait=True, cancel_futures=True)


def pixels(job: Future) -> np.ndarray:
    """A decoding job's pixels; StepError when it failed (the lane's refusals as the server being busy)."""
    try:
        return job.result()
    except LaneBusy as e:
        raise StepError(str(e), client=False, busy=True) from None


def decoded(job: Future) -> np.ndarray | StepError:
    """A decoding job's pixels, or its StepError (anything unexpected as the server's)."""
    try:
        return pixels(job)
    except StepError as e:
        return e
    except Exception as e:
        return StepError(f"{type(e).__name__}: {str(e)[:300]}", client=False)


class OnnxClassifier:
    """The classifier ONNX on ONNX Runtime, set up as ``infer.py``'s session
    (``trt_res2net.runtime.onnx_runtime.OnnxRuntimeBackend``): CUDA when ``gpu_device`` is given and ONNX Runtime
    has it, else the CPU, on ``threads`` threads (0: all the cores, ONNX Runtime's default, which also pins them);
    idle threads do not spin. ``run`` may be called from several threads at once, as ``infer.py``'s callers do."""

    def __init__(self, path: str, threads: int, gpu_device: int | None = None):
        import onnxruntime as ort

        providers: list = ["CPUExecutionProvider"]
        self.on_gpu = gpu_device is not None and "CUDAExecutionProvider" in ort.get_available_providers()
        if self.on_gpu:
            providers = [("CUDAExecutionProvider", {"device_id": gpu_device}), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = 0 if threads == cores() else threads
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [n, 3, H, W] → the ONNX's output [n, ...]; StepError (a server fault) when ONNX Runtime fails."""
        batch = np.ascontiguousarray(batch, np.float32)
        try:
            y = self.session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as e:
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
            raise StepError(f"ONNX Runtime failed on a batch of shape {list(batch.shape)}: {lines[0][:300]}",
                            client=False) from None
        return np.asarray(y, np.float32)


class OpenVinoClassifier:
    """The CPU model (an OpenVINO IR) compiled as ``infer.py`` runs it (``engine.cpu_build.compile_ir``: its
    manifest's inference precision, ``default`` setting none), on ``threads`` threads; one infer request per calling
    thread, so that ``run`` may be called from several at once."""

    on_gpu = False

    def __init__(self, path: str, threads: int, inference_precision: str):
        import threading

        import openvino as ov

        config = {} if inference_precision in ("", "default") else {"INFERENCE_PRECISION_HINT": inference_precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(path, "CPU", config)
        self.local = threading.local()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 [n, 3, H, W] → the model's output [n, ...]; StepError (a server fault) when OpenVINO fails."""
        request = getattr(self.local, "request", None)
        if request is None:
            request = self.local.request = self.compiled.create_infer_request()
        try:
            result = request.infer({0: np.ascontiguousarray(batch, np.float32)})
        except Exception as e:
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
            raise StepError(f"OpenVINO failed on a batch of shape {list(batch.shape)}: {lines[0][:300]}",
                            client=False) from None
        return np.array(next(iter(result.values())), np.float32)


class Postprocessing:
    """Classifier outputs [n, C] → ``PROBABILITIES``, ``TOPK_IDS``, ``TOPK_SCORES``, ``TOPK_LABELS``: ``infer.py``'s
    softmax (unless the model already outputs probabilities: ``outputs_probabilities`` "true", "false" or "auto",
    decided per request on its own rows, as ``infer.py`` on a batch) and top-k, ties to the lower class id."""

    def __init__(self, labels_path: str, k: int, outputs_probabilities: str = "auto"):
        self.k, self.mode = k, outputs_probabilities
        with open(labels_path, encoding="utf-8") as f:
            self.labels = np.array([line.rstrip("\n").encode() for line in f], dtype=object)

    def run(self, scores: np.ndarray) -> dict[str, np.ndarray]:
        rows = scores.reshape(scores.shape[0], -1)
        if rows.shape[1] != len(self.labels):
            raise StepError(f"{rows.shape[1]} classes in, but labels.txt has {len(self.labels)}", client=False)
        already = self.mode == "true" or (self.mode == "auto" and is_probability(rows))
        probs = rows.astype(np.float32, copy=False) if already else softmax(rows)
        ids, vals = topk(probs, self.k)
        return {"PROBABILITIES": probs, "TOPK_IDS": ids.astype(np.int64), "TOPK_SCORES": vals.astype(np.float32),
                "TOPK_LABELS": self.labels[ids]}


def triton_response(pb_utils, result: dict[str, np.ndarray] | StepError):
    """A step's result (output name → array) or failure as the Python backend's InferenceResponse; a failure's
    TritonError carries its code where this Triton's backend has codes."""
    if not isinstance(result, StepError):
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in result.items()])
    name = "UNAVAILABLE" if result.busy else "INVALID_ARG" if result.client else "INTERNAL"
    code = getattr(pb_utils.TritonError, name, None)
    error = pb_utils.TritonError(str(result)) if code is None else pb_utils.TritonError(str(result), code)
    return pb_utils.InferenceResponse(error=error)
