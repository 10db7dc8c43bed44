"""build.py's command line: the flags, grouped by stage, with their defaults and help (:func:`build_parser`);
``cli.build`` maps them onto the library's options."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import UserError
from ..core.version import __version__
from ..data.calibration_set import DEFAULT_CALIB_IMAGES
from ..engine import trt_compat
from ..engine.options import (
    DEFAULT_ENGINE_DIR,
    DEFAULT_MAX_BATCH,
    DEFAULT_MIN_BATCH,
    DEFAULT_OPT_BATCH,
    INT8_MODES,
    LOG_LEVELS,
)
from ..model.export import DEFAULT_OPSET
from ..precision.options import (
    CALIB_METHODS,
    DEFAULT_EVAL_IMAGES,
    DEFAULT_HIGH_PRECISION,
    HIGH_PRECISIONS,
    PRECISIONS,
)
from ..serving.repository import DEFAULT_MAX_BATCH as TRITON_DEFAULT_MAX_BATCH
from ..serving.repository import DEFAULT_QUEUE_DELAY_US, DEFAULT_TOPK, QUEUE_SIZE_PER_BATCH, TritonOptions
from .common import add_preprocess_arguments, bounded_int, positive_int


def _triton_repo_dir(text: str) -> Path:
    """``--triton-repo``: checked when the options are parsed, so a missing tritonclient stops before any work."""
    from ..serving.repository import check_repository_target

    try:
        return check_repository_target(text)
    except UserError as e:  # no tritonclient (exit 3 elsewhere), or a file where the folder should be
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="build.py",
        description="Build an exact ONNX graph and a TensorRT or TensorRT-RTX engine for a PaddleClas Res2Net "
                    "classifier.",
        epilog="Exit status: 0 done; 1 the FP16/INT8 model missed --max-top1-drop; 2 usage or input error (a path "
               "the operating system refuses included: permission denied, not a folder, a FIFO, a symbolic link "
               "loop, disk full); 3 ONNX written but neither TensorRT nor TensorRT-RTX (or, for TensorRT, no GPU; "
               "or ModelOpt, for fp16/int8) here; 130 interrupted (Ctrl-C): the outputs of the step it stopped are "
               "as they were.",
    )
    src = p.add_argument_group("model")
    src.add_argument("--model", metavar="NAME", help="zoo model name (see --list-models)")
    src.add_argument("--onnx", metavar="PATH",
                     help="build from this classification ONNX instead of a zoo model (e.g. a paddle2onnx export)")
    add_preprocess_arguments(src)
    src.add_argument("--list-models", action="store_true",
                     help="print every model with its parameters, GFLOPs and published accuracy, then exit")
    src.add_argument("--weights", metavar="PATH", help="PaddleClas .pdparams file (default: download once)")
    src.add_argument("--random-weights", action="store_true",
                     help="seeded random weights for smoke tests and benchmarks; predictions mean nothing")
    src.add_argument("--seed", type=int, default=0, help="seed for --random-weights (default 0)")
    onnx = p.add_argument_group("ONNX export")
    onnx.add_argument("--onnx-only", action="store_true", help="stop after writing the ONNX model(s)")
    onnx.add_argument("--onnx-out", metavar="PATH",
                      help="where to write the FP32 ONNX (default engines/NAME.onnx); with --onnx, the FP16/INT8 ONNX "
                           "made from it (default <engine-dir>/<stem>_<precision>.onnx: never beside your file)")
    onnx.add_argument("--opset", type=int, default=None,
                      help=f"ONNX opset (default {DEFAULT_OPSET}, which TensorRT 8.6 parses; INT8 Q/DQ needs 19)")
    onnx.add_argument("--softmax", action="store_true",
                      help="end the graph with Softmax (output 'probabilities') like PaddleClas's exported models")
    p.add_argument("--precision", choices=(*PRECISIONS, "bf16"), default=None,
                   help="engine precision (default fp32, or what an --onnx already is: int8 for a Q/DQ ONNX, fp16 for "
                        "an FP16 one, built as it is); fp16/int8 of an FP32 model also write the converted ONNX; "
                        "with --engine-family cpu: int8 (default), bf16 (CPUs with BF16) or fp32")
    _add_precision_arguments(p)
    _add_engine_arguments(p)
    _add_triton_arguments(p)
    p.add_argument("--json", action="store_true", help="with --list-models: print JSON instead of a table")
    p.add_argument("--quiet", action="store_true",
                   help="print only the results (stdout) and errors: no progress bars, notes or warnings")
    p.add_argument("--verbose", action="store_true",
                   help="print everything on stderr: TensorRT's messages down to info (--trt-log verbose for its "
                        "verbose log) and ModelOpt's, warnings uncollapsed")
    p.add_argument("--version", action="version", version=f"trt_res2net {__version__}")
    return p


def _add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("precision (FP16 / INT8 ONNX made with NVIDIA ModelOpt; needs the quant extra)")
    g.add_argument("--calib-dir", metavar="DIR",
                   help="INT8 calibration images: a few hundred real photographs like those the engine will see, "
                        "e.g. from the ImageNet train set (searched recursively: jpg, jpeg, png, bmp, webp)")
    g.add_argument("--calib-synthetic", type=positive_int, metavar="N",
                   help="no images at hand: calibrate on N generated images (written once to calib/synthetic_N_seedS)"
                        " — only to try the pipeline: their scales are not for an engine to deploy")
    g.add_argument("--calib-images", type=int, default=DEFAULT_CALIB_IMAGES, metavar="N",
                   help="use at most N calibration images: all, sorted, or a seeded sample of N "
                        f"(default {DEFAULT_CALIB_IMAGES})")
    g.add_argument("--calib-seed", type=int, default=0, metavar="S",
                   help="seed of the calibration sample when there are more than N images (default 0)")
    g.add_argument("--calib-method", choices=CALIB_METHODS, default="entropy",
                   help="activation ranges: entropy (KL, default), max, or percentile")
    g.add_argument("--calib-percentile", type=float, default=99.999, metavar="P",
                   help="with --calib-method percentile: the percentile of |x| (default 99.999)")
    g.add_argument("--calib-cache", metavar="PATH",
                   help="calibration cache to reuse or write (default calib/<model>.<method>.cache); "
                        "TensorRT's text format with a <cache>.json sidecar that keys it")
    g.add_argument("--high-precision", choices=HIGH_PRECISIONS, default=DEFAULT_HIGH_PRECISION,
                   help=f"precision of what INT8 does not cover (default {DEFAULT_HIGH_PRECISION})")
    g.add_argument("--eval-dir", metavar="DIR",
                   help="held-out images: compare the FP16/INT8 ONNX with the FP32 ONNX on them")
    g.add_argument("--eval", metavar="LIST", dest="eval_list",
                   help="labelled held-out images, 'relative/path.jpg label' per line (PaddleClas val_list)")
    g.add_argument("--data-root", metavar="DIR", help="folder the --eval list's paths are relative to")
    g.add_argument("--eval-images", type=int, default=DEFAULT_EVAL_IMAGES, metavar="N",
                   help=f"compare on at most N held-out images, a seeded sample (default {DEFAULT_EVAL_IMAGES}; "
                        "0 = all)")
    g.add_argument("--max-top1-drop", type=float, metavar="PP",
                   help="fail when top-1 accuracy drops more than PP percentage points (labelled), or when "
                        "more than PP %% of the images change their top-1 class (unlabelled)")
    g.add_argument("--auto-fallback", action="store_true",
                   help="INT8: keep the most sensitive layers out of quantization until --max-top1-drop holds")


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("TensorRT engine")
    g.add_argument("--engine-family", choices=(*trt_compat.FAMILY_CHOICES, "cpu"), default="auto",
                   help="tensorrt: standard TensorRT, builds for this machine's GPU (servers, Jetson); "
                        "tensorrt-rtx: TensorRT for RTX, builds without a GPU for compute capability 8.0/8.6/"
                        "8.9/12.0 and later (7.5 on request); auto: tensorrt when importable, else "
                        "tensorrt-rtx (default); cpu: an OpenVINO model for CPUs (NNCF INT8, BF16 or FP32; "
                        "the cpu extra), written with its manifest")
    g.add_argument("--compute-capability", metavar="LIST",
                   help="TensorRT-RTX targets, e.g. 8.6,8.9,12.0, or current (this machine's GPU); default "
                        "the library's portable set: 8.0, 8.6, 8.9, 12.0, 12.1 and later")
    g.add_argument("--int8-mode", choices=INT8_MODES, default="auto",
                   help="INT8 path: qdq = ModelOpt's Q/DQ ONNX (TensorRT 10/11, TensorRT-RTX), calibrator = "
                        "TensorRT's entropy calibrator (8.6/10.x), auto = what the installed library supports "
                        "(default)")
    g.add_argument("--batch", type=int, metavar="N", help="fixed batch size N (min = opt = max = N)")
    g.add_argument("--min-batch", type=int, metavar="N", help=f"smallest batch (default {DEFAULT_MIN_BATCH})")
    g.add_argument("--opt-batch", type=int, metavar="N",
                   help=f"batch TensorRT tunes for (default {DEFAULT_OPT_BATCH})")
    g.add_argument("--max-batch", type=int, metavar="N", help=f"largest batch (default {DEFAULT_MAX_BATCH})")
    g.add_argument("--workspace", type=int, metavar="MiB",
                   help="builder workspace limit in MiB (default: half the free GPU memory, a quarter on "
                        "Jetson; TensorRT-RTX without a GPU: the library's own default)")
    g.add_argument("--timing-cache", metavar="PATH",
                   help="TensorRT timing cache, read if present and updated after the build (speeds up "
                        "rebuilds; not for TensorRT-RTX)")
    g.add_argument("--dla-core", type=int, metavar="N",
                   help="build for Jetson DLA core N, with GPU fallback (TensorRT only)")
    g.add_argument("--builder-opt-level", type=int, choices=range(6), metavar="0-5",
                   help="builder optimization level (TensorRT default 3; higher searches longer)")
    g.add_argument("--calib-batch", type=int, default=None, metavar="N",
                   help="batch size of TensorRT's INT8 calibrator (default 8)")
    g.add_argument("--trt-calib-cache", metavar="PATH",
                   help="TensorRT calibration cache (default calib/<model>.trt<version>.cache)")
    g.add_argument("--engine-dir", default=str(DEFAULT_ENGINE_DIR), metavar="DIR",
                   help="where engines go (default engines/)")
    g.add_argument("--save-engine", metavar="PATH",
                   help="engine path (default <engine-dir>/<model>_<precision>_b<max>.engine, "
                        "….rtx.engine for TensorRT-RTX)")
    g.add_argument("--trt-log", choices=LOG_LEVELS, default="warning",
                   help="TensorRT log level (default warning)")


def _add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Triton model repository (docs/triton.md)")
    g.add_argument("--triton-repo", type=_triton_repo_dir, metavar="DIR",
                   help="also write a Triton Inference Server model repository to DIR (replaced if it holds one "
                        "written before): ensembles on image bytes over the engine (tensorrt_plan) and the ONNX "
                        "(onnxruntime_onnx), and a one-process Python model (ONNX Runtime in the Python backend); "
                        "needs tritonclient")
    g.add_argument("--triton-max-batch", type=positive_int, metavar="N",
                   help=f"max_batch_size of the ONNX/Python models and steps (default: the engine's max batch, "
                        f"else {TRITON_DEFAULT_MAX_BATCH})")
    g.add_argument("--triton-queue-delay-us", type=bounded_int(0), default=DEFAULT_QUEUE_DELAY_US, metavar="US",
                   help=f"dynamic batching: how long a classifier waits to fill a batch (default "
                        f"{DEFAULT_QUEUE_DELAY_US} µs)")
    g.add_argument("--triton-instances", type=positive_int, default=1, metavar="N",
                   help="instances of each classifier and of the one-process Python model (per GPU for the plan; "
                        "default 1)")
    defaults = TritonOptions()
    g.add_argument("--triton-preprocess-instances", type=positive_int, default=defaults.preprocess_instances,
                   metavar="N", help=f"instances of the image-decoding model (default {defaults.preprocess_instances})")
    g.add_argument("--triton-intra-op-threads", type=bounded_int(0), default=defaults.intra_op_threads, metavar="N",
                   help="ONNX Runtime threads per classifier instance (default 0: the serving machine's cores ÷ "
                        "--triton-instances)")
    g.add_argument("--triton-max-queue-size", type=positive_int, metavar="N",
                   help=f"requests each model queues; more are rejected with HTTP 503 / UNAVAILABLE (default "
                        f"{QUEUE_SIZE_PER_BATCH} × its max batch)")
    g.add_argument("--triton-queue-timeout-ms", type=bounded_int(0), default=defaults.queue_timeout_ms, metavar="MS",
                   help=f"a request queued longer is rejected (HTTP 503; default {defaults.queue_timeout_ms} ms, 0: "
                        "never)")
    g.add_argument("--triton-max-image-pixels", type=positive_int, default=defaults.max_image_pixels, metavar="N",
                   help=f"larger images (by their header) are refused with HTTP 400 before decoding (default "
                        f"{defaults.max_image_pixels})")
    g.add_argument("--triton-max-image-bytes", type=positive_int, default=defaults.max_image_bytes, metavar="N",
                   help=f"larger encoded images are refused with HTTP 400 (default {defaults.max_image_bytes})")
    g.add_argument("--triton-costly-image-pixels", type=positive_int, default=defaults.costly_image_pixels,
                   metavar="N", help="a request declaring more decoding work (pixels × a JPEG's scans) decodes in a "
                                     f"lane of its own, apart from the others (default {defaults.costly_image_pixels})")
    g.add_argument("--triton-decode-deadline-ms", type=positive_int, default=defaults.decode_deadline_ms,
                   metavar="MS", help="a costly request not started decoding this long after it came is answered "
                                      f"HTTP 503 (default {defaults.decode_deadline_ms} ms)")
    g.add_argument("--triton-topk", type=positive_int, default=DEFAULT_TOPK, metavar="K",
                   help=f"top-k classes the image models return (default {DEFAULT_TOPK})")
    g.add_argument("--triton-labels", metavar="FILE",
                   help="class names for the image models' labels (infer.py's --labels formats; default ImageNet's "
                        "for 1000 classes, else the ids)")
