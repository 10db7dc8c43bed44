"""Everything that calls NVIDIA TensorRT Model Optimizer (ModelOpt) or ONNX Runtime's calibrators.

ModelOpt (``nvidia-modelopt``, with torch) is optional and heavy: nothing here imports it at module level,
and :func:`require_modelopt` turns its absence into one install command (exit status 3).

INT8 is made in two steps so that a cache always reproduces the model:

1. :func:`calibrate` runs the images through the FP32 ONNX once and returns the activation scales as a
   :class:`~trt_res2net.precision.calib_cache.CalibrationCache`. ``entropy`` and ``max`` are ModelOpt's own calibration
   (ONNX Runtime's histogram/min-max calibrators, patched by ModelOpt to collect batch by batch), read back
   from the Q/DQ model it produces; ``percentile`` is ONNX Runtime's percentile calibrator, which ModelOpt's
   ``quantize`` does not offer, on the tensors ModelOpt quantizes.
2. :func:`quantize_from_cache` asks ModelOpt for the Q/DQ model with ``calibration_cache_path`` — always,
   also right after calibrating — and checks that every activation scale in it came from the cache.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..core.errors import MissingDependency, UserError
from .calib_cache import MODELOPT_VERSION_TAG, CalibrationCache, cache_scales_finite, write_cache

CALIB_BATCH = 8  # images per ONNX Runtime calibration step (memory, not results: ranges merge per batch)
# ModelOpt's GEMV rule keeps a MatMul/Gemm unquantized when a dimension is 1; a fixed shape makes the Q/DQ
# placement independent of how the images were batched (deployment batches are > 1).
PLACEMENT_SHAPE = f"input:{CALIB_BATCH}x3x224x224"
INSTALL_HINT = (
    "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu && pip install -e '.[quant]'"
)
QUANTIZABLE_WEIGHTED_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")


def modelopt_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("nvidia-modelopt")
    except Exception:
        return None


def require_modelopt(what: str) -> None:
    """Import-check ModelOpt's ONNX tools; MissingDependency (exit 3) with the install command if absent."""
    try:
        import modelopt.onnx.autocast  # noqa: F401
        import modelopt.onnx.quantization  # noqa: F401
    except ImportError as e:
        raise MissingDependency(
            f"{what} needs NVIDIA ModelOpt (nvidia-modelopt with its ONNX tools), which is not installed "
            f"({e.name or e}); install it with: {INSTALL_HINT}   (on a machine with a GPU, plain "
            "'pip install torch' is fine)"
        ) from None


