"""Triton Python-backend model: classifier outputs [C] → probabilities [C] and the top-k ids, scores and labels.

``steps.Postprocessing``: the same functions as ``infer.py`` (``trt_res2net.data.postprocess``, vendored beside this
file): softmax unless the model already outputs probabilities, then the top-k with ties going to the lower class
id. The labels are ``labels.txt`` in this model's folder, one per line, line i for class i.
"""

import json
import os

import triton_python_backend_utils as pb_utils
from trt_res2net_vendored.serving.triton_models.steps import Postprocessing, StepError, parameters, triton_response


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        outputs = {o["name"]: o for o in config["output"]}
        self.input_name = config["input"][0]["name"]
        self.step = Postprocessing(os.path.join(args["model_repository"], "labels.txt"),
                                   int(outputs["TOPK_IDS"]["dims"][0]),
                                   parameters(config).get("outputs_probabilities", "auto"))

    def execute(self, requests):
        responses = []
        for request in requests:  # per request: "auto" decides on the request's own rows, as infer.py on a batch
            try:
                result = self.step.run(pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy())
            except StepError as e:
                result = e
            responses.append(triton_response(pb_utils, result))
        return responses
