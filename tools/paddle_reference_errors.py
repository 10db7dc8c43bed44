#!/usr/bin/env python3
"""Relative error of our ONNX export against PaddleClas's own logits (tests/fixtures/paddle_reference.npz).

    python tools/paddle_reference_errors.py

Prints max |ONNX Runtime − PaddleClas| / max |PaddleClas| per model and input size; the test
(tests/test_paddle_reference.py) asserts the same quantity is ≤ 1e-5.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import test_paddle_reference as ref  # noqa: E402

from trt_res2net.model.onnx_export import build_onnx  # noqa: E402


def main() -> None:
    logits = np.load(ref.FIXTURES / "paddle_reference.npz")
    for case in ref.META["cases"]:
        model = build_onnx(ref.case_spec(case), ref.case_weights(case), image_size=None)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        errors = []
        for size in map(int, ref.META["input_seeds"]):
            y = session.run(None, {"input": ref.make_input(size)})[0]
            expected = logits[f"{case}/{size}"]
            errors.append(f"{size}: {np.abs(y - expected).max() / np.abs(expected).max():.2e}")
        print(f"{case:28s} " + "  ".join(errors))


if __name__ == "__main__":
    main()
