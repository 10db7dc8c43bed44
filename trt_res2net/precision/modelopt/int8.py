"""INT8 Q/DQ through ModelOpt's ``quantize`` (TensorRT's placement), so that a cache always reproduces the model:

1. :func:`calibrate_and_quantize` runs the images through the FP32 ONNX once, in one ModelOpt call that returns
   both the Q/DQ model and the activation scales as a :class:`~trt_res2net.precision.calib_cache.CalibrationCache`
   (the FP32 scales, captured before ModelOpt converts the model to its high precision). ``entropy`` and ``max``
   are ModelOpt's own calibration (ONNX Runtime's histogram/min-max calibrators, patched by ModelOpt to collect
   batch by batch), entropy's data streamed through ``ort_calibration`` (the same statistics in a fraction of the
   memory); ``percentile`` is computed here (:mod:`.histogram`) on the tensors ModelOpt quantizes
   (:func:`calibrate`, then step 2).
2. :func:`quantize_from_cache` asks ModelOpt for the Q/DQ model with ``calibration_cache_path`` when a cache is
   reused, and checks that every activation scale in it came from the cache. ModelOpt still calibrates before it
   replaces the scales with the cache's: it is given min-max on one image, the cheapest run that places the same
   Q/DQ nodes (``tests/test_quantize_modelopt.py`` checks that calibrating directly and building from the cache
   give the same model).

ModelOpt runs on ONNX Runtime's CUDA provider where this ONNX Runtime has one (``ort_calibration.
available_providers``), else on the CPU.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ...core import log
from ...core.errors import UserError
from ..calib_cache import MODELOPT_VERSION_TAG, CalibrationCache, write_cache
from ..ort_calibration import Captured, available_providers, streaming_calibration
from .calibration_reader import CALIB_BATCH, one_batch_reader, probe_image
from .histogram import percentile_scales
from .logs import captured_output, modelopt_failed
from .onnx_utils import keeps_external_data, private_copy, publish_result, workdir
from .patches import fast_paths
from .qdq import activation_scales, check_scales_from, note_raised_in_fp16, note_unquantized, usable_scale

# ModelOpt's GEMV rule keeps a MatMul/Gemm unquantized when a dimension is 1; a fixed shape makes the Q/DQ
# placement independent of how the images were batched (deployment batches are > 1).
PLACEMENT_SHAPE = f"input:{CALIB_BATCH}x3x224x224"


def calibration_providers() -> list[str]:
    """ONNX Runtime's providers for calibration: CUDA first where present (ort_calibration.available_providers)."""
    return available_providers()


def _calibration_eps(providers: list[str]) -> list[str]:
    return ["cuda:0", "cpu"] if providers and providers[0] == "CUDAExecutionProvider" else ["cpu"]


def _exclusion_patterns(names: Iterable[str]) -> list[str]:
    # ModelOpt matches with re.match: escape, and anchor the end, so 'a.conv' doesn't also take 'a.conv_2'.
    return [re.escape(n) + "$" for n in names]


def quantize(fp32_onnx: Path, out_path: Path, *, reader=None, **call) -> Captured:
    """One ModelOpt ``quantize`` call (INT8, TensorRT's placement) writing ``out_path``; returns what was captured on
    the way (``activation_scales``: the FP32 scales before ModelOpt converts the model to ``high_precision``).
    ``call``: :func:`_quantize_once`'s options. Entropy calibration leaves out the tensors no Q/DQ node uses
    (``ort_calibration.unused_outputs``); should one of them have a scale in the result after all, the call is made
    again with every tensor calibrated."""
    captured = _quantize_once(fp32_onnx, out_path, reader=reader, skip_unused=True, **call)
    used = set(captured.activation_scales or ()) & captured.skipped
    if used:
        log.debug(f"ModelOpt quantized {sorted(used)[0]}, left out of calibration as unused: calibrating everything")
        if reader is not None:
            reader.rewind()
        captured = _quantize_once(fp32_onnx, out_path, reader=reader, skip_unused=False, **call)
    return captured


def _quantize_once(fp32_onnx: Path, out_path: Path, *, reader=None, method: str = "entropy",
                   cache_path: Path | None = None, high_precision: str = "fp16",
                   nodes_to_exclude: Iterable[str] = (), log_path: Path | None = None,
                   providers: list[str] | None = None, skip_unused: bool = True) -> Captured:
    from modelopt.onnx.quantization import quantize as modelopt_quantize

    providers = providers or calibration_providers()
    kwargs = dict(quantize_mode="int8", calibration_method=method, calibration_shapes=PLACEMENT_SHAPE,
                  calibration_eps=_calibration_eps(providers), output_path=str(out_path),
                  high_precision_dtype=high_precision, nodes_to_exclude=_exclusion_patterns(nodes_to_exclude),
                  log_level="WARNING")
    if reader is not None:
        kwargs["calibration_data_reader"] = reader
    if cache_path is not None:
        kwargs["calibration_cache_path"] = str(cache_path)
    source = private_copy(fp32_onnx, out_path.parent)
    try:
        with captured_output(log_path), fast_paths(), \
                streaming_calibration(providers, skip_unused=skip_unused) as captured:
            modelopt_quantize(str(source), **kwargs)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise modelopt_failed("quantize the model", e, log_path) from e
    finally:
        gc.collect()  # ModelOpt's model copies (hundreds of MB each for a large model) go before the next step
    return captured


def _no_ranges(fp32_onnx: Path) -> UserError:
    return UserError(f"calibration of {fp32_onnx} produced no activation ranges (nothing to quantize?)")


