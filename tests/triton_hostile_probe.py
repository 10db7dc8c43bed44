"""Run by the serving environment's Python (tests/test_triton_server.py): timed requests against a served image model.

    python tests/triton_hostile_probe.py warmup HTTP_URL MODEL IMAGE OUT.json
    python tests/triton_hostile_probe.py hostile HTTP_URL GRPC_URL MODEL GOOD BOMB BIG CORRUPT OUT.json
    python tests/triton_hostile_probe.py flood HTTP_URL GRPC_URL MODEL IMAGE N OUT.json
    python tests/triton_hostile_probe.py scanbombs HTTP_URL GRPC_URL MODEL GOOD BOMB N SECONDS OUT.json

warmup: the first request a client sends a fresh server, then more, one at a time (milliseconds each, at the
client and in the server).
hostile: a good image's latency alone (its baseline), then again while another process (``attack``) sends the
bomb and the corrupt image (REPEAT times each) and the big request, over HTTP and gRPC (each refusal's status,
message and milliseconds).
flood: N requests at once over each protocol; each one's status and message.
scanbombs: a good image's latency alone (its baseline), then for SECONDS while N clients (half HTTP, half gRPC) each
keep a costly image (BOMB) in flight, sending the next as soon as one is answered; each bomb's status and time.
"""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def request(module, client, model, data: bytes) -> dict:
    """One request of one image: {"ms", "status", "message"} (status "ok", an HTTP code, or a gRPC code name)."""
    arr = np.array([[data]], dtype=object)
    inp = module.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(arr)
    t = time.perf_counter()
    try:
        client.infer(model, [inp], outputs=[module.InferRequestedOutput("TOPK_IDS")])
        status, message = "ok", ""
    except InferenceServerException as e:
        status, message = str(e.status()).replace("StatusCode.", ""), e.message()
    return {"ms": 1e3 * (time.perf_counter() - t), "status": status, "message": message}


def server_stats(client, model) -> tuple[int, int]:
    """(successful requests, the server's nanoseconds in them) of a model, from Triton's statistics extension."""
    success = client.get_inference_statistics(model)["model_stats"][0]["inference_stats"]["success"]
    return int(success.get("count", 0)), int(success.get("ns", 0))


def warmup(http_url, model, image, out):
    """Each request's milliseconds at the client and in the server (the difference of the server's statistics
    around it: without the client's own first-call costs), and how many requests the server had answered before."""
    client = httpclient.InferenceServerClient(http_url, network_timeout=120)
    assert client.is_model_ready(model)  # the connection is open before the first request
    data = Path(image).read_bytes()
    times = []
    for _ in range(8):
        count, ns = server_stats(client, model)
        result = request(httpclient, client, model, data)
        times.append({**result, "answered_before": count, "server_ms": (server_stats(client, model)[1] - ns) / 1e6})
    Path(out).write_text(json.dumps(times))
    client.close()


REPEAT = 10


def attack(http_url, grpc_url, model, bomb, big, corrupt, out):
    """The hostile client: the bomb and the corrupt image REPEAT times each, the big request once, per protocol."""
    h = httpclient.InferenceServerClient(http_url, network_timeout=120)
    g = grpcclient.InferenceServerClient(grpc_url)
    refusals = []
    for what, path, times in (("bomb", bomb, REPEAT), ("corrupt", corrupt, REPEAT), ("big", big, 1)):
        data = Path(path).read_bytes()
        for _ in range(times):
            for proto, module, client in (("http", httpclient, h), ("grpc", grpcclient, g)):
                refusals.append({"what": what, "protocol": proto, **request(module, client, model, data)})
    Path(out).write_text(json.dumps(refusals))
    h.close()


def hostile(http_url, grpc_url, model, good, bomb, big, corrupt, out):
    http = httpclient.InferenceServerClient(http_url, network_timeout=120)
    good_data = Path(good).read_bytes()
    for _ in range(3):
        request(httpclient, http, model, good_data)  # connections, caches
    baseline = [request(httpclient, http, model, good_data)["ms"] for _ in range(10)]
    during = []
    refusals_file = Path(out).with_suffix(".attack.json")
    attacker = subprocess.Popen([sys.executable, __file__, "attack", http_url, grpc_url, model, bomb, big, corrupt,
                                 str(refusals_file)])
    while attacker.poll() is None:  # good requests, one at a time, for as long as the hostile ones are being sent
        during.append(request(httpclient, http, model, good_data)["ms"])
    during.append(request(httpclient, http, model, good_data)["ms"])
    refusals = json.loads(refusals_file.read_text()) if attacker.returncode == 0 else []
    Path(out).write_text(json.dumps({"baseline_ms": baseline, "during_ms": during, "refusals": refusals,
                                     "attacker_exit": attacker.returncode}))
    http.close()


def flood(http_url, grpc_url, model, image, n, out):
    data = Path(image).read_bytes()
    results = []
    lock = threading.Lock()

    def one(proto):
        if proto == "http":
            module, client = httpclient, httpclient.InferenceServerClient(http_url, network_timeout=120)
        else:
            module, client = grpcclient, grpcclient.InferenceServerClient(grpc_url)
        r = request(module, client, model, data)
        with lock:
            results.append({"protocol": proto, **r})
        if proto == "http":
            client.close()

    for proto in ("http", "grpc"):
        threads = [threading.Thread(target=one, args=(proto,)) for _ in range(int(n))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    Path(out).write_text(json.dumps(results))


def scanbombs(http_url, grpc_url, model, good, bomb, n, seconds, out):
    http = httpclient.InferenceServerClient(http_url, network_timeout=120)
    good_data, bomb_data = Path(good).read_bytes(), Path(bomb).read_bytes()
    for _ in range(3):
        request(httpclient, http, model, good_data)  # connections, caches
    baseline = [request(httpclient, http, model, good_data)["ms"] for _ in range(10)]
    stop, bombs, lock = threading.Event(), [], threading.Lock()

    def keep_one_in_flight(proto):
        if proto == "http":
            module, client = httpclient, httpclient.InferenceServerClient(http_url, network_timeout=120)
        else:
            module, client = grpcclient, grpcclient.InferenceServerClient(grpc_url)
        while not stop.is_set():
            r = request(module, client, model, bomb_data)
            with lock:
                bombs.append({"protocol": proto, **r})

    threads = [threading.Thread(target=keep_one_in_flight, args=("http" if i % 2 else "grpc",))
               for i in range(int(n))]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all in flight
    during, end = [], time.monotonic() + float(seconds)
    while time.monotonic() < end:
        during.append(request(httpclient, http, model, good_data))
    stop.set()
    for t in threads:
        t.join()
    Path(out).write_text(json.dumps({"baseline_ms": baseline, "during": during, "bombs": bombs}))
    http.close()


if __name__ == "__main__":
    {"warmup": warmup, "hostile": hostile, "attack": attack, "flood": flood,
     "scanbombs": scanbombs}[sys.argv[1]](*sys.argv[2:])
