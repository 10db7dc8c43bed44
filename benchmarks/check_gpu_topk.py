#!/usr/bin/env python3
"""The GPU softmax/top-k kernel against its CPU reference, on random and adversarial logits, and its time.
Needs a CUDA GPU and cuda-python with NVRTC; no TensorRT.

    python benchmarks/check_gpu_topk.py [--json PATH] [--iterations 200] [--warmup 20] [--seed 0]

The reference is ``trt_runtime.topk_numpy`` (a stable sort on the raw outputs, then numpy's float32 softmax).
The cases (``make_cases``): seeded normal logits for 1..64 images of 1, 2, 3, 31, 255, 256, 257, 1000, 1001,
4097 and 21841 classes, k = 1, 5 and 10, softmax applied or not (outputs already probabilities); and
adversarial rows: heavy ties (within and across threads, straddling k), constant rows, neighbouring floats,
signed zeros, magnitudes up to ±FLT_MAX, -inf entries, +inf and NaN entries (raw outputs only: NaN never ranks
in the kernel and sorts last in numpy), and softmax outputs fed back as probabilities.

A case passes when every id equals the CPU's (ties in class order) and every score is
- equal bit for bit where the outputs are taken as they are (no softmax), and
- within ``RTOL`` · |cpu| + ``ATOL`` of the CPU where the kernel applies the softmax (both in float32; the
  kernel sums in another order and uses CUDA's ``expf``);
and every output was written: the device result buffer is filled with 0xFF (id -1, score NaN) before each
launch. The float64 softmax is the referee for both: its largest distance to each is reported.

Timing: CUDA events around ``GpuKernels.topk`` (the kernel and the D2H copy of the k ids and scores per image),
median over --iterations after --warmup, beside ``topk_numpy`` on this host's CPU for scale.

Exit status: 0 every case agrees, 1 some case disagrees, 2 usage error, 3 no GPU (or no cuda-python/NVRTC).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trt_res2net.core.errors import UserError  # noqa: E402
from trt_res2net.runtime.tensorrt_backend import topk_numpy  # noqa: E402

RTOL = 1e-5
ATOL = 1e-7
CLASS_COUNTS = (1, 2, 3, 31, 255, 256, 257, 1000, 1001, 4097, 21841)
IMAGE_COUNTS = (1, 2, 3, 7, 31, 32, 33, 64)
TIMED = ((1, 1000, 5), (8, 1000, 5), (64, 1000, 5), (64, 1000, 10), (64, 21841, 5))  # (n, classes, k)
FLT_MAX = float(np.finfo(np.float32).max)


class Case(NamedTuple):
    name: str
    logits: np.ndarray  # float32 [n, classes], C-contiguous
    k: int
    apply_softmax: bool

    @property
    def shape(self) -> tuple[int, int]:
        return self.logits.shape


def _ks(classes: int, ks=(1, 5, 10)):
    return sorted({min(k, classes) for k in ks})


def _softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def make_cases(seed: int = 0) -> list[Case]:
    """The seeded case list (pure numpy: the same on every machine)."""
    rng = np.random.default_rng(seed)
    cases: list[Case] = []

    def add(name, logits, ks, softmax=(True, False)):
        logits = np.ascontiguousarray(logits, dtype=np.float32)
        for k in ks:
            for s in softmax:
                cases.append(Case(name, logits, k, s))

    # seeded normal logits, every class count, image counts 1..64 in turn
    for i, classes in enumerate(CLASS_COUNTS):
        n = IMAGE_COUNTS[i % len(IMAGE_COUNTS)]
        add(f"normal x4, {classes} classes", rng.standard_normal((n, classes)) * 4, _ks(classes))
    for n in IMAGE_COUNTS:
        add(f"normal x4, n={n}", rng.standard_normal((n, 1000)) * 4, (5,))

    # ties
    add("values 0..3 (many ties)", rng.integers(0, 4, (64, 1000)), _ks(1000))
    add("constant rows", np.full((7, 1000), 2.5), _ks(1000))
    spread = rng.standard_normal((16, 1000)) * 2
    spread[:, [7, 263, 519, 775, 999]] = 9.0  # five-way tie at the top, one per 256-thread stride and beyond
    spread[:, [3, 600]] = 8.0
    add("5-way top tie across threads", spread, (1, 3, 5, 6, 10))
    ties_k = rng.standard_normal((8, 257)).astype(np.float32)
    ties_k[:, [0, 128, 255, 256]] = 5.0  # a tie straddling k = 2 and k = 3, at both ends of the row
    add("tie straddling k, 257 classes", ties_k, (1, 2, 3, 4, 5))
    half = np.zeros((4, 1000))
    half[:, ::2] = 1.0  # 500-way tie
    add("500-way tie", half, _ks(1000))

    # neighbouring floats, signed zeros
    base = np.float32(1.0) + np.arange(1000, dtype=np.float32) * np.finfo(np.float32).eps
    near = np.stack([rng.permutation(base) for _ in range(8)])
    add("neighbouring floats (1 ulp apart)", near, _ks(1000))
    zeros = np.where(rng.random((8, 1000)) < 0.5, np.float32(0.0), np.float32(-0.0)).astype(np.float32)
    zeros[:, 500:510] = -1.0
    add("signed zeros", zeros, _ks(1000))

    # large magnitudes
    add("normal x1e4", rng.standard_normal((16, 1000)) * 1e4, _ks(1000))
    add("normal x1e30", rng.standard_normal((8, 1000)) * 1e30, _ks(1000))
    extreme = rng.choice(np.array([-FLT_MAX, -1.0, 0.0, 1.0, FLT_MAX], np.float32), size=(8, 1000))
    add("+-FLT_MAX mixed", extreme, _ks(1000))
    huge_neg = rng.standard_normal((8, 1000)) * 1e37 - 1e38
    add("all near -1e38", huge_neg, _ks(1000))

    # non-finite entries
    neg_inf = (rng.standard_normal((8, 1000)) * 4).astype(np.float32)
    neg_inf[rng.random((8, 1000)) < 0.3] = -np.inf
    neg_inf[:, 0] = 1.0  # at least one finite entry per row (an all -inf row has no softmax)
    neg_inf[0, 10:] = -np.inf  # only 10 finite: k = 10 takes them all
    neg_inf[1, 3:] = -np.inf  # only 3 finite: k = 5, 10 rank -inf entries, in class order
    add("-inf entries (fp16 overflow)", neg_inf, _ks(1000))
    pos_inf = (rng.standard_normal((8, 1000)) * 4).astype(np.float32)
    pos_inf[:, [42, 41, 900]] = np.inf
    add("+inf entries (raw outputs)", pos_inf, _ks(1000), softmax=(False,))
    nan = (rng.standard_normal((8, 1000)) * 4).astype(np.float32)
    nan[rng.random((8, 1000)) < 0.2] = np.nan
    nan[:, 0] = np.nan
    add("NaN entries (raw outputs; NaN never ranks)", nan, _ks(1000), softmax=(False,))

    # outputs that are already probabilities
    probs = _softmax64(rng.standard_normal((64, 1000)) * 3).astype(np.float32)
    add("probabilities (softmax outputs)", probs, _ks(1000))
    onehot = np.zeros((4, 1000), np.float32)
    onehot[np.arange(4), [0, 999, 500, 1]] = 1.0
    add("one-hot probabilities", onehot, _ks(1000))
    return cases


def compare(case: Case, ids: np.ndarray, scores: np.ndarray) -> dict:
    """One case's verdict: the GPU's (ids, scores) against ``topk_numpy`` and the float64 softmax."""
    with np.errstate(over="ignore", invalid="ignore"):  # ±FLT_MAX and ±inf rows overflow on purpose
        return _compare(case, ids, scores)


def _compare(case: Case, ids: np.ndarray, scores: np.ndarray) -> dict:
    x = case.logits
    ref = topk_numpy(x, case.k, case.apply_softmax)
    ids = np.asarray(ids)
    scores = np.asarray(scores, np.float32)
    written = bool((ids != -1).all() and not np.isnan(scores).any())
    id_rows = np.flatnonzero((ids != ref.ids).any(axis=1))
    result = {
        "name": case.name, "n": int(x.shape[0]), "classes": int(x.shape[1]), "k": case.k,
        "apply_softmax": case.apply_softmax, "written": written, "ids_equal": id_rows.size == 0,
        "rows_with_other_ids": int(id_rows.size),
    }
    if id_rows.size:
        r = int(id_rows[0])
        result["first_difference"] = {"row": r, "gpu": ids[r].tolist(), "cpu": ref.ids[r].tolist()}
    finite = np.isfinite(ref.scores) & np.isfinite(scores)
    diff = np.where(finite, np.abs(scores.astype(np.float64) - ref.scores.astype(np.float64)), 0.0)
    result["max_abs_error"] = float(diff.max()) if diff.size else 0.0
    if case.apply_softmax:
        bound = ATOL + RTOL * np.abs(ref.scores.astype(np.float64))
        scores_ok = bool(written and (diff <= bound).all() and (np.isfinite(scores) == np.isfinite(ref.scores)).all())
        if result["ids_equal"]:
            f64 = np.take_along_axis(_softmax64(x), ref.ids.astype(np.int64), axis=1)
            result["gpu_vs_float64"] = float(np.abs(scores - f64).max())
            result["cpu_vs_float64"] = float(np.abs(ref.scores - f64).max())
    else:
        scores_ok = bool(written and np.array_equal(scores.view(np.uint32), ref.scores.view(np.uint32)))
    result["scores_ok"] = scores_ok
    result["passed"] = bool(written and result["ids_equal"] and scores_ok)
    return result


def summarize(results: list[dict]) -> dict:
    softmax = [r for r in results if r["apply_softmax"]]
    return {
        "cases": len(results),
        "passed": sum(r["passed"] for r in results),
        "ids_equal": sum(r["ids_equal"] for r in results),
        "all_written": all(r["written"] for r in results),
        "max_abs_error_softmax": max((r["max_abs_error"] for r in softmax), default=0.0),
        "max_abs_error_raw": max((r["max_abs_error"] for r in results if not r["apply_softmax"]), default=0.0),
        "gpu_vs_float64": max((r.get("gpu_vs_float64", 0.0) for r in softmax), default=0.0),
        "cpu_vs_float64": max((r.get("cpu_vs_float64", 0.0) for r in softmax), default=0.0),
        "tolerance": {"rtol": RTOL, "atol": ATOL, "raw": "bit-equal"},
    }


def _poison(kernels, stream, nbytes: int) -> bool:
    """Fill the kernel's device result buffer with 0xFF (id -1, score NaN) when it is already large enough."""
    buf = getattr(kernels, "_topk_device", None)  # GpuKernels' own buffer; absent in the CPU fakes
    if buf is None or buf.nbytes < nbytes:
        return False
    stream.memset(buf.address, 0xFF, nbytes)
    return True