def tool_versions() -> dict[str, str]:
    import onnxruntime

    return {"modelopt": modelopt_version() or "absent", "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def captured_output(log_path: Path | None = None):
    """Silence ModelOpt's and ONNX Runtime's chatter (per-batch progress bars, INFO lines, C++ warnings);
    on failure, keep it in ``log_path`` so the error can point to it."""
    import onnxruntime

    buf = io.StringIO()
    old = onnxruntime.get_default_logger_severity() if hasattr(onnxruntime, "get_default_logger_severity") else 2
    onnxruntime.set_default_logger_severity(3)
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield buf
    except BaseException:
        if log_path is not None:
            with contextlib.suppress(OSError):
                log_path.write_text(buf.getvalue())
        raise
    finally:
        onnxruntime.set_default_logger_severity(old)


def _modelopt_failed(what: str, e: Exception, log_path: Path | None) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = f" (log: {log_path})" if log_path is not None and log_path.exists() else ""
    return UserError(f"ModelOpt could not {what}: {type(e).__name__}: {first[:200]}{where}")


# --------------------------------------------------------------------------------------------------------
# Calibration data


def make_reader(batches: Callable[[], Iterator[np.ndarray]], input_name: str = "input",
                on_batch: Callable[[int], None] | None = None):
    """An ONNX Runtime ``CalibrationDataReader`` over preprocessed batches (streamed, never all in memory).

    ``batches()`` returns a fresh iterator of float32 NCHW arrays; ``on_batch(n)`` is called after each
    batch is handed out (a progress bar). ``get_first`` peeks without consuming, as ModelOpt expects."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self.rewind()

        def rewind(self):
            self._it = batches()
            self._peeked = None

        def get_first(self):
            if self._peeked is None:
                self._peeked = next(self._it, None)
            return None if self._peeked is None else {input_name: self._peeked}

        def get_next(self):
            if self._peeked is not None:
                arr, self._peeked = self._peeked, None
            else:
                arr = next(self._it, None)
            if arr is None:
                return None
            if on_batch:
                on_batch(len(arr))
            return {input_name: arr}

    return _Reader()


# --------------------------------------------------------------------------------------------------------
# Q/DQ models


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def activation_scales(model) -> dict[str, float]:
    """Activation tensor name → float scale of every per-tensor QuantizeLinear on a non-constant input,
    keyed as ModelOpt keys a calibration cache (the FP32 model's tensor name)."""
    inits = _initializers(model)
    scales: dict[str, float] = {}
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in inits:
            continue
        scale_name = node.input[1]
        if scale_name not in inits or inits[scale_name].size != 1:
            raise UserError(f"unexpected Q/DQ model: activation scale {scale_name} is not a constant scalar")
        # ModelOpt names the scale of tensor T "T_scale" (cache entry T); converting the float parts to FP16
        # renames it "T_scale_1" and quantizes the graph input through a Cast ("input_cast_to_fp16").
        m = re.fullmatch(r"(.+)_scale(?:_\d+)?", scale_name)
        name = m.group(1) if m else node.input[0]
        scales[name] = float(np.float32(inits[scale_name].reshape(())))
    return scales


def quantized_nodes(model, op_types: Iterable[str] = QUANTIZABLE_WEIGHTED_OPS) -> list[str]:
    """Names of nodes of ``op_types`` whose inputs come through DequantizeLinear (in graph order)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    ops = set(op_types)
    return [n.name for n in model.graph.node if n.op_type in ops and any(i in dq_out for i in n.input)]


def qdq_coverage(model) -> dict[str, dict[str, bool]]:
    """For each Conv/Gemm/MatMul: whether its data input and its weight arrive through DequantizeLinear."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZABLE_WEIGHTED_OPS:
            def via_dq(i, _n=n):
                p = producer.get(_n.input[i]) if len(_n.input) > i else None
                return p is not None and p.op_type == "DequantizeLinear"
            out[n.name] = {"input": via_dq(0), "weight": via_dq(1)}
    return out


def _exclusion_patterns(names: Iterable[str]) -> list[str]:
    # ModelOpt matches with re.match: escape, and anchor the end, so 'a.conv' doesn't also take 'a.conv_2'.
    return [re.escape(n) + "$" for n in names]


def _quantize(fp32_onnx: Path, out_path: Path, *, reader=None, method: str = "entropy",
              cache_path: Path | None = None, high_precision: str = "fp16",
              nodes_to_exclude: Iterable[str] = (), log_path: Path | None = None) -> None:
    from modelopt.onnx.quantization import quantize

    kwargs = dict(
        quantize_mode="int8",
        calibration_method=method,
        calibration_shapes=PLACEMENT_SHAPE,
        calibration_eps=["cpu"],
        output_path=str(out_path),
        high_precision_dtype=high_precision,
        nodes_to_exclude=_exclusion_patterns(nodes_to_exclude),
        log_level="WARNING",
    )
    if reader is not None:
        kwargs["calibration_data_reader"] = reader
    if cache_path is not None:
        kwargs["calibration_cache_path"] = str(cache_path)
    source = _private_copy(fp32_onnx, out_path.parent)
    try:
        with captured_output(log_path):
            quantize(str(source), **kwargs)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise _modelopt_failed("quantize the model", e, log_path) from e


def _private_copy(fp32_onnx: Path, work: Path) -> Path:
    """ModelOpt rewrites the model it is given in place (``onnx.shape_inference.infer_shapes_path`` with no
    output path), which would change the FP32 ONNX's bytes and hash under the caller: give it a copy."""
    copy = work / "source.onnx"
    if not copy.exists():
        shutil.copyfile(fp32_onnx, copy)
    return copy


@contextlib.contextmanager
def _workdir(near: Path):
    """A scratch folder beside ``near`` (same filesystem: the result is moved, not copied)."""
    near.parent.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=f".{near.name}.", dir=near.parent))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def calibrate(fp32_onnx: str | os.PathLike, reader, method: str = "entropy", percentile: float = 99.999,
              log_path: Path | None = None) -> CalibrationCache:
    """Activation scales of the FP32 model over the reader's images, as a ModelOpt-tagged cache."""
    fp32_onnx = Path(fp32_onnx)
    algorithm = f"percentile{percentile:g}" if method == "percentile" else method
    with _workdir(fp32_onnx) as work:
        if method == "percentile":
            scales = _percentile_scales(fp32_onnx, reader, percentile, work, log_path)
        else:
            out = work / "calibrated.onnx"
            _quantize(fp32_onnx, out, reader=reader, method=method, high_precision="fp32", log_path=log_path)
            import onnx

            scales = activation_scales(onnx.load(str(out), load_external_data=False))
    if not scales:
        raise UserError(f"calibration of {fp32_onnx} produced no activation ranges (nothing to quantize?)")
    return CalibrationCache(MODELOPT_VERSION_TAG, algorithm, scales)


