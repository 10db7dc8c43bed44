"""Shared fixtures: small Res2Nets built by the same code as the full-size ones."""

from __future__ import annotations

import numpy as np
import pytest

from trt_res2net import weights as W
from trt_res2net import zoo


@pytest.fixture(scope="session")
def tiny_spec() -> zoo.ModelSpec:
    """res2net50_vd_26w_4s reduced to width 4 and one block per stage: every code path, a tiny graph."""
    return zoo.get_model("res2net50_vd_26w_4s").reduced(width=4, depths=(1, 1, 1, 1))


@pytest.fixture(scope="session")
def tiny_weights(tiny_spec) -> dict[str, np.ndarray]:
    return W.random_weights(tiny_spec, seed=0)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_spec, tiny_weights):
    """Path of the tiny model's FP32 ONNX (input 'input' [N,3,224,224], output 'logits' [N,1000])."""
    from trt_res2net.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("tiny") / f"{tiny_spec.name}.onnx"
    return export_onnx(tiny_spec, tiny_weights, path, metadata={"weights": "random (seed 0)"})
