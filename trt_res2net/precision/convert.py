"""The precision step of build.py: FP32 ONNX → FP16 ONNX (ModelOpt AutoCast) or INT8 Q/DQ ONNX (ModelOpt PTQ).

TensorRT 11 has no FP16/INT8 builder flags and no calibrators: FP16 must be in the ONNX and INT8 must arrive
as Q/DQ nodes. ModelOpt makes both on any machine (it calibrates through ONNX Runtime), so this step — and
the accuracy of what it makes — runs and is tested without a GPU.

:func:`plan_precision` decides everything and makes every refusal (:class:`PrecisionPlan`); :func:`run_precision`
does the work; :func:`convert_precision` is the two in one call. INT8, in order:

1. Calibration set (``PrecisionOptions.calibration``): trt_res2net.data.calibration_set.
2. Cache (``PrecisionOptions.calib_cache``, default ``calib/<model>.<method>.cache``): reused when its key matches
   this build, else calibrated (trt_res2net.precision.calibration).
3. The Q/DQ model is always made from the cache (``modelopt.int8.quantize_from_cache``).
4. With held-out images (``PrecisionOptions.eval_dir``, or ``eval_list`` with ``data_root``): the accuracy report,
   the ``max_top1_drop`` gate, and ``auto_fallback`` (trt_res2net.precision.fallback).

Outputs: ``<fp32 stem>_fp16.onnx`` / ``<fp32 stem>_int8.onnx`` beside the FP32 ONNX, or where ``out_path``
says (build.py: the engine folder or ``--onnx-out`` for a user's ``--onnx``: nothing is written beside a user's
file), each with its sidecar ``<onnx>.json`` (:class:`~trt_res2net.precision.sidecar.PrecisionSidecar`), written
with it as one unit (``core.commit``) — and, when the FP32 ONNX keeps its weights in external data files, with the
one data file ``<onnx>.data`` its weights are kept in (docs/own_classifier.md, "External data"; the hashes cover
it: ``core.hashing.sha256_onnx``). A model that misses its accuracy budget is kept as
``<stem>.rejected.onnx`` and the build fails (exit status 1); the previous ``<stem>_int8.onnx`` stays as it was.

An ONNX that is already INT8 Q/DQ or FP16 is not converted again (:func:`onnx_precision` names it; build.py builds
it as what it is).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core import log
from ..core.commit import commit_files
from ..core.errors import UserError
from ..core.files import make_temp_dir
from ..core.hashing import sha256_onnx
from ..core.onnx_files import check_onnx_files, onnx_unit, remove_stale_data
from ..data.preprocess_spec import SPEC, PreprocessSpec
from ..data.recipe import FROM_MODEL, PreprocessOptions, choose_recipe
from .calibration import Calibration, cache_path_of, check_calibration_source, minutes
from .options import MIN_QDQ_OPSET, PrecisionOptions, check_precision_request
from .sidecar import PrecisionSidecar, now

if TYPE_CHECKING:
    from .accuracy import EvalSet


def converted_path(fp32_onnx: Path, precision: str) -> Path:
    return fp32_onnx.with_name(f"{fp32_onnx.stem}_{precision}.onnx")


def rejected_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.rejected.onnx")


def _say(message: str) -> None:
    """A result: what was written, the accuracy report (stdout)."""
    log.result(message)


def _note(message: str) -> None:
    log.note(f"note: {message}")


def onnx_precision(io) -> str:
    """What an ONNX already is, from ``model.contract.inspect_onnx``: ``"int8"`` (Q/DQ nodes), ``"fp16"`` (FP16
    weights or casts) or ``"fp32"``."""
    return "int8" if io.has_qdq else "fp16" if io.has_fp16 else "fp32"


def _onnx_recipe(path: Path, options: PreprocessOptions):
    """The recipe of an ONNX file (``data.recipe.choose_recipe``), read with ONNX's package without its weights'
    data: its first graph input's H×W and its ``preprocessing`` metadata."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    image = next(i for i in model.graph.input if i.name not in weights)
    dims = image.type.tensor_type.shape.dim
    hw = tuple(d.dim_value or None for d in dims[2:4]) if len(dims) == 4 else (None, None)
    metadata = {m.key: m.value for m in model.metadata_props}
    return choose_recipe(hw, str(path), options, metadata.get("preprocessing"))