def _percentile_scales(fp32_onnx: Path, reader, percentile: float, work: Path,
                       log_path: Path | None) -> dict[str, float]:
    """Symmetric percentile ranges over the activation tensors that ModelOpt's default placement quantizes
    (found with a one-image max calibration): a histogram of |x| per tensor, batch by batch (bounded
    memory), threshold = the bin edge below which ``percentile`` % of all values lie — the method of ONNX
    Runtime's PercentileCalibrater (2048 bins), computed here because ModelOpt's ``quantize`` offers only
    entropy and max, and its patches make ONNX Runtime's calibrator classes unusable beside it."""
    import onnx
    import onnxruntime as ort

    first = reader.get_first()
    if first is None:
        raise UserError("no calibration images could be read")
    probe = work / "placement.onnx"
    _quantize(fp32_onnx, probe, reader=make_reader(lambda: iter([first["input"][:1]])), method="max",
              high_precision="fp32", log_path=log_path)
    wanted = list(activation_scales(onnx.load(str(probe), load_external_data=False)))

    model = onnx.load(str(fp32_onnx))
    present = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del model
    hists = {name: AbsHistogram() for name in wanted}
    while (batch := reader.get_next()) is not None:
        for name, value in zip(wanted, session.run(wanted, batch), strict=True):
            hists[name].add(value)
    return {name: float(np.float32(h.threshold(percentile) / 127.0)) for name, h in hists.items()}


