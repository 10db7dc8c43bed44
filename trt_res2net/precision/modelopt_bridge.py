"""Everything that calls NVIDIA TensorRT Model Optimizer (ModelOpt) or ONNX Runtime's calibrators.

ModelOpt (``nvidia-modelopt``, with torch) is optional and heavy: nothing here imports it at module level,
and :func:`require_modelopt` turns its absence into one install command (exit status 3).

INT8, so that a cache always reproduces the model:

1. :func:`calibrate_and_quantize` runs the images through the FP32 ONNX once, in one ModelOpt call that returns
   both the Q/DQ model and the activation scales as a :class:`~trt_res2net.precision.calib_cache.CalibrationCache`
   (the FP32 scales, captured before ModelOpt converts the model to its high precision). ``entropy`` and ``max``
   are ModelOpt's own calibration (ONNX Runtime's histogram/min-max calibrators, patched by ModelOpt to collect
   batch by batch), entropy's data streamed through ``ort_calibration`` (the same statistics in a fraction of the
   memory); ``percentile`` is ONNX Runtime's percentile calibrator, which ModelOpt's ``quantize`` does not offer,
   on the tensors ModelOpt quantizes (:func:`calibrate`, then step 2).
2. :func:`quantize_from_cache` asks ModelOpt for the Q/DQ model with ``calibration_cache_path`` when a cache is
   reused, and checks that every activation scale in it came from the cache. ModelOpt still calibrates before it
   replaces the scales with the cache's: it is given min-max on one image, the cheapest run that places the same
   Q/DQ nodes (``tests/test_quantize_modelopt.py`` checks that calibrating directly and building from the cache
   give the same model).

ModelOpt runs on ONNX Runtime's CUDA provider where this ONNX Runtime has one (``ort_calibration.
available_providers``), else on the CPU; its log goes to the project's log (warnings collapsed, everything with
``--verbose``), the rest of its chatter to a buffer kept in ``<output>.modelopt.log`` when it fails.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from ..core import log
from ..core.errors import MissingDependency, UserError
from ..core.files import make_temp_dir
from .calib_cache import MODELOPT_VERSION_TAG, CalibrationCache, write_cache

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


def tool_versions(providers: list[str] | None = None) -> dict[str, str]:
    """What made a calibration: ModelOpt's and ONNX Runtime's versions, and ONNX Runtime's provider when it was not
    the CPU (a GPU's arithmetic differs: its caches are keyed apart)."""
    import onnxruntime

    tools = {"modelopt": modelopt_version() or "absent", "onnxruntime": onnxruntime.__version__}
    if providers and providers[0] != "CPUExecutionProvider":
        tools["onnxruntime_provider"] = providers[0]
    return tools


_LEVEL = re.compile(r" - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - (.*)$")
# ModelOpt messages that say nothing about this run (logged at ERROR while the run goes on): to --verbose only.
_HARMLESS = ("Failed to get GPU count",)


class _ModelOptSink(io.TextIOBase):
    """Where ModelOpt's and ONNX Runtime's Python output goes while they run: every line kept (the failure log); the
    log lines ModelOpt's handlers format (``... - WARNING - message``) passed to the project's log through
    ``collapsed`` (warnings once each with their count, errors at once); with ``--verbose`` everything to stderr."""

    def __init__(self, collapsed: log.Collapsed):
        self.buffer_ = io.StringIO()
        self.collapsed = collapsed
        self._partial = ""
        self.stderr = sys.stderr  # the real one, before the redirection

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        if log.verbose():
            self.stderr.write(text)
            return len(text)
        self._partial += text
        *lines, self._partial = re.split(r"[\r\n]", self._partial)
        for line in lines:
            m = _LEVEL.search(line)
            if m and m.group(1) in ("WARNING", "ERROR", "CRITICAL") and not m.group(2).startswith(_HARMLESS):
                # ModelOpt's real failures raise; what it logs at ERROR while going on is a warning here
                self.collapsed.emit("warning", m.group(2))
        return len(text)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return self.buffer_.getvalue()


class _LogStream(io.TextIOBase):
    """Where ModelOpt's logging handlers point between our calls: its warnings and errors into the project's log
    (stderr), the rest at the debug level. Never closed (a handler may outlive any stream we were given)."""

    def __init__(self):
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = re.split(r"[\r\n]", self._partial)
        for line in lines:
            m = _LEVEL.search(line)
            if m and m.group(1) in ("WARNING", "ERROR", "CRITICAL") and not m.group(2).startswith(_HARMLESS):
                log.warn(f"ModelOpt: {m.group(2)}")
            elif line.strip():
                log.debug(f"ModelOpt: {line}")
        return len(text)


_BETWEEN_CALLS = _LogStream()


def _point(handler: logging.StreamHandler, stream) -> None:
    """``handler.setStream`` without flushing the old stream (which may be closed by now)."""
    handler.acquire()
    try:
        handler.stream = stream
    finally:
        handler.release()


def _modelopt_stream_handlers() -> list[logging.StreamHandler]:
    handlers = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if name.startswith("modelopt") and isinstance(logger, logging.Logger):
            handlers += [h for h in logger.handlers
                         if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    return handlers


def _cleanup_no_consumer_nodes(self) -> None:
    """ModelOpt AutoCast's ``PrecisionConverter._cleanup_no_consumer_nodes`` (0.47) in linear time: the nodes none of
    whose outputs is a network output or consumed by a node, removed in graph order — the same nodes as ModelOpt's,
    which asks ``get_consumer_nodes`` (a scan of every node) for every output of every node, quadratic in the
    model's size (docs/build_safety.md measures it)."""
    network_outputs = {o.name for o in self.model.graph.output}
    consumed = {name for node in self.model.graph.node for name in node.input}
    doomed = [node for node in self.model.graph.node
              if not any(out in network_outputs or out in consumed for out in node.output)]
    for node in doomed:
        self.model.graph.node.remove(node)


LIGHT_SHAPE_INFERENCE_MIN_ELEMENTS = 4096  # initializers at least this large are shapes only to shape inference


def _light_copy(model, min_elements: int):
    """A copy of ``model`` whose large float initializers have their names, types and shapes but no data (their data
    is never read or copied)."""
    import onnx

    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                   onnx.TensorProto.BFLOAT16)

    def copy_fields(src, dst, skip: str) -> None:
        for desc, value in src.ListFields():
            if desc.name == skip:
                continue
            if desc.is_repeated:
                getattr(dst, desc.name).extend(value)
            elif desc.type == desc.TYPE_MESSAGE:
                getattr(dst, desc.name).CopyFrom(value)
            else:
                setattr(dst, desc.name, value)

    light = onnx.ModelProto()
    copy_fields(model, light, "graph")
    copy_fields(model.graph, light.graph, "initializer")
    stubs = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        if t.data_type in float_types and n >= min_elements:
            stub = light.graph.initializer.add()
            for desc, value in t.ListFields():
                if desc.number not in (4, 5, 6, 7, 9, 10, 11):  # the data fields (model/contract.py)
                    if desc.is_repeated:
                        getattr(stub, desc.name).extend(value)
                    elif desc.type == desc.TYPE_MESSAGE:
                        getattr(stub, desc.name).CopyFrom(value)
                    else:
                        setattr(stub, desc.name, value)
            stubs += 1
        else:
            light.graph.initializer.append(t)
    return light, stubs


def light_infer_shapes(original):
    """``onnx.shape_inference.infer_shapes`` for a ModelProto, without sending the weights through it: ONNX's shape
    inference runs on a copy whose large float initializers carry no data (it needs only their types and shapes;
    small tensors, which data propagation may read, keep theirs), and the result is the model with the inferred
    ``value_info``, inputs and outputs — the same bytes ONNX returns (tests/test_quantize.py). ModelOpt runs shape
    inference about ten times on a quantization; on res2net200 each pass otherwise serializes and parses 300 MB."""
    import onnx

    def infer(model, check_type=False, strict_mode=False, data_prop=False):
        if not isinstance(model, onnx.ModelProto):
            return original(model, check_type, strict_mode, data_prop)
        light, stubs = _light_copy(model, LIGHT_SHAPE_INFERENCE_MIN_ELEMENTS)
        if not stubs:
            return original(model, check_type, strict_mode, data_prop)
        inferred = original(light, check_type, strict_mode, data_prop)
        del light
        result = onnx.ModelProto()
        result.CopyFrom(model)
        g, ig = result.graph, inferred.graph
        for field in ("value_info", "input", "output"):
            getattr(g, field).clear()
            getattr(g, field).extend(getattr(ig, field))
        return result

    return infer


def serialized_size_bound(model) -> int:
    """An upper bound of ``model.ByteSize()`` read from the fields' lengths, without serializing anything large: the
    initializers' data, every node, input, output and value_info's own size, 16 bytes per field for its tag and
    length, and a MiB for the small fields. (upb's ``ByteSize`` serializes the model to measure it.)"""
    g = model.graph
    size = 1 << 20
    size += len(model.doc_string) + len(g.doc_string) + len(g.name)
    size += sum(len(p.key) + len(p.value) + 16 for p in model.metadata_props)
    for t in g.initializer:
        size += (len(t.raw_data) + 8 * (len(t.float_data) + len(t.int32_data) + len(t.int64_data)
                                        + len(t.double_data) + len(t.uint64_data))
                 + sum(len(x) + 16 for x in t.string_data) + sum(e.ByteSize() + 16 for e in t.external_data)
                 + len(t.name) + len(t.doc_string) + 11 * len(t.dims) + 64)
    for field in (g.node, g.input, g.output, g.value_info, g.sparse_initializer, g.quantization_annotation,
                  model.opset_import, model.functions, model.training_info):
        size += sum(m.ByteSize() + 16 for m in field)
    return size


def _too_large_for_protobuf(original):
    """ModelOpt's ``is_model_too_large_for_protobuf`` (0.47), which measures the model with ``ByteSize`` — a 300 MB
    serialization for res2net200, about ten times per quantization —, answered without it when
    :func:`serialized_size_bound` is below half the limit (the answer is then certainly False); ModelOpt's own
    measure otherwise."""
    import onnx

    limit = onnx.checker.MAXIMUM_PROTOBUF

    def check(model) -> bool:
        if isinstance(model, onnx.ModelProto) and model.HasField("graph") and model.graph.node \
                and serialized_size_bound(model) < limit // 2:
            return False
        return original(model)

    return check


@contextlib.contextmanager
def _modelopt_fast_paths():
    """ModelOpt with :func:`_cleanup_no_consumer_nodes` in place of its quadratic one, shape inference through
    :func:`light_infer_shapes` and its model-size check through :func:`_too_large_for_protobuf`, for one call (each
    gives ModelOpt what its own would)."""
    import modelopt.onnx.utils as modelopt_utils
    import onnx.shape_inference
    from modelopt.onnx.autocast.precisionconverter import PrecisionConverter

    original = PrecisionConverter._cleanup_no_consumer_nodes
    original_infer = onnx.shape_inference.infer_shapes
    original_size_check = modelopt_utils.is_model_too_large_for_protobuf
    PrecisionConverter._cleanup_no_consumer_nodes = _cleanup_no_consumer_nodes
    onnx.shape_inference.infer_shapes = light_infer_shapes(original_infer)
    modelopt_utils.is_model_too_large_for_protobuf = _too_large_for_protobuf(original_size_check)
    try:
        yield
    finally:
        PrecisionConverter._cleanup_no_consumer_nodes = original
        onnx.shape_inference.infer_shapes = original_infer
        modelopt_utils.is_model_too_large_for_protobuf = original_size_check


@contextlib.contextmanager
def captured_output(log_path: Path | None = None):
    """ModelOpt's and ONNX Runtime's chatter (per-batch progress bars, INFO lines, C++ warnings) kept off stdout: its
    warnings and errors through the project's log (collapsed), the rest in a buffer written to ``log_path`` on
    failure so the error can point to it; with ``--verbose`` all of it on stderr."""
    import onnxruntime

    collapsed = log.Collapsed("ModelOpt")
    sink = _ModelOptSink(collapsed)
    old = onnxruntime.get_default_logger_severity() if hasattr(onnxruntime, "get_default_logger_severity") else 2
    onnxruntime.set_default_logger_severity(0 if log.verbose() else 3)
    for h in _modelopt_stream_handlers():  # bound to a stream at import or configure: ours while ModelOpt runs
        _point(h, sink)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), _modelopt_fast_paths():
            yield sink
    except BaseException as e:
        collapsed.muted = isinstance(e, KeyboardInterrupt)
        if log_path is not None and not isinstance(e, KeyboardInterrupt):
            with contextlib.suppress(OSError):
                log_path.write_text(sink.getvalue())
        raise
    finally:
        for h in _modelopt_stream_handlers():  # and the project's log between calls
            _point(h, _BETWEEN_CALLS)
        onnxruntime.set_default_logger_severity(old)
        collapsed.flush()


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


