"""ONNX Runtime as a Backend: any ``.onnx`` classifier, on the CUDA execution provider when present, else the CPU."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..data.recipe import FROM_MODEL, PreprocessOptions, choose_recipe
from ..model.contract import TensorSpec, check_classifier_io, onnx_output_is_softmax

# ONNX Runtime's type strings → numpy's names (what the contract speaks).
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
              "tensor(bool)": "bool", "tensor(string)": "str"}


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))


class OnnxRuntimeBackend:
    """ONNX Runtime on the CUDA execution provider when present, else the CPU.

    ``threads``: intra-op threads (0: ONNX Runtime's default, one per core); ``spinning``: let idle
    intra-op threads spin-wait (off, so that image decoding running alongside gets the CPU); ``preprocess``: the
    model's recipe where the user states it (``recipe``: the one it is fed, ``data.recipe.choose_recipe``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        threads: int = 0,
        spinning: bool = False,
        preprocess: PreprocessOptions = FROM_MODEL,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such model file")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no provider-fallback chatter on stderr
        # Idle ORT worker threads spin by default; that steals the CPU the decoding threads run on between
        # batches (docs/runtime.md: 1.9x images/s at batch 1 on 2 busy cores, no change at batch 8).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=list(providers))
        except Exception as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{self.path}: not a loadable ONNX model ({reason[:300]})") from None
        self.provider = self.session.get_providers()[0]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_io(preprocess)
        self.outputs_probabilities = onnx_output_is_softmax(self.path, self.output_name)

    def _check_io(self, preprocess: PreprocessOptions) -> None:
        io = check_classifier_io([_spec(i) for i in self.session.get_inputs()],
                                 [_spec(o) for o in self.session.get_outputs()], str(self.path))
        self.recipe = choose_recipe(io.input_hw, str(self.path), preprocess, self.metadata.get("preprocessing"))
        self.input_name, self.output_name = io.input.name, io.output.name
        self._input_dtype = np.dtype(io.input.dtype)
        self.max_batch = io.batch
        self.fixed_batch = self.max_batch is not None
        if io.num_classes:
            self.num_classes = io.num_classes
        else:  # a symbolic class dimension: one zero batch tells
            h, w = self.recipe.spec.crop_hw
            self.num_classes = int(self.run(np.zeros((self.max_batch or 1, 3, h, w), np.float32)).shape[1])

    def run(self, batch_nchw_float32: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch_nchw_float32, dtype=self._input_dtype)
        try:
            (y,) = self.session.run([self.output_name], {self.input_name: x})
        except Exception as e:  # e.g. a model whose symbolic input size hides a fixed one
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
            raise UserError(f"{self.path}: inference failed on a batch of shape {x.shape}: {lines[0][:300]}") from None
        y = np.asarray(y)
        return y.reshape(y.shape[0], -1).astype(np.float32, copy=False)

    gpu_preprocessing = False  # preprocessed batches only (the CPU reference)

    def describe(self) -> str:
        batch = f"fixed batch {self.max_batch}" if self.fixed_batch else "dynamic batch"
        return f"ONNX Runtime ({self.provider}), {batch}, {self.num_classes} classes"

    def close(self) -> None:
        """Nothing to release: the session goes with the object."""


