"""The exported Python-backend models run here with a stand-in for Triton's ``triton_python_backend_utils``:
several requests in one ``execute`` (as the dynamic batcher hands them), a corrupt image among them failing alone,
the vendored code giving infer.py's numbers. The real server runs them in tests/test_triton_server.py."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import types
from pathlib import Path

import image_factory as imf
import numpy as np
import pytest

pytest.importorskip("tritonclient", reason="writing a repository needs tritonclient (the triton/dev extra)")

from trt_res2net.data.postprocess import softmax, topk  # noqa: E402
from trt_res2net.data.preprocess import SPEC, preprocess  # noqa: E402
from trt_res2net.runtime.onnx_runtime import OnnxRuntimeBackend  # noqa: E402
from trt_res2net.serving import repository as T  # noqa: E402


class Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, np.asarray(array)

    def as_numpy(self):
        return self.array


class Response:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class TritonError(Exception):
    """Triton's Python-backend error with its code (INVALID_ARG is HTTP 400 / gRPC INVALID_ARGUMENT)."""

    INTERNAL, INVALID_ARG, UNAVAILABLE = "INTERNAL", "INVALID_ARG", "UNAVAILABLE"

    def __init__(self, message, code="INTERNAL"):
        super().__init__(message)
        self.code = code


class Request:
    def __init__(self, **tensors):
        self.tensors = {k: Tensor(k, v) for k, v in tensors.items()}
        self.sent = []
        self.done = threading.Event()

    def get_response_sender(self):
        return Sender(self)


class Sender:
    """The response sender: one response with the final flag per request (the default mode's rule)."""

    def __init__(self, request):
        self.request = request

    def send(self, response=None, flags=0):
        assert not self.request.done.is_set(), "a response after the final one"
        self.request.sent.append(response)
        if flags == FINAL:
            assert len(self.request.sent) == 1, "the default mode allows one response per request"
            self.request.done.set()


FINAL = 1


@pytest.fixture
def pb_utils(monkeypatch):
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor, fake.InferenceResponse, fake.TritonError = Tensor, Response, TritonError
    fake.TritonModelException = RuntimeError
    fake.get_input_tensor_by_name = lambda request, name: request.tensors[name]
    fake.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    return fake


@pytest.fixture(scope="module")
def repo(tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "repo"
    T.write_triton_repository(out, tiny_onnx, model_name="tiny")
    return out


def load(repo: Path, model: str, monkeypatch):
    version = repo / model / "1"
    monkeypatch.syspath_prepend(str(version))
    for name in [m for m in sys.modules if m == T.VENDORED_PACKAGE or m.startswith(T.VENDORED_PACKAGE + ".")]:
        monkeypatch.delitem(sys.modules, name)
    spec = importlib.util.spec_from_file_location(f"triton_model_{model}", version / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = T.parse_config((repo / model / "config.pbtxt").read_text())
    from google.protobuf import json_format

    as_json = json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True))  # what Triton passes
    instance = module.TritonPythonModel()
    instance.initialize({"model_config": as_json, "model_repository": str(repo / model), "model_version": "1",
                         "model_instance_kind": "CPU"})
    return instance


def images(*items) -> np.ndarray:
    return np.array([[b] for b in items], dtype=object)


def answers(requests, timeout=60) -> list:
    """Each request's one response, sent from the model's threads."""
    for r in requests:
        assert r.done.wait(timeout), "no final response"
    return [r.sent[0] for r in requests]


def execute(model, requests) -> list:
    """``execute`` hands the requests over (it returns None); their responses, sent from the model's threads."""
    assert model.execute(requests) is None
    return answers(requests)


def test_preprocess_model_batches_requests_and_fails_a_corrupt_one_alone(repo, pb_utils, monkeypatch):
    model = load(repo, "tiny_preprocess", monkeypatch)
    photos = [p.read_bytes() for p in imf.PHOTOS]
    requests = [Request(IMAGE=images(photos[0], photos[1])), Request(IMAGE=images(imf.truncated_jpeg())),
                Request(IMAGE=images(photos[2]))]
    first, bad, last = execute(model, requests)
    assert first.error is None and last.error is None
    assert np.array_equal(first.outputs["PIXELS"], np.stack([preprocess(photos[0]), preprocess(photos[1])]))
    assert np.array_equal(last.outputs["PIXELS"][0], preprocess(photos[2]))
    assert "image 0 of the request: truncated JPEG" in str(bad.error) and not bad.outputs
    assert bad.error.code == "INVALID_ARG"  # the client's fault: 400, not 500
    model.finalize()