def _read_onnx_header(path: Path) -> tuple[str, int]:
    """What an ONNX file already is (:func:`onnx_precision`) and its default-domain opset, read without its weights'
    data (UserError when unreadable)."""
    import onnx

    from .modelopt.onnx_utils import default_opset

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for a damaged file
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    g = model.graph
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in g.node)
    return ("int8" if qdq else "fp16" if fp16 else "fp32"), default_opset(model)


def onnx_file_precision(path: str | os.PathLike) -> str:
    """:func:`onnx_precision` of an ONNX file, read without its weights' data (UserError when unreadable)."""
    return _read_onnx_header(Path(path))[0]


# --------------------------------------------------------------------------------------------------------
# The stage: plan, then run


@dataclass(frozen=True)
class ConvertedOnnx:
    """The ONNX an engine of ``precision`` is built from, and the FP32 ONNX it was made from (``source``; the same
    file for fp32). ``build_engine`` takes it as it is; it is also a path (``os.fspath``)."""

    path: Path
    precision: str  # "fp32", "fp16" or "int8"
    source: Path

    def __fspath__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class PrecisionPlan:
    """What :func:`run_precision` does, every refusal made: the FP32 ONNX (``source``), the precision asked, the
    options, the name of the calibration cache's model; ``out_path`` None when there is nothing to convert (fp32,
    or an ONNX that already is ``precision``: ``note`` says so). For a conversion: the opset it is written in, the
    held-out set (None without one) and, for INT8, the calibration cache to reuse or write."""

    source: Path
    precision: str
    options: PrecisionOptions
    model_name: str
    out_path: Path | None
    note: str | None = None
    opset: int | None = None
    eval_set: EvalSet | None = None
    cache_path: Path | None = None
    spec: PreprocessSpec = SPEC  # the preprocessing the model is fed (data.recipe): calibration's and the gate's


def plan_precision(fp32_onnx_path: str | os.PathLike, precision: str, options: PrecisionOptions | None = None, *,
                   model_name: str | None = None, out_path: str | os.PathLike | None = None,
                   exported_opset: int | None = None,
                   preprocess: PreprocessOptions = FROM_MODEL) -> PrecisionPlan:
    """The plan of :func:`convert_precision` (same parameters): the request checked against the options, the ONNX
    read (what it already is, its opset), the output's folder, the held-out set, for INT8 the calibration source
    (images or a cache) and the cache's folder, and ModelOpt installed. Raises what :func:`convert_precision` raises
    before any work. ``exported_opset``: the FP32 ONNX is still to be exported, as an FP32 ONNX of that opset (it is
    not read). ``preprocess``: the model's recipe where its user states it (``data.recipe``)."""
    from ..core.files import check_input_file, check_writable_folder
    from .accuracy import load_eval_set
    from .modelopt import require_modelopt

    opts = options or PrecisionOptions()
    check_precision_request(precision, opts)
    source = Path(fp32_onnx_path)
    model_name = model_name or source.stem
    plan = PrecisionPlan(source, precision, opts, model_name, None)
    if precision == "fp32":
        ignored = opts.max_top1_drop is not None or opts.auto_fallback
        note = ("PrecisionOptions.max_top1_drop/PrecisionOptions.auto_fallback ignored: "
                "convert_precision.precision='fp32' has nothing to compare")
        return dataclasses.replace(plan, note=note if ignored else None)
    if exported_opset is not None:
        already, opset = "fp32", exported_opset
    elif not source.is_file():
        raise UserError(f"FP32 ONNX {source} not found")
    else:
        already, opset = _read_onnx_header(source)
        check_onnx_files(source, "FP32 ONNX")
        plan = dataclasses.replace(plan, spec=_onnx_recipe(source, preprocess).spec)
    if already == precision:
        return dataclasses.replace(plan, note=f"{source} is already {precision.upper()}: nothing to convert")
    if already != "fp32":
        kind = "Q/DQ nodes" if already == "int8" else "FP16"
        raise UserError(f"{source} is already {already.upper()} ({kind}): build it as "
                        f"build_engine.precision='{already}', or convert its FP32 original")
    out = Path(out_path) if out_path is not None else converted_path(source, precision)
    check_writable_folder(out.parent, "convert_precision.out_path" if out_path is not None else "the ONNX folder")
    if opts.eval_list:
        check_input_file(opts.eval_list, "PrecisionOptions.eval_list")
    eval_set = load_eval_set(opts.eval_dir, opts.eval_list, opts.data_root, limit=opts.eval_images)
    cache_path = None
    if precision == "int8":
        cache_path = cache_path_of(opts, model_name)
        if opts.calib_cache is not None and os.path.lexists(cache_path):
            check_input_file(cache_path, "PrecisionOptions.calib_cache")
        check_writable_folder(cache_path.parent, "the calibration cache folder")
        check_calibration_source(opts, model_name)
        opset = max(opset, MIN_QDQ_OPSET)
    require_modelopt(f"convert_precision.precision='{precision}'")
    return dataclasses.replace(plan, out_path=out, opset=opset, eval_set=eval_set, cache_path=cache_path)


