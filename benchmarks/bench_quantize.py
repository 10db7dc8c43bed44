#!/usr/bin/env python3
"""INT8 calibration cost and FP32/FP16/INT8 agreement for a full-size Res2Net, on this machine's CPU.

    python benchmarks/bench_quantize.py [--model res2net50_vd_26w_4s] [--calib-images 500] [--eval-images 500]
                                        [--methods entropy,max,percentile] [--runs 1] [--workdir DIR] [--json PATH]

Needs the quant extra (ModelOpt). No ImageNet is available where this project is developed, so the images
are generated deterministically (trt_res2net.data.synthetic: painted scenes and, when tests/data holds photographs,
random crops of them): calibration seed 101, held-out seed 102, disjoint. The model is the zoo architecture
with seeded random weights made realistic — BatchNorm statistics fitted to 32 images, and a classifier head
fitted to the features of those and the calibration images (model.realistic_random) — so activation
ranges and prediction margins resemble a trained network's; its absolute accuracy means nothing.

Each measured step runs in a fresh process, through the same code build.py runs:
* calibrate: precision.calibration (image selection, manifest, ModelOpt/ONNX Runtime calibration, cache) —
  wall time, and peak RSS of that process (also minus its RSS after imports, before calibration);
* int8 / int8-fp32: precision.convert.convert_precision reusing the cache (Q/DQ model, then the held-out comparison);
* fp16: precision.convert.convert_precision for fp16 (AutoCast, then the comparison).
Times are the median of --runs (default 1: calibrating 500 images takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _convert(precision: str, fp32: Path, **options) -> Path:
    """build.py's precision step with these PrecisionOptions fields (``calib_*`` folded into the image set)."""
    from trt_res2net.data.calibration_set import CalibrationImages
    from trt_res2net.precision.convert import convert_precision
    from trt_res2net.precision.options import PrecisionOptions

    calib = CalibrationImages(options.pop("calib_dir", None), options.pop("calib_images", 500))
    return convert_precision(fp32, precision, PrecisionOptions(calibration=calib, progress=False, **options),
                             model_name="model")


# --------------------------------------------------------------------------------------------------------
# Children (one measured step each)


def child(step: str, work: Path, method: str, calib_images: int, eval_images: int) -> dict:
    import onnxruntime  # noqa: F401  (imports out of the baseline)

    from trt_res2net.precision.modelopt import require_modelopt

    require_modelopt("the benchmark")
    import modelopt.onnx.quantization  # noqa: F401

    fp32 = work / "model" / "model.onnx"
    cache = work / "calib" / f"model.{method}.cache"
    base = _rss_mb()
    t0 = time.perf_counter()
    if step.startswith("fallback"):
        budget = float(step.split(":")[1])
        out = _convert("int8", fp32, calib_cache=cache, calib_method=method, calib_dir=work / "calib_images",
                       calib_images=calib_images, eval_dir=work / "eval_images", eval_images=eval_images,
                       max_top1_drop=budget, auto_fallback=True)
        side = json.loads(out.with_name(out.name + ".json").read_text())
        fb = side["auto_fallback"] or {}
        result = {"accuracy": side["accuracy"], "budget_pp": budget, "excluded_layers": side["excluded_layers"],
                  "quantized_layers": len(fb.get("ranking", [])), "trials": fb.get("trials"),
                  "ranking_top10": fb.get("ranking", [])[:10], "search_seconds": fb.get("search_seconds")}
    elif step == "calibrate":
        cache.unlink(missing_ok=True)
        from trt_res2net.core.hashing import sha256_file
        from trt_res2net.data.calibration_set import CalibrationImages
        from trt_res2net.precision.options import PrecisionOptions

        opts = PrecisionOptions(calibration=CalibrationImages(work / "calib_images", calib_images),
                                calib_method=method, calib_cache=cache, progress=False)
        from trt_res2net.precision import calibration as c

        cal = c.resolve_calibration(opts, cache, sha256_file(fp32))
        c.calibrate(opts, cal, fp32, "model", work / "calibrated.onnx")
        result = {"activation_scales": len(cal.cache.scales), "images": calib_images}
    else:
        precision = "fp16" if step == "fp16" else "int8"
        hp = "fp32" if step == "int8-fp32" else "fp16"
        out = _convert(precision, fp32, calib_cache=cache, calib_method=method, high_precision=hp,
                       eval_dir=work / "eval_images", eval_images=eval_images)
        side = json.loads(out.with_name(out.name + ".json").read_text())
        result = {"accuracy": side["accuracy"], "onnx_mb": round(out.stat().st_size / 2**20, 1)}
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step": step, "method": method, "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mb": round(peak, 1), "peak_over_baseline_mb": round(peak - base, 1), **result}


