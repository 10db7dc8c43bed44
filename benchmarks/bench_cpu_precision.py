#!/usr/bin/env python3
"""The CPU path's precisions side by side: today's FP32 (ONNX Runtime), the project's CPU INT8 and BF16 (build.py
--engine-family cpu: OpenVINO, NNCF), and OpenVINO's own NNCF INT8 of the same FP32 ONNX made as OpenVINO's docs
show it (``ov.convert_model`` + ``nncf.quantize`` with its defaults, compiled with the default hints).

    python benchmarks/bench_cpu_precision.py [--model res2net50_vd_26w_4s] [--rounds 7] [--iterations 10]
                                             [--workdir DIR] [--json out.json]

The model is the zoo model with realistic random weights (``model.realistic_random``: BN statistics and a head
fitted to images made from tests/data's photographs, so that top-1 agreement means something), calibrated on 64
generated images, compared on 32 others. Per batch size (1 and 8) the cases take turns in each of --rounds rounds
(the same machine load for all; each round starts with the next case, so that no case always follows the same
one); each round's figure is the median of --iterations runs of the model alone on preprocessed batches.

Reported: images/s (median over rounds); the median of each round's ratio to FP32 and to OpenVINO's NNCF INT8 in
the same round; effective GOP/s (2 × the graph's multiply-accumulates per image); the int8 matmul rate ONNX
Runtime's MatMulInteger reaches here (the machine's int8 reference, measured in the same run); top-1 agreement and
minimum cosine of each against FP32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(work: Path, model: str):
    from trt_res2net.data.calibration_set import iter_batches
    from trt_res2net.data.synthetic import write_images
    from trt_res2net.model import zoo
    from trt_res2net.model.realistic_random import realistic_random_model

    photos = sorted((ROOT / "tests" / "data").glob("*.jpg"))
    fit = write_images(work / "fit", 32, seed=100, photos=photos)
    calib = write_images(work / "calib", 64, seed=101, photos=photos)
    held = write_images(work / "eval", 32, seed=102, photos=photos)

    def pre(paths):
        return np.concatenate([a for a, _, _ in iter_batches(paths, 16) if len(a)])

    fp32 = work / "model" / "model.onnx"
    if not fp32.exists():
        realistic_random_model(zoo.get_model(model), pre(fit), fp32, head_images=pre(fit + calib))
    return fp32, work / "calib", pre(held)


def project_models(fp32: Path, calib_dir: Path, work: Path) -> dict:
    from trt_res2net.data.calibration_set import CalibrationImages
    from trt_res2net.engine.cpu_build import CpuMachine, build_cpu_model, check_cpu_can_run
    from trt_res2net.precision.options import PrecisionOptions

    opts = PrecisionOptions(calibration=CalibrationImages(directory=calib_dir, count=64), progress=False)
    out = {}
    for precision in ("int8", "bf16"):
        try:
            check_cpu_can_run(precision, CpuMachine.here(), "this machine")
        except Exception as e:  # noqa: BLE001 - a CPU without BF16: reported, not timed
            print(f"skipped project {precision}: {e}")
            continue
        path = work / "cpu" / f"model_cpu_{precision}.xml"
        if not path.exists():
            build_cpu_model(fp32, precision, opts, out_path=path)
        out[f"project {precision}"] = path
    return out


def openvino_nncf_int8(fp32: Path, calib_dir: Path, work: Path):
    """What OpenVINO's documentation does: convert, nncf.quantize with its defaults on the same preprocessed images."""
    import nncf
    import openvino as ov

    from trt_res2net.data.calibration_set import iter_batches

    path = work / "openvino" / "model_int8.xml"
    if not path.exists():
        images = sorted(calib_dir.glob("*.jpg"))
        x = np.concatenate([a for a, _, _ in iter_batches(images, 16) if len(a)])
        q = nncf.quantize(ov.convert_model(str(fp32)), nncf.Dataset([x[i : i + 1] for i in range(len(x))]),
                          subset_size=len(x))
        path.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(q, str(path))
    return ov.Core().compile_model(str(path), "CPU")


