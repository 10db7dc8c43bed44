"""Triton Python-backend model: encoded image bytes (TYPE_STRING) → float32 [3, 224, 224].

``steps.Preprocessing``: ``infer.py``'s preprocessing bit for bit (``trt_res2net.data.preprocess``, vendored beside
this file), each image checked against the limits (``max_image_bytes``, and the pixels its header declares against
``max_image_pixels``) before anything is decoded. The dynamic batcher hands ``execute`` the requests queued
together; an image that is refused or cannot be decoded fails its own request with ``INVALID_ARG`` (HTTP 400, gRPC
``INVALID_ARGUMENT``: the client's fault) and the reason; an unexpected error fails its request as a server error
(500); no other request is affected.
"""

import json

import triton_python_backend_utils as pb_utils
from trt_res2net_vendored.serving.triton_models.steps import (
    Preprocessing,
    StepError,
    instance_threads,
    parameters,
    triton_response,
)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.step = Preprocessing(parameters(config), instance_threads(config, "threads"),
                                  config.get("name", "the preprocessing model"))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        return [triton_response(pb_utils, r if isinstance(r, StepError) else {self.output_name: r})
                for r in self.step.run(images)]

    def finalize(self):
        self.step.close()
