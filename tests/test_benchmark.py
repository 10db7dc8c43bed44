"""The benchmark's statistics, warnings, report formats and CLI on a CPU (synthetic timings, fake engine)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_gpu_runtime import install, write_engine

from trt_res2net.cli.benchmark import load_images
from trt_res2net.cli.infer import main as infer_main
from trt_res2net.core.errors import EXIT_NO_TENSORRT, UserError
from trt_res2net.runtime import benchmark as bm


def _result(batch, gpu, e2e):
    return bm.BatchResult(batch, bm.latency_stats(gpu), bm.latency_stats(e2e))


def test_latency_stats_match_numpy():
    samples = np.random.default_rng(0).gamma(20, 0.1, 500)
    s = bm.latency_stats(samples)
    assert s.count == 500
    assert s.mean == pytest.approx(samples.mean()) and s.std == pytest.approx(samples.std(ddof=1))
    assert (s.p50, s.p90, s.p99) == pytest.approx(tuple(np.percentile(samples, [50, 90, 99])))
    assert s.min == samples.min() and s.max == samples.max()
    assert s.cv == pytest.approx(samples.std(ddof=1) / samples.mean())
    assert set(s.to_dict()) == {"count", "mean", "std", "min", "p50", "p90", "p99", "max", "cv"}


def test_latency_stats_edge_cases():
    one = bm.latency_stats([2.0])
    assert (one.std, one.cv, one.p99) == (0.0, 0.0, 2.0)
    with pytest.raises(ValueError):
        bm.latency_stats([])


def test_throughput_and_cv_warning():
    steady = _result(8, [1.0, 1.01, 0.99, 1.0], [2.0, 2.02, 1.98, 2.0])
    assert steady.throughput == pytest.approx(8 * 1000 / 2.0)
    assert steady.gpu_throughput == pytest.approx(8 * 1000 / 1.0)
    assert steady.warnings() == []
    noisy = _result(32, [1.0, 1.2, 0.8, 1.0], [2.0, 2.02, 1.98, 2.0])  # CV ≈ 16 %
    (warning,) = noisy.warnings()
    assert "batch 32" in warning and "GPU compute" in warning and "2.5%" in warning
    assert steady.warnings(threshold=0.001) != []


def test_parse_batch_list():
    assert bm.parse_batch_list("32,1,8") == [1, 8, 32]
    assert bm.parse_batch_list("4") == [4]
    assert bm.parse_batch_list(8) == [8]
    assert bm.parse_batch_list(["1,2", "2"]) == [1, 2]
    assert bm.parse_batch_list(None) == list(bm.DEFAULT_BATCHES)
    for bad in ("0", "1,x", "-1", "", ","):
        with pytest.raises(UserError, match="batch sizes are positive integers"):
            bm.parse_batch_list(bad)


class FakeTarget:
    """Synthetic timings: GPU time grows with batch; classify_bgr records what it got."""

    min_batch, max_batch = 1, 64

    def __init__(self):
        self.compute_calls, self.classified = [], []
        self.first_run_ms: dict[int, float] = {}

    def time_compute_ms(self, batch):
        self.compute_calls.append(batch)
        return 0.5 + 0.1 * batch

    def classify_bgr(self, images, k):
        self.classified.append((len(images), k))


def test_run_benchmark_times_each_batch_size():
    target = FakeTarget()
    images = bm.synthetic_images(3)
    results = bm.run_benchmark(target, [1, 8], images, iterations=5, warmup=2, k=3, progress=False)
    assert [r.batch for r in results] == [1, 8]
    assert target.compute_calls == [1] * 7 + [8] * 7
    assert target.classified == [(1, 3)] * 7 + [(8, 3)] * 7
    assert results[1].gpu_compute.mean == pytest.approx(1.3)
    assert results[0].gpu_compute.cv == 0.0 and results[0].end_to_end.count == 5


@pytest.mark.parametrize(("kwargs", "message"),
                         [({"iterations": 0}, "run_benchmark.iterations"), ({"warmup": -1}, "run_benchmark.warmup")])
def test_run_benchmark_rejects_bad_counts(kwargs, message):
    with pytest.raises(UserError, match=message):
        bm.run_benchmark(FakeTarget(), [1], bm.synthetic_images(1), progress=False, **kwargs)


def test_synthetic_images_are_seeded_photos():
    a, b = bm.synthetic_images(2), bm.synthetic_images(2)
    assert a[0].shape == (375, 500, 3) and a[0].dtype == np.uint8
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], a[1]) and a[0].std() > 30


def test_table_json_and_plot(tmp_path):
    results = [_result(1, [1.0, 1.1], [2.0, 2.1]), _result(8, [3.0, 3.3], [5.0, 5.5])]
    table = bm.format_table(results)
    lines = table.splitlines()
    assert "GPU mean" in lines[1] and lines[3].split()[0] == "1" and lines[4].split()[0] == "8"
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
    doc = bm.results_json(results, {"engine": "m.engine"}, {"iterations": 2})
    doc = json.loads(json.dumps(doc))
    assert doc["results"][1]["batch"] == 8 and doc["results"][1]["end_to_end_ms"]["p99"] > 5.0
    assert doc["results"][0]["throughput_images_per_s"] == pytest.approx(1000 / 2.05)
    assert doc["results"][0]["warnings"]  # CV of [1.0, 1.1] is far above 2.5 %
    pytest.importorskip("matplotlib")
    png = bm.plot_results(results, tmp_path / "out" / "bench.png", title="test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


FIXTURES = Path(__file__).parent / "fixtures"


def _report():
    results = (_result(1, [1.0, 1.1], [2.0, 2.1]), bm.BatchResult(8, bm.latency_stats([3.0]), bm.latency_stats([5.0]),
                                                                  12.5))
    info = {"engine": "e/m.engine", "library": "TensorRT 10.3.0", "engine_family": "tensorrt",
            "gpu": {"name": "GPU"}, "cuda_graph": False}
    settings = bm.BenchmarkSettings((1, 8), 2, 0, 5, "synthetic 500x375 images", False, None)
    return bm.BenchmarkReport(Path("e/m.engine"), results, info, settings, (32,))


def test_the_report_round_trips_through_its_json():
    report = _report()
    doc = json.loads(json.dumps(report.to_json()))
    assert (doc["format"], doc["format_version"]) == (bm.BenchmarkReport.FORMAT, bm.BenchmarkReport.SCHEMA_VERSION)
    assert {"benchmark", "info", "settings", "cv_warning_threshold", "results"} <= set(doc)  # the keys infer.py wrote
    assert doc["settings"]["batches"] == [1, 8] and doc["skipped_batches"] == [32]
    assert bm.BenchmarkReport.from_json(doc, "b.json") == report


def test_the_first_releases_report_is_read():
    doc = json.loads((FIXTURES / "benchmark_report_v0.json").read_text())
    report = bm.BenchmarkReport.from_json(doc, "benchmark_report_v0.json")
    assert report.engine == Path("engines/m.engine") and report.skipped_batches == ()
    assert [r.batch for r in report.results] == [1, 8] and report.results[0].first_run_ms == 40.5
    assert report.settings.iterations == 3 and report.settings.kernel_specialization is None
    assert report.results[1].end_to_end.p50 == pytest.approx(5.1)


def test_a_newer_or_other_report_is_refused_in_one_line():
    doc = {**_report().to_json(), "format_version": bm.BenchmarkReport.SCHEMA_VERSION + 1}
    with pytest.raises(UserError, match="b.json has benchmark report format 2; this trt_res2net reads ≤ 1") as e:
        bm.BenchmarkReport.from_json(doc, "b.json")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="is not a trt_res2net benchmark report"):
        bm.BenchmarkReport.from_json({"format": "trt_res2net.manifest"}, "b.json")
    with pytest.raises(UserError, match="b.json: a damaged benchmark report"):
        bm.BenchmarkReport.from_json({**_report().to_json(), "results": [{"batch": 1}]}, "b.json")


def test_cross_check_commands():
    poly = bm.polygraphy_command("e/m.engine", "input", 8, iterations=50)
    assert shlex.join(poly) == ("polygraphy run e/m.engine --model-type engine --trt "
                                "--input-shapes 'input:[8,3,224,224]' --iterations 50")
    trtexec = bm.trtexec_command("e/m.engine", "input", 8, iterations=50)
    assert trtexec == ["trtexec", "--loadEngine=e/m.engine", "--shapes=input:8x3x224x224", "--useCudaGraph",
                       "--noDataTransfers", "--iterations=50", "--avgRuns=50"]
    assert not any(a.startswith("--shapes") for a in bm.trtexec_command("m.engine", "x", 4, dynamic=False))


def test_benchmark_flags_map_onto_options():
    from trt_res2net.cli.benchmark import benchmark_options
    from trt_res2net.cli.infer import build_parser

    args = build_parser().parse_args(["m.engine", "--benchmark", "--iterations", "5", "--warmup", "1", "--cuda-graph",
                                      "--polygraphy", "--batch", "8,1", "--no-progress"])
    assert args.benchmark and args.polygraphy
    assert benchmark_options(args) == bm.BenchmarkOptions(batches=(1, 8), iterations=5, warmup=1, cuda_graph=True,
                                                          progress=False)
    assert benchmark_options(build_parser().parse_args(["m.engine", "--benchmark"])) == bm.BenchmarkOptions()
    with pytest.raises(UserError, match="BenchmarkOptions.iterations must be at least 1"):
        bm.BenchmarkOptions(iterations=0)


def main(argv) -> int:
    """``infer.py ENGINE --benchmark ...`` (what python -m trt_res2net.benchmark was)."""
    return infer_main([*argv, "--benchmark"])


def test_cli_refuses_non_engines(tmp_path, capsys):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    assert main([str(onnx)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --benchmark runs TensorRT engines") and err.count("\n") == 1


def test_cli_without_tensorrt_exits_3(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = write_engine(tmp_path / "m.engine")
    assert main([str(engine), "--batch", "1"]) == EXIT_NO_TENSORRT
    err = capsys.readouterr().err
    assert f"cannot run {engine}, a TensorRT engine: TensorRT is not importable" in err and err.count("\n") == 1


def _manifest_for(engine, **fields):
    from trt_res2net.engine import manifest as mf

    doc = {"format": mf.MANIFEST_FORMAT, "format_version": mf.MANIFEST_VERSION,
           "io": {"input": {"name": "x", "shape": [-1, 3, 224, 224]}}, **fields}  # the builder's "io" record
    mf.manifest_path_for(engine).write_text(json.dumps(doc))


def test_cli_without_tensorrt_still_prints_the_cross_check_commands(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    engine = write_engine(tmp_path / "m.engine")
    _manifest_for(engine, engine_family="tensorrt")
    assert main([str(engine), "--batch", "1,8", "--polygraphy", "--iterations", "10"]) == EXIT_NO_TENSORRT
    out = capsys.readouterr().out
    assert f"trtexec equivalent:    trtexec --loadEngine={engine} --shapes=x:8x3x224x224 --useCudaGraph" in out
    assert "polygraphy equivalent: polygraphy run" in out and "'x:[1,3,224,224]'" in out
    assert "polygraphy not run" in out


def test_rtx_engine_cross_check_uses_the_rtx_tools(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    engine = write_engine(tmp_path / "m.rtx.engine", rtx=True)
    _manifest_for(engine, engine_family="tensorrt-rtx")
    assert main([str(engine), "--batch", "8", "--polygraphy", "--iterations", "10"]) == EXIT_NO_TENSORRT
    out = capsys.readouterr().out
    assert (f"tensorrt_rtx equivalent: tensorrt_rtx --loadEngine={engine} --shapes=x:8x3x224x224 "
            "--rtxCudaGraphStrategy=wholeGraph --noDataTransfers") in out
    assert "polygraphy equivalent: env POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy run" in out
    assert "needs `pip install polygraphy` and TensorRT-RTX" in out


def test_first_run_is_reported_apart(tmp_path, monkeypatch, capsys):
    install(monkeypatch, rtx=True)
    engine = write_engine(tmp_path / "m.rtx.engine", rtx=True, batch=(1, 4, 8))
    out_json = tmp_path / "b.json"
    assert main([str(engine), "--batch", "1,4", "--iterations", "3", "--warmup", "0", "--json",
                    str(out_json), "--plot", str(tmp_path / "b.png"), "--no-manifest-check"]) == 0
    out = capsys.readouterr().out
    assert "first run" in out.splitlines()[1]
    doc = json.loads(out_json.read_text())
    # eager kernel specialisation: the timed runs use the kernels compiled for their shape in the first run
    assert doc["settings"]["kernel_specialization"] == "eager"
    assert bm.BenchmarkOptions().kernel_specialization == "eager"
    assert all(r["first_run_ms"] > 0 for r in doc["results"])
    assert doc["info"]["library"] == "TensorRT-RTX 1.7.1" and doc["info"]["first_run_ms"].keys() == {"1", "4"}
    assert doc["info"]["runtime_cache"].endswith(".runtime-cache")
    assert Path(doc["info"]["runtime_cache"]).is_file()  # written when the benchmark closed the engine


def test_cli_end_to_end_on_a_fake_engine(tmp_path, monkeypatch, capsys):
    install(monkeypatch)
    monkeypatch.setattr(bm, "_polygraphy_runnable", lambda family: False)
    engine = write_engine(tmp_path / "m.engine", batch=(1, 4, 8))
    out_json = tmp_path / "bench.json"
    code = main([str(engine), "--batch", "1,4,16", "--iterations", "3", "--warmup", "1",
                    "--json", str(out_json), "--polygraphy", "--cuda-graph", "--no-manifest-check"])
    assert code == 0
    captured = capsys.readouterr()
    assert "batch 16 is outside the engine's range 1..8; skipped" in captured.err
    assert "polygraphy run" in captured.out and "trtexec --loadEngine=" in captured.out
    doc = json.loads(out_json.read_text())
    assert [r["batch"] for r in doc["results"]] == [1, 4]
    assert doc["settings"]["iterations"] == 3 and doc["settings"]["cuda_graph"] is True
    assert doc["info"]["library"] == "TensorRT 10.3.0" and doc["info"]["input"]["name"] == "input"
    if _has_matplotlib():
        assert out_json.with_suffix(".png").is_file()


def test_cli_with_images_and_no_usable_batch(tmp_path, monkeypatch, capsys):
    import cv2

    install(monkeypatch)
    engine = write_engine(tmp_path / "m.engine", batch=(1, 2, 2))
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), bm.synthetic_images(1)[0])
    (photos / "broken.jpg").write_bytes(b"not an image")
    assert main([str(engine), str(photos), "--batch", "2", "--iterations", "2", "--warmup", "0",
                 "--no-manifest-check"]) == 0
    assert "broken.jpg: not a readable image; skipped" in capsys.readouterr().err
    assert main([str(engine), "--batch", "4,8", "--no-manifest-check"]) == 2
    assert "none of the batch sizes" in capsys.readouterr().err
    with pytest.raises(UserError, match="no such file"):
        load_images([tmp_path / "nope.jpg"])


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
