"""Triton Python-backend model: encoded image bytes (TYPE_STRING) → ``infer.py``'s answer, in one process.

Decode and preprocess (``steps.Preprocessing``), the classifier ONNX on ONNX Runtime (``steps.OnnxClassifier``), the
softmax and top-k (``steps.Postprocessing``): the three steps of the ensembles, run back to back as ``infer.py`` runs
them, for a Triton with only the Python backend.

On the CPU each request runs as ``infer.py``'s concurrent callers run theirs: on one of ``concurrent_runs`` threads
(default 4 per ONNX Runtime thread), decode → run on the shared session → top-k, and its response is sent from that
thread (the Python backend's response sender, which Triton ≥ 24.06 allows in the default mode: one response per
request). ``execute`` only hands the requests over and returns, so the instance is free for the next ones at once:
no core waits for a batch's slowest request or for the hand-offs between batches, and a lone request still runs on
all of the session's threads (measured: docs/triton.md, "Throughput and latency"). At most ``max_batch_size``
requests are in the process at once; past that ``execute`` waits, and the rest queue in Triton, under the model's
queue policy. On a GPU the batch the dynamic batcher formed runs as one ONNX Runtime run.

An image that is refused (over the limits, checked from its header before anything is decoded) or cannot be decoded
fails its own request with ``INVALID_ARG`` (HTTP 400 / gRPC ``INVALID_ARGUMENT``); a costly image (``decode_lane``)
that its lane cannot take in time, with ``UNAVAILABLE`` (503: retry later); the server's faults are ``INTERNAL``.
Each instance is its own process with its own session: ``intra_op_threads`` 0 gives each the machine's
cores ÷ the instance count, so instances × threads ≤ cores.
"""

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils
from trt_res2net_vendored.serving.triton_models.steps import (
    OnnxClassifier,
    OpenVinoClassifier,
    Postprocessing,
    Preprocessing,
    StepError,
    decoded,
    instance_threads,
    parameters,
    triton_response,
)

RUNS_PER_THREAD = 4


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = parameters(config)
        threads = instance_threads(config, "intra_op_threads")
        self.preprocessing = Preprocessing(params, threads, config.get("name", "the pipeline model"))
        gpu = int(args.get("model_instance_device_id", 0)) if args.get("model_instance_kind") == "GPU" else None
        version = os.path.join(args["model_repository"], args["model_version"])
        if params.get("classifier") == "openvino":  # the CPU model made from the ONNX, beside it
            self.classifier = OpenVinoClassifier(os.path.join(version, "model.xml"), threads,
                                                 params.get("inference_precision", ""))
        else:
            self.classifier = OnnxClassifier(os.path.join(version, "model.onnx"), threads, gpu)
        outputs = {o["name"]: o for o in config["output"]}
        self.postprocessing = Postprocessing(os.path.join(args["model_repository"], "labels.txt"),
                                             int(outputs["TOPK_IDS"]["dims"][0]),
                                             params.get("outputs_probabilities", "auto"))
        self.input_name = config["input"][0]["name"]
        runs = int(params.get("concurrent_runs", "0") or 0) or RUNS_PER_THREAD * threads
        self.runs = None if self.classifier.on_gpu else ThreadPoolExecutor(runs, thread_name_prefix="request")
        self.in_process = threading.BoundedSemaphore(max(runs, int(config.get("max_batch_size", 0) or 0)))

    def execute(self, requests):
        if self.runs is None:
            return self._batch(requests)
        for request in requests:
            # BYTES come out as Python bytes objects: they outlive the request, which Triton frees on return
            images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            sender = request.get_response_sender()
            self.in_process.acquire()
            try:
                self.runs.submit(self._one, images, sender)
            except BaseException:
                self.in_process.release()
                raise
        return None

    def _one(self, images, sender):
        """A request on a request thread: its images decoded here (costly ones in their lane, which hands the
        request back to these threads when done, so that none of them waits for it), classified, answered."""
        try:
            job = self.preprocessing.submit(images, inline=True)
        except BaseException:
            self.in_process.release()
            raise
        if job.costly:
            job.future.add_done_callback(lambda f: self._resume(f, sender))
        else:
            self._answer(job.future, sender)

    def _resume(self, future, sender):
        try:
            self.runs.submit(self._answer, future, sender)
        except RuntimeError:  # the model is being unloaded: answered from here
            self._answer(future, sender)

    def _answer(self, future, sender):
        try:
            result = decoded(future)
            try:
                if not isinstance(result, StepError):
                    result = self.postprocessing.run(self.classifier.run(result))
            except StepError as e:
                result = e
            except Exception as e:  # anything else is the server's fault, answered, never lost
                result = StepError(f"{type(e).__name__}: {str(e)[:300]}", client=False)
            sender.send(triton_response(pb_utils, result), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            self.in_process.release()

    def _batch(self, requests):
        """The requests the batcher queued together as one ONNX Runtime run (a GPU); a request of costly images
        runs alone when its lane has decoded it, so that it holds back none of the others."""
        batch = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            job, sender = self.preprocessing.submit(images), request.get_response_sender()
            if job.costly:
                job.future.add_done_callback(lambda f, sender=sender: self._classify([(decoded(f), sender)]))
            else:
                batch.append((job.future, sender))
        self._classify([(decoded(f), sender) for f, sender in batch])
        return None

    def _classify(self, decodes):
        """(pixels or StepError, response sender) per request → one ONNX Runtime run of the pixels; each response
        sent."""
        results = [d for d, _ in decodes]
        accepted = [i for i, r in enumerate(results) if not isinstance(r, StepError)]
        if accepted:
            try:
                scores = self.classifier.run(np.concatenate([results[i] for i in accepted]))
            except StepError as e:
                scores = e
            except Exception as e:  # anything else is the server's fault, answered, never lost
                scores = StepError(f"{type(e).__name__}: {str(e)[:300]}", client=False)
            start = 0
            for i in accepted:
                n = len(results[i])
                try:  # per request: "auto" decides on the request's own rows, as infer.py on a batch
                    if isinstance(scores, StepError):
                        raise scores
                    results[i] = self.postprocessing.run(scores[start : start + n])
                except StepError as e:
                    results[i] = e
                start += n
        for result, (_, sender) in zip(results, decodes, strict=True):
            sender.send(triton_response(pb_utils, result), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        if self.runs is not None:
            self.runs.shutdown(wait=True)
        self.preprocessing.close()