def runners(fp32: Path, calib_dir: Path, work: Path) -> dict:
    import onnxruntime as ort

    from trt_res2net.runtime.backend import open_backend

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    cases = {"today fp32 (ONNX Runtime)": lambda x: session.run(None, {name: x})[0]}
    for label, path in project_models(fp32, calib_dir, work).items():
        cases[label] = open_backend(path).run
    compiled = openvino_nncf_int8(fp32, calib_dir, work)
    request = compiled.create_infer_request()
    cases["OpenVINO NNCF int8 (its defaults)"] = lambda x: np.array(next(iter(request.infer({0: x}).values())))
    return cases


def int8_matmul_gops(n: int = 1024, runs: int = 10) -> float:
    """ONNX Runtime's MatMulInteger (uint8 × int8) GOP/s on an n×n×n product: the machine's int8 reference."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def time_case(run, x: np.ndarray, iterations: int) -> float:
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="res2net50_vd_26w_4s")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/bench_cpu_precision"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    from trt_res2net.data.metrics import compare_predictions
    from trt_res2net.engine.cpu_build import CpuMachine
    from trt_res2net.model import zoo
    from trt_res2net.model.onnx_export import graph_statistics

    args.workdir.mkdir(parents=True, exist_ok=True)
    fp32, calib_dir, held = prepare(args.workdir, args.model)
    cases = runners(fp32, calib_dir, args.workdir)
    gflops = graph_statistics(zoo.get_model(args.model))["gflops"]
    reference = cases["today fp32 (ONNX Runtime)"](held)
    agreement = {}
    for label, run in cases.items():
        logits = np.concatenate([run(held[i : i + 8]) for i in range(0, len(held), 8)]).reshape(len(held), -1)
        cmp = compare_predictions(reference, logits)
        cosines = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(reference, logits, strict=True)]
        agreement[label] = {"top1_agreement": cmp["top1_agreement"], "min_cosine": min(cosines)}
    results = {}
    for batch in (1, 8):
        x = np.ascontiguousarray(held[:batch])
        for run in cases.values():
            run(x)  # warm-up
        rounds = {label: [] for label in cases}
        labels = list(cases)
        for i in range(args.rounds):
            for label in labels[i % len(labels):] + labels[: i % len(labels)]:  # each case in each place in turn
                rounds[label].append(time_case(cases[label], x, args.iterations))
        base, ov_int8 = rounds["today fp32 (ONNX Runtime)"], rounds["OpenVINO NNCF int8 (its defaults)"]
        results[batch] = {label: {
            "img_s": round(statistics.median(r), 1),
            "vs_fp32": round(statistics.median(a / b for a, b in zip(r, base, strict=True)), 2),
            "vs_openvino_int8": round(statistics.median(a / b for a, b in zip(r, ov_int8, strict=True)), 3),
            "gop_s": round(statistics.median(r) * gflops, 1)} for label, r in rounds.items()}
    matmul = int8_matmul_gops()
    machine = CpuMachine.here()
    print(f"{args.model}, {machine.name} ({', '.join(machine.capabilities)}); int8 matmul (ONNX Runtime "
          f"MatMulInteger) {matmul:.0f} GOP/s; {gflops:.2f} GFLOPs per image")
    print(f"{'case':36} {'batch':>5} {'img/s':>7} {'÷ fp32':>7} {'÷ OV int8':>9} {'GOP/s':>7} {'÷ matmul':>8} "
          f"{'top-1':>6} {'min cos':>8}")
    for batch, rows in results.items():
        for label, r in rows.items():
            a = agreement[label]
            print(f"{label:36} {batch:>5} {r['img_s']:>7} {r['vs_fp32']:>7} {r['vs_openvino_int8']:>9} "
                  f"{r['gop_s']:>7} {r['gop_s'] / matmul:>8.2f} {a['top1_agreement']:>6.3f} {a['min_cosine']:>8.5f}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "cpu": machine.name,
                                         "capabilities": list(machine.capabilities), "int8_matmul_gop_s": matmul,
                                         "gflops": gflops, "results": results, "agreement": agreement,
                                         "rounds": args.rounds, "iterations": args.iterations}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
