#!/usr/bin/env python3
"""ONNX export wall time and peak memory per architecture (each in a fresh process, so peaks don't mix).

    python benchmarks/bench_export.py [--runs 3] [--models NAME ...] [--json out.json]

Does what build.py does: weights in memory → write_onnx (timed) → weights freed → onnx.checker full check
(timed separately). Times are the median of --runs. Memory: peak RSS of the process minus its RSS before the
weights were made, over the weights' bytes (the weights themselves count as 1.0x; the target is < 3x).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIVE = ["res2net50_26w_4s", "res2net50_14w_8s", "res2net50_vd_26w_4s", "res2net101_vd_26w_4s", "res2net200_vd_26w_4s"]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(name: str, runs: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import onnx  # noqa: F401  (imports out of the baseline)
    import onnxruntime  # noqa: F401

    from trt_res2net.model import onnx_export, weights, zoo

    spec = zoo.get_model(name)
    onnx_export.graph_statistics(spec)  # warm the onnx imports
    base = _rss_mb()
    times, checks = [], []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(runs):
            state = weights.random_weights(spec)
            weights_mb = sum(v.nbytes for v in state.values()) / 2**20
            t = time.perf_counter()
            path = onnx_export.write_onnx(spec, state, Path(d) / "m.onnx")
            times.append(time.perf_counter() - t)
            del state
            t = time.perf_counter()
            onnx_export.check_onnx(path)
            checks.append(time.perf_counter() - t)
        size_mb = path.stat().st_size / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": name, "weights_mb": round(weights_mb, 1), "onnx_mb": round(size_mb, 1),
            "export_s_median": round(statistics.median(times), 2), "export_s_all": [round(t, 2) for t in times],
            "check_s_median": round(statistics.median(checks), 2),
            "peak_rss_over_baseline_mb": round(peak - base, 1),
            "peak_over_weights": round((peak - base) / weights_mb, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--models", nargs="+", default=FIVE)
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.runs)))
        return 0
    rows = []
    print(f"{'model':24s} {'weights MB':>10s} {'ONNX MB':>8s} {'export s':>9s} {'check s':>8s} {'peak MB':>8s} "
          f"{'peak/weights':>12s}")
    for name in args.models:
        out = subprocess.run([sys.executable, __file__, "--child", name, "--runs", str(args.runs)],
                             check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rows.append(r)
        print(f"{name:24s} {r['weights_mb']:>10.1f} {r['onnx_mb']:>8.1f} {r['export_s_median']:>9.2f} "
              f"{r['check_s_median']:>8.2f} "
              f"{r['peak_rss_over_baseline_mb']:>8.1f} {r['peak_over_weights']:>11.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