def run_child(step, work, method, calib_images, eval_images) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--workdir", str(work), "--methods", method,
           "--calib-images", str(calib_images), "--eval-images", str(eval_images)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"step {step} ({method}) failed with exit status {proc.returncode}")
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["process_seconds"] = round(time.perf_counter() - t0, 1)
    return doc


# --------------------------------------------------------------------------------------------------------
# Preparation


def prepare(work: Path, model: str, calib_images: int, eval_images: int, sharpness: float, active: int) -> dict:
    """Images and the model; what a previous run in the same --workdir made with the same settings is reused."""
    import numpy as np

    from trt_res2net.data.calibration_set import iter_batches
    from trt_res2net.data.synthetic import write_images
    from trt_res2net.model import zoo
    from trt_res2net.model.realistic_random import realistic_random_model

    photos = sorted((ROOT / "tests" / "data").glob("*.jpg"))
    settings = {"model": model, "calib_images": calib_images, "eval_images": eval_images,
                "head_sharpness": sharpness, "active_classes": active, "photos": [p.name for p in photos]}
    stamp = work / "prepared.json"
    if stamp.exists() and json.loads(stamp.read_text()).get("settings") == settings:
        return json.loads(stamp.read_text())["result"]
    t0 = time.perf_counter()
    fit = write_images(work / "fit_images", 32, seed=100, photos=photos)
    cal = write_images(work / "calib_images", calib_images, seed=101, photos=photos)
    write_images(work / "eval_images", eval_images, seed=102, photos=photos)
    t_images = time.perf_counter() - t0

    def pre(paths):
        return np.concatenate([a for a, _, _ in iter_batches(paths, 16) if len(a)])

    spec = zoo.get_model(model)
    t0 = time.perf_counter()
    fp32 = realistic_random_model(spec, pre(fit), work / "model" / "model.onnx", head_images=pre(fit + cal),
                                  head_sharpness=sharpness, max_active_classes=active or None)
    t_model = time.perf_counter() - t0
    result = {"photos_mixed_in": [p.name for p in photos], "images_seconds": round(t_images, 1),
              "model_seconds": round(t_model, 1), "onnx_mb": round(fp32.stat().st_size / 2**20, 1),
              "head_sharpness": sharpness, "active_classes": active}
    stamp.write_text(json.dumps({"settings": settings, "result": result}))
    return result


