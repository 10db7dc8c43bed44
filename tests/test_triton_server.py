"""A real Triton Inference Server (nvidia-pytriton's tritonserver, Python backend) serving the repository that
``build.py --model res2net50_vd_26w_4s --random-weights --onnx-only --triton-repo DIR`` writes, started by
``serve.py`` on loopback with free ports, from the serving environment (numpy < 2, the ``serve`` extra).

The serving environment's Python is ``$TRT_RES2NET_SERVE_PYTHON`` (.ci/run sets it), else ``.venv-serve/bin/python``
in the checkout; without one the tests skip with that reason. Clients run in that environment too (tritonclient's
gRPC needs protobuf < 7); the answers are compared here with ``infer.py``'s in-process ones.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import image_factory as imf
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL = "res2net50_vd_26w_4s"
ENSEMBLE = f"{MODEL}_python"
READY_TIMEOUT = 240
STOP_TIMEOUT = 60


def serve_python() -> str | None:
    env = os.environ.get("TRT_RES2NET_SERVE_PYTHON")
    if env:
        if not Path(env).is_file():
            pytest.fail(f"TRT_RES2NET_SERVE_PYTHON={env} does not exist")
        return env
    local = ROOT / ".venv-serve" / "bin" / "python"
    return str(local) if local.is_file() else None


SERVE_PYTHON = serve_python()
pytestmark = [
    pytest.mark.skipif(SERVE_PYTHON is None,
                       reason="no serving environment: set TRT_RES2NET_SERVE_PYTHON to the python of a venv with "
                              "pip install -e '.[serve]' (.ci/run makes one; README)"),
    pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                       reason="build.py --triton-repo needs tritonclient here (the triton/dev extra)"),
]


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def serve_env(tmp: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}


def run_serving_python(*argv, timeout=300):
    proc = subprocess.run([SERVE_PYTHON, *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout)
    return proc


class Server:
    def __init__(self, proc, http, grpc, metrics, tmp, lines):
        self.proc, self.http, self.grpc, self.metrics, self.tmp, self.lines = proc, http, grpc, metrics, tmp, lines
        self.pid = None  # tritonserver's pid (the group id of its process group)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=30) as r:
            return json.loads(r.read())


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = tmp_path_factory.mktemp("triton")
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "--model", MODEL, "--random-weights", "--onnx-only",
                           "--onnx-out", str(d / "engines" / f"{MODEL}.onnx"), "--triton-repo", str(d / "repo"),
                           "--quiet"], capture_output=True, text=True, cwd=d,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return d


@pytest.fixture(scope="module")
def server(repo):
    tmp = repo / "tmp"
    tmp.mkdir()
    http, grpc, metrics = free_ports(3)
    proc = subprocess.Popen([SERVE_PYTHON, str(ROOT / "serve.py"), str(repo / "repo"), "--http-port", str(http),
                             "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=repo,
                            env=serve_env(tmp))
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    srv = Server(proc, http, grpc, metrics, tmp, lines)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        out = []
        while True:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                line = None
            if line is not None:
                out.append(line)
                if line.startswith("tritonserver (pid "):
                    srv.pid = int(line.split()[2].rstrip(","))
                if line.startswith("ready;"):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"serve.py did not get ready: {''.join(out)} {proc.stderr.read() if proc.poll() else ''}")
        yield srv
    finally:
        if proc.poll() is None:  # the last test stops it and checks; this is the safety net
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def expected(repo, tmp_path_factory):
    """infer.py's own answer for the photographs (in-process ONNX Runtime, this environment)."""
    from trt_res2net.cli.infer import main

    out = tmp_path_factory.mktemp("expected") / "infer.json"
    assert main([str(repo / "engines" / f"{MODEL}.onnx"), *map(str, imf.PHOTOS), "--json", str(out), "-q",
                 "--no-progress"]) == 0
    return {Path(r["image"]).name: r["topk"] for r in json.loads(out.read_text())}


def assert_same_answer(got: list[dict], want: list[dict]) -> None:
    assert [e["class_id"] for e in got] == [e["class_id"] for e in want]
    assert [e["label"] for e in got] == [e["label"] for e in want]
    np.testing.assert_allclose([e["score"] for e in got], [e["score"] for e in want], rtol=0, atol=1e-4)


def test_the_served_models_are_the_python_variant(server):
    index = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{server.http}/v2/repository/index", data=b"{}", method="POST"), timeout=30).read())
    ready = sorted(m["name"] for m in index if m.get("state") == "READY")
    assert ready == sorted([ENSEMBLE, f"{MODEL}_classifier_python", f"{MODEL}_preprocess", f"{MODEL}_postprocess"])
    meta = server.get(f"/v2/models/{ENSEMBLE}")
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]}]


