"""ModelOpt's INT8 calibration, fed by a streaming forward pass: the same statistics, in a fraction of the memory.

ModelOpt calibrates through ONNX Runtime: it makes every tensor to calibrate an output of the model ("augmented"),
runs each batch through it, and folds the outputs into per-tensor histograms (entropy) — holding every output of a
batch at once: for res2net200_vd_26w_4s and batches of 8, 2.7 GB of activations, 7.8 GB at peak with the model
copies. :func:`streaming_calibration` hooks the two places where ModelOpt (0.47) runs data through ONNX Runtime's
``HistogramCalibrater`` — the session it creates and the loop that collects — and replaces them with:

- the augmented model cut into segments in graph order (:func:`segment_model`), each an ONNX Runtime session of its
  own, run one after another on each batch, with the optimisations ModelOpt uses (none: every operator's own kernel,
  so each tensor has the bits ModelOpt's session gives it), on ONNX Runtime's CUDA provider when ModelOpt was asked
  to calibrate there;
- each tensor folded into its histogram as soon as its segment produced it (a tensor grouped with others for one
  scale — the inputs of a Concat — once its whole group is there), then freed;
- the histogram of a batch computed by :func:`exact_histogram` — numpy's own arithmetic, element by element the same
  bins, in chunks on two threads.

Everything else — which tensors, the merge of batches, the entropy thresholds, the scales, the Q/DQ model — stays
ModelOpt's and ONNX Runtime's. ``tests/test_quantize_modelopt.py`` checks that the scales are bit-for-bit those of
ModelOpt's own calibration. The hooks are installed for the duration of one ``with`` block, and only after ModelOpt
has installed its own patches (``ort_utils.patch_ort_modules``, called at every quantization); everything is put
back on the way out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .modelopt.qdq import activation_scales, usable_scale

# Activation elements (per image) that one segment outputs at most, before the next one starts: about 16 MB per
# image in float32, 128 MB for a batch of 8.
SEGMENT_BUDGET_ELEMENTS = 4_000_000
HISTOGRAM_CHUNK = 1 << 18  # elements per histogram chunk (cache-sized); chunks run on up to HISTOGRAM_THREADS
HISTOGRAM_THREADS = 2


# --------------------------------------------------------------------------------------------------------
# Histograms: numpy's bins, faster


def _edges(data: np.ndarray, bins: int, lo, hi) -> np.ndarray:
    """numpy.histogram's bin edges for this range and data type (it computes them without looking at the data)."""
    return np.histogram(data[:0], bins, range=(lo, hi))[1]


def _counts_uniform(chunk: np.ndarray, bins: int, lo, hi, edges: np.ndarray) -> np.ndarray:
    """numpy.histogram's counts (uniform bins, every value within [lo, hi]), with its arithmetic: the same operands
    in the same types (a Python float edge is weak, a numpy one is not), then its ±1 corrections against the edges."""
    chunk = chunk.astype(edges.dtype, copy=False)
    denom = np.subtract(hi, lo, dtype=np.result_type(hi, lo))
    f = np.subtract(chunk, lo, dtype=np.result_type(chunk, lo))
    f = f / denom
    f = f * bins
    idx = f.astype(np.intp)
    del f
    idx[idx == bins] -= 1
    idx[chunk < edges[idx]] -= 1
    up = chunk >= edges[idx + 1]
    up &= idx != bins - 1
    idx[up] += 1
    return np.bincount(idx, minlength=bins)


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(HISTOGRAM_THREADS, thread_name_prefix="histogram")
    return _POOL


def min_max(data: np.ndarray) -> tuple:
    """``(np.min(data), np.max(data))`` of a 1-D array, the same values (NaN included), in one part per histogram
    thread."""
    if data.size < 2 * HISTOGRAM_CHUNK:
        return np.min(data), np.max(data)
    parts = list(_pool().map(lambda part: (np.min(part), np.max(part)), np.array_split(data, HISTOGRAM_THREADS)))
    return np.min(np.array([lo for lo, _ in parts])), np.max(np.array([hi for _, hi in parts]))