def _exclusion_patterns(names: Iterable[str]) -> list[str]:
    # ModelOpt matches with re.match: escape, and anchor the end, so 'a.conv' doesn't also take 'a.conv_2'.
    return [re.escape(n) + "$" for n in names]


def calibration_providers() -> list[str]:
    """ONNX Runtime's providers for calibration: CUDA first where present (ort_calibration.available_providers)."""
    from .ort_calibration import available_providers

    return available_providers()


def _calibration_eps(providers: list[str]) -> list[str]:
    return ["cuda:0", "cpu"] if providers and providers[0] == "CUDAExecutionProvider" else ["cpu"]


def _quantize(fp32_onnx: Path, out_path: Path, *, reader=None, method: str = "entropy",
              cache_path: Path | None = None, high_precision: str = "fp16",
              nodes_to_exclude: Iterable[str] = (), log_path: Path | None = None,
              providers: list[str] | None = None) -> dict:
    """One ModelOpt ``quantize`` call (INT8, TensorRT's placement) writing ``out_path``; returns what was captured on
    the way (``activation_scales``: the FP32 scales before ModelOpt converts the model to ``high_precision``).
    Entropy calibration leaves out the tensors no Q/DQ node uses (``ort_calibration.unused_outputs``); should one of
    them have a scale in the result after all, the call is made again with every tensor calibrated."""
    captured = _quantize_once(fp32_onnx, out_path, reader=reader, method=method, cache_path=cache_path,
                              high_precision=high_precision, nodes_to_exclude=nodes_to_exclude, log_path=log_path,
                              providers=providers, skip_unused=True)
    used = set(captured.get("activation_scales") or ()) & captured.get("skipped", set())
    if used:
        log.debug(f"ModelOpt quantized {sorted(used)[0]}, left out of calibration as unused: calibrating everything")
        if reader is not None:
            reader.rewind()
        captured = _quantize_once(fp32_onnx, out_path, reader=reader, method=method, cache_path=cache_path,
                                  high_precision=high_precision, nodes_to_exclude=nodes_to_exclude,
                                  log_path=log_path, providers=providers, skip_unused=False)
    return captured


