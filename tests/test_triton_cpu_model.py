"""The CPU model (build.py --engine-family cpu) in a Triton repository: run in process by the pipeline model
(``M_python``) on a real tritonserver (nvidia-pytriton's, Python backend) with answers equal to infer.py's on the same
.xml, and served by Triton's OpenVINO backend (NVIDIA's containers; not in the extra's server), whose config is
checked against Triton's proto here."""

from __future__ import annotations

import json
from pathlib import Path

import image_factory as imf
import numpy as np
import pytest

pytest.importorskip("openvino", reason="the CPU model needs OpenVINO and NNCF: pip install -e '.[cpu]'")
pytest.importorskip("nncf", reason="the CPU INT8 model needs NNCF: pip install -e '.[cpu]'")
pytest.importorskip("tritonclient", reason="the Triton repository needs tritonclient")

import test_triton_server as ts  # noqa: E402  (the serving environment and serve.py's helpers)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cpu_repo(tmp_path_factory, fitted_onnx, gpu_images):
    from trt_res2net.data.calibration_set import CalibrationImages
    from trt_res2net.engine.cpu_build import build_cpu_model
    from trt_res2net.precision.options import PrecisionOptions
    from trt_res2net.serving.repository import write_triton_repository

    root = tmp_path_factory.mktemp("triton_cpu")
    opts = PrecisionOptions(calibration=CalibrationImages(directory=gpu_images["calib_dir"], count=32),
                            progress=False)
    model = build_cpu_model(fitted_onnx, "int8", opts, out_path=root / "engines" / "tiny_cpu_int8.xml")
    write_triton_repository(root / "repo", fitted_onnx, model_name="tiny", cpu_model_path=model.path)
    return root, model.path


def test_the_repository_holds_the_cpu_model_for_both_servers(cpu_repo):
    from trt_res2net.serving.repository import read_record
    from trt_res2net.serving.triton_proto import parse_config

    root, xml = cpu_repo
    repo = root / "repo"
    config = parse_config((repo / "tiny_classifier_openvino" / "config.pbtxt").read_text())
    assert config.backend == "openvino" and list(config.input[0].dims) == [3, 224, 224]
    assert {k: v.string_value for k, v in config.parameters.items()} == {"PERFORMANCE_HINT": "LATENCY",
                                                                         "NUM_STREAMS": "1"}
    for name in ("tiny_classifier_openvino", "tiny_python"):
        assert (repo / name / "1" / "model.xml").read_bytes() == xml.read_bytes()
        assert (repo / name / "1" / "model.bin").read_bytes() == xml.with_suffix(".bin").read_bytes()
    python = parse_config((repo / "tiny_python" / "config.pbtxt").read_text())
    assert python.parameters["classifier"].string_value == "openvino"
    ensemble = parse_config((repo / "tiny" / "config.pbtxt").read_text())
    assert [s.model_name for s in ensemble.ensemble_scheduling.step][1] == "tiny_classifier_openvino"
    record = read_record(repo)
    assert record.cpu_model.precision == "int8" and record.cpu_model.file == xml.name
    assert json.loads((repo / "trt_res2net_repository.json").read_text())["cpu_model"]["sha256"]


@pytest.mark.skipif(ts.SERVE_PYTHON is None, reason="no serving environment (TRT_RES2NET_SERVE_PYTHON)")
def test_a_real_tritonserver_answers_like_infer_py_on_the_cpu_model(cpu_repo, tmp_path):
    from trt_res2net.runtime.classifier import Classifier

    root, xml = cpu_repo
    with Classifier(xml) as clf:
        want = {Path(r["image"]).name: r["topk"] for r in clf.classify(imf.PHOTOS)}
    srv = ts.start_serve(root / "repo", tmp_path / "srv")
    try:
        out = tmp_path / "probe.npz"
        proc = ts.run_serving_python(ROOT / "tests" / "triton_probe.py", f"127.0.0.1:{srv.http}",
                                     f"127.0.0.1:{srv.grpc}", "tiny_python", root / "repo" / "tiny_python" / "1", out,
                                     *imf.PHOTOS)
        assert proc.returncode == 0, proc.stderr
        got = np.load(out)
        for proto in ("http", "grpc"):
            for i, photo in enumerate(imf.PHOTOS):
                entries = [{"class_id": int(c), "label": str(lab), "score": float(s)} for c, lab, s in
                           zip(got[f"{proto}_TOPK_IDS"][i], got[f"{proto}_TOPK_LABELS"][i],
                               got[f"{proto}_TOPK_SCORES"][i], strict=True)]
                ts.assert_same_answer(entries, want[photo.name])
    finally:
        code, _, err = srv.stop()
        assert code == 0, err
