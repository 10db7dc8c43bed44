"""Each model of the repository as Triton's ModelConfig message (tritonclient's ``model_config_pb2``), with the
one-line comment its ``config.pbtxt`` starts with.

Every model is dynamically batched with a bounded queue: more than ``max_queue_size`` waiting requests, or one
waiting longer than the queue timeout, are rejected (UNAVAILABLE: HTTP 503); a client may ask for a shorter
timeout. Every model that initialises lazily is warmed up (``model_warmup``) before it reports ready.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .triton_proto import model_config_pb2

if TYPE_CHECKING:
    from .repository_plan import RepositoryPlan
    from .served_engine import ServedEngine

IMAGE, PIXELS, SCORES = "IMAGE", "PIXELS", "SCORES"
ENSEMBLE_OUTPUTS = ("PROBABILITIES", "TOPK_IDS", "TOPK_SCORES", "TOPK_LABELS")
WARMUP_FOLDER = "warmup"
WARMUP_SAMPLE = "image.bin"  # the warm-up image, in each image-decoding model's warmup/ folder
VENDORED_PACKAGE = "trt_res2net_vendored"


@dataclass(frozen=True)
class Warmup:
    """One ``model_warmup`` sample: Triton runs it before the model reports ready (``data_file`` None: zeros)."""

    name: str
    batch: int
    tensor: str
    dtype: str
    dims: tuple[int, ...]
    data_file: str | None = None


# --------------------------------------------------------------------------------------------------------
# The parts of a ModelConfig


def _config(name: str, max_batch: int, *, platform: str = "", backend: str = ""):
    return model_config_pb2().ModelConfig(name=name, platform=platform, backend=backend, max_batch_size=max_batch)


def _tensor(field, name: str, dtype: str, dims, label_filename: str | None = None) -> None:
    tensor = field.add(name=name, data_type=model_config_pb2().DataType.Value(dtype), dims=list(dims))
    if label_filename:
        tensor.label_filename = label_filename


def _batching(config, delay_us: int, queue_size: int, timeout_ms: int, preferred=()) -> None:
    pb2 = model_config_pb2()
    batching = config.dynamic_batching
    batching.SetInParent()
    batching.max_queue_delay_microseconds = delay_us
    batching.preferred_batch_size.extend(preferred)
    policy = batching.default_queue_policy
    policy.timeout_action = pb2.ModelQueuePolicy.TimeoutAction.Value("REJECT")
    policy.default_timeout_microseconds = timeout_ms * 1000
    policy.allow_timeout_override = True
    policy.max_queue_size = queue_size


def _instances(config, count: int, kind: str) -> None:
    config.instance_group.add(count=count, kind=model_config_pb2().ModelInstanceGroup.Kind.Value(kind))


def _warmup(config, samples: list[Warmup]) -> None:
    dtype = model_config_pb2().DataType.Value
    for sample in samples:
        warm = config.model_warmup.add(name=sample.name, batch_size=sample.batch)
        tensor = warm.inputs[sample.tensor]
        tensor.data_type = dtype(sample.dtype)
        tensor.dims.extend(sample.dims)
        if sample.data_file:
            tensor.input_data_file = sample.data_file
        else:
            tensor.zero_data = True


def _parameters(config, values: dict) -> None:
    for key, value in values.items():
        config.parameters[key].string_value = str(value)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _image_input_and_results(config, plan: RepositoryPlan) -> None:
    """What a model clients send images to takes and gives: IMAGE bytes in, infer.py's answer out."""
    _tensor(config.input, IMAGE, "TYPE_STRING", [1])
    _results(config, plan)


def _results(config, plan: RepositoryPlan) -> None:
    """infer.py's answer: the probabilities (labelled) and the top-k ids, scores and labels."""
    _tensor(config.output, "PROBABILITIES", "TYPE_FP32", [plan.num_classes], "labels.txt")
    _tensor(config.output, "TOPK_IDS", "TYPE_INT64", [plan.topk])
    _tensor(config.output, "TOPK_SCORES", "TYPE_FP32", [plan.topk])
    _tensor(config.output, "TOPK_LABELS", "TYPE_STRING", [plan.topk])


# --------------------------------------------------------------------------------------------------------
# The models


