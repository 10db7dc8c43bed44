"""Triton Python-backend model: encoded image bytes (TYPE_STRING) → float32 [3, H, W] (the exported spec's crop).

``steps.Preprocessing``: ``infer.py``'s preprocessing bit for bit (``trt_res2net.data.preprocess``, vendored beside
this file), each image checked against the limits (``max_image_bytes``, and the pixels its header declares against
``max_image_pixels``) before anything is decoded. ``execute`` hands each request to the decoding threads (or, when
its images are costly, to their own lane: ``decode_lane``) and returns; each request's response is sent from the
thread that decoded it (the response sender, which Triton ≥ 24.06 allows in the default mode: one response per
request), so no request waits for a slower one of its batch. At most ``max_batch_size`` requests are in the process
at once; past that ``execute`` waits and the rest queue in Triton.

An image that is refused or cannot be decoded fails its own request with ``INVALID_ARG`` (HTTP 400, gRPC
``INVALID_ARGUMENT``: the client's fault) and the reason; a costly image the lane cannot take in time with
``UNAVAILABLE`` (503: retry later); an unexpected error as a server error (500); no other request is affected.
"""

import json
import threading

import triton_python_backend_utils as pb_utils
from trt_res2net_vendored.serving.triton_models.steps import (
    Preprocessing,
    StepError,
    decoded,
    instance_threads,
    parameters,
    triton_response,
)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        threads = instance_threads(config, "threads")
        self.step = Preprocessing(parameters(config), threads, config.get("name", "the preprocessing model"))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.in_process = threading.BoundedSemaphore(max(threads, int(config.get("max_batch_size", 0) or 1)))

    def execute(self, requests):
        for request in requests:
            # BYTES come out as Python bytes objects: they outlive the request, which Triton frees on return
            images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            sender = request.get_response_sender()
            self.in_process.acquire()
            try:
                self.step.submit(images).future.add_done_callback(lambda job, sender=sender: self._send(job, sender))
            except BaseException:
                self.in_process.release()
                raise
        return None

    def _send(self, job, sender):
        try:
            pixels = decoded(job)
            result = pixels if isinstance(pixels, StepError) else {self.output_name: pixels}
            sender.send(triton_response(pb_utils, result), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            self.in_process.release()

    def finalize(self):
        self.step.close()
