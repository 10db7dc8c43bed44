"""Triton Python-backend model: encoded image bytes (TYPE_STRING) → float32 [3, 224, 224].

Runs ``trt_res2net.data.preprocess.preprocess`` (vendored beside this file, byte for byte) on each image: PaddleClas's
decode, resize, crop and normalisation, the same bits as ``infer.py``. The dynamic batcher hands ``execute`` the
requests queued together. Each image is first checked against the limits (``max_image_bytes``, and the pixels its
header declares against ``max_image_pixels``) here, before anything is decoded: an image bomb is refused in
microseconds and never reaches the decoding thread pool, so it delays no other request. The accepted images are
decoded in that pool (OpenCV releases the GIL). An image that is refused or cannot be decoded fails its own request
with ``INVALID_ARG`` (HTTP 400, gRPC ``INVALID_ARGUMENT``: the client's fault) and the reason; an unexpected error
fails its request as a server error (500); no other request is affected.
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from trt_res2net_vendored.data.preprocess import SPEC, ImageDecodeError, ImageLimits, check_encoded, preprocess


def _parameters(config: dict) -> dict:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _error(message: str, code: str):
    """A TritonError with ``code`` (INVALID_ARG, INTERNAL) where this Triton's Python backend has codes."""
    code = getattr(pb_utils.TritonError, code, None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _parameters(config)
        recorded = params.get("preprocess_sha256")
        if recorded and recorded != SPEC.sha256():
            raise pb_utils.TritonModelException(
                f"the vendored preprocessing spec {SPEC.to_json()} is not the one this repository was exported "
                f"with (sha256 {recorded}); export the repository again with build.py --triton-repo")
        name = config.get("name", "the preprocessing model")
        defaults = ImageLimits()
        self.limits = ImageLimits(
            max_pixels=int(params.get("max_image_pixels") or defaults.max_pixels),
            max_bytes=int(params.get("max_image_bytes") or defaults.max_bytes),
            pixels_option=f"parameter max_image_pixels of {name}; build.py --triton-max-image-pixels",
            bytes_option=f"parameter max_image_bytes of {name}; build.py --triton-max-image-bytes")
        if "cv2" not in sys.modules:
            # OpenCV reads this once, when it is first imported (next, by the first decode): its own check of the
            # header, before it allocates, then bounds the formats whose header image_header does not read.
            os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(self.limits.max_pixels)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        threads = int(params.get("threads", "0") or 0) or max(1, _cores() // instances)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="decode")

    def execute(self, requests):
        c = SPEC.crop_size
        jobs = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            refused = []
            for i, data in enumerate(images):
                try:
                    check_encoded(data, self.limits)  # the size and the header's dimensions: microseconds
                except ImageDecodeError as e:
                    refused.append(f"image {i} of the request: {e.reason}")
            if refused:
                jobs.append((None, refused, []))
                continue
            out = np.empty((len(images), 3, c, c), np.float32)
            futures = [self.pool.submit(preprocess, bytes(data), SPEC, out[i], self.limits)
                       for i, data in enumerate(images)]
            jobs.append((out, [], futures))
        responses = []
        for out, errors, futures in jobs:
            server_errors = []
            for i, future in enumerate(futures):
                try:
                    future.result()
                except ImageDecodeError as e:
                    errors.append(f"image {i} of the request: {e.reason}")
                except Exception as e:  # not the image's fault (e.g. out of memory): a server error
                    server_errors.append(f"image {i} of the request: {type(e).__name__}: {str(e)[:200]}")
            if server_errors:
                responses.append(pb_utils.InferenceResponse(error=_error("; ".join(server_errors), "INTERNAL")))
            elif errors:
                responses.append(pb_utils.InferenceResponse(error=_error("; ".join(errors), "INVALID_ARG")))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)]))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