def _quantize_once(fp32_onnx: Path, out_path: Path, *, reader=None, method: str = "entropy",
                   cache_path: Path | None = None, high_precision: str = "fp16",
                   nodes_to_exclude: Iterable[str] = (), log_path: Path | None = None,
                   providers: list[str] | None = None, skip_unused: bool = True) -> dict:
    from modelopt.onnx.quantization import quantize

    from .ort_calibration import streaming_calibration

    providers = providers or calibration_providers()
    kwargs = dict(
        quantize_mode="int8",
        calibration_method=method,
        calibration_shapes=PLACEMENT_SHAPE,
        calibration_eps=_calibration_eps(providers),
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
        with captured_output(log_path), streaming_calibration(providers, skip_unused=skip_unused) as captured:
            quantize(str(source), **kwargs)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise _modelopt_failed("quantize the model", e, log_path) from e
    finally:
        gc.collect()  # ModelOpt's model copies (hundreds of MB each for res2net200) go before the next step
    return captured


QDQ_OPSET = 19  # what ModelOpt writes INT8 Q/DQ in (and converts its input to first)


def _private_copy(fp32_onnx: Path, work: Path) -> Path:
    """ModelOpt rewrites the model it is given in place (``onnx.shape_inference.infer_shapes_path`` with no
    output path), which would change the FP32 ONNX's bytes and hash under the caller: give it a copy — at opset 19
    already when ONNX's version converter would change nothing but the opset number (:func:`opset_relabel_exact`),
    which spares ModelOpt converting and saving the whole model once more."""
    copy = work / "source.onnx"
    if copy.exists():
        return copy
    import onnx

    model = onnx.load(str(fp32_onnx), load_external_data=False)
    if _default_opset(model) < QDQ_OPSET and opset_relabel_exact(model, QDQ_OPSET) and not _has_external_data(model):
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = QDQ_OPSET
        onnx.save(model, str(copy))
    else:
        shutil.copyfile(fp32_onnx, copy)
    del model
    return copy


def _default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _has_external_data(model) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def opset_relabel_exact(model, target: int) -> bool:
    """Whether ``onnx.version_converter.convert_version(model, target)`` changes nothing but the opset number: run
    on the model's structure alone (weights left out: the adapters of the operators here do not read them) and
    compared node by node. False on any doubt (then ONNX's version converter runs)."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    g = light.graph
    g.name = model.graph.name
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    for t in model.graph.initializer:
        stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
        g.initializer.append(stub)
    try:
        converted = onnx.version_converter.convert_version(light, target)
    except Exception:
        return False
    if len(converted.graph.node) != len(light.graph.node):
        return False
    for a, b in zip(light.graph.node, converted.graph.node, strict=True):
        a2 = onnx.NodeProto()
        a2.CopyFrom(a)
        if a2.SerializeToString(deterministic=True) != b.SerializeToString(deterministic=True):
            return False
    return ([i.SerializeToString(deterministic=True) for i in converted.graph.input]
            == [i.SerializeToString(deterministic=True) for i in light.graph.input]
            and [o.SerializeToString(deterministic=True) for o in converted.graph.output]
            == [o.SerializeToString(deterministic=True) for o in light.graph.output]
            and _default_opset(converted) == target)


@contextlib.contextmanager
def _workdir(near: Path):
    """A scratch folder beside ``near`` (same filesystem: the result is moved, not copied), named as ``near``'s
    temporary (``core.files``: a later run removes it if this process is killed)."""
    d = make_temp_dir(near)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def calibrate(fp32_onnx: str | os.PathLike, reader, method: str = "entropy", percentile: float = 99.999,
              log_path: Path | None = None, work_near: Path | None = None) -> CalibrationCache:
    """Activation scales of the FP32 model over the reader's images, as a ModelOpt-tagged cache (scratch files
    beside ``work_near``, default the FP32 ONNX)."""
    fp32_onnx = Path(fp32_onnx)
    algorithm = f"percentile{percentile:g}" if method == "percentile" else method
    with _workdir(Path(work_near) if work_near else fp32_onnx) as work:
        if method == "percentile":
            scales = _percentile_scales(fp32_onnx, reader, percentile, work, log_path)
        else:
            out = work / "calibrated.onnx"
            scales = _quantize(fp32_onnx, out, reader=reader, method=method, high_precision="fp32",
                               log_path=log_path)["activation_scales"]
    if not scales:
        raise UserError(f"calibration of {fp32_onnx} produced no activation ranges (nothing to quantize?)")
    return CalibrationCache(MODELOPT_VERSION_TAG, algorithm, scales)


def calibrate_and_quantize(fp32_onnx: str | os.PathLike, reader, out_path: str | os.PathLike, *,
                           method: str = "entropy", high_precision: str = "fp16",
                           log_path: Path | None = None) -> tuple[CalibrationCache, object]:
    """One ModelOpt call: calibrate on the reader's images (``entropy`` or ``max``) and make the Q/DQ model with
    ``high_precision`` elsewhere, written to ``out_path``'s scratch folder and returned with the cache of its FP32
    activation scales: (cache, ModelProto). The model is what :func:`quantize_from_cache` makes from that cache
    (checked here: every activation scale of the model is the cache's, rounded to the model's precision)."""
    import onnx

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    if method not in ("entropy", "max"):
        raise ValueError(f"calibrate_and_quantize: {method!r} is not ModelOpt's (use calibrate, then "
                         "quantize_from_cache)")
    with _workdir(out_path) as work:
        tmp_out = work / out_path.name
        captured = _quantize(fp32_onnx, tmp_out, reader=reader, method=method, high_precision=high_precision,
                             log_path=log_path)
        scales = captured.get("activation_scales") or {}
        if not scales:
            raise UserError(f"calibration of {fp32_onnx} produced no activation ranges (nothing to quantize?)")
        cache = CalibrationCache(MODELOPT_VERSION_TAG, method, scales)
        model = onnx.load(str(tmp_out), load_external_data=False)
        _check_scales_from(model, scales, high_precision)
        os.replace(tmp_out, out_path)
    return cache, model


def _check_scales_from(model, scales: dict[str, float], high_precision: str) -> None:
    """Every activation scale of ``model`` is ``scales``' (rounded to FP16 where the model keeps them in FP16)."""
    got = activation_scales(model)
    stray = [n for n in got if n not in scales]
    if stray:
        raise UserError(f"the Q/DQ model quantizes {len(stray)} tensors without a calibrated scale (e.g. {stray[0]})")
    cast = np.float16 if high_precision == "fp16" else np.float32
    off = [n for n, v in got.items() if np.float32(v) != np.float32(cast(np.float32(usable_scale(scales[n]))))]
    if off:
        raise UserError(f"the Q/DQ model's scale of {off[0]} is not its calibrated one (ModelOpt changed?)")


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
    scales = {name: usable_scale(value) for name, value in cache.scales.items()}
    clean = CalibrationCache(cache.version_tag, cache.algorithm, scales)
    # ModelOpt calibrates even with a cache (its random data by default: a full entropy calibration thrown away);
    # min-max over one image places the same Q/DQ nodes at the cost of one forward pass.
    probe = make_reader(lambda: iter([_probe_image()]))
    with _workdir(out_path) as work:
        cache_file = write_cache(work / "import.cache", clean)
        tmp_out = work / out_path.name
        _quantize(fp32_onnx, tmp_out, reader=probe, method="max", cache_path=cache_file,
                  high_precision=high_precision, nodes_to_exclude=nodes_to_exclude, log_path=log_path)
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


def usable_scale(value: float) -> float:
    """A scale a QuantizeLinear can divide by: zero or non-finite ones (TensorRT writes ``0`` for an all-zero
    tensor) raised to the smallest normal float32."""
    value = float(np.float32(value))
    return value if np.isfinite(value) and value > 0 else float(np.finfo(np.float32).tiny)


def _probe_image() -> np.ndarray:
    """A fixed, preprocessed-looking input (1×3×224×224) for runs whose ranges are replaced afterwards."""
    return np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)


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
