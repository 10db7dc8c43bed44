"""The model for CPUs (build.py --engine-family cpu: OpenVINO IR with NNCF INT8, BF16 or FP32), built from the tiny
Res2Net with generated images: written as a unit with its manifest, refused by the runtime when its files or the
machine do not match it, its predictions within the gate of FP32's, BF16 refused in one line where the CPU lacks it,
and run by infer.py and the library like any model file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="the CPU model needs OpenVINO and NNCF: pip install -e '.[cpu]'")
pytest.importorskip("nncf", reason="the CPU INT8 model needs NNCF: pip install -e '.[cpu]'")

from trt_res2net.core.errors import UserError  # noqa: E402
from trt_res2net.engine import cpu_build  # noqa: E402
from trt_res2net.runtime.backend import open_backend  # noqa: E402
from trt_res2net.runtime.classifier import Classifier  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build(*argv, cwd):
    return subprocess.run([sys.executable, str(ROOT / "build.py"), *map(str, argv)], capture_output=True,
                          text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def int8_model(tmp_path_factory, fitted_onnx, gpu_images):
    root = tmp_path_factory.mktemp("cpu_int8")
    eval_dir = gpu_images["eval_paths"][0].parent
    proc = build("--onnx", fitted_onnx, "--engine-family", "cpu", "--precision", "int8", "--calib-dir",
                 gpu_images["calib_dir"], "--eval-dir", eval_dir, "--max-top1-drop", "25", "--engine-dir",
                 root / "engines", cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "engines" / f"{Path(fitted_onnx).stem}_cpu_int8.xml", proc


def test_int8_is_written_with_its_manifest_and_meets_the_gate(int8_model, fitted_onnx, gpu_images):
    path, proc = int8_model
    assert f"CPU model ready: {path.relative_to(path.parents[1])}" in proc.stdout or "CPU model ready" in proc.stdout
    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    assert manifest["format"] == "trt_res2net.cpu_model_manifest" and manifest["precision"] == "int8"
    assert manifest["library"] == "openvino" and manifest["quantizer_version"]
    assert set(manifest["files"]) == {path.name, path.with_suffix(".bin").name}
    assert "INT8" in manifest["instruction_sets"] and manifest["requires"] == []
    assert manifest["calibration"]["images"] == 32 and manifest["calibration"]["key"]["preprocess_sha256"]
    report = manifest["accuracy"]
    assert report["images"] == 12 and report["top1_agreement"] >= 0.75 and report["cosine_similarity"] > 0.98
    # the runtime's own predictions agree with FP32's as the manifest says
    x = gpu_images["eval"]
    fp32, int8 = open_backend(fitted_onnx).run(x), open_backend(path).run(x)
    agree = float(np.mean(fp32.argmax(1) == int8.argmax(1)))
    assert abs(agree - report["top1_agreement"]) < 1e-6


def test_infer_and_the_library_run_the_cpu_model(int8_model, gpu_images, tmp_path):
    path, _ = int8_model
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(path), *map(str, gpu_images["eval_paths"][:3]),
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "OpenVINO" in proc.stderr and "CPU INT8" in proc.stderr
    results = json.loads((tmp_path / "r.json").read_text())
    with Classifier(path) as clf:
        assert [r["topk"][0]["class_id"] for r in results] == [
            r["topk"][0]["class_id"] for r in clf.classify(gpu_images["eval_paths"][:3])]


def test_a_model_unlike_its_manifest_is_refused_in_one_line(int8_model, tmp_path):
    import shutil

    path, _ = int8_model
    for name in (path.name, path.with_suffix(".bin").name, path.name + ".json"):
        shutil.copy(path.with_name(name), tmp_path / name)
    copy = tmp_path / path.name
    manifest = json.loads(copy.with_name(copy.name + ".json").read_text())
    manifest["library_version"] = "2001.0.0"
    copy.with_name(copy.name + ".json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="was made with OpenVINO 2001.0.0, but this machine has OpenVINO") as e:
        open_backend(copy)
    assert "\n" not in str(e.value)
    bin_path = copy.with_suffix(".bin")
    data = bytearray(bin_path.read_bytes())
    data[-1] ^= 1
    bin_path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"\.bin does not match its manifest"):
        open_backend(copy)


def test_bf16_is_refused_in_one_line_where_the_cpu_lacks_it(tiny_onnx, monkeypatch, tmp_path):
    no_bf16 = cpu_build.CpuMachine("a CPU without BF16", ("FP32", "INT8"))
    monkeypatch.setattr(cpu_build.CpuMachine, "here", classmethod(lambda cls: no_bf16))
    with pytest.raises(UserError, match="BF16 needs a CPU with BF16 .*use precision int8 or fp32") as e:
        cpu_build.plan_cpu_model(tiny_onnx, "bf16", out_path=tmp_path / "m.xml")
    assert "\n" not in str(e.value)


def test_fp32_cpu_model_computes_what_the_onnx_computes(tiny_onnx, gpu_images, tmp_path):
    model = cpu_build.build_cpu_model(tiny_onnx, "fp32", out_path=tmp_path / "m.xml")
    x = gpu_images["eval"][:4]
    np.testing.assert_allclose(open_backend(model.path).run(x), open_backend(tiny_onnx).run(x), rtol=1e-3,
                               atol=1e-4)


def test_tensorrt_only_flags_and_bf16_elsewhere_are_refused(tiny_onnx, tmp_path):
    proc = build("--onnx", tiny_onnx, "--engine-family", "cpu", "--int8-mode", "qdq", cwd=tmp_path)
    assert proc.returncode == 2 and "--int8-mode does not apply to --engine-family cpu" in proc.stderr
    proc = build("--onnx", tiny_onnx, "--precision", "bf16", "--onnx-only", cwd=tmp_path)
    assert proc.returncode == 2 and "--precision bf16 is for --engine-family cpu" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_infer_benchmark_reports_the_cpu_model_in_the_engines_json_shape(int8_model, tmp_path):
    from trt_res2net.runtime.benchmark import BenchmarkReport

    path, _ = int8_model
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(path), "--benchmark", "--batch", "1,2",
                           "--iterations", "3", "--warmup", "1", "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "compute mean" in proc.stdout and "GPU" not in proc.stdout
    data = json.loads((tmp_path / "b.json").read_text())
    report = BenchmarkReport.from_json(data, "b.json")  # the engines' document, read back by the same code
    assert [r.batch for r in report.results] == [1, 2] and report.info["engine_family"] == "cpu"
    assert all(r.throughput > 0 and r.first_run_ms is not None for r in report.results)
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(path), "--benchmark", "--polygraphy"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "--polygraphy cross-checks TensorRT engines" in proc.stderr


def test_a_converted_onnx_is_refused_as_the_cpu_models_source(tmp_path):
    import onnx
    import onnx_models
    from onnx import numpy_helper

    path = onnx_models.make_classifier(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(2, np.float16), "fp16_weight"))  # as FP16 has
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="is already FP16: the CPU model is made from the FP32 ONNX"):
        cpu_build.plan_cpu_model(path, "fp32", out_path=tmp_path / "m.xml")


def test_bf16_where_the_cpu_has_it_keeps_fp32s_answers(fitted_onnx, gpu_images, tmp_path):
    machine = cpu_build.CpuMachine.here()
    if "BF16" not in machine.capabilities:
        pytest.skip(f"{machine.name} has no BF16 ({', '.join(machine.capabilities)})")
    model = cpu_build.build_cpu_model(fitted_onnx, "bf16", out_path=tmp_path / "m.xml")
    assert model.manifest.requires == ("BF16",) and model.manifest.inference_precision == "bf16"
    x = gpu_images["eval"]
    fp32, bf16 = open_backend(fitted_onnx).run(x), open_backend(model.path).run(x)
    assert float(np.mean(fp32.argmax(1) == bf16.argmax(1))) >= 0.9


def test_eval_compares_the_cpu_model_with_its_fp32_onnx(int8_model, fitted_onnx, gpu_images, tmp_path):
    path, _ = int8_model
    listing = tmp_path / "val_list.txt"
    listing.write_text("".join(f"{p} 0\n" for p in gpu_images["eval_paths"]))
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(fitted_onnx), str(path), "--eval",
                           str(listing), "--data-root", "/", "--json", str(tmp_path / "e.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    agreement = json.loads((tmp_path / "e.json").read_text())["agreement"][0]
    manifest = json.loads(path.with_name(path.name + ".json").read_text())
    assert abs(agreement["top1_agreement"] - manifest["accuracy"]["top1_agreement"]) < 1e-6