def run_precision(plan: PrecisionPlan) -> ConvertedOnnx:
    """Make the ONNX the plan says: nothing for fp32 or an ONNX that already is the precision asked, else the FP16
    (ModelOpt AutoCast) or INT8 Q/DQ (ModelOpt PTQ) ONNX at ``plan.out_path``. Raises AccuracyBudgetExceeded (exit
    1) when ``max_top1_drop`` is missed."""
    if plan.note:
        _note(plan.note)
    if plan.out_path is None:
        return ConvertedOnnx(plan.source, plan.precision, plan.source)
    make = _make_fp16 if plan.precision == "fp16" else _make_int8
    return ConvertedOnnx(make(plan), plan.precision, plan.source)


def convert_precision(fp32_onnx_path: str | os.PathLike, precision: str, options: PrecisionOptions | None = None, *,
                      model_name: str | None = None, out_path: str | os.PathLike | None = None) -> ConvertedOnnx:
    """Make the ONNX that an engine of ``precision`` is built from: the FP32 path itself for fp32, else the FP16
    (ModelOpt AutoCast) or INT8 Q/DQ (ModelOpt PTQ) ONNX, written to ``out_path`` (default: beside the FP32 ONNX,
    ``<stem>_<precision>.onnx``). ``model_name`` names the calibration cache (default: the ONNX's stem). An ONNX
    that already is what is asked for is returned as it is; one that is already something else is refused.
    Raises UserError (exit 2) for usage errors, MissingDependency (exit 3) without ModelOpt,
    AccuracyBudgetExceeded (exit 1) when ``max_top1_drop`` is missed."""
    return run_precision(plan_precision(fp32_onnx_path, precision, options, model_name=model_name,
                                        out_path=out_path))


# --------------------------------------------------------------------------------------------------------
# Accuracy and publishing


def _evaluator(plan: PrecisionPlan):
    from .accuracy import Evaluator

    if plan.eval_set is None:
        return None
    return Evaluator(plan.eval_set, plan.source, spec=plan.spec, progress=plan.options.progress)


