"""Triton Python-backend model: the classifier ONNX run by ONNX Runtime inside the Python backend.

For a Triton without the ONNX Runtime backend (the ``tritonserver`` of the ``serve`` extra has only the Python
backend). Same inputs and outputs as the ``onnxruntime_onnx`` model beside it. The requests that the dynamic
batcher queued together run as one ONNX Runtime batch; the outputs are split back per request. The session is
set up as ``infer.py``'s (``trt_res2net.runtime.classifier.OnnxRuntimeBackend``): CUDA when the instance is on a GPU and
ONNX Runtime has it, else the CPU; idle threads do not spin.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, options, providers=providers)

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            (y,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch, np.float32)})
        except Exception as e:
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
            error = pb_utils.TritonError(
                f"ONNX Runtime failed on a batch of shape {list(batch.shape)}: {lines[0][:300]}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        y = np.asarray(y, np.float32)
        responses, start = [], 0
        for a in arrays:
            part = y[start : start + a.shape[0]]
            start += a.shape[0]
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, part)]))
        return responses
