"""Triton Python-backend model: the classifier ONNX run by ONNX Runtime inside the Python backend.

For a Triton without the ONNX Runtime backend (the ``tritonserver`` of the ``serve`` extra has only the Python
backend). Same inputs and outputs as the ``onnxruntime_onnx`` model beside it. The requests that the dynamic
batcher queued together run as one ONNX Runtime batch; the outputs are split back per request. The session is
set up as ``infer.py``'s (``trt_res2net.runtime.classifier.OnnxRuntimeBackend``): CUDA when the instance is on a GPU and
ONNX Runtime has it, else the CPU; idle threads do not spin. Each instance is its own process with its own sessions:
``intra_op_threads`` 0 gives each the machine's cores ÷ the instance count, so instances × threads ≤ cores.
``batch_runs``: ``split`` (the default on the CPU; below) or ``whole`` (one run per batch).
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

PARTS_PER_THREAD = 4


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        threads = int(params.get("intra_op_threads", "0") or 0) or max(1, _cores() // instances)
        mode = params.get("batch_runs", "split") or "split"
        providers = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            device = int(args.get("model_instance_device_id", 0))
            providers = [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
            mode = "whole"  # a GPU wants the whole batch in one run

        def session(intra_op_threads: int):
            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # 0 (all the cores) is ONNX Runtime's default, which also pins its threads, as infer.py's session
            options.intra_op_num_threads = 0 if intra_op_threads == _cores() else intra_op_threads
            return ort.InferenceSession(path, options, providers=providers)

        # One request alone runs on all of the instance's threads (its latency as infer.py's). A batch of several
        # runs as concurrent runs of its rows (up to PARTS_PER_THREAD per thread) on a single-threaded session: on
        # the CPU that keeps every core busy to the batch's end, without the waits at the end of each operator that
        # one multi-threaded run has (measured: docs/triton.md) — as infer.py's concurrent callers keep them busy.
        self.session = session(threads)
        self.parts = PARTS_PER_THREAD * threads if mode == "split" and threads > 1 else 1
        self.session_1 = session(1) if self.parts > 1 else None
        self.pool = ThreadPoolExecutor(self.parts, thread_name_prefix="run") if self.parts > 1 else None

    def execute(self, requests):
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        try:
            y = self._run(np.ascontiguousarray(batch, np.float32))
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

    def _run(self, batch: np.ndarray) -> np.ndarray:
        k = min(self.parts, len(batch))
        if k <= 1 or len(batch) == 1:
            return self.session.run([self.output_name], {self.input_name: batch})[0]

        def part(rows):
            return self.session_1.run([self.output_name], {self.input_name: rows})[0]

        return np.concatenate(list(self.pool.map(part, np.array_split(batch, k))))

    def finalize(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