def test_photos_as_bytes_over_http_and_grpc_answer_like_infer_py(server, repo, expected, tmp_path):
    from trt_res2net.data.preprocess import preprocess

    out = tmp_path / "probe.npz"
    proc = run_serving_python(ROOT / "tests" / "triton_probe.py", f"127.0.0.1:{server.http}",
                              f"127.0.0.1:{server.grpc}", MODEL, ENSEMBLE, out, *imf.PHOTOS)
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    # The preprocessing model gives the same bits as infer.py's preprocessing here.
    for i, photo in enumerate(imf.PHOTOS):
        assert np.array_equal(got["pixels"][i], preprocess(photo)), photo.name
    # One request with all photos, over HTTP and over gRPC: infer.py's top-5, ids and labels equal.
    for proto in ("http", "grpc"):
        for i, photo in enumerate(imf.PHOTOS):
            want = expected[photo.name]
            entries = [{"class_id": int(c), "label": str(lab), "score": float(s)} for c, lab, s in
                       zip(got[f"{proto}_TOPK_IDS"][i], got[f"{proto}_TOPK_LABELS"][i], got[f"{proto}_TOPK_SCORES"][i],
                           strict=True)]
            assert_same_answer(entries, want)
        np.testing.assert_allclose(got[f"{proto}_PROBABILITIES"].sum(axis=1), 1.0, atol=1e-5)
    # Triton's classification extension on the same output: "score:index:label".
    for i, photo in enumerate(imf.PHOTOS):
        ids = [int(s.split(":")[1]) for s in got["classification"][i]]
        assert ids == [e["class_id"] for e in expected[photo.name]]
    # And one request per image through the package's client (the same answer, both protocols).
    for proto, port in (("http", server.http), ("grpc", server.grpc)):
        res = tmp_path / f"{proto}.json"
        proc = run_serving_python("-m", "trt_res2net.cli.client", *imf.PHOTOS, "--model", ENSEMBLE, "--protocol",
                                  proto, "--url", f"127.0.0.1:{port}", "--json", res, "-q")
        assert proc.returncode == 0, proc.stderr
        for r in json.loads(res.read_text()):
            assert_same_answer(r["topk"], expected[Path(r["image"]).name])


def test_concurrent_requests_are_batched_and_a_corrupt_image_fails_alone(server, expected, tmp_path):
    bad = {"truncated.jpg": imf.truncated_jpeg(), "text.png": imf.text()}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    items = [*imf.PHOTOS * 4]
    items[5:5] = [tmp_path / "truncated.jpg"]
    items[13:13] = [tmp_path / "text.png"]
    before = server.get(f"/v2/models/{MODEL}_classifier_python/stats")["model_stats"][0]["inference_count"]
    for proto, port in (("grpc", server.grpc), ("http", server.http)):
        res = tmp_path / f"{proto}.json"
        proc = run_serving_python("-m", "trt_res2net.cli.client", *items, "--model", ENSEMBLE, "--protocol",
                                  proto, "--url", f"127.0.0.1:{port}", "--concurrency", 16, "--json", res, "-q")
        assert proc.returncode == 1, proc.stderr  # some failed, the rest classified
        assert "Traceback" not in proc.stderr
        results = json.loads(res.read_text())
        assert [r["image"] for r in results] == [str(p) for p in items]
        for r in results:
            name = Path(r["image"]).name
            if name == "truncated.jpg":
                assert "truncated JPEG" in r["error"] and "image 0 of the request" in r["error"]
            elif name == "text.png":
                assert "not a decodable image" in r["error"]
            else:
                assert "error" not in r, r
                assert_same_answer(r["topk"], expected[name])
    stats = server.get(f"/v2/models/{MODEL}_classifier_python/stats")["model_stats"][0]
    assert stats["inference_count"] - before == 2 * (len(items) - 2)  # the corrupt ones never reached it
    sizes = [b["batch_size"] for b in stats["batch_stats"]]
    assert max(sizes) > 1, f"no batch larger than 1 was executed: {stats['batch_stats']}"
    assert stats["execution_count"] < stats["inference_count"]


def test_zz_the_server_stops_cleanly(server):
    assert server.pid is not None
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(STOP_TIMEOUT)
    err = server.proc.stderr.read()
    assert code == 0, err
    assert "tritonserver stopped (exit status 0)" in err and "Traceback" not in err
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)  # tritonserver is gone
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)  # and so is everything it started (the Python backend stubs)
    # serve.py's temporary folder (Python backend + stub) is removed. (ONNX Runtime 1.32 keeps a small $TMPDIR/.ses
    # file of its own, shared by every session of the user: not serve.py's.)
    assert [p.name for p in server.tmp.iterdir() if p.name != ".ses"] == []
