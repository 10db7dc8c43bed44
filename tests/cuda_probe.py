"""Run the project's CUDA device layer against whatever cuda-python and libcuda.so.1 this process finds, and print
what each step answered, as JSON (tests/test_cuda_releases.py runs it under each cuda-python release, with the
stub driver of tests/stub_libcuda.c, which answers "no device" to everything).

    python tests/cuda_probe.py layer        # every device-layer call: streams, events, buffers, graphs, modules
    python tests/cuda_probe.py nvrtc DIR    # the kernels compiled for an Orin (sm_87), cached in DIR, then loaded

Each call of the layer must reach the driver: with the stub, each answers a no-device error through the
project's one-line CudaUnavailable; an argument the bindings could not marshal would show as a TypeError.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trt_res2net.core.errors import UserError  # noqa: E402
from trt_res2net.cuda import device as cu  # noqa: E402


def outcome(step: str, fn) -> dict:
    try:
        value = fn()
    except UserError as e:
        return {"step": step, "raised": type(e).__name__, "exit_code": e.exit_code, "message": str(e),
                "code": getattr(e, "code_name", "")}
    except Exception as e:  # a bindings-level failure (TypeError, RuntimeError): what the test must not see
        return {"step": step, "raised": type(e).__name__, "exit_code": None, "message": f"{e}"}
    return {"step": step, "raised": None, "value": repr(value)}


def _null_stream() -> cu.Stream:
    """A Stream object around the legacy default stream: the calls below need one that cudaStreamCreate (no
    device) cannot give."""
    stream = cu.Stream.__new__(cu.Stream)
    stream.obj = cu.cuda_modules().runtime.cudaStream_t(0)
    stream.handle = 0
    return stream


def _null_event() -> cu.Event:
    event = cu.Event.__new__(cu.Event)
    event.obj = cu.cuda_modules().runtime.cudaEvent_t(0)
    return event


def layer() -> list[dict]:
    rt, drv = cu.cuda_modules().runtime, cu.cuda_modules().driver
    host = np.zeros(64, np.uint8)
    stream, event = _null_stream(), _null_event()
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    steps = [
        ("versions", lambda: (cu.cuda_python_version(), cu.driver_cuda_version())),
        ("device_count", cu.device_count),
        ("detect_gpu", cu.detect_gpu),
        ("init_device", cu.init_device),
        ("set_device", lambda: cu.set_device(0)),
        ("device_info", cu.device_info),
        ("DeviceBuffer", lambda: cu.DeviceBuffer(64)),
        ("PinnedBuffer", lambda: cu.PinnedBuffer(64)),
        ("Stream", cu.Stream),
        ("Stream.copy_htod", lambda: stream.copy_htod(0x1000, host, host.nbytes)),
        ("Stream.copy_dtoh", lambda: stream.copy_dtoh(host, 0x1000, host.nbytes)),
        ("Stream.copy_dtod", lambda: stream.copy_dtod(0x1000, 0x2000, 64)),
        ("Stream.memset", lambda: stream.memset(0x1000, 0, 64)),
        ("Stream.synchronize", stream.synchronize),
        ("Event", cu.Event),
        ("Event.record", lambda: event.record(stream)),
        ("Event.synchronize", event.synchronize),
        ("Event.elapsed_ms", lambda: event.elapsed_ms(event)),
        ("Graph", lambda: cu.Graph(stream, lambda: None)),
        ("cudaStreamBeginCapture", lambda: cu.call(rt.cudaStreamBeginCapture, stream.obj, mode)),
        ("cudaStreamEndCapture", lambda: cu.call(rt.cudaStreamEndCapture, stream.obj)),
        ("cudaGraphInstantiateWithFlags", lambda: cu.call(rt.cudaGraphInstantiateWithFlags, rt.cudaGraph_t(0), 0)),
        ("cudaGraphLaunch", lambda: cu.call(rt.cudaGraphLaunch, rt.cudaGraphExec_t(0), stream.obj)),
        ("Module", lambda: cu.Module(b"// no PTX\n.version 8.0\n.target sm_87\n.address_size 64\n")),
        ("launch", lambda: cu.launch(drv.CUfunction(0), (1, 1, 1), (32, 1, 1),
                                     [cu.ptr_arg(0x1000), cu.i32_arg(3)], stream)),
        ("Stream.destroy", stream.destroy),
    ]
    return [outcome(name, fn) for name, fn in steps]


def nvrtc(directory: str) -> list[dict]:
    from trt_res2net.cuda import kernels

    compiled = outcome("cached_kernel_image", lambda: kernels.cached_kernel_image((8, 7), directory=Path(directory)))
    steps = [outcome("nvrtc_version", kernels.nvrtc_version), compiled]
    if compiled["raised"] is None:
        image = kernels.cached_kernel_image((8, 7), directory=Path(directory))[0]
        steps.append(outcome("Module", lambda: cu.Module(image)))
    return steps


if __name__ == "__main__":
    what = sys.argv[1]
    print(json.dumps(layer() if what == "layer" else nvrtc(sys.argv[2])))