def test_preprocess_model_refuses_oversized_images_before_decoding(repo, pb_utils, monkeypatch):
    model = load(repo, "tiny_preprocess", monkeypatch)
    submitted = []
    real_submit = model.step.pool.submit
    monkeypatch.setattr(model.step.pool, "submit", lambda *a, **k: submitted.append(a) or real_submit(*a, **k))
    photo = imf.PHOTOS[0].read_bytes()
    bomb, big = imf.png_bomb(), imf.oversized_jpeg(60_000_000)
    good, refused, too_big, server_fault = execute(model, [
        Request(IMAGE=images(photo)), Request(IMAGE=images(photo, bomb)), Request(IMAGE=images(big)),
        Request(IMAGE=images(photo))])
    assert good.error is None and len(submitted) == 2  # only the two accepted requests reach the decoding threads
    assert refused.error.code == too_big.error.code == "INVALID_ARG"
    assert str(refused.error) == ("image 1 of the request: PNG of 20000×20000 pixels (400.0 MP) is over the 64 MP "
                                  "limit (parameter max_image_pixels of tiny_preprocess; build.py "
                                  "--triton-max-image-pixels raises it)")
    assert str(too_big.error).startswith("image 0 of the request: 60 MB is over the limit of 50 MB on encoded images")
    assert server_fault.error is None
    model.finalize()


def test_an_unexpected_failure_is_a_server_error_for_its_request_only(repo, pb_utils, monkeypatch):
    model = load(repo, "tiny_preprocess", monkeypatch)
    namespace = vars(sys.modules[type(model.step).__module__])  # the vendored steps module's
    photo = imf.PHOTOS[0].read_bytes()
    real = namespace["preprocess"]

    def preprocess(data, *args):
        if data == photo:
            raise MemoryError("cannot allocate")
        return real(data, *args)

    monkeypatch.setitem(namespace, "preprocess", preprocess)
    failed, fine = execute(model, [Request(IMAGE=images(photo)), Request(IMAGE=images(imf.PHOTOS[1].read_bytes()))])
    assert failed.error.code == "INTERNAL" and "MemoryError" in str(failed.error)
    assert fine.error is None
    model.finalize()


def test_the_pipeline_gives_infer_pys_numbers_and_fails_a_bad_image_alone(repo, tiny_onnx, pb_utils, monkeypatch):
    photos = [p.read_bytes() for p in imf.PHOTOS]
    x = np.stack([preprocess(p) for p in photos])
    probs = softmax(OnnxRuntimeBackend(tiny_onnx).run(x))
    ids, vals = topk(probs, 5)
    labels = (repo / "tiny_python" / "labels.txt").read_text().splitlines()
    model = load(repo, "tiny_python", monkeypatch)
    requests = [Request(IMAGE=images(photos[0])), Request(IMAGE=images(imf.truncated_jpeg())),
                Request(IMAGE=images(*photos[1:])), Request(IMAGE=images(photos[0], imf.png_bomb()))]
    assert model.execute(requests) is None  # handed over: the responses come from the pipeline's threads
    first, bad, rest, bomb = answers(requests)
    assert "image 0 of the request: truncated JPEG" in str(bad.error) and bad.error.code == "INVALID_ARG"
    assert "image 1 of the request: PNG of 20000×20000 pixels" in str(bomb.error)
    assert bomb.error.code == "INVALID_ARG"
    got = {k: np.concatenate([first.outputs[k], rest.outputs[k]]) for k in first.outputs}
    np.testing.assert_allclose(got["PROBABILITIES"], probs, rtol=1e-5, atol=1e-6)
    assert np.array_equal(got["TOPK_IDS"], ids)
    np.testing.assert_allclose(got["TOPK_SCORES"], vals, rtol=1e-5, atol=1e-6)
    assert [[b.decode() for b in row] for row in got["TOPK_LABELS"]] == [[labels[i] for i in r] for r in ids]
    # The batch as one ONNX Runtime run (a GPU's way): the same answers.
    model.runs = None
    first_b, bad_b, rest_b, _ = execute(model, [Request(IMAGE=r.tensors["IMAGE"].array) for r in requests])
    assert bad_b.error.code == "INVALID_ARG"
    np.testing.assert_allclose(np.concatenate([first_b.outputs["PROBABILITIES"], rest_b.outputs["PROBABILITIES"]]),
                               probs, rtol=1e-5, atol=1e-6)
    model.finalize()


def test_a_server_fault_in_the_pipeline_is_answered_as_one(repo, pb_utils, monkeypatch):
    model = load(repo, "tiny_python", monkeypatch)

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model.classifier.session, "run", broken)
    requests = [Request(IMAGE=images(imf.PHOTOS[0].read_bytes()))]
    model.execute(requests)
    (response,) = answers(requests)
    assert response.error.code == "INTERNAL" and "ONNX Runtime failed" in str(response.error)
    model.finalize()