def _verdict(opts, report: dict | None, label: str, precision: str) -> str | None:
    """None when there is no budget or it is met (said on stdout), else the AccuracyBudgetExceeded message's head."""
    from .accuracy import budget_measure_name, top1_drop_pp, within_budget

    if report is None or opts.max_top1_drop is None:
        return None
    drop = top1_drop_pp(report)
    if within_budget(report, opts.max_top1_drop):
        _say(f"accuracy budget PrecisionOptions.max_top1_drop={opts.max_top1_drop:g}: met "
             f"({budget_measure_name(report)} {drop:.2f} pp)")
        return None
    hint = " (try PrecisionOptions.auto_fallback)" if precision == "int8" and not opts.auto_fallback else ""
    return (f"{label} misses the accuracy budget: {budget_measure_name(report)} {drop:.2f} pp > "
            f"PrecisionOptions.max_top1_drop={opts.max_top1_drop:g}{hint}")


def _publish(opts, staged: Path, out: Path, sidecar: PrecisionSidecar, report: dict | None, label: str,
             precision: str) -> Path:
    """Move the staged model to ``out`` with its sidecar, as one unit; a model that misses the budget goes to
    ``*.rejected.onnx`` instead (the previous ``out`` untouched) and AccuracyBudgetExceeded is raised."""
    from .accuracy import AccuracyBudgetExceeded

    why = _verdict(opts, report, label, precision)
    target = rejected_path(out) if why else out
    unit = onnx_unit(staged, target)  # with its data file, renamed for a rejected model
    sidecar = dataclasses.replace(sidecar, onnx_sha256=sha256_onnx(unit[target]), created=now())
    text = json.dumps(sidecar.to_json(), indent=2) + "\n"
    commit_files({**unit, target.with_name(target.name + ".json"): text.encode()})
    remove_stale_data(target)
    if why:
        raise AccuracyBudgetExceeded(f"{why}; the model is kept as {target} for inspection")
    return out


@contextlib.contextmanager
def _staging(out: Path):
    """Where the model is made before it is published: ``<scratch folder beside out>/<out's name>``, so that a data
    file is named for ``out`` (``<out>.data``) from the start; the folder goes with whatever is left in it."""
    stage = make_temp_dir(out)
    try:
        yield stage / out.name
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _print_report(report: dict | None, label: str) -> None:
    from .accuracy import format_report

    if report is not None:
        _say(format_report(report, label))


# --------------------------------------------------------------------------------------------------------
# FP16


def _make_fp16(plan: PrecisionPlan) -> Path:
    from .modelopt import tool_versions
    from .modelopt.fp16 import autocast_fp16

    opts, out = plan.options, plan.out_path
    reference = None
    if opts.calibration.directory:  # real images decide which nodes must stay FP32 (AutoCast's data_max rule)
        reference = _first_images(opts, 8, plan.spec)
    with _staging(out) as staged:
        t0 = time.perf_counter()
        model = autocast_fp16(plan.source, staged, reference_inputs=reference,
                              log_path=out.with_name(out.name + ".modelopt.log"))
        kept = sum(1 for n in model.graph.node if n.op_type == "Cast")
        seconds = time.perf_counter() - t0
        del model
        gc.collect()
        evaluator = _evaluator(plan)
        report = evaluator.evaluate(staged, "FP16") if evaluator else None
        _print_report(report, f"FP16 {out.name}")
        sidecar = PrecisionSidecar(
            precision="fp16", model=plan.model_name, quantization_source="autocast-fp16",
            source_onnx=str(plan.source), source_onnx_sha256=sha256_onnx(plan.source),
            tool="modelopt.onnx.autocast (keep_io_types)", tools=tool_versions(),
            autocast_reference="calibration images" if reference is not None else "AutoCast random inputs",
            calibration_synthetic=bool(opts.calibration.synthetic) if reference is not None else None,
            accuracy=report)
        _publish(opts, staged, out, sidecar, report, f"FP16 {out.name}", "fp16")
    _say(f"wrote {out} (FP16 ONNX by ModelOpt AutoCast, float32 inputs/outputs kept, {kept} casts; "
         f"{minutes(seconds)})")
    return out


