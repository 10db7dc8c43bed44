"""A Triton Inference Server model repository from what build.py made (``build.py ... --triton-repo DIR``).

For a model ``M`` (the zoo name, or the ONNX file's stem) the repository holds::

    M_preprocess/            python        image bytes (TYPE_STRING) → float32 [3,224,224]: trt_res2net.data.preprocess
    M_classifier_plan/       tensorrt_plan the TensorRT engine as 1/model.plan (only when a standard TensorRT
                                           engine was built; batch and dims from its manifest)
    M_classifier_onnx/       onnxruntime_onnx   the ONNX as 1/model.onnx (always: CPU nodes, and the fallback)
    M_postprocess/           python        outputs → PROBABILITIES, TOPK_IDS, TOPK_SCORES, TOPK_LABELS
    M_plan, M_onnx           ensemble      IMAGE → preprocess → that classifier → postprocess
    M                        ensemble      the same as M_plan when there is a plan, else as M_onnx
    M_python/                python        IMAGE → the same three steps in one process, the ONNX on ONNX Runtime
                                           inside the Python backend (any Triton with the Python backend)
    trt_res2net_repository.json            what was exported, from what (Triton ignores files at the top)

Every classifier takes the ONNX's input name and gives its output name; the ensembles and ``M_python`` (the image
models) take ``IMAGE`` (encoded image bytes, any format OpenCV decodes, one per batch row) and give what
``infer.py`` prints. Every model is dynamically batched. ``M_python`` needs nothing but Triton's Python backend
(and numpy, OpenCV, ONNX Runtime in its Python): the ``tritonserver`` of the ``serve`` extra serves it, and CI
does. Its steps are the Python models' own (``triton_models/steps.py``), run back to back: one process instead of
three saves each request two hand-offs, which a CPU server pays in throughput (docs/triton.md).

What a public endpoint meets is bounded in the configs (docs/triton.md, "Hostile input and load"): the
preprocessing refuses an image over ``max_image_bytes`` or whose header declares more than ``max_image_pixels``
before decoding it (``INVALID_ARG``: HTTP 400 / gRPC ``INVALID_ARGUMENT``, as every undecodable image); every
model's queue is bounded (``max_queue_size``) and a request waiting longer than the queue timeout is rejected
(HTTP 503 / ``UNAVAILABLE``); every model that initialises lazily is warmed up before it reports ready
(``model_warmup``: ONNX Runtime's first run, OpenCV's first decode); the Python model's instances split the
serving machine's cores between them (``intra_op_threads``).

Every ``config.pbtxt`` is parsed by Triton's own ModelConfig proto (``tritonclient``'s ``model_config_pb2``) and
cross-checked against the ONNX and the engine manifest (names, dims, data types, batch), and every ensemble
against its steps, before anything is put under DIR; the repository is built in a temporary folder beside DIR and
renamed into place, so DIR is either the old repository or the complete new one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..core import log
from ..core.errors import MissingDependency, UserError
from ..core.version import __version__
from ..data.preprocess import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS

REPOSITORY_FILE = "trt_res2net_repository.json"
REPOSITORY_FORMAT = "trt_res2net.triton-repository"
DEFAULT_MAX_BATCH = 32
# Measured (docs/triton.md, "Batching and the queue delay"): with no delay a busy instance still gets batches (the
# requests that queued while it ran), and an idle one starts at once; a delay only adds latency at low load.
DEFAULT_QUEUE_DELAY_US = 0
DEFAULT_QUEUE_TIMEOUT_MS = 5000
QUEUE_SIZE_PER_BATCH = 4  # default max_queue_size: this many full batches per model
# Measured (docs/triton.md): two decoding instances take side by side the requests a finished batch sends back at
# once (4 in flight: 0-1 ms of queueing per request instead of 8-13 ms with one); more only add processes.
DEFAULT_PREPROCESS_INSTANCES = 2
DEFAULT_TOPK = 5
WARMUP_IMAGE = "warmup/image.bin"  # the preprocessing's warm-up sample (Triton's serialized BYTES: length + data)
IMAGE, PIXELS, SCORES = "IMAGE", "PIXELS", "SCORES"
ENSEMBLE_OUTPUTS = ("PROBABILITIES", "TOPK_IDS", "TOPK_SCORES", "TOPK_LABELS")
VENDORED_PACKAGE = "trt_res2net_vendored"
# The modules copied byte for byte, in their subpackages (their relative imports keep working there).
VENDORED_MODULES = (
    "core/errors.py", "core/lazy.py", "data/image_header.py", "data/preprocess.py", "data/postprocess.py",
    "serving/triton_models/steps.py")
TEMPLATES = {"preprocess": "preprocess_model.py", "postprocess": "postprocess_model.py",
             "pipeline": "pipeline_model.py"}
INSTALL_HINT = "pip install 'trt-res2net[triton]' (tritonclient, whose model_config_pb2 is Triton's ModelConfig proto)"
# Triton's ModelConfig data types for the names the engine manifest and ONNX use.
_TRITON_DTYPES = {"float32": "TYPE_FP32", "float": "TYPE_FP32", "fp32": "TYPE_FP32",
                  "float16": "TYPE_FP16", "half": "TYPE_FP16", "fp16": "TYPE_FP16",
                  "int32": "TYPE_INT32", "int64": "TYPE_INT64", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8",
                  "bool": "TYPE_BOOL", "bfloat16": "TYPE_BF16", "bf16": "TYPE_BF16"}


# --------------------------------------------------------------------------------------------------------
# Triton's ModelConfig proto (from tritonclient; needed to write a repository)


def model_config_pb2():
    """Triton's ``model_config_pb2`` from tritonclient; MissingDependency naming the install when absent.

    ``tritonclient.grpc``'s package needs grpcio (and protobuf < 7); without them the generated module, which
    needs only protobuf, is loaded from its file."""
    try:
        from tritonclient.grpc import model_config_pb2 as pb2

        return pb2
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "tritonclient":
            raise MissingDependency(f"writing a Triton model repository checks each config.pbtxt against Triton's "
                                    f"ModelConfig proto: {INSTALL_HINT}") from None
    except Exception:  # tritonclient without its grpc extra: RuntimeError("... does not include grpc support")
        pass
    return _load_pb2_from_file()


def _load_pb2_from_file():
    import importlib.util

    spec = importlib.util.find_spec("tritonclient")
    path = Path(next(iter(spec.submodule_search_locations or []), "")) / "grpc" / "model_config_pb2.py"
    if spec is None or not path.is_file():
        raise MissingDependency(f"tritonclient has no grpc/model_config_pb2.py: {INSTALL_HINT}")
    name = "trt_res2net._triton_model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        raise MissingDependency(f"cannot load Triton's ModelConfig proto from {path} ({e}): {INSTALL_HINT}") from None
    sys.modules[name] = module
    return module


def parse_config(text: str, where: str = "config.pbtxt"):
    """A ``config.pbtxt`` → ``ModelConfig``; UserError with the proto parser's own message."""
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"{where}: not a valid Triton ModelConfig ({e})") from None


