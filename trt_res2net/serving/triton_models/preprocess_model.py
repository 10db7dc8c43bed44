"""Triton Python-backend model: encoded image bytes (TYPE_STRING) → float32 [3, 224, 224].

Runs ``trt_res2net.data.preprocess.preprocess`` (vendored beside this file, byte for byte) on each image: PaddleClas's
decode, resize, crop and normalisation, the same bits as ``infer.py``. The dynamic batcher hands ``execute`` the
requests queued together; their images are decoded in a thread pool (OpenCV releases the GIL). An image that cannot
be decoded fails its own request, with the reason, and no other.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from trt_res2net_vendored.data.preprocess import SPEC, ImageDecodeError, preprocess


def _parameters(config: dict) -> dict:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _parameters(config)
        recorded = params.get("preprocess_sha256")
        if recorded and recorded != SPEC.sha256():
            raise pb_utils.TritonModelException(
                f"the vendored preprocessing spec {SPEC.to_json()} is not the one this repository was exported "
                f"with (sha256 {recorded}); export the repository again with build.py --triton-repo")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.pool = ThreadPoolExecutor(max(1, int(params.get("threads", "2") or 2)), thread_name_prefix="decode")

    def execute(self, requests):
        c = SPEC.crop_size
        jobs = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
            out = np.empty((len(images), 3, c, c), np.float32)
            futures = [self.pool.submit(preprocess, bytes(data), SPEC, out[i]) for i, data in enumerate(images)]
            jobs.append((out, futures))
        responses = []
        for out, futures in jobs:
            errors = []
            for i, future in enumerate(futures):
                try:
                    future.result()
                except ImageDecodeError as e:
                    errors.append(f"image {i} of the request: {e.reason}")
            if errors:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("; ".join(errors))))
            else:
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)]))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=True, cancel_futures=True)