def _first_images(opts: PrecisionOptions, n: int, spec: PreprocessSpec):
    import numpy as np

    from ..data.calibration_set import iter_batches

    paths = opts.calibration.materialize().select()[:n]
    arrays = [a for a, _, _ in iter_batches(paths, n, spec) if len(a)]
    return np.concatenate(arrays) if arrays else None


# --------------------------------------------------------------------------------------------------------
# INT8


def _int8_model(plan: PrecisionPlan, calib: Calibration, staged: Path, log_path: Path):
    """The Q/DQ model at ``staged``: calibrated on the images (one ModelOpt call for cache and model where the method
    allows), or made from the reused cache."""
    from .calibration import calibrate
    from .modelopt.int8 import quantize_from_cache

    model = None
    if calib.cache is None:
        model = calibrate(plan.options, calib, plan.source, plan.model_name, staged)
    if model is None:
        model = quantize_from_cache(plan.source, calib.cache, staged, high_precision=plan.options.high_precision,
                                    log_path=log_path)
    return model


def _judge_int8(plan: PrecisionPlan, model, calib: Calibration, staged: Path, log_path: Path):
    """The accuracy report of the Q/DQ model and, when it misses the budget and ``auto_fallback`` is on, the layers
    kept out of INT8: (excluded layers, report, fallback record)."""
    from .accuracy import top1_drop_pp, within_budget
    from .fallback import auto_fallback

    opts, out = plan.options, plan.out_path
    evaluator = _evaluator(plan)
    report = evaluator.evaluate(model, "INT8") if evaluator else None
    _print_report(report, f"INT8 {out.name}")
    if report is not None and opts.auto_fallback and not within_budget(report, opts.max_top1_drop):
        return auto_fallback(opts, plan.source, model, calib, evaluator, out, staged, log_path,
                             top1_drop_pp(report))
    if opts.auto_fallback and report is not None:
        _note("auto-fallback: not needed, the fully quantized model meets the budget")
    return [], report, None


def _make_int8(plan: PrecisionPlan) -> Path:
    from .accuracy import overlap_warning
    from .calibration import resolve_calibration
    from .modelopt import tool_versions
    from .modelopt.qdq import quantized_nodes

    opts, out = plan.options, plan.out_path
    fp32_sha = sha256_onnx(plan.source)
    calib = resolve_calibration(opts, plan.cache_path, fp32_sha, plan.spec)
    if plan.eval_set is not None and calib.images is not None:
        warning = overlap_warning(plan.eval_set.paths, calib.images)
        if warning:
            _note(f"{warning}: the comparison flatters INT8 — use images calibration has not seen")
    log_path = out.with_name(out.name + ".modelopt.log")
    with _staging(out) as staged:
        t0 = time.perf_counter()
        model = _int8_model(plan, calib, staged, log_path)
        seconds = time.perf_counter() - t0
        gc.collect()
        n_q = len(quantized_nodes(model))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        excluded, report, fallback_doc = _judge_int8(plan, model, calib, staged, log_path)
        del model
        gc.collect()
        sidecar = PrecisionSidecar(
            precision="int8", model=plan.model_name, quantization_source="calibrated",
            source_onnx=str(plan.source), source_onnx_sha256=fp32_sha, high_precision=opts.high_precision,
            opset=opset, calibration_cache=str(calib.cache_path), calibration_cache_reused=calib.reused,
            calibration_key=calib.key, calibration_method=opts.method_tag, calibration_images=calib.count,
            calibration_synthetic=calib.any_synthetic, tools=tool_versions(), excluded_layers=tuple(excluded),
            auto_fallback=fallback_doc, accuracy=report)
        _publish(opts, staged, out, sidecar, report, f"INT8 {out.name}", "int8")
    _say(f"wrote {out} (INT8 Q/DQ ONNX by ModelOpt, opset {opset}, {n_q} layers quantized, the rest "
         f"{opts.high_precision.upper()}; {minutes(seconds)})")
    return out