# --------------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class TritonOptions:
    """The repository's serving settings (build.py's ``--triton-*`` flags map onto these).

    ``max_batch``: max_batch_size of the ONNX/Python models and steps (None: the engine's max batch, else
    32); ``queue_delay_us``: how long a model waits to fill a batch; ``instances``: instances of each classifier
    and of the pipeline model (per GPU for the plan); ``topk``: classes the image models return; ``labels``: a
    labels file (infer.py's formats; None: ImageNet's for 1000 classes, else the ids); ``preprocess_instances``:
    instances of the preprocessing (decoding) model; ``intra_op_threads``: ONNX Runtime threads per instance (0:
    the serving machine's cores ÷ ``instances``, so that instances × threads ≤ cores); ``max_queue_size``:
    requests each model queues before rejecting more (None: ``QUEUE_SIZE_PER_BATCH`` × its max_batch_size);
    ``queue_timeout_ms``: a request queued longer is rejected (0: never); ``max_image_pixels`` /
    ``max_image_bytes``: the largest image the preprocessing decodes (data/preprocess.py's defaults)."""

    max_batch: int | None = None
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1
    topk: int = DEFAULT_TOPK
    labels: Path | None = None
    preprocess_instances: int = DEFAULT_PREPROCESS_INSTANCES
    intra_op_threads: int = 0
    max_queue_size: int | None = None
    queue_timeout_ms: int = DEFAULT_QUEUE_TIMEOUT_MS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def __post_init__(self):
        if self.labels is not None:
            object.__setattr__(self, "labels", Path(self.labels))
        if not 0 <= self.queue_delay_us <= 10_000_000 or self.instances < 1 or self.topk < 1:
            raise UserError("--triton-queue-delay-us must be 0..10000000 µs, --triton-instances and --triton-topk ≥ 1")
        if self.max_batch is not None and self.max_batch < 1:
            raise UserError(f"--triton-max-batch must be ≥ 1, not {self.max_batch}")
        for flag, value, low in (("--triton-preprocess-instances", self.preprocess_instances, 1),
                                 ("--triton-intra-op-threads", self.intra_op_threads, 0),
                                 ("--triton-max-queue-size", self.max_queue_size, 1),
                                 ("--triton-queue-timeout-ms", self.queue_timeout_ms, 0),
                                 ("--triton-max-image-pixels", self.max_image_pixels, 1),
                                 ("--triton-max-image-bytes", self.max_image_bytes, 1)):
            if value is not None and value < low:
                raise UserError(f"{flag} must be ≥ {low}, not {value}")

    def queue_size(self, max_batch: int) -> int:
        return self.max_queue_size or QUEUE_SIZE_PER_BATCH * max_batch


def check_repository_target(path: str | os.PathLike) -> Path:
    """Before any work: tritonclient (for the proto) is here and ``path`` can become a repository."""
    path = Path(path)
    model_config_pb2()
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    return path


# --------------------------------------------------------------------------------------------------------
# What goes in


@dataclass
class PlanInfo:
    """The standard TensorRT engine as Triton sees it: batch 1..max_batch, dims without the batch."""

    engine_path: Path
    max_batch: int
    input_dims: list[int]
    output_dims: list[int]
    dtype: str
    manifest: dict
    opt_batch: int = 1


@dataclass
class TritonRepository:
    """A Triton model repository as written: its folder, the models and ensembles in it, the model a client sends
    images to by default, why a TensorRT plan model was left out (if one was), and each model's config."""

    path: Path
    models: list[str]
    ensembles: list[str]
    image_models: list[str]  # what a client sends images to: the ensembles and the pipeline
    default_ensemble: str
    plan_skipped: str | None = None
    configs: dict = field(default_factory=dict)


def _dims(shape) -> list[int]:
    return [-1 if d is None or (isinstance(d, int) and d < 0) else int(d) for d in shape]


def _triton_dtype(name: str, where: str) -> str:
    key = str(name).lower().replace("dtype.", "").replace("torch.", "")
    if key not in _TRITON_DTYPES:
        raise UserError(f"{where}: data type {name!r} has no Triton equivalent here")
    return _TRITON_DTYPES[key]


def _num_classes(onnx_path: Path, io) -> int:
    if io.io.num_classes:
        return int(io.io.num_classes)
    from ..runtime.onnx_runtime import OnnxRuntimeBackend  # a symbolic class dimension: one probe batch tells

    return int(OnnxRuntimeBackend(onnx_path).num_classes)


