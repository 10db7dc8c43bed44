"""Triton Python-backend model: classifier outputs [C] → probabilities [C] and the top-k ids, scores and labels.

The same functions as ``infer.py`` (``trt_res2net.data.postprocess``, vendored beside this file): softmax unless the
model already outputs probabilities, then the top-k with ties going to the lower class id. The labels are
``labels.txt`` in this model's folder, one per line, line i for class i.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from trt_res2net_vendored.data.postprocess import is_probability, softmax, topk


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        outputs = {o["name"]: o for o in config["output"]}
        self.k = int(outputs["TOPK_IDS"]["dims"][0])
        self.mode = params.get("outputs_probabilities", "auto")  # "true", "false" or "auto" (per request)
        with open(os.path.join(args["model_repository"], "labels.txt"), encoding="utf-8") as f:
            self.labels = np.array([line.rstrip("\n").encode() for line in f], dtype=object)

    def _probabilities(self, rows: np.ndarray) -> np.ndarray:
        already = self.mode == "true" or (self.mode == "auto" and is_probability(rows))
        return rows.astype(np.float32, copy=False) if already else softmax(rows)

    def execute(self, requests):
        responses = []
        for request in requests:  # per request: "auto" decides on the request's own rows, as infer.py on a batch
            scores = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            rows = scores.reshape(scores.shape[0], -1)
            if rows.shape[1] != len(self.labels):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"{rows.shape[1]} classes in, but labels.txt has {len(self.labels)}")))
                continue
            probs = self._probabilities(rows)
            ids, vals = topk(probs, self.k)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("PROBABILITIES", probs),
                pb_utils.Tensor("TOPK_IDS", ids.astype(np.int64)),
                pb_utils.Tensor("TOPK_SCORES", vals.astype(np.float32)),
                pb_utils.Tensor("TOPK_LABELS", self.labels[ids]),
            ]))
        return responses