def calibrate(fp32_onnx: str | os.PathLike, reader, method: str = "entropy", percentile: float = 99.999,
              log_path: Path | None = None, work_near: Path | None = None) -> CalibrationCache:
    """Activation scales of the FP32 model over the reader's images, as a ModelOpt-tagged cache (scratch files
    beside ``work_near``, default the FP32 ONNX)."""
    fp32_onnx = Path(fp32_onnx)
    algorithm = f"percentile{percentile:g}" if method == "percentile" else method
    with workdir(Path(work_near) if work_near else fp32_onnx) as work:
        if method == "percentile":
            scales = _percentile_scales(fp32_onnx, reader, percentile, work, log_path)
        else:
            scales = quantize(fp32_onnx, work / "calibrated.onnx", reader=reader, method=method,
                              high_precision="fp32", log_path=log_path).activation_scales
    if not scales:
        raise _no_ranges(fp32_onnx)
    return CalibrationCache(MODELOPT_VERSION_TAG, algorithm, scales)


def _percentile_scales(fp32_onnx: Path, reader, percentile: float, work: Path,
                       log_path: Path | None) -> dict[str, float]:
    """Percentile ranges (:mod:`.histogram`) of the activation tensors that ModelOpt's default placement quantizes,
    found with a one-image max calibration."""
    import onnx

    first = reader.get_first()
    if first is None:
        raise UserError("no calibration images could be read")
    probe = work / "placement.onnx"
    quantize(fp32_onnx, probe, reader=one_batch_reader(first["input"][:1]), method="max", high_precision="fp32",
             log_path=log_path)
    wanted = list(activation_scales(onnx.load(str(probe), load_external_data=False)))
    return percentile_scales(fp32_onnx, reader, wanted, percentile)


def calibrate_and_quantize(fp32_onnx: str | os.PathLike, reader, out_path: str | os.PathLike, *,
                           method: str = "entropy", high_precision: str = "fp16",
                           log_path: Path | None = None) -> tuple[CalibrationCache, object]:
    """One ModelOpt call: calibrate on the reader's images (``entropy`` or ``max``) and make the Q/DQ model with
    ``high_precision`` elsewhere, written to ``out_path``'s scratch folder and returned with the cache of its FP32
    activation scales: (cache, ModelProto with its weights; written inline, or with a data file
    ``<out_path>.data`` where the FP32 ONNX keeps its weights in data files). The model is what
    :func:`quantize_from_cache` makes from that cache (checked here: every activation scale of the model is the
    cache's, rounded to the model's precision)."""
    import onnx

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    if method not in ("entropy", "max"):
        raise ValueError(f"calibrate_and_quantize: {method!r} is not ModelOpt's (use calibrate, then "
                         "quantize_from_cache)")
    with workdir(out_path) as work:
        tmp_out = work / out_path.name
        captured = quantize(fp32_onnx, tmp_out, reader=reader, method=method, high_precision=high_precision,
                            log_path=log_path)
        scales = captured.activation_scales or {}
        if not scales:
            raise _no_ranges(fp32_onnx)
        cache = CalibrationCache(MODELOPT_VERSION_TAG, method, scales)
        model = onnx.load(str(tmp_out))  # with its weights (ModelOpt writes them inside unless over 2 GB)
        check_scales_from(model, scales, high_precision)
        note_unquantized(model)
        publish_result(model, tmp_out, out_path, external=keeps_external_data(fp32_onnx))
    return cache, model


def quantize_from_cache(fp32_onnx: str | os.PathLike, cache: CalibrationCache, out_path: str | os.PathLike, *,
                        high_precision: str = "fp16", nodes_to_exclude: Iterable[str] = (),
                        log_path: Path | None = None):
    """The Q/DQ ModelProto ModelOpt makes from ``cache`` (written to ``out_path`` atomically, its weights where the
    FP32 ONNX keeps them: ``onnx_utils.publish_result``).

    Zero or non-finite scales (TensorRT writes ``0`` for an all-zero tensor) are raised to the smallest
    normal float32, so a QuantizeLinear never divides by zero. Every activation scale of the result must
    come from the cache — otherwise ModelOpt would have used its placeholder calibration for it."""
    import onnx

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    scales = {name: usable_scale(value) for name, value in cache.scales.items()}
    clean = CalibrationCache(cache.version_tag, cache.algorithm, scales)
    # ModelOpt calibrates even with a cache (its random data by default: a full entropy calibration thrown away);
    # min-max over one image places the same Q/DQ nodes at the cost of one forward pass.
    with workdir(out_path) as work:
        cache_file = write_cache(work / "import.cache", clean)
        tmp_out = work / out_path.name
        quantize(fp32_onnx, tmp_out, reader=one_batch_reader(probe_image()), method="max", cache_path=cache_file,
                 high_precision=high_precision, nodes_to_exclude=nodes_to_exclude, log_path=log_path)
        model = onnx.load(str(tmp_out))  # with its weights (ModelOpt writes them inside unless over 2 GB)
        quantized = activation_scales(model)
        stray = [n for n in quantized if n not in scales]
        if stray:
            raise UserError(
                f"the calibration cache has no scale for {len(stray)} tensors the Q/DQ model quantizes "
                f"(e.g. {stray[0]}); it was made for another model — recalibrate with CalibrationImages.directory"
            )
        note_raised_in_fp16({n: scales[n] for n in quantized}, high_precision)
        note_unquantized(model, skip=nodes_to_exclude)
        publish_result(model, tmp_out, out_path, external=keeps_external_data(fp32_onnx))
    return model
