"""FP16 through ModelOpt AutoCast."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...core.errors import UserError
from .logs import captured_output, modelopt_failed
from .onnx_utils import keeps_external_data, private_copy, publish_result, workdir
from .patches import fast_paths


def autocast_fp16(fp32_onnx: str | os.PathLike, out_path: str | os.PathLike, *,
                  reference_inputs: np.ndarray | None = None, log_path: Path | None = None):
    """ModelOpt AutoCast to FP16 with float32 graph inputs and outputs kept (TensorRT 11 builds it strongly
    typed). Nodes whose activations exceed FP16's safe range on ``reference_inputs`` (real images when
    given, AutoCast's random data otherwise) stay FP32. Writes ``out_path`` atomically, its weights where the FP32
    ONNX keeps them (inside it, or in a data file ``<out_path>.data``: ``onnx_utils.publish_result``); returns the
    model."""
    from modelopt.onnx.autocast import convert_to_mixed_precision

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    with workdir(out_path) as work:
        kwargs = {}
        if reference_inputs is not None:
            np.savez(work / "reference.npz", input=np.ascontiguousarray(reference_inputs, np.float32))
            kwargs["calibration_data"] = str(work / "reference.npz")
        try:
            with captured_output(log_path), fast_paths():
                model = convert_to_mixed_precision(
                    onnx_path=str(private_copy(fp32_onnx, work)), low_precision_type="fp16", keep_io_types=True,
                    providers=["cpu"], **kwargs,
                )
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise modelopt_failed("convert the model to FP16", e, log_path) from e
        publish_result(model, None, out_path, external=keeps_external_data(fp32_onnx))
    return model
