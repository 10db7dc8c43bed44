"""Fake ``tensorrt`` modules shaped like TensorRT 8.6 and 10.x, for CPU tests of what no installable library can
stand in for: builder flags, the INT8 calibrator, DLA, timing caches. (The strongly typed 11.x-style API is
TensorRT-RTX's too, and tests/test_rtx_build.py runs the real ``tensorrt_rtx`` builder.)

Each fake has exactly the names its release's Python bindings have for what the builder touches (from the
name lists of the real 8.6.1 / 10.3.0 / 10.13.3 bindings, encoded here by hand): 8.6 has no STRONGLY_TYPED and no
IProgressMonitor/progress_monitor. Objects refuse attributes their release lacks (AttributeError), so code that
forgets a version gate fails here.

The fake builder behaves enough like the real one to exercise the code around it: the ONNX parser reads the
file's I/O (and refuses >opset 17 on 8.x, and a network created without EXPLICIT_BATCH on 8.x), the build
drives the calibrator (read cache → get_batch until None → write cache) and the progress monitor, and
returns a plan whose bytes describe the configuration, so tests can check what was set.

Also here: tiny classification ONNX files (onnx.helper) and calibration images.
"""

from __future__ import annotations

import enum
import json
import struct
import types
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------------------------------------
# Fake tensorrt

# Through a name, not a literal: trt-api-check treats `x = f("tensorrt")` as binding the real module, and these
# fakes are not TensorRT code to be checked.
MODULE_NAME = "tensorrt"


class _Strict:
    """Refuses to set attributes outside ``_allowed`` (like pybind11 objects, which have no __dict__)."""

    _allowed: frozenset = frozenset()

    def __setattr__(self, name, value):
        if not name.startswith("_") and name not in self._allowed:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        object.__setattr__(self, name, value)