def preprocess_config(plan: RepositoryPlan) -> tuple[Any, str]:
    o, spec = plan.options, plan.recipe.spec
    config = _config(plan.names.preprocess, plan.max_batch, backend="python")
    _tensor(config.input, IMAGE, "TYPE_STRING", [1])
    _tensor(config.output, PIXELS, "TYPE_FP32", [3, *spec.crop_hw])
    _batching(config, 0, o.queue_size(plan.max_batch), o.queue_timeout_ms)
    _instances(config, o.preprocess_instances, "KIND_CPU")
    _warmup(config, [Warmup("a JPEG (OpenCV's first decode)", 1, IMAGE, "TYPE_STRING", (1,), WARMUP_SAMPLE)])
    _parameters(config, {"preprocess_sha256": spec.sha256(), "preprocess_spec": spec.to_json(), "threads": "0",
                         "max_image_pixels": o.max_image_pixels, "max_image_bytes": o.max_image_bytes,
                         "costly_pixels": o.costly_image_pixels, "decode_deadline_ms": o.decode_deadline_ms})
    return config, (f"Encoded image bytes → float32 [3,{spec.crop_hw[0]},{spec.crop_hw[1]}]: "
                    f"trt_res2net.data.preprocess, vendored in 1/{VENDORED_PACKAGE}")


def postprocess_config(plan: RepositoryPlan) -> tuple[Any, str]:
    o, scores = plan.options, plan.classifier_dims[1]
    config = _config(plan.names.postprocess, plan.max_batch, backend="python")
    _tensor(config.input, SCORES, "TYPE_FP32", scores)
    _results(config, plan)
    _batching(config, 0, o.queue_size(plan.max_batch), o.queue_timeout_ms)
    _instances(config, 1, "KIND_CPU")  # a softmax and top-k over [C] take microseconds, whatever the instances
    _warmup(config, [Warmup("zeros", 1, SCORES, "TYPE_FP32", tuple(scores))])
    _parameters(config, {"outputs_probabilities": _flag(plan.io.outputs_probabilities)})
    return config, ("Classifier outputs → probabilities and the top-k with labels: trt_res2net.data.postprocess, "
                    "vendored in 1/" + VENDORED_PACKAGE)


def plan_classifier_config(plan: RepositoryPlan, engine: ServedEngine) -> tuple[Any, str]:
    """The TensorRT engine (``plan.engine``) on Triton's TensorRT backend, released at the batch size it was tuned
    for."""
    o, io = plan.options, plan.io
    config = _config(plan.names.classifier_plan, engine.max_batch, platform="tensorrt_plan")
    _tensor(config.input, io.input_name, "TYPE_FP32", engine.input_dims)
    _tensor(config.output, io.output_name, "TYPE_FP32", engine.output_dims)
    opt = engine.opt_batch
    _batching(config, o.queue_delay_us, o.queue_size(engine.max_batch), o.queue_timeout_ms,
              [opt] if 1 < opt < engine.max_batch else [])
    _instances(config, o.instances, "KIND_GPU")
    warm_1 = Warmup("zeros, batch 1 (the first run's allocations)", 1, io.input_name, "TYPE_FP32",
                    tuple(plan.classifier_dims[0]))
    _warmup(config, [warm_1] + ([Warmup(f"zeros, batch {opt}", opt, io.input_name, "TYPE_FP32", engine.input_dims)]
                                if opt > 1 else []))
    built = engine.manifest
    return config, (f"The TensorRT engine {engine.engine_path.name} (TensorRT {built.library_version or '?'}, "
                    f"{built.precision or '?'}, built for {engine.gpu_name}): it runs only on that GPU model with "
                    "that TensorRT release")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _classifier(plan: RepositoryPlan, name: str, kind: str, **backend):
    """A classifier model of the ONNX's I/O (float32 pixels in, scores out), batched and queued as the options say;
    (config, input dims)."""
    o, io = plan.options, plan.io
    in_dims, out_dims = plan.classifier_dims
    config = _config(name, plan.max_batch, **backend)
    _tensor(config.input, io.input_name, "TYPE_FP32", in_dims)
    _tensor(config.output, io.output_name, "TYPE_FP32", out_dims)
    _batching(config, o.queue_delay_us, o.queue_size(plan.max_batch), o.queue_timeout_ms)
    _instances(config, o.instances, kind)
    return config, in_dims