def confidence(work: Path, eval_images: int) -> dict:
    """How confident the FP32 model is on the held-out images (what top-1 agreement can be read against)."""
    import numpy as np
    import onnxruntime as ort

    from trt_res2net.data.calibration_set import iter_batches, select_calibration_images

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(work / "model" / "model.onnx"), so, providers=["CPUExecutionProvider"])
    paths = select_calibration_images(work / "eval_images", eval_images, seed=1)
    logits = np.concatenate([s.run(None, {"input": a})[0] for a, _, _ in iter_batches(paths, 16) if len(a)])
    top2 = np.sort(logits, axis=1)[:, -2:]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return {"classes_predicted": int(len(set(logits.argmax(axis=1)))),
            "median_top1_probability": round(float(np.median(p.max(axis=1))), 3),
            "median_top1_top2_logit_margin": round(float(np.median(top2[:, 1] - top2[:, 0])), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="res2net50_vd_26w_4s")
    ap.add_argument("--calib-images", type=int, default=500)
    ap.add_argument("--eval-images", type=int, default=500)
    ap.add_argument("--methods", default="entropy", help="comma-separated: entropy,max,percentile")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--head-sharpness", type=float, default=40.0,
                    help="logit scale of the fitted head (default 40: median top-1 probability 0.81 on the "
                         "held-out images of res2net50_vd_26w_4s)")
    ap.add_argument("--active-classes", type=int, default=100,
                    help="classes the fitted head can predict (clusters of the features; default 100; 0 = one per "
                         "4 head images)")
    ap.add_argument("--fallback-budget", type=float, metavar="PP",
                    help="also run --auto-fallback with --max-top1-drop PP (entropy cache)")
    ap.add_argument("--workdir", help="keep images, models and caches here (default: a temporary folder)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, Path(a.workdir), a.methods, a.calib_images, a.eval_images)))
        return 0

    from trt_res2net.precision.modelopt import require_modelopt, tool_versions

    require_modelopt("the benchmark")
    tmp = None
    if a.workdir:
        work = Path(a.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_quantize.")
        work = Path(tmp.name)
    print(f"preparing {a.calib_images} calibration + {a.eval_images} held-out images and {a.model} in {work}",
          flush=True)
    if a.fallback_budget is not None and a.methods.split(",")[0] != "entropy":
        raise SystemExit("--fallback-budget uses the first method's cache; list entropy first")
    results = {"model": a.model, "calib_images": a.calib_images, "eval_images": a.eval_images,
               "cpu_count": os.cpu_count(), "tools": tool_versions(),
               "prepare": prepare(work, a.model, a.calib_images, a.eval_images, a.head_sharpness, a.active_classes)}
    results["fp32_confidence"] = confidence(work, a.eval_images)
    rows = []
    for method in a.methods.split(","):
        runs = [run_child("calibrate", work, method, a.calib_images, a.eval_images) for _ in range(a.runs)]
        cal = dict(runs[-1])
        cal["seconds_all"] = [r["seconds"] for r in runs]
        cal["seconds"] = statistics.median(cal["seconds_all"])
        cal["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
        print(f"calibrate {method}: {cal['seconds']} s, peak RSS {cal['peak_rss_mb']} MB", flush=True)
        rows.append(cal)
        for step in ("int8", "int8-fp32"):
            r = run_child(step, work, method, a.calib_images, a.eval_images)
            print(f"{step} {method}: {json.dumps(r['accuracy'])}", flush=True)
            rows.append(r)
    r = run_child("fp16", work, "entropy", a.calib_images, a.eval_images)
    print(f"fp16: {json.dumps(r['accuracy'])}", flush=True)
    rows.append(r)
    if a.fallback_budget is not None:
        r = run_child(f"fallback:{a.fallback_budget:g}", work, a.methods.split(",")[0], a.calib_images,
                      a.eval_images)
        print(f"auto-fallback (budget {a.fallback_budget:g} pp): excluded {len(r['excluded_layers'])} of "
              f"{r['quantized_layers']} layers in {r['seconds']} s: {json.dumps(r['accuracy'])}", flush=True)
        rows.append(r)
    results["steps"] = rows

    print("\n| step | method | wall s | peak RSS MB | top-1 agreement | top-5 overlap | cosine |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        acc = r.get("accuracy") or {}
        cells = ([f"{100 * acc['top1_agreement']:.2f} %", f"{100 * acc['mean_top5_overlap']:.2f} %",
                  f"{acc['cosine_similarity']:.5f}"] if acc else ["—"] * 3)
        method = r["method"] if r["step"] != "fp16" else "—"
        print(f"| {r['step']} | {method} | {r['seconds']} | {r['peak_rss_mb']} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2) + "\n")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
