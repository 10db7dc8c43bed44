"""build.py: model name + PaddleClas weights → exact ONNX → (FP16 / INT8 ONNX) → TensorRT engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import EXIT_OK, MissingDependency
from ..core.version import __version__
from .common import run_main, usage_error, warn

ENGINES_DIR = Path("engines")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build.py",
        description="Build an exact ONNX graph and a TensorRT or TensorRT-RTX engine for a PaddleClas Res2Net "
                    "classifier.",
        epilog="Exit status: 0 done; 1 the FP16/INT8 model missed --max-top1-drop; 2 usage or input error; "
               "3 ONNX written but neither TensorRT nor TensorRT-RTX (or, for TensorRT, no GPU; or ModelOpt, for "
               "fp16/int8) here.",
    )
    src = p.add_argument_group("model")
    src.add_argument("--model", metavar="NAME", help="zoo model name (see --list-models)")
    src.add_argument("--onnx", metavar="PATH",
                     help="build from this classification ONNX instead of a zoo model (e.g. a paddle2onnx export)")
    src.add_argument("--list-models", action="store_true",
                     help="print every model with its parameters, GFLOPs and published accuracy, then exit")
    src.add_argument("--weights", metavar="PATH", help="PaddleClas .pdparams file (default: download once)")
    src.add_argument("--random-weights", action="store_true",
                     help="seeded random weights for smoke tests and benchmarks; predictions mean nothing")
    src.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    onnx = p.add_argument_group("ONNX export")
    onnx.add_argument("--onnx-only", action="store_true", help="stop after writing the ONNX model(s)")
    onnx.add_argument("--onnx-out", metavar="PATH", help="where to write the FP32 ONNX (default engines/NAME.onnx)")
    onnx.add_argument("--opset", type=int, default=None,
                      help="ONNX opset (default 17, which TensorRT 8.6 parses; INT8 Q/DQ needs 19)")
    onnx.add_argument("--softmax", action="store_true",
                      help="end the graph with Softmax (output 'probabilities') like PaddleClas's exported models")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="engine precision (default fp32); fp16/int8 also write the converted ONNX")
    from ..engine.builder import add_cli_arguments as add_engine_arguments
    from ..precision.convert import add_cli_arguments as add_precision_arguments
    from ..serving.repository import add_cli_arguments as add_triton_arguments

    add_precision_arguments(p)
    add_engine_arguments(p)
    add_triton_arguments(p)
    p.add_argument("--json", action="store_true", help="with --list-models: print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--version", action="version", version=f"trt_res2net {__version__}")
    return p


def list_models(as_json: bool) -> int:
    import json

    from ..model.onnx_export import graph_statistics
    from ..model.zoo import MODELS

    rows = []
    for spec in MODELS.values():
        stats = graph_statistics(spec)
        rows.append({"model": spec.name, "params": stats["params"], "gflops": round(stats["gflops"], 3),
                     "top1": spec.top1, "top5": spec.top5, "weights_url": spec.weights_url})
    if as_json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'model':28s} {'params':>12s} {'GFLOPs':>8s} {'top-1':>6s} {'top-5':>6s}")
    for r in rows:
        print(f"{r['model']:28s} {r['params']:>12,d} {r['gflops']:>8.3f} {r['top1']:>6.1f} {r['top5']:>6.1f}")
    print("params: trainable (conv, BN scale/offset, FC); GFLOPs: 2 x conv+FC MACs at 224x224, from the graph.\n"
          "top-1/top-5: published by PaddleClas (ImageNet-1k val), not measured here.")
    return EXIT_OK


def load_model_weights(args, spec):
    """The weights named by the options, and a short description of their source for the metadata."""
    from ..model import weights as W

    if args.random_weights:
        warn(f"--random-weights: {spec.name} gets seeded random weights (seed {args.seed}); "
             "its predictions mean NOTHING — for smoke tests and benchmarks only")
        state = W.random_weights(spec, seed=args.seed)
        return state, {"weights": f"random (seed {args.seed})", "weights_sha256": W.state_sha256(state)}
    path = Path(args.weights) if args.weights else W.fetch_pretrained(spec, progress=not args.quiet)
    state = W.load_weights(path, spec)
    return state, {"weights": path.name, "weights_sha256": W.file_sha256(path)}


def export_fp32(args, spec) -> Path:
    from ..model.onnx_export import DEFAULT_OPSET, check_onnx, export_onnx

    state, meta = load_model_weights(args, spec)
    out = Path(args.onnx_out) if args.onnx_out else ENGINES_DIR / f"{spec.name}.onnx"
    opset = args.opset or DEFAULT_OPSET
    if opset < 13:
        raise usage_error(f"--opset {opset} is too old: the graph needs opset 13 or newer (Split with sizes)")
    export_onnx(spec, state, out, opset=opset, softmax=args.softmax, metadata=meta, progress=not args.quiet)
    del state
    check_onnx(out)
    return out


def _main(argv) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_models:
        return list_models(args.json)
    if bool(args.model) == bool(args.onnx):
        raise usage_error("pass --model NAME or --onnx PATH (--list-models shows the names)")
    if args.weights and args.random_weights:
        raise usage_error("--weights and --random-weights exclude each other")
    from ..engine import builder, trt_compat

    version = trt_compat.installed_version(args.engine_family)  # None: the ONNX is all this machine can make
    if version is not None and not args.onnx_only:  # refuse options that mean nothing here before any work
        builder.refuse_inapplicable_options(builder.EngineOptions.from_args(args), version, args.precision,
                                            args.int8_mode)
    if args.onnx:
        fp32_path = Path(args.onnx)
        if not fp32_path.is_file():
            raise usage_error(f"--onnx {fp32_path}: no such file")
        model_name = fp32_path.stem
    else:
        from ..model.zoo import get_model

        spec = get_model(args.model)
        model_name = spec.name
        fp32_path = export_fp32(args, spec)
        print(f"wrote {fp32_path} (fp32 ONNX, {fp32_path.stat().st_size / 1e6:.1f} MB, checked)")
    onnx_path = fp32_path
    if builder.precision_onnx_needed(args.precision, args.int8_mode, version):
        from ..precision.convert import run_precision_step

        onnx_path = run_precision_step(args, fp32_path, model_name)
    from ..serving.repository import export_from_build

    if args.onnx_only:
        export_from_build(args, fp32_path, model_name)
        return EXIT_OK
    try:
        engine = builder.run_engine_step(args, onnx_path, model_name, args.precision, fp32_path)
    except MissingDependency:
        export_from_build(args, fp32_path, model_name)  # the ONNX-only repository, then exit 3 as before
        raise
    print(f"engine ready: {engine}")
    export_from_build(args, fp32_path, model_name, engine)
    return EXIT_OK


def main(argv=None) -> int:
    return run_main(lambda: _main(sys.argv[1:] if argv is None else argv))