def run_cases(kernels, stream, cases: list[Case], device_logits) -> list[dict]:
    """Each case through the GPU kernel, its result buffer poisoned first, then compared with the CPU."""
    # Grow the kernel's result buffer once to the largest case, so that every launch below can be poisoned.
    big = max(cases, key=lambda c: c.shape[0] * c.k)
    stream.copy_htod(device_logits.address, big.logits, big.logits.nbytes)
    kernels.topk(device_logits.address, big.shape[0], big.shape[1], big.k, big.apply_softmax)
    stream.synchronize()
    results = []
    for case in cases:
        n, classes = case.shape
        stream.copy_htod(device_logits.address, case.logits, case.logits.nbytes)
        poisoned = _poison(kernels, stream, n * case.k * 8)
        kernels.topk(device_logits.address, n, classes, case.k, case.apply_softmax)
        stream.synchronize()
        ids, scores = kernels.topk_result()
        r = compare(case, ids, scores)
        r["poisoned"] = poisoned
        results.append(r)
    return results


def time_topk(kernels, stream, device_logits, iterations: int, warmup: int, seed: int = 1) -> list[dict]:
    from trt_res2net.cuda import device as cu
    from trt_res2net.runtime.benchmark import latency_stats

    rng = np.random.default_rng(seed)
    start, end = cu.Event(), cu.Event()
    rows = []
    try:
        for n, classes, k in TIMED:
            logits = np.ascontiguousarray(rng.standard_normal((n, classes)) * 4, dtype=np.float32)
            stream.copy_htod(device_logits.address, logits, logits.nbytes)
            stream.synchronize()
            gpu_ms = []
            for i in range(warmup + iterations):
                start.record(stream)
                kernels.topk(device_logits.address, n, classes, k, True)
                end.record(stream)
                end.synchronize()
                if i >= warmup:
                    gpu_ms.append(end.elapsed_ms(start))
            cpu_ms = []
            for _ in range(max(iterations // 4, 5)):
                t0 = time.perf_counter()
                topk_numpy(logits, k, True)
                cpu_ms.append((time.perf_counter() - t0) * 1000.0)
            rows.append({"n": n, "classes": classes, "k": k, "gpu_ms": latency_stats(gpu_ms).to_dict(),
                         "cpu_topk_numpy_ms": latency_stats(cpu_ms).to_dict()})
    finally:
        start.destroy()
        end.destroy()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be at least 1 and --warmup at least 0")
    cases = make_cases(args.seed)
    try:
        from trt_res2net.cuda import device as cu
        from trt_res2net.cuda.kernels import GpuKernels

        info = cu.init_device(0)
        stream = cu.Stream()
        kernels = GpuKernels(stream, info.compute_capability)
        print(f"GPU: {info.name} (compute {info.cc}), kernel image {kernels.cache_path.name}")
        largest = max(max(c.logits.nbytes for c in cases), max(n * c * 4 for n, c, _ in TIMED))
        device_logits = cu.DeviceBuffer(largest)
        try:
            results = run_cases(kernels, stream, cases, device_logits)
            timing = time_topk(kernels, stream, device_logits, args.iterations, args.warmup)
        finally:
            device_logits.free()
        kernels.close()
        stream.destroy()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    summary = summarize(results)
    print(f"{summary['passed']}/{summary['cases']} cases agree with topk_numpy "
          f"(ids equal in {summary['ids_equal']}; softmax scores within {RTOL:g}·|cpu| + {ATOL:g}, raw scores "
          f"bit-equal; every output written: {'yes' if summary['all_written'] else 'NO'})")
    print(f"max |gpu - cpu| softmax score {summary['max_abs_error_softmax']:.3g}; against float64: "
          f"gpu {summary['gpu_vs_float64']:.3g}, cpu {summary['cpu_vs_float64']:.3g}")
    for r in results:
        if not r["passed"]:
            extra = f"; first difference {r['first_difference']}" if "first_difference" in r else ""
            print(f"  FAILED {r['name']} n={r['n']} classes={r['classes']} k={r['k']} "
                  f"softmax={r['apply_softmax']}: ids equal {r['ids_equal']}, scores ok {r['scores_ok']}, "
                  f"written {r['written']}, max abs error {r['max_abs_error']:.3g}{extra}")
    print(f"\n{'n':>3} {'classes':>7} {'k':>3} {'GPU p50 us':>11} {'p90':>8} {'CPU p50 us':>11}")
    for t in timing:
        print(f"{t['n']:>3} {t['classes']:>7} {t['k']:>3} {t['gpu_ms']['p50'] * 1e3:>11.1f} "
              f"{t['gpu_ms']['p90'] * 1e3:>8.1f} {t['cpu_topk_numpy_ms']['p50'] * 1e3:>11.1f}")
    print("(GPU: kernel + D2H of the k ids and scores, CUDA events; CPU: topk_numpy on this host)")
    if args.json:
        from trt_res2net.core.files import write_json

        write_json(args.json, {
            "gpu": info.to_dict(), "summary": summary, "cases": results, "timing": timing,
            "settings": {"iterations": args.iterations, "warmup": args.warmup, "seed": args.seed},
        })
        print(f"wrote {args.json}")
    return 0 if summary["passed"] == summary["cases"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
