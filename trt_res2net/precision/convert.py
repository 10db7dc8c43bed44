"""The precision step of build.py: FP32 ONNX → FP16 ONNX (ModelOpt AutoCast) or INT8 Q/DQ ONNX (ModelOpt PTQ).

TensorRT 11 has no FP16/INT8 builder flags and no calibrators: FP16 must be in the ONNX and INT8 must arrive
as Q/DQ nodes. ModelOpt makes both on any machine (it calibrates through ONNX Runtime), so this step — and
the accuracy of what it makes — runs and is tested without a GPU.

INT8, in order:

1. Calibration set (``--calib-dir``, ``--calib-images``, ``--calib-seed``): trt_res2net.data.calibration_set.
2. Cache (``--calib-cache``, default ``calib/<model>.<method>.cache``): reused when its sidecar key
   (ONNX SHA-256, preprocessing, image-manifest hash, method, tool versions) matches this build — then no
   images are needed; refused, naming the differing field, when it does not (recalibrated if ``--calib-dir``
   is given). Otherwise calibration writes it, with the manifest ``<cache>.images.json`` beside it.
3. The Q/DQ model is always made from the cache (modelopt_bridge.quantize_from_cache).
4. With held-out images (``--eval-dir`` or ``--eval LIST --data-root DIR``): the accuracy report, the
   ``--max-top1-drop`` gate, and ``--auto-fallback`` (trt_res2net.precision.fallback).

Outputs: ``<fp32 stem>_fp16.onnx`` / ``<fp32 stem>_int8.onnx`` beside the FP32 ONNX, or where ``out_path``
says (build.py: the engine folder or ``--onnx-out`` for a user's ``--onnx``: nothing is written beside a user's
file), each with a sidecar ``<onnx>.json`` (what it was made from and how — ``quantization_source`` —, excluded
layers, accuracy report), written with it as one unit (``core.commit``), as the cache with its key and image
manifest. A model that misses its accuracy budget is kept as ``<stem>.rejected.onnx`` and the build fails (exit
status 1); the previous ``<stem>_int8.onnx`` stays as it was.

An ONNX that is already INT8 Q/DQ or FP16 is not converted again (:func:`onnx_precision` names it; build.py builds
it as what it is).
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..core import log
from ..core.commit import commit_files, ensure_complete
from ..core.errors import UserError
from ..core.files import temp_name
from ..core.hashing import sha256_file
from .options import PrecisionOptions, check_precision_request

CALIB_DIR = Path("calib")
SENSITIVITY_IMAGES = 8  # enough for a continuous error measure; each layer costs one inference of them
ONNX_SIDECAR_FORMAT = "trt_res2net.precision-onnx"


def converted_path(fp32_onnx: Path, precision: str) -> Path:
    return fp32_onnx.with_name(f"{fp32_onnx.stem}_{precision}.onnx")


def rejected_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.rejected.onnx")


def default_cache_path(model_name: str, opts: PrecisionOptions) -> Path:
    return CALIB_DIR / f"{model_name}.{opts.method_tag}.cache"


def _say(message: str) -> None:
    """A result: what was written, the accuracy report (stdout)."""
    log.result(message)


def _note(message: str) -> None:
    log.note(f"note: {message}")


def onnx_precision(io) -> str:
    """What an ONNX already is, from ``model.contract.inspect_onnx``: ``"int8"`` (Q/DQ nodes), ``"fp16"`` (FP16
    weights or casts) or ``"fp32"``."""
    return "int8" if io.has_qdq else "fp16" if io.has_fp16 else "fp32"


def onnx_file_precision(path: str | os.PathLike) -> str:
    """:func:`onnx_precision` of an ONNX file, read without its weights' data (UserError when unreadable)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and friends for a damaged file
        raise UserError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    g = model.graph
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in g.node)
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in g.initializer) or any(
        n.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in n.attribute)
        for n in g.node)
    return "int8" if qdq else "fp16" if fp16 else "fp32"


def read_precision_sidecar(onnx_path: str | os.PathLike, onnx_sha256: str | None = None) -> dict | None:
    """The sidecar this step wrote beside a converted ONNX, when it describes these very bytes (``onnx_sha256``),
    else None (no sidecar, another file's, or unreadable)."""
    side = Path(str(onnx_path) + ".json")
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != ONNX_SIDECAR_FORMAT:
        return None
    if onnx_sha256 is not None and doc.get("onnx_sha256") != onnx_sha256:
        return None
    return doc


