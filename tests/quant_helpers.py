"""A small Res2Net whose activations and predictions look like a trained network's, and images for it.

Used by the ModelOpt tests: width 16 (ModelOpt leaves convolutions with fewer than 16 channels unquantized,
so width 4 would test nothing), one block per stage, 1000 classes; BN statistics fitted to real-looking
images and a classifier head fitted to their features (trt_res2net.model.realistic_random).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from trt_res2net.data.calibration_set import iter_batches
from trt_res2net.data.synthetic import write_images
from trt_res2net.model import zoo
from trt_res2net.model.realistic_random import realistic_random_model

DATA = Path(__file__).parent / "data"


def photos() -> list[Path]:
    """The freely licensed photographs shipped in tests/data (when present) seed part of the images."""
    return sorted(DATA.glob("*.jpg"))


def quant_spec() -> zoo.ModelSpec:
    return zoo.get_model("res2net50_vd_26w_4s").reduced(width=16, depths=(1, 1, 1, 1))


def preprocessed(paths) -> np.ndarray:
    return np.concatenate([a for a, _, _ in iter_batches(paths, 16) if len(a)])


def make_workspace(root: Path, calib: int = 48, held_out: int = 48) -> dict:
    """Images (fit / calibration / held-out, disjoint seeds) and the realistic FP32 ONNX under ``root``."""
    src = photos()
    fit = write_images(root / "fit", 16, seed=100, photos=src)
    cal = write_images(root / "calib", calib, seed=101, photos=src)
    ev = write_images(root / "eval", held_out, seed=102, photos=src)
    spec = quant_spec()
    onnx_path = realistic_random_model(spec, preprocessed(fit), root / "model" / "tiny16.onnx",
                                       head_images=preprocessed(fit + cal))
    return {"root": root, "spec": spec, "onnx": onnx_path, "calib_dir": root / "calib", "eval_dir": root / "eval",
            "calib": cal, "eval": ev}


def args(**kw) -> argparse.Namespace:
    """build.py's Namespace with these precision flags set (dest names), the rest at their defaults."""
    from trt_res2net.cli.build import build_parser

    ns = build_parser().parse_args(["--onnx", "m.onnx", "--quiet"])
    for k, v in kw.items():
        setattr(ns, k, str(v) if isinstance(v, Path) else v)
    return ns


def run_precision(ns: argparse.Namespace, fp32_onnx: Path, model: str) -> Path:
    """The precision step as build.py runs it: the flags through the CLI's mapping, then the library."""
    from trt_res2net.cli.build import FLAGS, precision_options
    from trt_res2net.core.errors import UserError
    from trt_res2net.precision.convert import convert_precision

    try:
        return convert_precision(fp32_onnx, ns.precision or "fp32", precision_options(ns), model_name=model).path
    except UserError as e:  # shown as build.py shows it: the option fields as its flags
        raise type(e)(FLAGS.message(str(e))) from e


def qdq_coverage(model) -> dict[str, dict[str, bool]]:
    """For each Conv/Gemm/MatMul of an ONNX model: whether its data input and its weight arrive through
    DequantizeLinear (what a Q/DQ model must show for its quantized layers)."""
    from trt_res2net.precision.modelopt.qdq import QUANTIZABLE_WEIGHTED_OPS

    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZABLE_WEIGHTED_OPS:
            def via_dq(i, _n=n):
                p = producer.get(_n.input[i]) if len(_n.input) > i else None
                return p is not None and p.op_type == "DequantizeLinear"
            out[n.name] = {"input": via_dq(0), "weight": via_dq(1)}
    return out