def make_fake_tensorrt(
    version: str = "10.3.0",
    *,
    num_dla_cores: int = 0,
    fail_build: bool = False,
) -> types.ModuleType:
    major = int(version.split(".")[0])
    assert major in (8, 10), "the fakes are TensorRT 8.6 and 10.x; 11.x-style code runs on the real tensorrt_rtx"
    m = types.ModuleType(MODULE_NAME)
    m.__version__ = version
    m.__fake__ = True
    m.log = []  # (what, detail) records for assertions
    m.last = {}

    # -- enums
    nflags = {"EXPLICIT_BATCH": 0}
    if major >= 10:
        nflags["STRONGLY_TYPED"] = 1
    else:
        nflags["EXPLICIT_PRECISION"] = 1
    m.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", nflags)
    bflags = ["TF32", "GPU_FALLBACK", "REFIT", "DEBUG", "VERSION_COMPATIBLE", "FP16", "INT8",
              "PREFER_PRECISION_CONSTRAINTS", "OBEY_PRECISION_CONSTRAINTS"]
    m.BuilderFlag = enum.IntEnum("BuilderFlag", {n: i for i, n in enumerate(bflags)})
    m.MemoryPoolType = enum.IntEnum(
        "MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "TACTIC_DRAM": 4}
    )
    m.DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    m.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3})
    m.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})

    class Logger:
        VERBOSE, INFO, WARNING, ERROR, INTERNAL_ERROR = 4, 3, 2, 1, 0

        def __init__(self, severity=2):
            self.severity = severity

    m.Logger = Logger

    class ILogger:  # every release has it: a Python logger TensorRT calls for each message
        def __init__(self):
            pass

    m.ILogger = ILogger

    def init_libnvinfer_plugins(logger, namespace):
        m.log.append(("init_plugins", namespace))
        return True

    m.init_libnvinfer_plugins = init_libnvinfer_plugins

    class IInt8EntropyCalibrator2:
        def __init__(self):
            m.log.append(("calibrator_init", None))

    m.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2

    if major >= 9:

        class IProgressMonitor:
            def __init__(self):
                m.log.append(("monitor_init", None))

        m.IProgressMonitor = IProgressMonitor

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs = [], []
            self.has_qdq = False

        @property
        def num_inputs(self):
            return len(self.inputs)

        @property
        def num_outputs(self):
            return len(self.outputs)

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            import onnx

            net = self.network
            if major < 10 and not net.flags & (1 << int(m.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)):
                self.errors.append("network must have explicit batch dimension (EXPLICIT_BATCH)")
                return False
            try:
                model = onnx.load(path, load_external_data=False)
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"cannot read {path}: {e}")
                return False
            opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
            if major < 10 and opset > 17:
                self.errors.append(f"unsupported opset {opset}")
                return False
            inits = {t.name for t in model.graph.initializer}

            def shape(vi):
                return [d.dim_value if d.dim_value > 0 else -1 for d in vi.type.tensor_type.shape.dim]

            for vi in model.graph.input:
                if vi.name not in inits:
                    net.inputs.append(Tensor(vi.name, shape(vi), m.DataType.FLOAT))
            for vi in model.graph.output:
                net.outputs.append(Tensor(vi.name, shape(vi), m.DataType.FLOAT))
            net.has_qdq = any(n.op_type == "QuantizeLinear" for n in model.graph.node)
            m.log.append(("parsed", path))
            return True

    m.OnnxParser = OnnxParser

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002 — TensorRT's keyword names
            if not all(a <= b <= c for a, b, c in zip(min, opt, max, strict=True)):
                raise ValueError("min <= opt <= max violated")
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, data: bytes):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+measured"

    allowed = {"builder_optimization_level", "default_device_type", "DLA_core", "profiling_verbosity",
               "int8_calibrator"}
    if major >= 9:
        allowed |= {"progress_monitor"}

    class BuilderConfig(_Strict):
        _allowed = frozenset(allowed)

        def __init__(self):
            self._flags = set()
            self._pools = {}
            self._profiles = []
            self._timing = None
            self._calib_profile = None
            self.builder_optimization_level = 3
            self.default_device_type = m.DeviceType.GPU
            self.DLA_core = -1
            self.int8_calibrator = None
            if major >= 9:
                self.progress_monitor = None

        def set_flag(self, flag):
            self._flags.add(m.BuilderFlag(flag).name)

        def clear_flag(self, flag):
            self._flags.discard(m.BuilderFlag(flag).name)

        def get_flag(self, flag):
            return m.BuilderFlag(flag).name in self._flags

        def set_memory_pool_limit(self, pool, size):
            self._pools[m.MemoryPoolType(pool).name] = int(size)

        def get_memory_pool_limit(self, pool):
            return self._pools.get(m.MemoryPoolType(pool).name, 1 << 36)  # TensorRT's default: device memory

        def add_optimization_profile(self, profile):
            self._profiles.append(profile)
            return len(self._profiles) - 1

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache.data.startswith(b"OTHER-DEVICE"):
                return False
            self._timing = cache
            return True

        def get_timing_cache(self):
            return self._timing

        def set_calibration_profile(self, profile):
            self._calib_profile = profile
            return True

    class Builder(_Strict):
        def __init__(self, logger):
            self._logger = logger
            m.last["builder"] = self

        @property
        def num_DLA_cores(self):
            return num_dla_cores

        def create_network(self, flags=0):
            net = Network(flags)
            m.last["network"] = net
            return net

        def create_builder_config(self):
            cfg = BuilderConfig()
            m.last["config"] = cfg
            return cfg

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            m.log.append(("build", None))
            typed = major >= 10 and network.flags & (1 << int(m.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            if typed and config._flags & {"FP16", "INT8"}:
                raise RuntimeError(
                    "fake TensorRT: precision flags are not allowed on a strongly typed network"
                )
            if any(d < 0 for d in network.inputs[0].shape) and not config._profiles:
                return (
                    None  # real TensorRT: "Network has dynamic or shape inputs, but no optimization profile"
                )
            calib_batches = 0
            calibrator = getattr(config, "int8_calibrator", None)
            if calibrator is not None:
                cached = calibrator.read_calibration_cache()
                if cached is None:
                    batch = calibrator.get_batch_size()
                    while True:
                        ptrs = calibrator.get_batch([network.inputs[0].name])
                        if ptrs is None:
                            break
                        assert len(ptrs) == 1 and isinstance(ptrs[0], int)
                        calib_batches += 1
                    tag = fake_version_tag(version)
                    scale = struct.unpack(">I", struct.pack(">f", 1 / 127))[0]
                    body = f"TRT-{tag}-EntropyCalibration2\n{network.inputs[0].name}: {scale:x}\n"
                    body += f"conv_out: {struct.unpack('>I', struct.pack('>f', 0.05))[0]:x}\n"
                    calibrator.write_calibration_cache(memoryview(body.encode()))
                    m.log.append(("calibrated", (batch, calib_batches)))
                else:
                    m.log.append(("calibration_cache_used", bytes(cached)[:40]))
            monitor = getattr(config, "progress_monitor", None)
            if monitor is not None:
                monitor.phase_start("Building engine", None, 3)
                monitor.phase_start("Tactic selection", "Building engine", 2)
                for phase, n in (("Tactic selection", 2), ("Building engine", 3)):
                    for s in range(n):
                        if not monitor.step_complete(phase, s):
                            return None
                    monitor.phase_finish(phase)
            if fail_build:
                return None
            doc = {
                "version": version,
                "network_flags": network.flags,
                "flags": sorted(config._flags),
                "pools": config._pools,
                "profiles": [
                    {k: [list(s) for s in v] for k, v in p.shapes.items()} for p in config._profiles
                ],
                "calibration_profile": (
                    None
                    if config._calib_profile is None
                    else {k: [list(s) for s in v] for k, v in config._calib_profile.shapes.items()}
                ),
                "calibrated_batches": calib_batches,
                "opt_level": config.builder_optimization_level,
                "device": m.DeviceType(config.default_device_type).name,
                "dla_core": config.DLA_core,
                "timing_cache": config._timing is not None,
                "qdq": network.has_qdq,
            }
            return b"FAKE-PLAN" + json.dumps(doc).encode()

    m.Builder = Builder
    return m


def fake_version_tag(version: str) -> str:
    parts = [int(p) for p in version.split(".")[:3]]
    major, minor, patch = (parts + [0, 0])[:3]
    return str(major * (1000 if major < 10 else 10000) + minor * 100 + patch)


def plan_doc(engine_path) -> dict:
    data = Path(engine_path).read_bytes()
    assert data.startswith(b"FAKE-PLAN")
    return json.loads(data[len(b"FAKE-PLAN") :])


class FakeDeviceBuffer:
    """Stands in for trt_calibrator.CudaDeviceBuffer: keeps what was uploaded."""

    instances: list = []

    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.uploads = []
        self.freed = False
        FakeDeviceBuffer.instances.append(self)

    def upload(self, array):
        assert array.dtype == np.float32 and array.nbytes <= self.nbytes
        self.uploads.append(array.copy())
        return 0xDEAD0000 + len(self.uploads)

    def free(self):
        self.freed = True


def fake_gpu(name="NVIDIA Fake GPU", cc="8.9", total=24 << 30, free=20 << 30, integrated=False):
    from trt_res2net.cuda.device import DeviceInfo

    major, minor = (int(x) for x in cc.split("."))
    return DeviceInfo(index=0, name=name, compute_capability=(major, minor), total_memory=total, free_memory=free,
                      integrated=integrated)


# ---------------------------------------------------------------------------------------------------------
# Tiny classification ONNX files


def tiny_classifier_onnx(
    path,
    *,
    batch=None,
    input_name="input",
    output_name="logits",
    opset=17,
    num_classes=10,
    qdq=False,
    fp16=False,
    softmax=False,
    seed=0,
) -> Path:
    """conv 3→4 (3x3) → relu → global average pool → flatten → gemm → logits; float32 I/O.

    ``qdq`` inserts QuantizeLinear/DequantizeLinear on the conv input and weight (opset ≥ 13); ``fp16``
    casts the middle of the network to float16 and back (like AutoCast with --keep_io_types).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    fc = rng.standard_normal((num_classes, 4)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "conv_w"),
        numpy_helper.from_array(fc, "fc_w"),
        numpy_helper.from_array(np.zeros(num_classes, np.float32), "fc_b"),
    ]
    nodes = []
    x, wname = input_name, "conv_w"
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zp"),
            numpy_helper.from_array(np.array(0.01, np.float32), "w_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", [x, "x_scale", "x_zp"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"]),
            helper.make_node("QuantizeLinear", ["conv_w", "w_scale", "w_zp"], ["wq"]),
            helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zp"], ["wdq"]),
        ]
        x, wname = "xdq", "wdq"
    nodes.append(helper.make_node("Conv", [x, wname], ["conv_out"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["conv_out"], ["relu_out"]))
    cur = "relu_out"
    if fp16:
        nodes.append(helper.make_node("Cast", [cur], ["h16"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Cast", ["h16"], ["h32"], to=TensorProto.FLOAT))
        cur = "h32"
    nodes += [
        helper.make_node("GlobalAveragePool", [cur], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["fc_out" if softmax else output_name], transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["fc_out"], [output_name], axis=1))
    n = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [n, 3, 224, 224])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [n, num_classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_images(directory, n=12, seed=0, size=(40, 30)) -> list[Path]:
    """Small varied PNGs (gradients + noise) for calibration tests."""
    import cv2

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = size[1] + i, size[0] + 2 * i
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 255, (h, w))], -1).astype(np.uint8)
        p = directory / f"img_{i:03d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    return paths