def plan_from_manifest(engine_path, io, onnx_sha256: str | None = None) -> tuple[PlanInfo | None, str | None]:
    """The engine as a Triton plan, or (None, why not) when Triton cannot use it as one.

    A manifest that contradicts the ONNX (names, dims) or an engine file that is not the one it describes is a
    UserError: that repository would be wrong, not merely without a plan."""
    from ..engine.manifest import check_engine_file, read_manifest

    engine_path = Path(engine_path)
    manifest = read_manifest(engine_path)
    where = f"engine manifest of {engine_path.name}"
    family = manifest["engine_family"]  # read_manifest fills it in for manifests older than the RTX family
    if family != "tensorrt":
        return None, (f"{engine_path.name} is a {family} engine, which Triton's TensorRT backend (standard TensorRT) "
                      "cannot load: the repository serves the ONNX model instead")
    if not engine_path.is_file():
        raise UserError(f"{engine_path}: no such engine file")
    check_engine_file(manifest, engine_path)
    if onnx_sha256 is not None:
        built_from = {manifest.get("onnx_sha256"), manifest.get("fp32_onnx_sha256")} - {None}
        if built_from and onnx_sha256 not in built_from:
            raise UserError(f"{where}: the engine was built from another ONNX than the one exported (onnx_sha256 "
                            "differs); build both in one build.py run")
    mio = manifest.get("io") or {}
    min_, mout = mio.get("input") or {}, mio.get("output") or {}
    for role, m, name, shape in (("input", min_, io.input_name, io.input_shape),
                                 ("output", mout, io.output_name, io.output_shape)):
        if m.get("name") != name:
            raise UserError(f"{where}: {role} is named {m.get('name')!r}, the ONNX's is {name!r}")
        mshape = m.get("shape")
        if not isinstance(mshape, list) or len(mshape) != len(shape):
            raise UserError(f"{where}: {role} shape {mshape} does not have the ONNX's rank {len(shape)}")
        for i, (a, b) in enumerate(zip(_dims(mshape)[1:], _dims(shape)[1:], strict=True), 1):
            if a != -1 and b != -1 and a != b:
                raise UserError(f"{where}: {role} dimension {i} is {a}, the ONNX's is {b}")
    profiles = manifest.get("profiles") or []
    if not profiles:
        raise UserError(f"{where}: no optimization profile recorded (\"profiles\")")
    profile = profiles[0]
    pmin, pmax = profile.get("min") or [], profile.get("max") or []
    if len(pmin) != 4 or len(pmax) != 4:
        raise UserError(f"{where}: profile {profile} is not NCHW min/opt/max shapes")
    dtypes = {str(min_.get("dtype", "float32")).lower(), str(mout.get("dtype", "float32")).lower()}
    if not dtypes <= {"float32", "float", "fp32"}:
        return None, (f"{engine_path.name} has {'/'.join(sorted(dtypes))} I/O; the ensemble feeds float32 (build with "
                      "float32 I/O, as build.py does): the repository serves the ONNX model instead")
    if int(pmin[0]) != 1:
        return None, (f"{engine_path.name}'s profile starts at batch {pmin[0]}, but Triton's dynamic batcher sends "
                      "any batch from 1 (rebuild with --min-batch 1): the repository serves the ONNX model instead")
    in_dims = _dims(min_.get("shape"))[1:]
    for i, (lo, hi) in enumerate(zip(pmin[1:], pmax[1:], strict=True)):
        if lo != hi:
            return None, (f"{engine_path.name}'s profile varies dimension {i + 1} ({lo}..{hi}); the ensemble sends "
                          f"{in_dims}: the repository serves the ONNX model instead")
    popt = profile.get("opt") or pmax
    return PlanInfo(engine_path=engine_path, max_batch=int(pmax[0]), input_dims=[int(d) for d in pmax[1:]],
                    output_dims=_dims(mout.get("shape"))[1:], dtype="TYPE_FP32", manifest=manifest,
                    opt_batch=min(max(1, int(popt[0])), int(pmax[0]))), None


# --------------------------------------------------------------------------------------------------------
# config.pbtxt text


def _q(text: str) -> str:
    return json.dumps(text)


def _tensor(name: str, dtype: str, dims: list[int], label_filename: str | None = None) -> str:
    label = f" label_filename: {_q(label_filename)}" if label_filename else ""
    return f"  {{ name: {_q(name)} data_type: {dtype} dims: [ {', '.join(map(str, dims))} ]{label} }}"


