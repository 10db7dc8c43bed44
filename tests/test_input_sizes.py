"""Users' classifiers at their own input size (issue 23): the preprocessing follows the model — its H×W, the short
side at the recipe's ratio (224 → 256, 288 → 329), or what the model records or the user states — everywhere the
preprocessing runs: infer.py and the library, the INT8 calibration and its cache key, the engine's manifest, the
Triton repository and its served models. The reference is written here from the recipe itself (cv2 resize of the
short side, centre crop, mean/std), not from the project's code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import image_factory as imf
import numpy as np
import onnx_models
import pytest

from trt_res2net.core.errors import UserError
from trt_res2net.data.preprocess import preprocess
from trt_res2net.data.preprocess_spec import SPEC, resize_for_crop, spec_for_input
from trt_res2net.data.recipe import PreprocessOptions, choose_recipe
from trt_res2net.runtime.classifier import Classifier
from trt_res2net.runtime.onnx_runtime import OnnxRuntimeBackend

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def recipe_pixels(path: Path, resize_short: int, crop_h: int, crop_w: int) -> np.ndarray:
    """PaddleClas's evaluation ops, written out: decode (BGR) → RGB → ResizeImage(resize_short) → CropImage → scale,
    mean/std → CHW."""
    img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    h, w = img.shape[:2]
    scale = resize_short / min(h, w)
    img = cv2.resize(img, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_LINEAR)
    y0, x0 = (img.shape[0] - crop_h) // 2, (img.shape[1] - crop_w) // 2
    img = img[y0 : y0 + crop_h, x0 : x0 + crop_w]
    return ((img.astype(np.float32) * np.float32(1 / 255) - MEAN) / STD).transpose(2, 0, 1)


def direct_topk(model: Path, resize_short: int, crop_h: int, crop_w: int, k: int = 5) -> list[list[int]]:
    import onnxruntime as ort

    x = np.stack([recipe_pixels(p, resize_short, crop_h, crop_w) for p in imf.PHOTOS])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: x})[0]
    return np.argsort(-y, axis=1, kind="stable")[:, :k].tolist()


def test_the_recipe_scales_with_the_input_size():
    assert resize_for_crop(224, 224) == 256 and spec_for_input(224, 224) == SPEC
    assert resize_for_crop(288, 288) == 329 and resize_for_crop(224, 320) == 365
    assert spec_for_input(224, 224).sha256() == SPEC.sha256()  # a square spec's hash is what it always was
    rec = choose_recipe((288, 288), "m.onnx")
    assert rec.spec.crop_hw == (288, 288) and rec.spec.resize_short == 329
    assert "short side resized to 329, centre crop 288×288" in rec.describe()
    assert choose_recipe((None, None), "m.onnx").spec == SPEC
    assert choose_recipe((None, None), "m.onnx", PreprocessOptions(crop=(256, 256))).spec.resize_short == 292
    given = choose_recipe((288, 288), "m.onnx", PreprocessOptions(resize_short=320))
    assert given.spec.resize_short == 320 and given.source == "the short side as given"
    recorded = spec_for_input(288, 288, resize_short=300).to_json()
    assert choose_recipe((288, 288), "m.onnx", recorded=recorded).spec.resize_short == 300
    with pytest.raises(UserError, match=r"m.onnx: the model takes 288×288 inputs \(H×W\), but the preprocessing"):
        choose_recipe((288, 288), "m.onnx", PreprocessOptions(crop=(224, 224)))
    with pytest.raises(UserError, match="must be at least 1 pixel and fit the short side resized to 200"):
        choose_recipe((288, 288), "m.onnx", PreprocessOptions(resize_short=200))


@pytest.mark.parametrize(("height", "width"), [(288, 288), (224, 320)], ids=["288", "224x320"])
def test_infer_gives_the_answers_of_the_onnx_run_on_the_recipe_at_its_size(height, width, tmp_path):
    model = onnx_models.make_classifier(tmp_path / "m.onnx", hw=height, input_width=width, num_classes=50)
    want = direct_topk(model, max(height, width) * 8 // 7, height, width)
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(model), *map(str, imf.PHOTOS), "--json",
                           str(tmp_path / "r.json")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("preprocessing: "))
    assert (f"short side resized to {max(height, width) * 8 // 7}, centre crop {height}×{width} (H×W)" in line
            and "mean [0.485, 0.456, 0.406], std [0.229, 0.224, 0.225], RGB" in line
            and "the model's input size" in line and "50 classes, class ids as labels" in line), line
    got = [[e["class_id"] for e in r["topk"]] for r in json.loads((tmp_path / "r.json").read_text())]
    assert got == want
    with Classifier(model) as clf:  # the library: the same numbers, bit for bit against the recipe
        assert clf.spec.crop_hw == (height, width)
        x = preprocess(imf.PHOTOS[0], clf.spec)
        np.testing.assert_allclose(x, recipe_pixels(imf.PHOTOS[0], clf.spec.resize_short, height, width),
                                   atol=1e-6)


def test_a_dynamic_size_model_takes_the_stated_crop_and_a_mismatch_is_refused(tmp_path):
    dynamic = onnx_models.make_classifier(tmp_path / "dyn.onnx", hw="h", input_width="w", num_classes=20)
    assert OnnxRuntimeBackend(dynamic).recipe.spec == SPEC
    want = direct_topk(dynamic, 300, 256, 256)
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(dynamic), *map(str, imf.PHOTOS),
                           "--crop", "256", "--resize-short", "300", "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = [[e["class_id"] for e in r["topk"]] for r in json.loads((tmp_path / "r.json").read_text())]
    assert got == want
    fixed = onnx_models.make_classifier(tmp_path / "fixed.onnx", hw=288)
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), str(fixed), str(imf.PHOTOS[0]), "--crop",
                           "224"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert "takes 288×288 inputs (H×W), but the preprocessing (the crop as given" in line and "--crop" in line


def test_build_records_the_models_recipe_in_the_repository_and_the_served_model_uses_it(tmp_path):
    pytest.importorskip("tritonclient", reason="the Triton repository needs tritonclient")
    from trt_res2net.serving.triton_proto import parse_config

    model = onnx_models.make_classifier(tmp_path / "m288.onnx", hw=288, num_classes=10)
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "--onnx", str(model), "--onnx-only",
                           "--triton-repo", str(tmp_path / "repo")], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "preprocessing: short side resized to 329, centre crop 288×288 (H×W)" in proc.stdout
    spec = spec_for_input(288, 288)
    record = json.loads((tmp_path / "repo" / "trt_res2net_repository.json").read_text())
    assert record["preprocess"] == spec.to_dict() and record["preprocess_sha256"] == spec.sha256()
    for name in ("m288_preprocess", "m288_python"):
        config = parse_config((tmp_path / "repo" / name / "config.pbtxt").read_text())
        assert config.parameters["preprocess_spec"].string_value == spec.to_json()
    pre = parse_config((tmp_path / "repo" / "m288_preprocess" / "config.pbtxt").read_text())
    assert list(pre.output[0].dims) == [3, 288, 288]
    # the served step (vendored code) decodes at the recorded size: infer.py's pixels
    sys.path.insert(0, str(tmp_path / "repo" / "m288_preprocess" / "1"))
    try:
        from trt_res2net_vendored.serving.triton_models.steps import Preprocessing

        params = {k: v.string_value for k, v in pre.parameters.items()}
        step = Preprocessing(params, 1, "m288_preprocess")
        pixels = step.run([np.array([[imf.PHOTOS[0].read_bytes()]], dtype=object)])[0]
        step.close()
    finally:
        sys.path.remove(str(tmp_path / "repo" / "m288_preprocess" / "1"))
        for name in [m for m in sys.modules if m.startswith("trt_res2net_vendored")]:
            del sys.modules[name]
    np.testing.assert_array_equal(pixels[0], preprocess(imf.PHOTOS[0], spec))


def test_int8_at_288_calibrates_at_288_and_the_engine_records_its_recipe(tmp_path):
    """build.py --onnx (288×288) --precision int8 with TensorRT-RTX: the calibration images are preprocessed at the
    model's size (the cache key holds that spec's hash), the INT8 model agrees with FP32, and the engine's manifest
    records the recipe, which the runtime then feeds."""
    pytest.importorskip("modelopt.onnx.quantization", reason="int8 needs ModelOpt: pip install -e .[quant]")
    pytest.importorskip("tensorrt_rtx", reason="the engine is built with TensorRT-RTX (the rtx extra)")
    model = onnx_models.make_classifier(tmp_path / "m288.onnx", hw=288, num_classes=10)
    proc = subprocess.run([sys.executable, str(ROOT / "build.py"), "--onnx", str(model), "--precision", "int8",
                           "--calib-synthetic", "8", "--max-batch", "2", "--engine-family", "tensorrt-rtx",
                           "--save-engine", "m288.engine", "--quiet"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = spec_for_input(288, 288)
    key = json.loads(next((tmp_path / "calib").glob("*.cache.json")).read_text())
    assert key["key"]["preprocess_sha256"] == spec.sha256(), key
    manifest = json.loads((tmp_path / "m288.engine.json").read_text())
    assert manifest["preprocess"] == spec.to_dict() and manifest["preprocess_sha256"] == spec.sha256()
    assert manifest["io"]["input"]["shape"][2:] == [288, 288]
