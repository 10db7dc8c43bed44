#!/usr/bin/env python3
"""Throughput and p50/p99 latency against concurrency: the served model vs infer.py's in-process path.

    .venv-serve/bin/python benchmarks/bench_triton.py [--model res2net50_vd_26w_4s] [--concurrency 1 4 16]
        [--requests 400] [--runs 3] [--images 24] [--protocol grpc] [--client auto|perf_analyzer|loop]
        [--onnx PATH] [--json out.json] [--triton-instances N] [--triton-queue-delay-us US] ...

Runs in the serving environment (``pip install -e '.[serve]'``: tritonclient, nvidia-pytriton's tritonserver,
perf_analyzer) — both paths in the same run, on the same images, taking turns in each of --runs rounds; medians
reported. The model is exported with seeded random weights (speed does not depend on them) unless --onnx names
an export; the repository is ``build.py --triton-repo``'s, served by ``serve.py`` on loopback (the
``<model>_python`` model: image bytes → preprocessing → ONNX Runtime → top-5 in one Python-backend process).
The images are --images JPEGs at typical ImageNet validation sizes made from tests/data's photographs.

Per concurrency C (C requests in flight, one image each):
- served: perf_analyzer (``--concurrency-range C:C``, count windows of --requests requests, client-side p50/p99)
  where it runs — the binary in tritonclient 2.50's wheel, run as ``python -m trt_res2net.cli.perf_analyzer`` runs
  it (``trt_res2net.serving.perf_analyzer`` gives it the two libraries the wheel lacks) — else a bounded loop of C
  client threads sending --requests requests (``--client loop``);
- in process: C threads each doing what infer.py does for one image — read, decode and preprocess
  (``trt_res2net.data.preprocess``), ONNX Runtime (``OnnxRuntimeBackend``, one session shared), softmax and top-5 —
  --requests images in all, measured just before and just after the served point (their mean is the baseline);
- and once per round, ``Classifier.classify`` over all images at infer.py's default batch 8 (images/s).
Each point also gets CPU milliseconds per image — served: the CPU time of tritonserver's process group (server and
Python backend stubs) plus the client's, over the requests the server counted; in process: this process's — which
other jobs on a shared machine disturb far less than wall time.
The server and the client share this machine: on a 2-core machine every figure includes that contention.
The ``--triton-*`` options are build.py's (the repository's serving settings; default: build.py's defaults), to
measure their trade-offs in the same way.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import queue
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = [(500, 375), (375, 500), (500, 333), (500, 500), (640, 480)]


def write_images(directory: Path, n: int) -> list[Path]:
    import cv2

    sources = [cv2.imread(str(p)) for p in sorted((ROOT / "tests" / "data").glob("*.jpg"))]
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        p = directory / f"img_{i:04d}.jpg"
        img = cv2.resize(sources[i % len(sources)], (w, h), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(p), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def percentiles(latencies_s: list[float]) -> dict:
    a = np.asarray(latencies_s) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}


# ------------------------------------------------------------------------------------------ the server


class Served:
    def __init__(self, repo: Path, tmp: Path):
        self.http, self.grpc, self.metrics = free_ports(3)
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "serve.py"), str(repo), "--http-port", str(self.http), "--grpc-port",
             str(self.grpc), "--metrics-port", str(self.metrics)], stdout=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in self.proc.stdout], daemon=True).start()
        self.pgid = None
        deadline = time.monotonic() + 300
        while True:
            try:
                line = lines.get(timeout=1)
                if line.startswith("tritonserver (pid "):
                    self.pgid = int(line.split()[2].rstrip(","))  # serve.py starts it in its own process group
                if line.startswith("ready;"):
                    return
            except queue.Empty:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit("serve.py did not get ready")

    def cpu_seconds(self) -> float:
        """CPU time used so far by tritonserver and its Python backend stubs (its process group)."""
        total = 0
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.pgid:  # pgrp; utime and stime follow at 11 and 12
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stats(self, model: str) -> dict:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/models/{model}/stats", timeout=30) as r:
            return json.loads(r.read())["model_stats"][0]

    def inference_count(self, model: str) -> int:
        return int(self.stats(model)["inference_count"])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


# ------------------------------------------------------------------------------------------ perf_analyzer


def perf_analyzer_command() -> tuple[list[str], dict] | None:
    """perf_analyzer and an environment where its two missing libraries resolve, or None where it cannot run."""
    from trt_res2net.core.errors import UserError
    from trt_res2net.serving.perf_analyzer import check_runs, perf_analyzer_command

    try:
        cmd, env = perf_analyzer_command()
        check_runs(cmd, env)
    except UserError as e:
        print(f"{e}; using the client loop", file=sys.stderr)
        return None
    return cmd, env


def served_perf_analyzer(cmd, env, server: Served, model: str, input_json: Path, c: int, requests: int,
                         protocol: str, tmp: Path) -> dict:
    csv_path = tmp / f"pa_{c}.csv"
    url = f"127.0.0.1:{server.grpc if protocol == 'grpc' else server.http}"
    args = [*cmd, "-m", model, "-u", url, "-i", protocol, "--input-data", str(input_json),
            "--concurrency-range", f"{c}:{c}", "--measurement-mode", "count_windows",
            "--measurement-request-count", str(requests), "--max-trials", "8", "--stability-percentage", "50",
            "-f", str(csv_path)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0 or not csv_path.exists():
        raise RuntimeError(f"perf_analyzer failed: {proc.stdout[-800:]} {proc.stderr[-400:]}")
    row = next(csv.DictReader(csv_path.open()))
    return {"images_per_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1e3,
            "p99_ms": float(row["p99 latency"]) / 1e3, "client": "perf_analyzer"}


def with_cpu(server: Served, model: str, measure, steps: dict[str, str]) -> dict:
    """``measure()``'s figures plus CPU milliseconds per image: the server's process group and this process and
    its children (the client), over every request the server counted; the mean batch the classifier ran; and per
    step of the ensemble (``steps``: role → model), the mean milliseconds a request queued and computed."""
    import resource

    def client_cpu():
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    before = {role: server.stats(m) for role, m in steps.items()}
    n0, s0, c0 = server.inference_count(model), server.cpu_seconds(), client_cpu()
    figures = measure()
    n = server.inference_count(model) - n0
    cpu = server.cpu_seconds() - s0 + client_cpu() - c0
    after = {role: server.stats(m) for role, m in steps.items()}

    def delta(role, *keys):
        a, b = after[role], before[role]
        for k in keys:
            a, b = a[k], b[k]
        return int(a) - int(b)

    k = next(iter(steps))
    mean_batch = delta(k, "inference_count") / max(delta(k, "execution_count"), 1)
    per_step = {}
    for role in steps:
        count = max(delta(role, "inference_stats", "success", "count"), 1)
        per_step[role] = {"queue_ms": round(delta(role, "inference_stats", "queue", "ns") / 1e6 / count, 2),
                          "compute_ms": round(delta(role, "inference_stats", "compute_infer", "ns") / 1e6 / count, 2)}
    return {**figures, "cpu_ms_per_image": 1e3 * cpu / max(n, 1), "mean_batch": round(mean_batch, 2),
            "steps": per_step}


def served_loop(server: Served, model: str, blobs: list[bytes], c: int, requests: int, protocol: str) -> dict:
    from trt_res2net.serving.client import TritonClassifier

    url = f"127.0.0.1:{server.grpc if protocol == 'grpc' else server.http}"
    with TritonClassifier(model, url, protocol) as client:
        return {**run_concurrent(lambda i: client.classify_one(blobs[i % len(blobs)]), c, requests), "client": "loop"}


# ------------------------------------------------------------------------------------------ a shared machine

QUIET_CPU_PERCENT = 15


def _cpu_ticks() -> dict[int, tuple[int, int]]:
    """pid → (process group, utime + stime ticks) of every process."""
    ticks = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            ticks[int(stat.split("/")[2])] = (int(fields[2]), int(fields[11]) + int(fields[12]))
        except (OSError, ValueError, IndexError):
            continue
    return ticks


def others_busy(own_groups: set[int], sample_s: float = 2.0) -> list[str]:
    """Processes outside ``own_groups`` (and this process) that used more than QUIET_CPU_PERCENT of a core."""
    before = _cpu_ticks()
    time.sleep(sample_s)
    after = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (group, t) in after.items():
        if pid == os.getpid() or group in own_groups or pid not in before:
            continue
        percent = 100 * (t - before[pid][1]) / hz / sample_s
        if percent > QUIET_CPU_PERCENT:
            try:
                name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:60]
            except OSError:
                name = "?"
            busy.append(f"{pid} {percent:.0f}% {name}")
    return busy


def wait_quiet(max_wait: float, server_group: int | None) -> list[str]:
    """Wait up to ``max_wait`` s for the other processes on this machine to go quiet; what was still busy."""
    own = {os.getpgrp()} | ({server_group} if server_group else set())
    deadline = time.monotonic() + max_wait
    while True:
        busy = others_busy(own)
        if not busy or time.monotonic() > deadline:
            if busy:
                print(f"still busy after {max_wait:g} s: {'; '.join(busy)}", file=sys.stderr)
            return busy
        time.sleep(3)


# ------------------------------------------------------------------------------------------ in process


def run_concurrent(work, c: int, requests: int) -> dict:
    """``requests`` calls of ``work(i)`` from ``c`` threads (after one warm-up call per thread)."""
    from concurrent.futures import ThreadPoolExecutor

    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []

    def worker(k: int) -> None:
        work(k)  # warm-up (connections, caches)
        barrier.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            work(i)
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)

    barrier = threading.Barrier(c + 1)
    with ThreadPoolExecutor(c) as pool:
        futures = [pool.submit(worker, k) for k in range(c)]
        barrier.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        elapsed = time.perf_counter() - t0
    return {"images_per_s": len(latencies) / elapsed, **percentiles(latencies)}


def in_process(backend, paths: list[Path], c: int, requests: int) -> dict:
    from trt_res2net.data.postprocess import softmax, topk
    from trt_res2net.data.preprocess import preprocess

    def one(i: int):
        x = preprocess(paths[i % len(paths)].read_bytes())
        return topk(softmax(backend.run(x[None])), 5)

    t = time.process_time()
    figures = run_concurrent(one, c, requests)
    return {**figures, "cpu_ms_per_image": 1e3 * (time.process_time() - t) / (requests + c)}  # + warm-ups


def infer_py_batch8(onnx: Path, paths: list[Path]) -> float:
    from trt_res2net.runtime.classifier import Classifier

    clf = Classifier(onnx, batch=8, threads=2)
    t = time.perf_counter()
    results = list(clf.classify(paths))
    assert all("topk" in r for r in results)
    return len(paths) / (time.perf_counter() - t)


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="res2net50_vd_26w_4s")
    p.add_argument("--onnx", metavar="PATH", help="an existing export of --model (default: export one)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=400,
                   help="requests (images) per measurement window (default 400: about 10 s on 2 cores; shorter "
                        "windows measured the served path a few %% lower, docs/triton.md)")
    p.add_argument("--runs", type=int, default=3, help="rounds; medians reported (default 3)")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--client", choices=("auto", "perf_analyzer", "loop"), default="auto")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each point, wait up to S seconds until no other process uses more than "
                        f"{QUIET_CPU_PERCENT}%% of a core (a shared machine); the JSON records what was still busy")
    p.add_argument("--triton-instances", type=int, help="instances of each classifier")
    p.add_argument("--triton-preprocess-instances", type=int, help="instances of the preprocessing model")
    p.add_argument("--triton-queue-delay-us", type=int, help="the classifiers' max_queue_delay_microseconds")
    p.add_argument("--triton-intra-op-threads", type=int, help="ONNX Runtime threads per classifier instance")
    p.add_argument("--triton-max-batch", type=int, help="max_batch_size of the models")
    args = p.parse_args()
    chosen = {field: getattr(args, f"triton_{field}") for field in
              ("instances", "preprocess_instances", "queue_delay_us", "intra_op_threads", "max_batch")}
    chosen = {k: v for k, v in chosen.items() if v is not None}

    from trt_res2net.runtime.onnx_runtime import OnnxRuntimeBackend
    from trt_res2net.serving.perf_analyzer import write_input_data
    from trt_res2net.serving.repository import TritonOptions, write_triton_repository

    with tempfile.TemporaryDirectory(prefix="bench_triton_") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "img").mkdir()
        paths = write_images(tmp / "img", args.images)
        onnx = Path(args.onnx) if args.onnx else None
        if onnx is None:
            from trt_res2net.model import weights, zoo
            from trt_res2net.model.onnx_export import write_onnx

            spec = zoo.get_model(args.model)
            onnx = write_onnx(spec, weights.random_weights(spec, seed=0), tmp / f"{args.model}.onnx")
        options = TritonOptions(**chosen)
        write_triton_repository(tmp / "repo", onnx, model_name=args.model, options=options)
        served_model = f"{args.model}_python"
        steps = {"pipeline": served_model}
        pa = None if args.client == "loop" else perf_analyzer_command()
        if args.client == "perf_analyzer" and pa is None:
            raise SystemExit("perf_analyzer cannot run here")
        client = "perf_analyzer" if pa else "loop"
        input_json = write_input_data(paths, tmp / "pa_input.json")
        blobs = [q.read_bytes() for q in paths]
        (tmp / "srv").mkdir()
        server = Served(tmp / "repo", tmp / "srv")
        backend = OnnxRuntimeBackend(onnx)
        rounds: list[dict] = []
        try:
            for r in range(args.runs):
                rnd: dict = {"served": {}, "in_process": {}}
                for c in args.concurrency:
                    if args.wait_quiet:
                        rnd.setdefault("busy", {})[c] = wait_quiet(args.wait_quiet, server.pgid)

                    before = in_process(backend, paths, c, args.requests)

                    def loop(c=c):
                        return served_loop(server, served_model, blobs, c, args.requests, args.protocol)

                    if pa:
                        try:
                            rnd["served"][c] = with_cpu(server, served_model, lambda c=c: served_perf_analyzer(
                                *pa, server, served_model, input_json, c, args.requests, args.protocol, tmp), steps)
                        except RuntimeError:  # no stable measurement on a busy machine: the loop instead
                            print(f"C={c}: perf_analyzer found no stable measurement; the client loop measures "
                                  "this point", file=sys.stderr)
                            rnd["served"][c] = with_cpu(server, served_model, loop, steps)
                    else:
                        rnd["served"][c] = with_cpu(server, served_model, loop, steps)
                    # In process just before and just after the served measurement: what the machine gave the
                    # served path, bracketed; the mean of the two is the baseline of this round.
                    around = [before, in_process(backend, paths, c, args.requests)]
                    rnd["in_process"][c] = {k: statistics.mean(m[k] for m in around) for k in around[0]}
                    rnd["in_process"][c]["bracket_images_per_s"] = [m["images_per_s"] for m in around]
                    print(f"round {r + 1}: C={c:>2}  served {rnd['served'][c]['images_per_s']:6.2f} img/s "
                          f"(batches of {rnd['served'][c]['mean_batch']:.1f}; per request: "
                          + ", ".join(f"{role} {v['queue_ms']:.0f}+{v['compute_ms']:.0f} ms" for role, v in
                                      rnd["served"][c]["steps"].items())
                          + ")  "
                          f"in-process {rnd['in_process'][c]['images_per_s']:6.2f} img/s", file=sys.stderr)
                rnd["infer_py_batch8"] = infer_py_batch8(onnx, paths)
                rounds.append(rnd)
        finally:
            server.stop()

    rows = []
    for c in args.concurrency:
        # served ÷ in process within each round (the two measured side by side), then the median over the rounds
        ratios = [rnd["served"][c]["images_per_s"] / rnd["in_process"][c]["images_per_s"] for rnd in rounds]
        for what in ("served", "in_process"):
            figures = {k: round(statistics.median(rnd[what][c][k] for rnd in rounds), 2)
                       for k in ("images_per_s", "p50_ms", "p99_ms", "cpu_ms_per_image")}
            clients = sorted({rnd[what][c].get("client", "threads") for rnd in rounds})
            rows.append({"path": what, "concurrency": c, **figures, "measured_by": "+".join(clients),
                         **({"served_over_in_process": round(statistics.median(ratios), 3),
                             "served_over_in_process_per_round": [round(r, 3) for r in ratios]}
                            if what == "served" else {})})
    batch8 = round(statistics.median(rnd["infer_py_batch8"] for rnd in rounds), 2)
    import onnxruntime

    env = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "numpy": np.__version__, "onnxruntime": onnxruntime.__version__, "client": client,
           "protocol": args.protocol, "model": args.model, "requests": args.requests, "runs": args.runs,
           "images": args.images, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
           "triton_options": {k: v for k, v in vars(options).items() if k != "labels"},
           "queue_timeout_ms": options.queue_timeout_ms}
    print(f"{args.model}, {client} over {args.protocol}, median of {args.runs} runs, {args.requests} requests "
          f"of one image per measurement, {os.cpu_count()} CPUs shared by server and client")
    print(f"{'path':12s} {'C':>3s} {'img/s':>8s} {'ratio':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'CPU ms/img':>10s}  "
          "measured by")
    for row in rows:
        ratio = f"{row['served_over_in_process']:.3f}" if "served_over_in_process" in row else ""
        print(f"{row['path']:12s} {row['concurrency']:>3d} {row['images_per_s']:>8.2f} {ratio:>6s} "
              f"{row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['cpu_ms_per_image']:>10.1f}  {row['measured_by']}")
    print("ratio: served ÷ in process, the median over the rounds of each round's ratio")
    print(f"infer.py's own loop (Classifier.classify, batch 8, 2 decode threads): {batch8:.2f} img/s")
    print(f"queue settings: each model rejects a request queued over {options.queue_timeout_ms} ms, or past "
          f"{options.queue_size(options.max_batch or 32)} waiting requests")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows, "infer_py_batch8_images_per_s": batch8,
                                               "rounds": rounds}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