def _tensors(kind: str, items: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def _parameters(params: dict[str, str]) -> str:
    return "".join(f"parameters {{ key: {_q(k)} value: {{ string_value: {_q(str(v))} }} }}\n"
                   for k, v in params.items())


def _header(name: str, kind: str, max_batch: int, comment: str) -> str:
    return (f"# {comment}\n# Written by trt_res2net {__version__} (build.py --triton-repo).\n"
            f"name: {_q(name)}\n{kind}\nmax_batch_size: {max_batch}\n")


def _batching(delay_us: int, queue_size: int, timeout_ms: int, preferred: list[int] | None = None) -> str:
    """Dynamic batching with a bounded queue: more than ``queue_size`` waiting requests, or one waiting longer than
    ``timeout_ms``, are rejected (UNAVAILABLE: HTTP 503); a client may ask for a shorter timeout."""
    pref = f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n" if preferred else ""
    return ("dynamic_batching {\n"
            f"  max_queue_delay_microseconds: {delay_us}\n{pref}"
            f"  default_queue_policy {{ timeout_action: REJECT default_timeout_microseconds: {timeout_ms * 1000} "
            f"allow_timeout_override: true max_queue_size: {queue_size} }}\n}}\n")


def _warmup(samples: list[tuple[str, int, str, str, list[int], str | None]]) -> str:
    """``model_warmup``: Triton runs these before the model reports ready. Each sample is (name, batch size, input,
    data type, dims, input_data_file or None for zeros)."""
    items = []
    for name, batch, tensor, dtype, dims, data_file in samples:
        data = f"input_data_file: {_q(data_file)}" if data_file else "zero_data: true"
        items.append(f"  {{ name: {_q(name)} batch_size: {batch} inputs {{ key: {_q(tensor)} value: {{ data_type: "
                     f"{dtype} dims: [ {', '.join(map(str, dims))} ] {data} }} }} }}")
    return "model_warmup [\n" + ",\n".join(items) + "\n]\n"


def _instances(count: int, kind: str) -> str:
    return f"instance_group [ {{ count: {count} kind: {kind} }} ]\n"


@dataclass
class _Names:
    """The repository's model names, each ``<model>_<step>``: a name not listed here is an AttributeError."""

    model: str

    preprocess = property(lambda self: f"{self.model}_preprocess")
    postprocess = property(lambda self: f"{self.model}_postprocess")
    classifier_plan = property(lambda self: f"{self.model}_classifier_plan")
    classifier_onnx = property(lambda self: f"{self.model}_classifier_onnx")
    python = property(lambda self: f"{self.model}_python")


# --------------------------------------------------------------------------------------------------------
# The export


@dataclass
class _Source:
    """What goes in, checked: the FP32 ONNX, the engine when Triton can serve it, the labels and the batch."""

    onnx_path: Path
    onnx_sha256: str
    io: object  # model.contract.OnnxIO
    num_classes: int
    labels: list[str]
    plan: PlanInfo | None
    plan_skipped: str | None
    max_batch: int
    topk: int

    @property
    def outputs_probabilities(self) -> bool:
        return self.io.outputs_probabilities

    @property
    def classifier_dims(self) -> tuple[list[int], list[int]]:
        out_dims = _dims(self.io.output_shape)[1:]
        return _dims(self.io.input_shape)[1:], [self.num_classes if d == -1 and i == 0 else d
                                                for i, d in enumerate(out_dims)]


def _read_source(onnx_path: Path, engine_path, options: TritonOptions) -> _Source:
    from ..core.hashing import sha256_file
    from ..data.postprocess import load_labels
    from ..model.contract import inspect_onnx

    io = inspect_onnx(onnx_path, dtypes=("float32",))  # the ensembles feed float32
    if io.batch is not None:
        raise UserError(f"{onnx_path}: input {io.input_name!r} has a fixed batch of {io.batch}; Triton's dynamic "
                        "batching needs a dynamic batch dimension (export it with one)")
    num_classes = _num_classes(onnx_path, io)
    labels = load_labels(options.labels, num_classes)
    if any("\n" in label or "\r" in label for label in labels):
        raise UserError("a class label contains a line break; Triton's label files hold one label per line")
    onnx_sha = sha256_file(onnx_path)
    plan, plan_skipped = (None, None) if engine_path is None else plan_from_manifest(engine_path, io, onnx_sha)
    if plan_skipped:
        log.warn(f"Triton repository: {plan_skipped}")
    return _Source(onnx_path, onnx_sha, io, num_classes, labels, plan, plan_skipped,
                   max_batch=options.max_batch or (plan.max_batch if plan else DEFAULT_MAX_BATCH),
                   topk=min(options.topk, num_classes))


@dataclass
class _Repository:
    """The repository being assembled: config text and files per model, and the classifiers and ensembles."""

    names: _Names
    configs: dict[str, str] = field(default_factory=dict)
    files: dict[str, list] = field(default_factory=dict)  # model → [(relative path, source Path | str | bytes)]
    classifiers: dict[str, tuple[str, int]] = field(default_factory=dict)  # variant → (model name, max batch)
    ensembles: dict[str, tuple[str, int, str]] = field(default_factory=dict)  # name → (classifier, batch, variant)
    pipeline: str | None = None  # the one-process Python model

    def add(self, name: str, config: str, files: list) -> None:
        self.configs[name], self.files[name] = config, files


def _result_tensors(src: _Source) -> list[str]:
    k = src.topk
    return [_tensor("PROBABILITIES", "TYPE_FP32", [src.num_classes], "labels.txt"),
            _tensor("TOPK_IDS", "TYPE_INT64", [k]), _tensor("TOPK_SCORES", "TYPE_FP32", [k]),
            _tensor("TOPK_LABELS", "TYPE_STRING", [k])]


def _warmup_image() -> bytes:
    """A JPEG of a synthetic scene at ImageNet validation sizes, serialized as Triton reads a BYTES warm-up input:
    a 4-byte little-endian length, then the bytes."""
    import struct

    import cv2
    import numpy as np

    from ..data.synthetic import make_image

    _, jpeg = cv2.imencode(".jpg", make_image(np.random.default_rng(0), size_range=(375, 500)),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])
    return struct.pack("<I", len(jpeg)) + jpeg.tobytes()


