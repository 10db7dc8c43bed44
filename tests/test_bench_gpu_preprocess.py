"""benchmarks/bench_gpu_preprocess.py runs end to end on the fake GPU (its real run needs a GPU)."""

from __future__ import annotations

import json

from bench_scripts import load_benchmark
from fake_gpu_runtime import install


def test_bench_script_on_fakes(tmp_path, monkeypatch, capsys):
    install(monkeypatch)
    bench = load_benchmark("bench_gpu_preprocess")
    monkeypatch.setattr(bench, "measure_bandwidth", lambda stream, kind: 1e12 if kind == "dtod" else 2e10)
    images = bench.synthetic_images(2, size=(64, 48))
    monkeypatch.setattr(bench, "default_images", lambda: (images, ["a", "b"]))
    out = tmp_path / "gpu_pre.json"
    assert bench.main(["--batch", "1,2", "--iterations", "2", "--warmup", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max 0.00 8-bit steps" in text and "2 bit-identical to the numpy port" in text
    doc = json.loads(out.read_text())
    assert [r["batch"] for r in doc["timing"]] == [1, 2]
    t = doc["timing"][1]["traffic_bytes"]
    assert doc["timing"][1]["kernel_floor_ms"] == (t["read_bytes"] + t["write_bytes"] + t["desc_bytes"]) / 1e9
