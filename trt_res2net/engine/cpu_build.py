"""The model for CPUs (``EngineOptions.family='cpu'``): OpenVINO IR from the same FP32 ONNX, the same calibration
images and preprocessing as the TensorRT INT8 path, written as a unit with its manifest (``cpu_manifest``).

- int8: NNCF's post-training quantization (symmetric activations and per-channel weights, OpenVINO's own
  recipe for its CPU plugin), calibrated on the calibration images as ``data.recipe`` preprocesses them;
- bf16: the FP32 IR, compiled with OpenVINO's BF16 inference precision: only where the CPU has BF16 (AVX-512 BF16
  or AMX), refused in one line elsewhere;
- fp32: the FP32 IR with FP32 inference (OpenVINO's own kernels).

The same accuracy gate as the TensorRT path applies (``PrecisionOptions.max_top1_drop``, against FP32 on the
held-out images). NNCF keeps its own statistics (min and max per tensor over the subset), not the entropy scales of
the TensorRT cache: the manifest records its calibration key (the images' manifest, the preprocessing, the
method), and the TensorRT cache is neither read nor written.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import dataclass
from pathlib import Path

from ..core import log
from ..core.commit import commit_files
from ..core.errors import MissingDependency, UserError
from ..core.files import check_writable_folder, make_temp_dir
from ..core.hashing import sha256_file, sha256_onnx
from ..core.version import __version__
from ..data.recipe import FROM_MODEL, PADDLECLAS_RECIPE, InputRecipe, PreprocessOptions
from ..model.contract import inspect_onnx, onnx_recipe
from ..precision.options import PrecisionOptions
from .cpu_manifest import CpuModelManifest, manifest_path_for

CPU_PRECISIONS = ("int8", "bf16", "fp32")
# OpenVINO's INFERENCE_PRECISION_HINT per precision; "default" sets none: the INT8 model's layers left in float run
# as OpenVINO chooses for the CPU (BF16 where it has it), as OpenVINO's own INT8 does (docs/cpu.md, measured).
INFERENCE_PRECISION = {"int8": "default", "bf16": "bf16", "fp32": "f32"}
INSTALL_HINT = "pip install 'trt-res2net[cpu]' (OpenVINO and NNCF)"
CALIBRATION_BATCH = 8


def openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise MissingDependency(f"the CPU model needs OpenVINO: {INSTALL_HINT} ({e})") from None
    return ov


@dataclass(frozen=True)
class CpuMachine:
    """The CPU as OpenVINO sees it: its name and ``OPTIMIZATION_CAPABILITIES`` (FP32, BF16, INT8, ...)."""

    name: str
    capabilities: tuple[str, ...]

    @classmethod
    def here(cls) -> CpuMachine:
        core = openvino().Core()
        return cls(str(core.get_property("CPU", "FULL_DEVICE_NAME")),
                   tuple(str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))


def required_capabilities(precision: str) -> tuple[str, ...]:
    return ("BF16",) if precision == "bf16" else ()


def check_cpu_can_run(precision: str, machine: CpuMachine, where: str) -> None:
    missing = [c for c in required_capabilities(precision) if c not in machine.capabilities]
    if missing:
        raise UserError(f"{where}: {precision.upper()} needs a CPU with {', '.join(missing)} (AVX-512 BF16 or AMX); "
                        f"{machine.name} has {', '.join(machine.capabilities)}: use precision int8 or fp32")


@dataclass(frozen=True)
class CpuModelPlan:
    """What :func:`run_cpu_model` does, every refusal made."""

    source: Path
    precision: str
    options: PrecisionOptions
    model_name: str
    out_path: Path  # the .xml (its .bin and .xml.json beside it)
    recipe: InputRecipe
    machine: CpuMachine
    eval_set: object | None


@dataclass(frozen=True)
class CpuModel:
    """A written CPU model: its IR and manifest."""

    path: Path
    manifest: CpuModelManifest

    def __fspath__(self) -> str:
        return str(self.path)


def cpu_model_path(fp32_onnx: Path, precision: str, engine_dir: Path | None = None) -> Path:
    folder = engine_dir if engine_dir is not None else fp32_onnx.parent
    return folder / f"{fp32_onnx.stem}_cpu_{precision}.xml"


def plan_cpu_model(fp32_onnx_path, precision: str, options: PrecisionOptions | None = None, *,
                   model_name: str | None = None, out_path=None,
                   preprocess: PreprocessOptions = FROM_MODEL) -> CpuModelPlan:
    """The plan of the CPU model of an FP32 ONNX: the precision asked (int8, bf16, fp32) and the CPU checked, the
    recipe, the output folder, the held-out set, for INT8 the calibration images."""
    from ..precision.accuracy import load_eval_set

    opts = options or PrecisionOptions()
    if precision not in CPU_PRECISIONS:
        raise UserError(f"build_cpu_model.precision={precision!r}: the CPU model is one of {', '.join(CPU_PRECISIONS)}")
    source = Path(fp32_onnx_path)
    machine = CpuMachine.here()
    check_cpu_can_run(precision, machine, "this machine")
    if precision == "int8" and opts.calibration.directory is None:
        raise UserError("the CPU INT8 model needs calibration images: CalibrationImages.directory=DIR (e.g. 500 "
                        "ImageNet training photos), or CalibrationImages.synthetic to try the pipeline")
    out = Path(out_path) if out_path is not None else cpu_model_path(source, precision)
    check_writable_folder(out.parent, "the CPU model's folder")
    eval_set = load_eval_set(opts.eval_dir, opts.eval_list, opts.data_root, limit=opts.eval_images)
    if source.is_file():
        io = inspect_onnx(source)
        if io.has_qdq or io.has_fp16:
            kind = "INT8 (Q/DQ)" if io.has_qdq else "FP16"
            raise UserError(f"{source} is already {kind}: the CPU model is made from the FP32 ONNX")
    recipe = onnx_recipe(source, preprocess) if source.is_file() else PADDLECLAS_RECIPE  # still to be exported
    return CpuModelPlan(source, precision, opts, model_name or source.stem, out, recipe, machine, eval_set)


def run_cpu_model(plan: CpuModelPlan) -> CpuModel:
    """Convert (and for INT8 quantize) the FP32 ONNX, judge it against FP32, write the IR and manifest as a unit."""
    ov = openvino()
    t0 = time.perf_counter()
    model = ov.convert_model(str(plan.source))
    calibration = None
    if plan.precision == "int8":
        model, calibration = _quantize(plan, model)
    seconds = time.perf_counter() - t0
    stage = make_temp_dir(plan.out_path)
    try:
        staged = stage / plan.out_path.name
        ov.save_model(model, str(staged), compress_to_fp16=False)
        report = _judge(plan, staged)
        manifest = _manifest(plan, staged, calibration, report, seconds, ov.__version__)
        files = {plan.out_path: staged, plan.out_path.with_suffix(".bin"): staged.with_suffix(".bin"),
                 manifest_path_for(plan.out_path): (json.dumps(manifest.to_json(), indent=2) + "\n").encode()}
        commit_files(files)
    finally:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
    version = manifest.library_version.split("-")[0]
    log.result(f"wrote {plan.out_path} (CPU {plan.precision.upper()} model, OpenVINO {version}"
               f"{', NNCF ' + manifest.quantizer_version if manifest.quantizer_version else ''}; {seconds:.1f} s)")
    return CpuModel(plan.out_path, manifest)


def compile_ir(model_xml, inference_precision: str, threads: int = 0):
    """The IR compiled for this CPU as the runtime runs it: ``inference_precision`` (f32, bf16, or default: none
    set), ``threads`` inference threads (0: OpenVINO's default, the cores)."""
    ov = openvino()
    config = {} if inference_precision == "default" else {"INFERENCE_PRECISION_HINT": inference_precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return ov.Core().compile_model(str(model_xml), "CPU", config)


def _quantize(plan: CpuModelPlan, model):
    import nncf

    from ..data.calibration_set import build_manifest, iter_batches

    images = plan.options.calibration.materialize().select()
    batches = [a for a, _, _ in iter_batches(images, CALIBRATION_BATCH, plan.recipe.spec) if len(a)]
    if not batches:
        raise UserError(f"none of the {len(images)} calibration images could be read")
    count = sum(len(b) for b in batches)
    samples = [b[i : i + 1] for b in batches for i in range(len(b))]  # NNCF's subset counts items: one image each
    quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=count,
                              preset=nncf.QuantizationPreset.PERFORMANCE)
    manifest = build_manifest(images, plan.options.calibration.directory, seed=plan.options.calibration.seed,
                              requested=plan.options.calibration.count, spec=plan.recipe.spec)
    key = {"onnx_sha256": sha256_onnx(plan.source), "preprocess_sha256": plan.recipe.spec.sha256(),
           "calibration_manifest_sha256": manifest["sha256"], "method": "nncf.quantize (min-max, PERFORMANCE preset)",
           "tools": {"nncf": nncf.__version__}}
    return quantized, {"images": count, "synthetic": bool(plan.options.calibration.synthetic), "key": key}


def _judge(plan: CpuModelPlan, staged: Path) -> dict | None:
    """The accuracy report against FP32 on the held-out images, and the budget applied (AccuracyBudgetExceeded)."""
    from ..precision.accuracy import (
        AccuracyBudgetExceeded,
        Evaluator,
        budget_measure_name,
        format_report,
        top1_drop_pp,
        within_budget,
    )

    if plan.eval_set is None:
        return None
    evaluator = Evaluator(plan.eval_set, plan.source, spec=plan.recipe.spec, progress=plan.options.progress)
    evaluator.prepare()
    compiled = compile_ir(staged, INFERENCE_PRECISION[plan.precision])  # as the runtime will run it
    logits = _logits(compiled, evaluator.images)
    report = evaluator.report(logits)
    log.result(format_report(report, f"CPU {plan.precision.upper()}"))
    budget = plan.options.max_top1_drop
    if budget is not None and not within_budget(report, budget):
        raise AccuracyBudgetExceeded(f"CPU {plan.precision.upper()} misses the accuracy budget: "
                                     f"{budget_measure_name(report)} {top1_drop_pp(report):.2f} pp > "
                                     f"PrecisionOptions.max_top1_drop={budget:g}; nothing written")
    return report


def _logits(compiled, images):
    import numpy as np

    out = []
    request = compiled.create_infer_request()
    for start in range(0, len(images), CALIBRATION_BATCH):
        result = request.infer({0: np.ascontiguousarray(images[start : start + CALIBRATION_BATCH])})
        out.append(np.asarray(next(iter(result.values())), np.float32).reshape(
            min(CALIBRATION_BATCH, len(images) - start), -1))
    return np.concatenate(out)


def _manifest(plan: CpuModelPlan, staged: Path, calibration, report, seconds: float, version: str) -> CpuModelManifest:
    io = inspect_onnx(plan.source)
    quantizer = None
    if plan.precision == "int8":
        import nncf

        quantizer = nncf.__version__
    spec = plan.recipe.spec
    return CpuModelManifest(
        model=plan.model_name, precision=plan.precision, inference_precision=INFERENCE_PRECISION[plan.precision],
        library="openvino", library_version=str(version), quantizer_version=quantizer,
        files={plan.out_path.name: sha256_file(staged),
               plan.out_path.with_suffix(".bin").name: sha256_file(staged.with_suffix(".bin"))},
        source_onnx=str(plan.source), source_onnx_sha256=sha256_onnx(plan.source), input_name=io.input_name,
        output_name=io.output_name, num_classes=int(io.io.num_classes or 0),
        outputs_probabilities=io.outputs_probabilities, cpu=plan.machine.name,
        instruction_sets=plan.machine.capabilities, requires=required_capabilities(plan.precision),
        preprocess=spec.to_dict(), preprocess_sha256=spec.sha256(), calibration=calibration, accuracy=report,
        build_time_s=round(seconds, 3), built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        trt_res2net_version=__version__)


def build_cpu_model(fp32_onnx_path, precision: str, options: PrecisionOptions | None = None, *,
                    model_name: str | None = None, out_path=None,
                    preprocess: PreprocessOptions = FROM_MODEL) -> CpuModel:
    """run(plan(...)): the CPU model of an FP32 ONNX (module docstring)."""
    return run_cpu_model(plan_cpu_model(fp32_onnx_path, precision, options, model_name=model_name,
                                        out_path=out_path, preprocess=preprocess))