def check_calibration_source(opts: PrecisionOptions, model_name: str) -> None:
    """What INT8 calibration will read, checked before any long work: images given (present and readable), or a
    cache to reuse; else the one line that says how to get images."""
    cache_path = Path(opts.calib_cache) if opts.calib_cache else default_cache_path(model_name, opts)
    calib = opts.calibration
    if calib.directory is not None:
        calib.check()
        return
    if not cache_path.exists():
        raise UserError(
            f"INT8 needs calibration: pass --calib-dir DIR (a folder of ~{calib.count} real images like those the "
            f"engine will see, e.g. from the ImageNet train set), --calib-cache PATH to a cache made earlier (none "
            f"at {cache_path}), or --calib-synthetic N to try the pipeline on N generated images (their scales "
            "are not for deployment)"
        )


def _minutes(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# --------------------------------------------------------------------------------------------------------
# The stage


@dataclass(frozen=True)
class ConvertedOnnx:
    """The ONNX an engine of ``precision`` is built from, and the FP32 ONNX it was made from (``source``; the same
    file for fp32). ``build_engine`` takes it as it is; it is also a path (``os.fspath``)."""

    path: Path
    precision: str  # "fp32", "fp16" or "int8"
    source: Path

    def __fspath__(self) -> str:
        return str(self.path)


def convert_precision(fp32_onnx_path: str | os.PathLike, precision: str, options: PrecisionOptions | None = None, *,
                      model_name: str | None = None, out_path: str | os.PathLike | None = None) -> ConvertedOnnx:
    """Make the ONNX that an engine of ``precision`` is built from: the FP32 path itself for fp32, else the FP16
    (ModelOpt AutoCast) or INT8 Q/DQ (ModelOpt PTQ) ONNX, written to ``out_path`` (default: beside the FP32 ONNX,
    ``<stem>_<precision>.onnx``). ``model_name`` names the calibration cache (default: the ONNX's stem). An ONNX
    that already is what is asked for is returned as it is; one that is already something else is refused.
    Raises UserError (exit 2) for usage errors, MissingDependency (exit 3) without ModelOpt,
    AccuracyBudgetExceeded (exit 1) when ``max_top1_drop`` is missed."""
    opts = options or PrecisionOptions()
    check_precision_request(precision, opts)
    fp32_onnx_path = Path(fp32_onnx_path)
    model_name = model_name or fp32_onnx_path.stem
    if precision == "fp32":
        if opts.max_top1_drop is not None or opts.auto_fallback:
            _note("--max-top1-drop/--auto-fallback ignored: --precision fp32 has nothing to compare")
        return ConvertedOnnx(fp32_onnx_path, "fp32", fp32_onnx_path)
    if not fp32_onnx_path.is_file():
        raise UserError(f"FP32 ONNX {fp32_onnx_path} not found")
    already = onnx_file_precision(fp32_onnx_path)
    if already == precision:
        _note(f"{fp32_onnx_path} is already {precision.upper()}: nothing to convert")
        return ConvertedOnnx(fp32_onnx_path, precision, fp32_onnx_path)
    if already != "fp32":
        kind = "Q/DQ nodes" if already == "int8" else "FP16"
        raise UserError(f"{fp32_onnx_path} is already {already.upper()} ({kind}): build it as --precision {already}, "
                        "or convert its FP32 original")
    out = Path(out_path) if out_path is not None else converted_path(fp32_onnx_path, precision)
    from .accuracy import load_eval_set

    eval_set = load_eval_set(opts.eval_dir, opts.eval_list, opts.data_root, limit=opts.eval_images)
    make = _make_fp16 if precision == "fp16" else _make_int8
    return ConvertedOnnx(make(opts, fp32_onnx_path, model_name, eval_set, out), precision, fp32_onnx_path)


def _evaluator(opts, fp32_onnx_path, eval_set):
    from .accuracy import Evaluator

    return Evaluator(eval_set, fp32_onnx_path, progress=opts.progress) if eval_set is not None else None


def _verdict(opts, report: dict | None, label: str, precision: str) -> str | None:
    """None when there is no budget or it is met (said on stdout), else the AccuracyBudgetExceeded message's head."""
    from .accuracy import budget_measure_name, top1_drop_pp, within_budget

    if report is None or opts.max_top1_drop is None:
        return None
    drop = top1_drop_pp(report)
    if within_budget(report, opts.max_top1_drop):
        _say(f"accuracy budget --max-top1-drop {opts.max_top1_drop:g}: met ({budget_measure_name(report)} "
             f"{drop:.2f} pp)")
        return None
    hint = " (try --auto-fallback)" if precision == "int8" and not opts.auto_fallback else ""
    return (f"{label} misses the accuracy budget: {budget_measure_name(report)} {drop:.2f} pp > --max-top1-drop "
            f"{opts.max_top1_drop:g}{hint}")


def _sidecar_doc(onnx_sha256: str, doc: dict) -> dict:
    return {"format": ONNX_SIDECAR_FORMAT, "format_version": 1, "onnx_sha256": onnx_sha256,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **doc}


def _publish(opts, staged: Path, out: Path, doc: dict, report: dict | None, label: str, precision: str) -> Path:
    """Move the staged model to ``out`` with its sidecar, as one unit; a model that misses the budget goes to
    ``*.rejected.onnx`` instead (the previous ``out`` untouched) and AccuracyBudgetExceeded is raised."""
    from .accuracy import AccuracyBudgetExceeded

    why = _verdict(opts, report, label, precision)
    target = rejected_path(out) if why else out
    sidecar = json.dumps(_sidecar_doc(sha256_file(staged), doc), indent=2) + "\n"
    commit_files({target: staged, target.with_name(target.name + ".json"): sidecar.encode()})
    if why:
        raise AccuracyBudgetExceeded(f"{why}; the model is kept as {target} for inspection")
    return out


def _print_report(report: dict | None, label: str) -> None:
    from .accuracy import format_report

    if report is not None:
        _say(format_report(report, label))


def _make_fp16(opts: PrecisionOptions, fp32_onnx_path: Path, model_name: str, eval_set, out: Path) -> Path:
    from . import modelopt_bridge as mb

    mb.require_modelopt("--precision fp16")
    reference = None
    if opts.calibration.directory:  # real images decide which nodes must stay FP32 (AutoCast's data_max rule)
        reference = _first_images(opts, 8)
    staged = temp_name(out)
    try:
        t0 = time.perf_counter()
        model = mb.autocast_fp16(fp32_onnx_path, staged, reference_inputs=reference,
                                 log_path=out.with_name(out.name + ".modelopt.log"))
        kept = sum(1 for n in model.graph.node if n.op_type == "Cast")
        seconds = time.perf_counter() - t0
        del model
        gc.collect()
        evaluator = _evaluator(opts, fp32_onnx_path, eval_set)
        report = evaluator.evaluate(staged, "FP16") if evaluator else None
        _print_report(report, f"FP16 {out.name}")
        doc = {
            "precision": "fp16", "model": model_name, "quantization_source": "autocast-fp16",
            "source_onnx": str(fp32_onnx_path), "source_onnx_sha256": sha256_file(fp32_onnx_path),
            "tool": "modelopt.onnx.autocast (keep_io_types)", "tools": mb.tool_versions(),
            "autocast_reference": "calibration images" if reference is not None else "AutoCast random inputs",
            "calibration_synthetic": bool(opts.calibration.synthetic) if reference is not None else None,
            "accuracy": report,
        }
        _publish(opts, staged, out, doc, report, f"FP16 {out.name}", "fp16")
    finally:
        staged.unlink(missing_ok=True)
    _say(f"wrote {out} (FP16 ONNX by ModelOpt AutoCast, float32 inputs/outputs kept, {kept} casts; "
         f"{_minutes(seconds)})")
    return out


def _first_images(opts: PrecisionOptions, n: int):
    import numpy as np

    from ..data.calibration_set import iter_batches

    paths = opts.calibration.materialize().select()[:n]
    arrays = [a for a, _, _ in iter_batches(paths, n) if len(a)]
    return np.concatenate(arrays) if arrays else None


# --------------------------------------------------------------------------------------------------------
# INT8


@dataclass
class _Calibration:
    cache_path: Path
    cache: object  # CalibrationCache; None while the images are still to be calibrated
    key: dict
    images: list[Path] | None  # the selected calibration images, when --calib-dir was given
    reused: bool
    seconds: float = 0.0
    manifest: dict | None = None  # the calibration images' manifest, when calibrating
    synthetic: bool = False
    count: int | None = None  # images calibrated on (decoded)


def _expected_key(opts, fp32_sha: str, manifest: dict | None) -> dict:
    from ..data.preprocess import SPEC
    from . import modelopt_bridge as mb

    key = {
        "onnx_sha256": fp32_sha,
        "preprocess_sha256": SPEC.sha256(),
        "method": opts.method_tag,
        "tools": mb.tool_versions(mb.calibration_providers()),
    }
    if manifest is not None:
        key["calibration_manifest_sha256"] = manifest["sha256"]
    return key


def _calibration(opts: PrecisionOptions, fp32_onnx_path: Path, model_name: str, fp32_sha: str) -> _Calibration:
    """The cache to reuse (key matches), or what to calibrate (``cache`` None: the images and their manifest)."""
    from ..data import calibration_set as cal
    from . import modelopt_bridge as mb
    from .calib_cache import check_cache_key, read_cache

    cache_path = Path(opts.calib_cache) if opts.calib_cache else default_cache_path(model_name, opts)
    calib = opts.calibration
    ensure_complete(cache_path)  # a cache, key and manifest that a killed run left half-replaced
    if not cache_path.exists() and not calib.directory:
        check_calibration_source(opts, model_name)  # the one line that says how to get images
    mb.require_modelopt("--precision int8")  # before the key: it names ModelOpt's version
    images = manifest = None
    if calib.directory:
        images = calib.materialize().select()  # synthetic images are written when first needed
        manifest = cal.build_manifest(images, calib.directory, seed=calib.seed, requested=calib.count)
    key = _expected_key(opts, fp32_sha, manifest)
    if cache_path.exists() and read_cache(cache_path).made_by_tensorrt:
        return _tensorrt_cache(cache_path, key, images)
    if cache_path.exists():
        try:
            check_cache_key(cache_path, key)
        except UserError as e:
            if images is None:
                raise
            _note(f"{e}; recalibrating from {calib.directory}")
        else:
            cache = read_cache(cache_path)
            log.note(f"reusing calibration cache {cache_path} ({len(cache.scales)} activation scales; key matches)")
            return _Calibration(cache_path, cache, key, images, reused=True)
    if calib.synthetic:
        log.warn_once(cal.SYNTHETIC_WARNING.format(n=len(images)))
    return _Calibration(cache_path, None, key, images, reused=False, manifest=manifest, synthetic=calib.synthetic)


def _calibration_reader(opts, calib: _Calibration, failures: list, decoded: list):
    """A ModelOpt reader over the calibration images (preprocessed in threads, batch by batch), with its bar."""
    from tqdm import tqdm

    from ..data import calibration_set as cal
    from ..data.preprocess import SPEC
    from . import modelopt_bridge as mb

    bar = tqdm(total=len(calib.images), desc=f"calibrate ({opts.method_tag})", unit="img",
               disable=not opts.progress, dynamic_ncols=True)

    def batches():
        for arr, _names, bad in cal.iter_batches(calib.images, mb.CALIB_BATCH, SPEC):
            for path, reason in bad:
                if (path, reason) not in failures:
                    failures.append((path, reason))
                    log.warn(f"skipped calibration image {path}: {reason}")
                    bar.update(1)
            if len(arr):
                decoded[0] += len(arr)
                yield arr

    return mb.make_reader(batches, on_batch=bar.update), bar


def _store_calibration(opts, calib: _Calibration, fp32_onnx_path: Path, model_name: str, failures: list,
                       decoded: int) -> None:
    """The cache, its key sidecar and the images' manifest, written as one unit."""
    from ..data import calibration_set as cal
    from ..data.preprocess import SPEC
    from .calib_cache import CacheKey, key_document, sidecar_path

    manifest = calib.manifest
    manifest["unreadable"] = [{"path": p, "error": r} for p, r in failures]
    manifest_path = cal.manifest_path_for(calib.cache_path)
    key = calib.key
    doc = key_document(
        CacheKey(key["onnx_sha256"], key["preprocess_sha256"], manifest["sha256"], key["method"], key["tools"],
                 preprocess=SPEC.to_dict()),
        info={"model": model_name, "source_onnx": str(fp32_onnx_path), "images": decoded,
              "unreadable_images": len(failures), "manifest": manifest_path.name, "synthetic": calib.synthetic,
              "calibration_seconds": round(calib.seconds, 1), "activation_scales": len(calib.cache.scales),
              "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})

    def as_json(obj) -> bytes:
        return (json.dumps(obj, indent=2) + "\n").encode()

    commit_files({calib.cache_path: calib.cache.to_bytes(), sidecar_path(calib.cache_path): as_json(doc),
                  manifest_path: as_json(manifest)})
    calib.count = decoded
    _say(f"calibrated on {decoded} images in {_minutes(calib.seconds)} → {calib.cache_path} "
         f"({len(calib.cache.scales)} activation scales; manifest {manifest_path.name})")


def _tensorrt_cache(cache_path: Path, key: dict, images) -> _Calibration:
    """A cache written by TensorRT's own calibrator (e.g. on a Jetson) makes the Q/DQ model too: its scales
    are TensorRT's, so only the model and the preprocessing must match; it is never overwritten."""
    from .calib_cache import check_cache_key, read_cache, read_cache_key

    try:
        check_cache_key(cache_path, {k: key[k] for k in ("onnx_sha256", "preprocess_sha256")})
    except UserError as e:
        if images is not None:
            raise UserError(f"{e} — it is TensorRT's cache, which this step does not overwrite: pass "
                            "--calib-cache with another path to calibrate with ModelOpt") from None
        raise
    cache = read_cache(cache_path)
    stored = read_cache_key(cache_path)["key"]
    tools = stored.get("tools") or {}
    # (indexing, not .get("tensorrt", ...): trt-api-check would take the result for the tensorrt module)
    made_by = tools["tensorrt"] if "tensorrt" in tools else cache.version_tag
    log.note(f"using TensorRT {made_by}'s calibration cache {cache_path} ({cache.algorithm}, {len(cache.scales)} "
             "scales)")
    return _Calibration(cache_path, cache, {**key, "method": stored.get("method"), "tools": stored.get("tools")},
                        images, reused=True)


def _make_int8(opts: PrecisionOptions, fp32_onnx_path: Path, model_name: str, eval_set, out: Path) -> Path:
    from . import modelopt_bridge as mb
    from .accuracy import overlap_warning

    fp32_sha = sha256_file(fp32_onnx_path)
    calib = _calibration(opts, fp32_onnx_path, model_name, fp32_sha)
    if eval_set is not None and calib.images is not None:
        warning = overlap_warning(eval_set.paths, calib.images)
        if warning:
            _note(f"{warning}: the comparison flatters INT8 — use images calibration has not seen")

    log_path = out.with_name(out.name + ".modelopt.log")
    cache_log = calib.cache_path.with_name(calib.cache_path.name + ".modelopt.log")
    staged = temp_name(out)
    try:
        t0 = time.perf_counter()
        if calib.cache is None:  # calibrate: one pass over the images, one ModelOpt call for cache and model
            failures: list = []
            decoded = [0]
            reader, bar = _calibration_reader(opts, calib, failures, decoded)
            try:
                if opts.calib_method == "percentile":
                    calib.cache = mb.calibrate(fp32_onnx_path, reader, "percentile", opts.calib_percentile,
                                               log_path=cache_log, work_near=calib.cache_path)
                    model = None
                else:
                    calib.cache, model = mb.calibrate_and_quantize(
                        fp32_onnx_path, reader, staged, method=opts.calib_method,
                        high_precision=opts.high_precision, log_path=cache_log)
            finally:
                bar.close()
            if decoded[0] == 0:
                raise UserError(f"none of the {len(calib.images)} calibration images could be read")
            calib.seconds = time.perf_counter() - t0
            _store_calibration(opts, calib, fp32_onnx_path, model_name, failures, decoded[0])
            if model is None:
                model = mb.quantize_from_cache(fp32_onnx_path, calib.cache, staged,
                                               high_precision=opts.high_precision, log_path=log_path)
        else:
            model = mb.quantize_from_cache(fp32_onnx_path, calib.cache, staged, high_precision=opts.high_precision,
                                           log_path=log_path)
        seconds = time.perf_counter() - t0
        gc.collect()
        n_q = len(mb.quantized_nodes(model))
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)

        evaluator = _evaluator(opts, fp32_onnx_path, eval_set)
        report = evaluator.evaluate(model, "INT8") if evaluator else None
        _print_report(report, f"INT8 {out.name}")
        excluded: list[str] = []
        fallback_doc = None
        from .accuracy import top1_drop_pp, within_budget

        if report is not None and opts.auto_fallback and not within_budget(report, opts.max_top1_drop):
            excluded, report, fallback_doc = _auto_fallback(opts, fp32_onnx_path, model, calib, evaluator, out,
                                                            staged, log_path, top1_drop_pp(report))
        elif opts.auto_fallback and report is not None:
            _note("auto-fallback: not needed, the fully quantized model meets the budget")
        del model
        gc.collect()

        doc = {
            "precision": "int8", "model": model_name, "quantization_source": "calibrated",
            "source_onnx": str(fp32_onnx_path), "source_onnx_sha256": fp32_sha,
            "high_precision": opts.high_precision, "opset": opset,
            "calibration_cache": str(calib.cache_path), "calibration_cache_reused": calib.reused,
            "calibration_key": calib.key, "calibration_method": opts.method_tag,
            "calibration_images": calib.count, "calibration_synthetic": calib.synthetic or _cache_synthetic(calib),
            "tools": mb.tool_versions(), "excluded_layers": excluded, "auto_fallback": fallback_doc,
            "accuracy": report,
        }
        _publish(opts, staged, out, doc, report, f"INT8 {out.name}", "int8")
    finally:
        staged.unlink(missing_ok=True)
    _say(f"wrote {out} (INT8 Q/DQ ONNX by ModelOpt, opset {opset}, {n_q} layers quantized, the rest "
         f"{opts.high_precision.upper()}; {_minutes(seconds)})")
    return out


def _cache_synthetic(calib: _Calibration) -> bool:
    """Whether a reused cache was calibrated on synthetic images (its sidecar says so)."""
    from .calib_cache import read_cache_key

    if not calib.reused:
        return False
    try:
        return bool(read_cache_key(calib.cache_path).get("info", {}).get("synthetic"))
    except UserError:
        return False


def _auto_fallback(opts, fp32_onnx_path: Path, model, calib: _Calibration, evaluator, out: Path, staged: Path,
                   log_path: Path, full_drop: float):
    import numpy as np

    from ..data.calibration_set import iter_batches
    from . import modelopt_bridge as mb
    from .accuracy import format_report, open_session, run_session, top1_drop_pp, within_budget
    from .fallback import layer_sensitivity, search_exclusions

    _note(f"auto-fallback: the fully quantized model misses the budget ({full_drop:.2f} pp > "
          f"{opts.max_top1_drop:g}); ranking layers by sensitivity")
    if calib.images is not None:
        arrays = [a for a, _, _ in iter_batches(calib.images[:SENSITIVITY_IMAGES], SENSITIVITY_IMAGES) if len(a)]
        source = f"{SENSITIVITY_IMAGES} calibration images"
    else:
        evaluator.prepare()
        arrays = [evaluator.images[:SENSITIVITY_IMAGES]]
        source = f"{SENSITIVITY_IMAGES} held-out images (no --calib-dir given)"
        _note(f"ranking layers on {source}; pass --calib-dir to keep the held-out images out of the choice")
    images = np.concatenate(arrays)
    session, _ = open_session(fp32_onnx_path)
    reference = run_session(session, images)
    del session
    t0 = time.perf_counter()
    ranking = layer_sensitivity(model, images, reference, progress=opts.progress)
    rank_seconds = time.perf_counter() - t0
    names = [n for n, _ in ranking]
    _note(f"auto-fallback: {len(names)} layers ranked on {source} in {_minutes(rank_seconds)}; most sensitive: "
          + ", ".join(f"{n} ({g:.2e})" for n, g in ranking[:5]))

    def try_excluding(layers: list[str]):
        candidate = temp_name(out.with_name(f"{out.stem}.fallback.onnx"))
        try:
            m = mb.quantize_from_cache(fp32_onnx_path, calib.cache, candidate, high_precision=opts.high_precision,
                                       nodes_to_exclude=layers, log_path=log_path)
            report = evaluator.evaluate(m, f"INT8 without {len(layers)} layers")
        finally:
            candidate.unlink(missing_ok=True)
        drop = top1_drop_pp(report)
        ok = within_budget(report, opts.max_top1_drop)
        _note(f"auto-fallback: {len(layers):3d} layers excluded → drop {drop:.2f} pp "
              f"({'meets' if ok else 'misses'} the budget)")
        return report, ok, drop

    t0 = time.perf_counter()
    result = search_exclusions(names, try_excluding)
    mb.quantize_from_cache(fp32_onnx_path, calib.cache, staged, high_precision=opts.high_precision,
                           nodes_to_exclude=result.excluded, log_path=log_path)
    _say(f"auto-fallback: kept {len(result.excluded)} of {len(names)} quantized layers in "
         f"{opts.high_precision.upper()}: {', '.join(result.excluded)}")
    _say(format_report(result.report, f"INT8 {out.name} (after fallback)"))
    doc = {"ranking_images": source, "ranking": [{"layer": n, "error_removed": g} for n, g in ranking],
           "trials": result.trials, "search_seconds": round(time.perf_counter() - t0, 1)}
    return result.excluded, result.report, doc