class AbsHistogram:
    """A growing histogram of |x|: fixed bin width set by the first batch (max / bins); later larger
    values append bins of the same width; past ``max_bins`` pairs of bins merge (width doubles)."""

    def __init__(self, bins: int = 2048, max_bins: int = 2048 * 8):
        self.bins, self.max_bins = bins, max_bins
        self.width = 0.0
        self.counts = np.zeros(0, np.int64)
        self.zeros_before_width = 0  # all-zero batches seen before any nonzero value set the bin width

    def add(self, values: np.ndarray) -> None:
        a = np.abs(np.asarray(values, np.float32).reshape(-1))
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        top = float(a.max())
        if self.width == 0.0:
            if top == 0.0:
                self.zeros_before_width += a.size
                return
            self.width = top / self.bins
            self.counts = np.zeros(self.bins, np.int64)
            self.counts[0] = self.zeros_before_width
        need = int(np.floor(top / self.width)) + 1
        while need > self.max_bins:  # merge neighbours: same data, half the resolution
            if self.counts.size % 2:
                self.counts = np.append(self.counts, 0)
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.width *= 2
            need = int(np.floor(top / self.width)) + 1
        if need > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(need - self.counts.size, np.int64)])
        idx = np.minimum((a / self.width).astype(np.int64), self.counts.size - 1)
        self.counts += np.bincount(idx, minlength=self.counts.size)

    def threshold(self, percentile: float) -> float:
        """The upper edge of the bin where the cumulative share first reaches ``percentile`` %."""
        total = int(self.counts.sum())
        if self.width == 0.0 or total == 0:
            return 0.0
        cdf = np.cumsum(self.counts) / total
        i = int(np.searchsorted(cdf, percentile / 100.0))
        return (min(i, self.counts.size - 1) + 1) * self.width


def quantize_from_cache(fp32_onnx: str | os.PathLike, cache: CalibrationCache, out_path: str | os.PathLike, *,
                        high_precision: str = "fp16", nodes_to_exclude: Iterable[str] = (),
                        log_path: Path | None = None):
    """The Q/DQ ModelProto ModelOpt makes from ``cache`` (written to ``out_path`` atomically).

    Zero or non-finite scales (TensorRT writes ``0`` for an all-zero tensor) are raised to the smallest
    normal float32, so a QuantizeLinear never divides by zero. Every activation scale of the result must
    come from the cache — otherwise ModelOpt would have used its placeholder calibration for it."""
    import onnx

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    scales = dict(cache.scales)
    for name in cache_scales_finite(cache):
        scales[name] = float(np.finfo(np.float32).tiny)
    clean = CalibrationCache(cache.version_tag, cache.algorithm, scales)
    with _workdir(out_path) as work:
        cache_file = write_cache(work / "import.cache", clean)
        tmp_out = work / out_path.name
        _quantize(fp32_onnx, tmp_out, cache_path=cache_file, high_precision=high_precision,
                  nodes_to_exclude=nodes_to_exclude, log_path=log_path)
        model = onnx.load(str(tmp_out), load_external_data=False)
        got = activation_scales(model)
        stray = [n for n in got if n not in scales]
        if stray:
            raise UserError(
                f"the calibration cache has no scale for {len(stray)} tensors the Q/DQ model quantizes "
                f"(e.g. {stray[0]}); it was made for another model — recalibrate with --calib-dir"
            )
        os.replace(tmp_out, out_path)
    return model


# --------------------------------------------------------------------------------------------------------
# FP16


def autocast_fp16(fp32_onnx: str | os.PathLike, out_path: str | os.PathLike, *,
                  reference_inputs: np.ndarray | None = None, log_path: Path | None = None):
    """ModelOpt AutoCast to FP16 with float32 graph inputs and outputs kept (TensorRT 11 builds it strongly
    typed). Nodes whose activations exceed FP16's safe range on ``reference_inputs`` (real images when
    given, AutoCast's random data otherwise) stay FP32. Writes ``out_path`` atomically; returns the model."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    with _workdir(out_path) as work:
        kwargs = {}
        if reference_inputs is not None:
            np.savez(work / "reference.npz", input=np.ascontiguousarray(reference_inputs, np.float32))
            kwargs["calibration_data"] = str(work / "reference.npz")
        try:
            with captured_output(log_path):
                model = convert_to_mixed_precision(
                    onnx_path=str(_private_copy(fp32_onnx, work)), low_precision_type="fp16", keep_io_types=True,
                    providers=["cpu"], **kwargs,
                )
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise _modelopt_failed("convert the model to FP16", e, log_path) from e
        tmp = work / out_path.name
        onnx.save(model, str(tmp))
        os.replace(tmp, out_path)
    return model