def onnx_classifier_config(plan: RepositoryPlan) -> tuple[Any, str]:
    o, io = plan.options, plan.io
    config, in_dims = _classifier(plan, plan.names.classifier_onnx, "KIND_AUTO", platform="onnxruntime_onnx")
    _warmup(config, [Warmup("zeros, batch 1 (the first run's allocations)", 1, io.input_name, "TYPE_FP32",
                            tuple(in_dims))])
    # Triton's ONNX Runtime backend runs its instances as threads of one process, each session with its own pool:
    # with several, each gets the cores ÷ instances (of this machine, where nothing says otherwise).
    threads = o.intra_op_threads or (max(1, _cores() // o.instances) if o.instances > 1 else 0)
    if threads:
        _parameters(config, {"intra_op_thread_count": threads})
    return config, f"{plan.onnx_path.name} on Triton's ONNX Runtime backend (GPU when there is one, else CPU)"


def pipeline_config(plan: RepositoryPlan) -> tuple[Any, str]:
    """``M_python``: the ensembles' three steps in one Python-backend process, the ONNX on ONNX Runtime."""
    o, spec = plan.options, plan.recipe.spec
    config = _config(plan.names.python, plan.max_batch, backend="python")
    _image_input_and_results(config, plan)
    _batching(config, o.queue_delay_us, o.queue_size(plan.max_batch), o.queue_timeout_ms)
    _instances(config, o.instances, "KIND_CPU")
    image = Warmup("a JPEG, batch 1 (OpenCV's first decode, ONNX Runtime's first run)", 1, IMAGE, "TYPE_STRING",
                   (1,), WARMUP_SAMPLE)
    # two at once too: the request threads and concurrent runs on the session (pipeline_model.py)
    twice = Warmup("the same JPEG twice, batch 2 (two requests side by side)", 2, IMAGE, "TYPE_STRING", (1,),
                   WARMUP_SAMPLE)
    _warmup(config, [image] + ([twice] if plan.max_batch > 1 else []))
    _parameters(config, {"preprocess_sha256": spec.sha256(), "preprocess_spec": spec.to_json(),
                         "max_image_pixels": o.max_image_pixels, "max_image_bytes": o.max_image_bytes,
                         "costly_pixels": o.costly_image_pixels, "decode_deadline_ms": o.decode_deadline_ms,
                         "intra_op_threads": o.intra_op_threads,
                         "outputs_probabilities": _flag(plan.io.outputs_probabilities),
                         # the CPU model, run in process instead of the ONNX where the repository has one
                         "classifier": "openvino" if plan.cpu_model is not None else "onnx",
                         "inference_precision": plan.cpu_manifest.inference_precision if plan.cpu_manifest else ""})
    return config, ("Image bytes → infer.py's answer in one process: trt_res2net.data.preprocess, "
                    f"{plan.onnx_path.name} on ONNX Runtime, trt_res2net.data.postprocess (vendored in 1/"
                    f"{VENDORED_PACKAGE}); any Triton with the Python backend")


def openvino_classifier_config(plan: RepositoryPlan) -> tuple[Any, str]:
    """The CPU model on Triton's OpenVINO backend (NVIDIA's containers): latency mode, one stream per instance;
    BF16 inference for a bf16 model (``HINT_BF16``; the backend has no parameter forcing FP32, so an fp32 model on a
    CPU with BF16 runs as OpenVINO's default there: BF16)."""
    m = plan.cpu_manifest  # its I/O names are the ONNX's (OpenVINO keeps them)
    config, _ = _classifier(plan, plan.names.classifier_openvino, "KIND_CPU", backend="openvino")
    params = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}
    if m.inference_precision == "bf16":
        params["HINT_BF16"] = "YES"
    _parameters(config, params)
    return config, (f"The CPU model ({m.precision.upper()}, OpenVINO {m.library_version.split('-')[0]}) on Triton's "
                    "OpenVINO backend")


def ensemble_config(plan: RepositoryPlan, name: str, classifier: str, max_batch: int,
                    variant: str) -> tuple[Any, str]:
    """Image bytes → the preprocessing → ``classifier`` → the postprocessing, as one model."""
    config = _config(name, max_batch, platform="ensemble")
    _image_input_and_results(config, plan)
    steps = config.ensemble_scheduling.step
    for model, inputs, outputs in (
            (plan.names.preprocess, {IMAGE: IMAGE}, {PIXELS: "pixels"}),
            (classifier, {plan.io.input_name: "pixels"}, {plan.io.output_name: "scores"}),
            (plan.names.postprocess, {SCORES: "scores"}, {o: o for o in ENSEMBLE_OUTPUTS})):
        step = steps.add(model_name=model, model_version=-1)
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    names = plan.names
    return config, (f"Image bytes → {names.preprocess} → {classifier} ({variant}) → {names.postprocess}: infer.py's "
                    "answer")