def _add_pre_and_postprocessing(repo: _Repository, src: _Source, labels_text: str, options: TritonOptions) -> None:
    from ..data.preprocess import SPEC

    n, batch, vendored = repo.names, src.max_batch, _vendored_files()
    c = SPEC.crop_size
    queue = (options.queue_size(batch), options.queue_timeout_ms)
    repo.add(n.preprocess,
             _header(n.preprocess, 'backend: "python"', batch, "Encoded image bytes → float32 [3,224,224]: "
                     "trt_res2net.data.preprocess, vendored in 1/" + VENDORED_PACKAGE)
             + _tensors("input", [_tensor(IMAGE, "TYPE_STRING", [1])])
             + _tensors("output", [_tensor(PIXELS, "TYPE_FP32", [3, c, c])])
             + _batching(0, *queue) + _instances(options.preprocess_instances, "KIND_CPU")
             + _warmup([("a JPEG (OpenCV's first decode)", 1, IMAGE, "TYPE_STRING", [1], "image.bin")])
             + _parameters({"preprocess_sha256": SPEC.sha256(), "preprocess_spec": SPEC.to_json(), "threads": "0",
                            "max_image_pixels": options.max_image_pixels,
                            "max_image_bytes": options.max_image_bytes}),
             [("1/model.py", _template("preprocess")), (WARMUP_IMAGE, _warmup_image())] + vendored)
    probs_mode = "true" if src.outputs_probabilities else "false"
    repo.add(n.postprocess,
             _header(n.postprocess, 'backend: "python"', batch, "Classifier outputs → probabilities and the top-k "
                     "with labels: trt_res2net.data.postprocess, vendored in 1/" + VENDORED_PACKAGE)
             + _tensors("input", [_tensor(SCORES, "TYPE_FP32", src.classifier_dims[1])])
             + _tensors("output", _result_tensors(src))
             # one instance: a softmax and top-k over [C] take microseconds per request, whatever the instances
             + _batching(0, *queue) + _instances(1, "KIND_CPU")
             + _warmup([("zeros", 1, SCORES, "TYPE_FP32", src.classifier_dims[1], None)])
             + _parameters({"outputs_probabilities": probs_mode}),
             [("1/model.py", _template("postprocess")), ("labels.txt", labels_text)] + vendored)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _add_classifiers(repo: _Repository, src: _Source, options: TritonOptions) -> None:
    n, batch, io, plan = repo.names, src.max_batch, src.io, src.plan
    in_dims, out_dims = src.classifier_dims
    classifier_io = (_tensors("input", [_tensor(io.input_name, "TYPE_FP32", in_dims)])
                     + _tensors("output", [_tensor(io.output_name, "TYPE_FP32", out_dims)]))
    warm_1 = ("zeros, batch 1 (the first run's allocations)", 1, io.input_name, "TYPE_FP32", in_dims, None)
    if plan is not None:
        opt = plan.opt_batch
        preferred = [opt] if 1 < opt < plan.max_batch else None  # release at the size the engine was tuned for
        warm = [warm_1] + ([(f"zeros, batch {opt}", opt, io.input_name, plan.dtype, plan.input_dims, None)]
                           if opt > 1 else [])
        repo.add(n.classifier_plan,
                 _header(n.classifier_plan, 'platform: "tensorrt_plan"', plan.max_batch,
                         f"The TensorRT engine {plan.engine_path.name} (TensorRT "
                         f"{plan.manifest.get('library_version', '?')}, {plan.manifest.get('precision', '?')}, "
                         f"built for {_gpu_name(plan.manifest)}): it runs only on "
                         "that GPU model with that TensorRT release")
                 + _tensors("input", [_tensor(io.input_name, plan.dtype, plan.input_dims)])
                 + _tensors("output", [_tensor(io.output_name, plan.dtype, plan.output_dims)])
                 + _batching(options.queue_delay_us, options.queue_size(plan.max_batch), options.queue_timeout_ms,
                             preferred)
                 + _instances(options.instances, "KIND_GPU") + _warmup(warm),
                 [("1/model.plan", plan.engine_path)])
        repo.classifiers["plan"] = (n.classifier_plan, plan.max_batch)
    batching = _batching(options.queue_delay_us, options.queue_size(batch), options.queue_timeout_ms)
    onnx_name = src.onnx_path.name
    # Triton's ONNX Runtime backend runs its instances as threads of one process, each session with its own pool:
    # with several, each gets the cores ÷ instances (of this machine, where nothing says otherwise).
    threads = options.intra_op_threads or (max(1, _cores() // options.instances) if options.instances > 1 else 0)
    repo.add(n.classifier_onnx,
             _header(n.classifier_onnx, 'platform: "onnxruntime_onnx"', batch,
                     f"{onnx_name} on Triton's ONNX Runtime backend (GPU when there is one, else CPU)")
             + classifier_io + batching + _instances(options.instances, "KIND_AUTO") + _warmup([warm_1])
             + (_parameters({"intra_op_thread_count": threads}) if threads else ""),
             [("1/model.onnx", src.onnx_path)])
    repo.classifiers["onnx"] = (n.classifier_onnx, batch)


def _add_pipeline(repo: _Repository, src: _Source, labels_text: str, options: TritonOptions) -> None:
    """``M_python``: the ensembles' three steps in one Python-backend process, the ONNX on ONNX Runtime."""
    from ..data.preprocess import SPEC

    n, batch = repo.names, src.max_batch
    image = ("a JPEG, batch 1 (OpenCV's first decode, ONNX Runtime's first run)", 1, IMAGE, "TYPE_STRING", [1],
             "image.bin")
    repo.add(n.python,
             _header(n.python, 'backend: "python"', batch,
                     "Image bytes → infer.py's answer in one process: trt_res2net.data.preprocess, "
                     f"{src.onnx_path.name} on ONNX Runtime, trt_res2net.data.postprocess (vendored in 1/"
                     f"{VENDORED_PACKAGE}); any Triton with the Python backend")
             + _tensors("input", [_tensor(IMAGE, "TYPE_STRING", [1])])
             + _tensors("output", _result_tensors(src))
             + _batching(options.queue_delay_us, options.queue_size(batch), options.queue_timeout_ms)
             + _instances(options.instances, "KIND_CPU")
             # two at once too: the request threads and concurrent runs on the session (pipeline_model.py)
             + _warmup([image] + ([("the same JPEG twice, batch 2 (two requests side by side)", 2, *image[2:])]
                                  if batch > 1 else []))
             + _parameters({"preprocess_sha256": SPEC.sha256(), "preprocess_spec": SPEC.to_json(),
                            "max_image_pixels": options.max_image_pixels, "max_image_bytes": options.max_image_bytes,
                            "intra_op_threads": options.intra_op_threads,
                            "outputs_probabilities": "true" if src.outputs_probabilities else "false"}),
             [("1/model.py", _template("pipeline")), ("1/model.onnx", src.onnx_path), (WARMUP_IMAGE, _warmup_image()),
              ("labels.txt", labels_text)] + _vendored_files())
    repo.pipeline = n.python


def _add_ensembles(repo: _Repository, src: _Source, model_name: str, labels_text: str) -> None:
    for variant, (classifier, cmax) in repo.classifiers.items():
        repo.ensembles[f"{model_name}_{variant}"] = (classifier, min(src.max_batch, cmax), variant)
    default_variant = "plan" if src.plan is not None else "onnx"
    repo.ensembles[model_name] = repo.ensembles[f"{model_name}_{default_variant}"][:2] + (default_variant,)
    for name, (classifier, emax, variant) in repo.ensembles.items():
        repo.add(name, _ensemble_config(name, emax, repo.names, classifier, src.io, _result_tensors(src), variant),
                 [("1/.keep", ""), ("labels.txt", labels_text)])


def _record(repo: _Repository, src: _Source, model_name: str, options: TritonOptions) -> dict:
    from ..data.preprocess import SPEC

    plan = src.plan
    return {
        "format": REPOSITORY_FORMAT, "format_version": 1, "model": model_name,
        "default_ensemble": model_name, "ensembles": {name: {"classifier": e[0], "variant": e[2]}
                                                      for name, e in repo.ensembles.items()},
        "pipeline": repo.pipeline,
        "models": sorted(repo.configs),
        "onnx": {"file": src.onnx_path.name, "sha256": src.onnx_sha256, "input": src.io.input_name,
                 "output": src.io.output_name, "outputs_probabilities": src.outputs_probabilities},
        "engine": None if plan is None else {
            "file": plan.engine_path.name, "sha256": plan.manifest.get("engine_sha256"),
            "tensorrt_version": plan.manifest.get("library_version"), "precision": plan.manifest.get("precision"),
            "gpu": plan.manifest.get("gpu"), "max_batch": plan.max_batch},
        "engine_skipped": src.plan_skipped,
        "max_batch_size": src.max_batch, "queue_delay_us": options.queue_delay_us, "instances": options.instances,
        "preprocess_instances": options.preprocess_instances, "intra_op_threads": options.intra_op_threads,
        "max_queue_size": options.queue_size(src.max_batch), "queue_timeout_ms": options.queue_timeout_ms,
        "max_image_pixels": options.max_image_pixels, "max_image_bytes": options.max_image_bytes,
        "topk": src.topk, "num_classes": src.num_classes, "preprocess": SPEC.to_dict(),
        "preprocess_sha256": SPEC.sha256(), "trt_res2net_version": __version__,
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_triton_repository(out_dir: str | os.PathLike, onnx_path: str | os.PathLike, *, model_name: str | None = None,
                      engine_path: str | os.PathLike | None = None,
                      options: TritonOptions | None = None) -> TritonRepository:
    """Write the repository (module docstring) to ``out_dir``, atomically; returns what it holds.

    ``onnx_path`` is the FP32 ONNX (the ONNX models are the exact graph); ``engine_path`` a built engine with its
    manifest (None: ONNX models only) — a TensorRT-RTX engine, or one Triton's dynamic batcher cannot drive, is
    left out with a one-line warning. ``model_name`` (default: the ONNX's stem) names the models."""
    options = options or TritonOptions()
    model_config_pb2()  # a missing tritonclient stops here, before anything is written
    out_dir, onnx_path = Path(out_dir), Path(onnx_path)
    model_name = model_name or onnx_path.stem
    _check_replaceable(out_dir)
    if not _safe_name(model_name):
        raise UserError(f"model name {model_name!r} is not a Triton model name (letters, digits, '_', '-', '.')")
    src = _read_source(onnx_path, engine_path, options)
    labels_text = "".join(f"{label}\n" for label in src.labels)
    repo = _Repository(_Names(model_name))
    _add_pre_and_postprocessing(repo, src, labels_text, options)
    _add_classifiers(repo, src, options)
    _add_ensembles(repo, src, model_name, labels_text)
    _add_pipeline(repo, src, labels_text, options)

    parsed = {name: parse_config(text, f"{name}/config.pbtxt") for name, text in repo.configs.items()}
    validate_configs(parsed, onnx_io=src.io, num_classes=src.num_classes, plan=src.plan)
    _write_atomically(out_dir, repo.configs, repo.files, _record(repo, src, model_name, options))
    return TritonRepository(path=out_dir, models=sorted(repo.configs), ensembles=sorted(repo.ensembles),
                        image_models=sorted([*repo.ensembles, repo.pipeline]),
                        default_ensemble=model_name, plan_skipped=src.plan_skipped, configs=parsed)


def _ensemble_config(name, max_batch, n: _Names, classifier, io, result_tensors, variant) -> str:
    outputs = "".join(f'      output_map {{ key: "{o}" value: "{o}" }}\n' for o in ENSEMBLE_OUTPUTS)
    return (
        _header(name, 'platform: "ensemble"', max_batch,
                f"Image bytes → {n.preprocess} → {classifier} ({variant}) → {n.postprocess}: infer.py's answer")
        + _tensors("input", [_tensor(IMAGE, "TYPE_STRING", [1])])
        + _tensors("output", result_tensors)
        + "ensemble_scheduling {\n  step [\n"
        + f"    {{ model_name: {_q(n.preprocess)} model_version: -1\n"
        + f'      input_map {{ key: "{IMAGE}" value: "{IMAGE}" }}\n'
        + f'      output_map {{ key: "{PIXELS}" value: "pixels" }} }},\n'
        + f"    {{ model_name: {_q(classifier)} model_version: -1\n"
        + f'      input_map {{ key: {_q(io.input_name)} value: "pixels" }}\n'
        + f'      output_map {{ key: {_q(io.output_name)} value: "scores" }} }},\n'
        + f"    {{ model_name: {_q(n.postprocess)} model_version: -1\n"
        + f'      input_map {{ key: "{SCORES}" value: "scores" }}\n'
        + outputs.rstrip("\n") + " }\n  ]\n}\n"
    )


def _gpu_name(manifest: dict) -> str:
    gpu = manifest.get("gpu") or {}
    cc = gpu.get("compute_capability")
    return f"{gpu.get('name', '?')}" + (f", compute capability {cc}" if cc else "")


def _safe_name(name: str) -> bool:
    return bool(name) and all(ch.isalnum() or ch in "_-." for ch in name) and not name.startswith(".")


def _template(kind: str) -> str:
    return resources.files("trt_res2net.serving.triton_models").joinpath(TEMPLATES[kind]).read_text(encoding="utf-8")


def _vendored_files() -> list[tuple[str, object]]:
    package = resources.files("trt_res2net")
    files: list[tuple[str, object]] = [(f"1/{VENDORED_PACKAGE}/__init__.py",
                                        f'"""trt_res2net {__version__}\'s preprocessing and postprocessing, copied '
                                        'byte for byte by build.py --triton-repo."""\n')]
    folders = {"/".join(module.split("/")[:i]) for module in VENDORED_MODULES
               for i in range(1, module.count("/") + 1)}
    for folder in sorted(folders):
        files.append((f"1/{VENDORED_PACKAGE}/{folder}/__init__.py", ""))
    for module in VENDORED_MODULES:
        files.append((f"1/{VENDORED_PACKAGE}/{module}", package.joinpath(module).read_text(encoding="utf-8")))
    return files


# --------------------------------------------------------------------------------------------------------
# Validation: the parsed configs against each other, the ONNX and the engine manifest


def _dims_compatible(produced: list[int], accepted: list[int]) -> bool:
    return len(produced) == len(accepted) and all(a in (-1, p) or p == -1 for p, a in zip(produced, accepted,
                                                                                           strict=True))


def validate_configs(configs: dict, *, onnx_io=None, num_classes: int | None = None, plan: PlanInfo | None = None):
    """Cross-check parsed ModelConfigs (name → ModelConfig): names, dims, data types and batch against the ONNX
    (``onnx_io``: ``model.contract.OnnxIO``) and the engine (``plan``), and every ensemble step against its model.

    Raises UserError naming the model and the field."""
    pb2 = model_config_pb2()
    dtype_name = pb2.DataType.Name
    for name, cfg in configs.items():
        if cfg.name != name:
            raise UserError(f"{name}/config.pbtxt: name is {cfg.name!r}, not its folder's {name!r}")
        if cfg.max_batch_size < 1:
            raise UserError(f"{name}/config.pbtxt: max_batch_size {cfg.max_batch_size}; every model here is batched")
        is_ensemble = cfg.platform == "ensemble"
        if not is_ensemble and not cfg.HasField("dynamic_batching"):
            raise UserError(f"{name}/config.pbtxt: no dynamic_batching")
        if not is_ensemble and cfg.dynamic_batching.default_queue_policy.max_queue_size < 1:
            raise UserError(f"{name}/config.pbtxt: an unbounded queue (dynamic_batching.default_queue_policy."
                            "max_queue_size); requests past it must be rejected, not queued without end")
        if cfg.platform in ("tensorrt_plan", "onnxruntime_onnx"):
            _check_classifier(name, cfg, onnx_io, num_classes, plan, dtype_name)
        if [t.name for t in cfg.input] == [IMAGE] and [t.name for t in cfg.output] != [PIXELS]:  # not a step
            _check_image_model(name, cfg, num_classes, dtype_name)
    for name, cfg in configs.items():
        if cfg.platform == "ensemble":
            _check_ensemble(name, cfg, configs, dtype_name)


def _check_image_model(name, cfg, num_classes, dtype_name) -> None:
    """A model clients send images to (an ensemble, the pipeline): IMAGE bytes in, infer.py's answer out."""
    where = f"{name}/config.pbtxt"
    (image,) = cfg.input
    if dtype_name(image.data_type) != "TYPE_STRING" or list(image.dims) != [1]:
        raise UserError(f"{where}: {IMAGE} is {dtype_name(image.data_type)} {list(image.dims)}, not TYPE_STRING [1] "
                        "(one encoded image per batch row)")
    outputs = {t.name: t for t in cfg.output}
    if sorted(outputs) != sorted(ENSEMBLE_OUTPUTS):
        raise UserError(f"{where}: outputs {sorted(outputs)}, not {sorted(ENSEMBLE_OUTPUTS)}")
    if num_classes and list(outputs["PROBABILITIES"].dims) != [num_classes]:
        raise UserError(f"{where}: PROBABILITIES dims {list(outputs['PROBABILITIES'].dims)}, the ONNX has "
                        f"{num_classes} classes")


def _check_classifier(name, cfg, onnx_io, num_classes, plan, dtype_name) -> None:
    where = f"{name}/config.pbtxt"
    if len(cfg.input) != 1 or len(cfg.output) != 1:
        raise UserError(f"{where}: a classifier has one input and one output")
    (inp,), (out,) = cfg.input, cfg.output
    if onnx_io is not None:
        for role, tensor, oname, oshape in (("input", inp, onnx_io.input_name, onnx_io.input_shape),
                                            ("output", out, onnx_io.output_name, onnx_io.output_shape)):
            if tensor.name != oname:
                raise UserError(f"{where}: {role} {tensor.name!r} is not the ONNX's {oname!r}")
            dims = _dims(oshape)[1:]
            if role == "output" and num_classes and dims and dims[0] == -1:
                dims[0] = num_classes
            if not _dims_compatible(list(tensor.dims), dims) or len(tensor.dims) != len(dims):
                raise UserError(f"{where}: {role} dims {list(tensor.dims)} do not match the ONNX's {dims}")
            if dtype_name(tensor.data_type) != "TYPE_FP32":
                raise UserError(f"{where}: {role} is {dtype_name(tensor.data_type)}; the ONNX's is TYPE_FP32")
    if cfg.platform == "tensorrt_plan" and plan is not None:
        if cfg.max_batch_size != plan.max_batch:
            raise UserError(f"{where}: max_batch_size {cfg.max_batch_size}, but the engine's profile ends at batch "
                            f"{plan.max_batch}")
        for role, tensor, dims in (("input", inp, plan.input_dims), ("output", out, plan.output_dims)):
            mio = plan.manifest["io"][role]
            if tensor.name != mio["name"] or list(tensor.dims) != list(dims):
                raise UserError(f"{where}: {role} {tensor.name!r} {list(tensor.dims)} is not the engine's "
                                f"{mio['name']!r} {dims}")
            if dtype_name(tensor.data_type) != _triton_dtype(mio.get("dtype", "float32"), where):
                raise UserError(f"{where}: {role} is {dtype_name(tensor.data_type)}, the engine's is "
                                f"{mio.get('dtype')}")


def _check_ensemble(name, cfg, configs, dtype_name) -> None:
    where = f"{name}/config.pbtxt"
    tensors = {t.name: (t.data_type, list(t.dims)) for t in cfg.input}
    produced_outputs = set()
    if not cfg.ensemble_scheduling.step:
        raise UserError(f"{where}: an ensemble without steps")
    for i, step in enumerate(cfg.ensemble_scheduling.step, 1):
        model = configs.get(step.model_name)
        if model is None:
            raise UserError(f"{where}: step {i} runs {step.model_name!r}, which is not in the repository")
        if model.max_batch_size < cfg.max_batch_size:
            raise UserError(f"{where}: max_batch_size {cfg.max_batch_size} exceeds step {step.model_name!r}'s "
                            f"{model.max_batch_size}")
        inputs = {t.name: (t.data_type, list(t.dims)) for t in model.input}
        outputs = {t.name: (t.data_type, list(t.dims)) for t in model.output}
        if set(step.input_map) != set(inputs):
            raise UserError(f"{where}: step {i} ({step.model_name}) maps inputs {sorted(step.input_map)}, the model "
                            f"takes {sorted(inputs)}")
        for key, source in step.input_map.items():
            if source not in tensors:
                raise UserError(f"{where}: step {i} ({step.model_name}) reads {source!r}, which no earlier step or "
                                "ensemble input provides")
            (have_t, have_d), (want_t, want_d) = tensors[source], inputs[key]
            if have_t != want_t or not _dims_compatible(have_d, want_d):
                raise UserError(f"{where}: step {i} ({step.model_name}) input {key!r} takes {dtype_name(want_t)} "
                                f"{want_d}, but {source!r} is {dtype_name(have_t)} {have_d}")
        for key, target in step.output_map.items():
            if key not in outputs:
                raise UserError(f"{where}: step {i} ({step.model_name}) has no output {key!r}")
            tensors[target] = outputs[key]
            produced_outputs.add(target)
    for out in cfg.output:
        if out.name not in produced_outputs:
            raise UserError(f"{where}: output {out.name!r} is produced by no step")
        have_t, have_d = tensors[out.name]
        if have_t != out.data_type or have_d != list(out.dims):
            raise UserError(f"{where}: output {out.name!r} is declared {dtype_name(out.data_type)} {list(out.dims)}, "
                            f"the step gives {dtype_name(have_t)} {have_d}")


# --------------------------------------------------------------------------------------------------------
# Writing: a temporary folder beside DIR, renamed into place


def _check_replaceable(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise UserError(f"--triton-repo {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / REPOSITORY_FILE).is_file():
            raise UserError(f"--triton-repo {out_dir} is a folder that build.py did not write (no {REPOSITORY_FILE}); "
                            "name a new or empty folder")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same file system: no copy (files are replaced by rename, never rewritten in place)
    except OSError:
        shutil.copyfile(src, dst)


def _write_atomically(out_dir: Path, configs: dict[str, str], files: dict, record: dict) -> None:
    from ..core.files import current_umask, write_json

    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".part", dir=parent))
    old = None
    try:
        for name, text in configs.items():
            (tmp / name / "1").mkdir(parents=True, exist_ok=True)
            (tmp / name / "config.pbtxt").write_text(text, encoding="utf-8")
            for rel, source in files.get(name, []):
                dst = tmp / name / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, Path):
                    _link_or_copy(source, dst)
                elif isinstance(source, bytes):
                    dst.write_bytes(source)
                else:
                    dst.write_text(source, encoding="utf-8")
        write_json(tmp / REPOSITORY_FILE, record)
        os.chmod(tmp, 0o777 & ~current_umask())
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if old is not None:
                os.rename(old, out_dir)
                old = None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