def exact_histogram(data: np.ndarray, bins: int, range: tuple,  # noqa: A002
                    data_min_max: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``numpy.histogram(data, bins, range=range)`` for a 1-D float array, bit for bit: the same edges and, for every
    element, the same bin. Faster when the data lie within the range (no masking; chunks on two threads); numpy
    itself otherwise (values outside it, NaN, an empty range). ``data_min_max``: :func:`min_max` of ``data`` when
    the caller has it already (not read again)."""
    lo, hi = range
    edges = _edges(data, bins, lo, hi)
    if data.size == 0 or not lo < hi:
        return np.histogram(data, bins, range=(lo, hi))
    dmin, dmax = data_min_max if data_min_max is not None else min_max(data)
    if not (np.isfinite(dmin) and np.isfinite(dmax) and dmin >= lo and dmax <= hi):
        return np.histogram(data, bins, range=(lo, hi))
    chunks = [data[i:i + HISTOGRAM_CHUNK] for i in builtins_range(0, data.size, HISTOGRAM_CHUNK)]
    if len(chunks) == 1:
        counts = _counts_uniform(chunks[0], bins, lo, hi, edges)
    else:
        counts = sum(_pool().map(lambda c: _counts_uniform(c, bins, lo, hi, edges), chunks))
    return counts.astype(np.intp, copy=False), edges


builtins_range = range  # the builtin, shadowed by exact_histogram's numpy-style keyword


def merge_histogram(old_histogram, data_arr, new_min, new_max, new_threshold, data_min_max=None):
    """ONNX Runtime's ``HistogramCollector.merge_histogram`` (1.24), with :func:`exact_histogram` for numpy's."""
    (old_hist, old_hist_edges, old_min, old_max, old_threshold) = old_histogram
    known = data_min_max
    if new_threshold <= old_threshold:
        new_hist, _ = exact_histogram(data_arr, len(old_hist), range=(-old_threshold, old_threshold),
                                      data_min_max=known)
        return (new_hist + old_hist, old_hist_edges, min(old_min, new_min), max(old_max, new_max), old_threshold)
    if old_threshold == 0:
        hist, hist_edges = exact_histogram(data_arr, len(old_hist), range=(-new_threshold, new_threshold),
                                           data_min_max=known)
        hist += old_hist
    else:
        old_num_bins = len(old_hist)
        old_stride = 2 * old_threshold / old_num_bins
        half_increased_bins = int((new_threshold - old_threshold) // old_stride + 1)
        new_num_bins = old_num_bins + 2 * half_increased_bins
        new_threshold = half_increased_bins * old_stride + old_threshold
        hist, hist_edges = exact_histogram(data_arr, new_num_bins, range=(-new_threshold, new_threshold),
                                           data_min_max=known)
        hist[half_increased_bins: new_num_bins - half_increased_bins] += old_hist
    return (hist, hist_edges, min(old_min, new_min), max(old_max, new_max), new_threshold)


def collect_value(collector, name_to_arr: dict) -> None:
    """ModelOpt's ``HistogramCollector.collect_value`` (0.47, ``ort_patching._collect_value``) for the entropy
    method, with the histograms of :func:`exact_histogram`: per tensor, its arrays of this batch flattened in
    order, their min and max (non-finite ones replaced as ModelOpt does), the symmetric range ±max(|min|, |max|),
    the first batch's histogram or the merge into the ones before."""
    for tensor, arrays in name_to_arr.items():
        if len(arrays) == 1:
            data = np.asarray(arrays[0]).ravel()
        else:
            data = np.concatenate([np.asarray(a).ravel() for a in arrays])
        known = None
        if data.size > 0:
            min_value, max_value = known = min_max(data)  # read once, for the range and for the histogram
        else:
            min_value = np.array(0, dtype=data.dtype)
            max_value = np.array(0, dtype=data.dtype)
        min_value = np.finfo(np.float32).tiny if np.isinf(min_value) or np.isnan(min_value) else min_value
        max_value = np.finfo(np.float32).max if np.isinf(max_value) or np.isnan(max_value) else max_value
        threshold = max(abs(min_value), abs(max_value))
        if tensor in collector.histogram_dict:
            collector.histogram_dict[tensor] = merge_histogram(collector.histogram_dict[tensor], data, min_value,
                                                               max_value, threshold, data_min_max=known)
        else:
            range_max = float(threshold)
            hist, hist_edges = exact_histogram(data, collector.num_bins, range=(-range_max, range_max),
                                               data_min_max=known)
            collector.histogram_dict[tensor] = (hist, hist_edges, min_value, max_value, threshold)


# --------------------------------------------------------------------------------------------------------
# The segmented forward


def _per_image_elements(value_info) -> int:
    try:
        dims = list(value_info.type.tensor_type.shape.dim)[1:]
    except AttributeError:
        return 0
    n = 1
    for d in dims:
        n *= d.dim_value if d.dim_value > 0 else 1
    return n


class Segment:
    """Consecutive nodes of the model as one ONNX Runtime session: ``inputs`` it reads, ``outputs`` it gives (the
    tensors to calibrate it makes, and what later segments read), ``done`` what no later segment reads."""

    def __init__(self, session, inputs: list[str], outputs: list[str], done: list[str]):
        self.session, self.inputs, self.outputs, self.done = session, inputs, outputs, done

    def run(self, live: dict) -> list:
        return self.session.run(self.outputs, {name: live[name] for name in self.inputs})


def session_options():
    """What ModelOpt's calibration session sets (``ort_patching._create_inference_session_with_ep_config``): no
    graph optimisations, no memory arena."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.enable_cpu_mem_arena = False
    so.log_severity_level = 3
    return so


def segment_model(model, wanted: set[str], providers: list, budget: int = SEGMENT_BUDGET_ELEMENTS) -> list[Segment]:
    """Cut ``model`` (topologically sorted, as ONNX requires) into sessions whose outputs among ``wanted`` hold at
    most about ``budget`` elements per image each."""
    import onnxruntime as ort
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    infos = {v.name: v for v in [*g.value_info, *g.input, *g.output]}
    graph_outputs = {o.name for o in g.output}
    nodes = list(g.node)
    last_use: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name:
                last_use[name] = i
    chunks, current, volume = [], [], 0
    for i, node in enumerate(nodes):
        current.append(i)
        volume += sum(_per_image_elements(infos[o]) for o in node.output if o in wanted and o in infos)
        if volume >= budget:
            chunks.append(current)
            current, volume = [], 0
    if current:
        chunks.append(current)

    def info(name: str):
        v = infos.get(name)
        if v is not None and v.type.HasField("tensor_type"):
            return helper.make_tensor_value_info(name, v.type.tensor_type.elem_type, None)
        return helper.make_empty_tensor_value_info(name)

    segments = []
    for k, chunk in enumerate(chunks):
        last = chunk[-1]
        made = {o for i in chunk for o in nodes[i].output if o}
        inputs: list[str] = []
        for i in chunk:
            for name in nodes[i].input:
                if name and name not in made and name not in inits and name not in inputs:
                    inputs.append(name)
        outputs = [o for i in chunk for o in nodes[i].output
                   if o and (o in wanted or o in graph_outputs or last_use.get(o, -1) > last)]
        used = sorted({name for i in chunk for name in nodes[i].input if name in inits})
        sub = helper.make_model(
            helper.make_graph([nodes[i] for i in chunk], f"{g.name}_segment{k}", [info(n) for n in inputs],
                              [info(n) for n in outputs], [inits[n] for n in used]),
            opset_imports=model.opset_import, ir_version=model.ir_version)
        for fn in model.functions:
            sub.functions.append(fn)
        session = ort.InferenceSession(sub.SerializeToString(), session_options(), providers=providers)
        del sub
        done = [n for n in inputs if last_use.get(n, -1) <= last and n not in graph_outputs]
        segments.append(Segment(session, inputs, outputs, done))
    return segments


PLACEHOLDER_RANGE = (-1.0, 1.0)  # what a tensor left out (unused_outputs) gets in place of its range


def unused_outputs(model, wanted: set[str], quantized_nodes: set[str], groups: dict, original_outputs: set[str]) \
        -> set[str]:
    """Tensors ModelOpt calibrates that no Q/DQ node will use: outputs of quantized nodes that no quantized node
    reads, that are no model output, in no group sharing a scale, and not made by a Clip or Relu (ONNX Runtime may
    give those ranges to their inputs). ModelOpt calibrates every input and output of the nodes it quantizes; a
    convolution's output that only a ReLU reads gets no Q/DQ of its own, yet its histogram is as costly as any.
    Whether they really are unused is checked on the result (:func:`streaming_calibration`'s ``"skipped"``)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    read_by_quantized = {i for n in model.graph.node if n.name in quantized_nodes for i in n.input}
    grouped = set(groups) | {m for members in groups.values() for m in members}
    return {t for t in wanted
            if t in producer and producer[t].name in quantized_nodes and producer[t].op_type not in ("Clip", "Relu")
            and t not in read_by_quantized and t not in grouped and t not in original_outputs}


def _histogram_collector(calibrator):
    """The calibrator's HistogramCollector, made as ONNX Runtime makes it when it has none yet."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    if not calibrator.collector:
        calibrator.collector = HistogramCollector(
            method=calibrator.method, symmetric=calibrator.symmetric, num_bins=calibrator.num_bins,
            num_quantized_bins=calibrator.num_quantized_bins, percentile=calibrator.percentile,
            scenario=calibrator.scenario)
    return calibrator.collector


class _BatchFold:
    """One batch's tensors folded into the histograms: a tensor once it and the others of its group are there
    (ModelOpt: ``merged_dict[cur] = [cur, *the others of its group]``), each array freed once every tensor that
    needs it is folded."""

    def __init__(self, collector, needs: dict[str, list[str]], needed_by: dict[str, set[str]]):
        self.collector, self.needs, self.needed_by = collector, needs, needed_by
        self.held: dict[str, np.ndarray] = {}
        self.folded: set[str] = set()

    def offer(self, name: str, array) -> None:
        self.held[name] = array
        ready = {}
        for t in self.needed_by.get(name, ()):
            if t not in self.folded and all(d in self.held for d in self.needs[t]):
                ready[t] = [self.held[d] for d in self.needs[t]]
                self.folded.add(t)
        if ready:
            collect_value(self.collector, ready)
        for d in [d for d in self.held if all(t in self.folded for t in self.needed_by.get(d, ()))]:
            del self.held[d]


def _group_needs(wanted: set[str], groups: dict, outputs: set[str]) -> tuple[dict, dict]:
    """For each tensor to fold, the tensors folded with it (itself first); and for each tensor, who needs it."""
    needs = {t: [t, *[o for o in groups.get(t, ()) if o != t and o in outputs]] for t in wanted}
    needed_by: dict[str, set[str]] = {}
    for t, deps in needs.items():
        for d in deps:
            needed_by.setdefault(d, set()).add(t)
    return needs, needed_by


def _run_batch(segments: list[Segment], inputs: dict, graph_inputs: list[str], fold: _BatchFold) -> None:
    """One batch through the segments, each tensor offered to ``fold`` as it is made and dropped when no later
    segment reads it."""
    read_by_segments = {name for segment in segments for name in segment.inputs}
    live = dict(inputs)
    for name in graph_inputs:
        if name in fold.needed_by and name in live:
            fold.offer(name, np.array(live[name]))  # a copy, as ONNX Runtime's collector makes (onnxruntime#21922)
    for segment in segments:
        for name, array in zip(segment.outputs, segment.run(live), strict=True):
            live[name] = array
        for name in segment.outputs:
            if name in fold.needed_by:
                fold.offer(name, live[name])
        for name in segment.done:
            live.pop(name, None)
        for name in segment.outputs:  # what no segment reads is only held for its group, if at all
            if name not in read_by_segments:
                live.pop(name, None)
    live.clear()
    fold.held.clear()


def collect_streaming(calibrator, data_reader, providers: list, budget: int = SEGMENT_BUDGET_ELEMENTS,
                      skip_unused: bool = True) -> None:
    """``HistogramCalibrater.collect_data`` as ModelOpt patches it (batch by batch, tensors grouped for one scale
    folded together), with the forward pass in segments and each tensor folded in and freed as soon as it (and
    its group) exists; with ``skip_unused``, :func:`unused_outputs` are neither output nor folded in (their ranges
    are placeholders, ``calibrator.skipped_tensors``)."""
    model = calibrator.model  # the augmented model: every tensor to calibrate is an output
    wanted = set(calibrator.tensors_to_calibrate or ())
    outputs = {o.name for o in model.graph.output}
    groups = getattr(calibrator, "group_qdq_tensors", None) or {}
    skipped: set[str] = set()
    if skip_unused:
        skipped = unused_outputs(model, wanted, set(calibrator.op_types_to_calibrate or ()), groups,
                                 set(getattr(calibrator, "model_original_outputs", ()) or ()))
        wanted -= skipped
    calibrator.skipped_tensors = skipped
    segments = segment_model(model, wanted, providers, budget)
    calibrator.model = None  # ModelOpt's copy is no longer needed: the segments hold the weights now
    collector = _histogram_collector(calibrator)
    needs, needed_by = _group_needs(wanted, groups, outputs)
    graph_inputs = [i.name for i in model.graph.input]
    batches = 0
    while inputs := data_reader.get_next():
        batches += 1
        _run_batch(segments, inputs, graph_inputs, _BatchFold(collector, needs, needed_by))
    if batches == 0:
        raise ValueError("No data is collected.")


# --------------------------------------------------------------------------------------------------------
# The hooks


def _streaming_patch(original_patch, saved_compute, providers: list, budget: int, skip_unused: bool,
                     captured: Captured):
    """ModelOpt's ``ort_utils.patch_ort_modules``, then ours over two of its patches: no whole-model session for a
    histogram calibrator, its data collected by :func:`collect_streaming`, the skipped tensors given placeholder
    ranges."""
    from onnxruntime.quantization.calibrate import CalibraterBase, HistogramCalibrater, TensorData, TensorsData

    def patch(*args, **kwargs):
        original_patch(*args, **kwargs)
        modelopt_session = CalibraterBase.create_inference_session

        def create_session(self, **extra):
            if isinstance(self, HistogramCalibrater):  # no whole-model session: the segments replace it
                self.group_qdq_tensors = extra.get("group_qdq_tensors")
                self.infer_session = None
                self.stream_providers = [p if isinstance(p, str) else p[0]
                                         for p in extra.get("execution_providers") or []] or providers
                return None
            return modelopt_session(self, **extra)

        def collect(self, reader):
            collect_streaming(self, reader, getattr(self, "stream_providers", providers), budget, skip_unused)
            captured.skipped |= self.skipped_tensors

        def compute(self):
            data = saved_compute(self)
            lo, hi = PLACEHOLDER_RANGE
            placeholders = {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                            for t in sorted(getattr(self, "skipped_tensors", ())) if t not in data}
            return TensorsData(data.calibration_method, {**data.data, **placeholders}) if placeholders else data

        CalibraterBase.create_inference_session = create_session
        HistogramCalibrater.collect_data = collect
        HistogramCalibrater.compute_data = compute

    return patch


def _capturing_convert(original_convert, captured: Captured):
    """ModelOpt's ``_convert_to_runtime_precision``, after the model's FP32 activation scales are kept in
    ``captured.activation_scales`` and written back as ModelOpt writes a cache's (``replace_scale_values``), zero
    ones made usable as ``quantize_from_cache`` makes them: the model is then, to the byte, the one built from its
    cache."""

    def convert(onnx_model, *args, **kwargs):
        from modelopt.onnx.quantization.qdq_utils import replace_scale_values

        scales = activation_scales(onnx_model)
        captured.activation_scales = scales
        replace_scale_values(onnx_model.graph, {f"{name}_scale": usable_scale(v) for name, v in scales.items()})
        return original_convert(onnx_model, *args, **kwargs)

    return convert


@dataclass
class Captured:
    """What one ModelOpt ``quantize`` call under :func:`streaming_calibration` gave on the way: the FP32 activation
    scales of its Q/DQ model (None until it made one) and the tensors left out of calibration."""

    activation_scales: dict[str, float] | None = None
    skipped: set[str] = field(default_factory=set)


@contextlib.contextmanager
def streaming_calibration(providers: list | None = None, budget: int = SEGMENT_BUDGET_ELEMENTS,
                          skip_unused: bool = True) -> Iterator[Captured]:
    """While the body runs ModelOpt's ``quantize``: histogram (entropy) calibration streams (module docstring), on
    ``providers`` (ONNX Runtime's names; default CPU). The yielded :class:`Captured` gets ``activation_scales``:
    the scales of the Q/DQ model before ModelOpt converts it to its high precision (the FP32 scales, whatever
    ``high_precision_dtype`` is) — what a calibration cache keeps — and ``skipped``: the tensors left out
    (:func:`unused_outputs`); the caller checks that none of them has a scale in the result (else calibrates again
    with ``skip_unused=False``)."""
    from modelopt.onnx.quantization import int8 as mo_int8
    from modelopt.onnx.quantization import ort_utils
    from onnxruntime.quantization.calibrate import CalibraterBase, HistogramCalibrater

    providers = list(providers or ["CPUExecutionProvider"])
    captured = Captured()
    saved = {"patch": ort_utils.patch_ort_modules, "convert": mo_int8._convert_to_runtime_precision,
             "collect": HistogramCalibrater.collect_data, "session": CalibraterBase.create_inference_session,
             "compute": HistogramCalibrater.compute_data}
    ort_utils.patch_ort_modules = _streaming_patch(saved["patch"], saved["compute"], providers, budget, skip_unused,
                                                   captured)
    mo_int8._convert_to_runtime_precision = _capturing_convert(saved["convert"], captured)
    try:
        yield captured
    finally:
        ort_utils.patch_ort_modules = saved["patch"]
        mo_int8._convert_to_runtime_precision = saved["convert"]
        HistogramCalibrater.collect_data = saved["collect"]
        HistogramCalibrater.compute_data = saved["compute"]
        CalibraterBase.create_inference_session = saved["session"]


def available_providers() -> list[str]:
    """ONNX Runtime's providers for calibration here: CUDA first when this ONNX Runtime has it and a GPU answers
    (``TRT_RES2NET_CALIB_PROVIDER=cpu`` forces the CPU), else the CPU."""
    import onnxruntime as ort

    if os.environ.get("TRT_RES2NET_CALIB_PROVIDER", "").lower() == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]