def test_postprocess_model_gives_infer_pys_numbers(repo, tiny_onnx, pb_utils, monkeypatch):
    x = np.stack([preprocess(p) for p in imf.PHOTOS])
    want = OnnxRuntimeBackend(tiny_onnx).run(x)
    post = load(repo, "tiny_postprocess", monkeypatch)
    (out,) = post.execute([Request(SCORES=want)])
    probs = softmax(want)
    ids, vals = topk(probs, 5)
    assert np.array_equal(out.outputs["TOPK_IDS"], ids) and np.array_equal(out.outputs["PROBABILITIES"], probs)
    assert np.array_equal(out.outputs["TOPK_SCORES"], vals)
    labels = (repo / "tiny_postprocess" / "labels.txt").read_text().splitlines()
    assert [[b.decode() for b in row] for row in out.outputs["TOPK_LABELS"]] == [[labels[i] for i in r] for r in ids]


def test_preprocess_model_refuses_another_spec(repo, pb_utils, monkeypatch, tmp_path):
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    cfg = copy / "tiny_preprocess" / "config.pbtxt"
    text = cfg.read_text()
    cfg.write_text(text.replace(SPEC.sha256(), "0" * 64))
    with pytest.raises(RuntimeError, match="not the one this repository was exported with"):
        load(copy, "tiny_preprocess", monkeypatch)


def scan_bomb() -> bytes:
    """A progressive JPEG within the limits but costly: 400×400 pixels × 200 scans (32 M pixel passes)."""
    import crafted_images as ci

    return ci.progressive_jpeg(400, 400, 200, flat=True)


def held_decoding(step, monkeypatch, data: bytes) -> threading.Event:
    """The vendored preprocessing (``step``'s) made to wait on the returned Event whenever it decodes ``data``."""
    namespace = vars(sys.modules[type(step).__module__])
    real, release = namespace["preprocess"], threading.Event()

    def preprocess(encoded, *args):
        if encoded == data:
            assert release.wait(30)
        return real(encoded, *args)

    monkeypatch.setitem(namespace, "preprocess", preprocess)
    return release


@pytest.mark.parametrize("model_name", ["tiny_preprocess", "tiny_python"])
def test_costly_images_decode_in_their_own_lane_and_hold_back_no_one(repo, pb_utils, monkeypatch, model_name):
    """A request declaring more decoding work than ``costly_pixels`` decodes in the lane: while the lane is busy,
    good requests are answered, requests past its backlog get UNAVAILABLE (503) at once, and one not started within
    the deadline gets UNAVAILABLE undecoded; once free, a costly request gives infer.py's pixels."""
    model = load(repo, model_name, monkeypatch)
    step = model.preprocessing if model_name == "tiny_python" else model.step
    bomb, photo = scan_bomb(), imf.PHOTOS[0].read_bytes()
    assert step.check(images(bomb)) == 400 * 400 * 200 > step.costly_pixels > step.check(images(photo))
    release = held_decoding(step, monkeypatch, bomb)
    step.lane.deadline_s = 0.5
    slots = step.lane.workers + 8  # the default backlog
    held = [Request(IMAGE=images(bomb)) for _ in range(slots)]
    assert model.execute(held) is None
    deadline = time.monotonic() + 30
    while step.lane.slots._value and time.monotonic() < deadline:  # the request threads hand them to the lane
        time.sleep(0.01)
    over, good = Request(IMAGE=images(bomb)), Request(IMAGE=images(photo))
    (busy, fine) = execute(model, [over, good])  # answered while every lane slot is taken
    assert busy.error.code == "UNAVAILABLE" and "retry later" in str(busy.error)
    assert fine.error is None
    time.sleep(0.6)
    release.set()
    responses = answers(held)
    assert responses[0].error is None  # the one decoding when the others came
    late = [r for r in responses[1:] if r.error is not None]
    assert late and all(r.error.code == "UNAVAILABLE" and "not started decoding within 500 ms" in str(r.error)
                        for r in late)
    (done,) = execute(model, [Request(IMAGE=images(bomb))])
    assert done.error is None
    if model_name == "tiny_preprocess":
        assert np.array_equal(done.outputs["PIXELS"][0], preprocess(bomb))
    model.finalize()


def test_a_costly_request_in_a_gpu_batch_holds_back_none_of_the_others(repo, pb_utils, monkeypatch):
    model = load(repo, "tiny_python", monkeypatch)
    model.runs = None  # the GPU's way: the batch as one ONNX Runtime run
    bomb, photo = scan_bomb(), imf.PHOTOS[0].read_bytes()
    release = held_decoding(model.preprocessing, monkeypatch, bomb)
    costly, good = Request(IMAGE=images(bomb)), Request(IMAGE=images(photo))
    assert model.execute([costly, good]) is None
    (fine,) = answers([good])
    assert fine.error is None and not costly.done.is_set()
    release.set()
    (late,) = answers([costly])
    assert late.error is None and late.outputs["TOPK_IDS"].shape == (1, 5)
    model.finalize()
