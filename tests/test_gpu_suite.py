"""benchmarks/gpu_suite.sh on a CPU: the no-GPU path for real; the verdicts and the table from canned stage
results and from the benchmark's own output on the fake GPU; time limits and the budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bench_scripts import load_benchmark
from fake_gpu_runtime import install

ROOT = Path(__file__).resolve().parents[1]


suite = load_benchmark("gpu_suite")


def test_suite_without_a_gpu_says_so_and_exits_3(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)  # the script must find the package from the repository alone
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(tmp_path / "out")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3, r.stdout + r.stderr
    assert time.monotonic() - t0 < 60
    assert "Traceback" not in r.stdout + r.stderr
    table = r.stdout.rsplit("\n\n", 1)[-1].splitlines()
    assert table[0].split() == ["stage", "result", "time", "figures"]
    assert table[1].startswith("probe") and "no GPU present" in table[1]
    assert [ln.split()[:2] for ln in table[2:5]] == [["preprocess", "skipped"], ["topk", "skipped"],
                                                     ["pytest", "skipped"]]
    assert all(ln.endswith("no GPU present") for ln in table[2:5])
    assert table[5].startswith("exit 3: no GPU present on this machine; nothing was checked")
    doc = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert doc["exit_status"] == 3 and [s["status"] for s in doc["stages"]] == ["no GPU", "skipped", "skipped",
                                                                                "skipped"]
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["gpu_probe.json", "gpu_suite.json", "gpu_suite.log"] and doc["files"] == files


def test_suite_usage_errors(tmp_path, capsys):
    for argv in ([], [str(tmp_path), "--stages", "probe,warp"], [str(tmp_path), "--iterations", "0"]):
        with pytest.raises(SystemExit) as e:
            suite.main(argv)
        assert e.value.code == 2
    assert "OUT_DIR is required" in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert suite.main([str(blocked / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot write to")


def test_run_stage_stops_the_whole_process_group_at_its_limit(tmp_path):
    log = open(tmp_path / "log", "w")
    child = "import subprocess, sys; print('started', flush=True); subprocess.run(['sleep', '60'])"
    marker = tmp_path / "out.txt"
    with open(marker, "w") as echo:
        t0 = time.monotonic()
        run = suite.run_stage("slow", [sys.executable, "-c", child], 1.0, log, echo=echo)
    log.close()
    assert time.monotonic() - t0 < 8
    assert run["timed_out"] and run["rc"] is not None and "started" in run["tail"]
    assert "stopped at its time limit of 1 s" in (tmp_path / "log").read_text()
    status, summary, _ = suite.judge_topk(run, None)
    assert status == "failed" and summary.startswith("stopped at its time limit")


def test_probe_verdicts():
    ran = {"rc": 0, "tail": []}
    doc = {"gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}, "cuda_driver_version": 13000,
           "nvrtc_version": "13.0", "kernel_target": ["cubin", "sm_90"]}
    status, summary, figures = suite.judge_probe(ran, doc, None)
    assert status == "passed" and figures["kernel_target"] == ["cubin", "sm_90"] and "CUDA driver 13.0" in summary
    no_gpu = {"rc": 3, "tail": ["error: cudaSetDevice failed: cudaErrorNoDevice"]}
    assert suite.judge_probe(no_gpu, {"error": "cudaSetDevice failed"}, None)[0] == "no GPU"
    # nvidia-smi sees a GPU that CUDA cannot use: a failure, and the other stages still run
    smi = {"list": "GPU 0: NVIDIA H200 (UUID: GPU-0)", "list_rc": 0}
    status, summary, _ = suite.judge_probe(no_gpu, {"error": "cudaSetDevice failed"}, smi)
    assert status == "failed" and summary.startswith("nvidia-smi lists a GPU but CUDA cannot use it")
    status, summary, _ = suite.judge_probe({"rc": 1, "tail": ["Traceback (most recent call last):", "  x",
                                                              "TypeError: bad argument"]}, None, smi)
    assert (status, summary) == ("failed", "exit 1: TypeError: bad argument")


def test_probe_fails_when_a_target_of_the_matrix_does_not_compile():
    doc = {"gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}, "cuda_driver_version": 12080,
           "cuda_python_version": "12.9.10", "nvrtc_version": "12.8", "kernel_target": ["cubin", "sm_90"],
           "nvrtc_matrix": {"8.7": {"result": "compiles"}, "7.2": {"result": "fails"},
                            "11.0": {"result": "unsupported"}}}
    status, summary, figures = suite.judge_probe({"rc": 0, "tail": []}, doc, None)
    assert status == "failed" and summary.endswith("the kernels do not compile for 7.2")
    assert "cuda-python 12.9.10, NVRTC 12.8" in summary and figures["targets_failing"] == ["7.2"]
    doc["nvrtc_matrix"]["7.2"] = {"result": "compiles"}
    status, summary, _ = suite.judge_probe({"rc": 0, "tail": []}, doc, None)
    assert status == "passed" and summary.endswith("; 3 targets compile")


PREPROCESS_DOC = {
    "dram_bandwidth_bytes_per_s": 4.0e12, "h2d_bandwidth_bytes_per_s": 5.0e10, "max_steps": 0.0,
    "agreement": [{"image": f"img{i}", "max_steps": 0.0, "differing_values": 0, "equals_numpy_port": True}
                  for i in range(16)],
    "timing": [{"batch": b, "kernel_ms": {"p50": 0.004 * b}, "kernel_floor_ms": 0.0003 * b,
                "kernel_over_floor": 0.004 / 0.0003, "staged_ms": {"p50": 0.1 * b}, "h2d_floor_ms": 0.02 * b}
               for b in (1, 8, 32)],
    "cpu_reference_ms_per_image": 1.5,
}


def test_preprocess_verdict_from_the_benchmark_on_the_fake_gpu(tmp_path, monkeypatch):
    install(monkeypatch)
    bench = load_benchmark("bench_gpu_preprocess")
    monkeypatch.setattr(bench, "measure_bandwidth", lambda stream, kind: 1e12 if kind == "dtod" else 2e10)
    images = bench.synthetic_images(3, size=(64, 48))
    monkeypatch.setattr(bench, "default_images", lambda: (images, ["a", "b", "c"]))
    out = tmp_path / "pre.json"
    rc = bench.main(["--batch", "1,8,32", "--iterations", "2", "--warmup", "1", "--json", str(out)])
    doc = json.loads(out.read_text())
    status, summary, figures = suite.judge_preprocess({"rc": rc, "tail": []}, doc)
    assert status == "passed", summary
    assert summary.startswith("3 images: max 0.00 8-bit steps from the CPU reference, 3/3 bit-identical")
    assert [t["batch"] for t in figures["timing"]] == [1, 8, 32]
    t = figures["timing"][2]
    assert t["floor_us"] == pytest.approx(doc["timing"][2]["kernel_floor_ms"] * 1e3)
    # the same figures, but one image off the numpy port: the kernel's own requirement fails
    doc["agreement"][1]["equals_numpy_port"] = False
    assert suite.judge_preprocess({"rc": 0, "tail": []}, doc)[0] == "failed"
    assert suite.judge_preprocess({"rc": 1, "tail": ["error: x"]}, None)[1] == "exit 1, no JSON: error: x"


@pytest.mark.filterwarnings("ignore:overflow encountered")  # the fake kernel is topk_numpy, outside errstate
def test_topk_verdict_from_the_check_on_the_fake_gpu(tmp_path, monkeypatch):
    install(monkeypatch)
    check = load_benchmark("check_gpu_topk")
    out = tmp_path / "topk.json"
    rc = check.main(["--iterations", "1", "--warmup", "0", "--json", str(out)])
    doc = json.loads(out.read_text())
    n = doc["summary"]["cases"]
    status, summary, figures = suite.judge_topk({"rc": rc, "tail": []}, doc)
    assert status == "passed" and summary.startswith(f"{n}/{n} cases agree (ids equal in {n}); max |gpu-cpu|")
    assert "(tolerance 1e-05*|cpu| + 1e-07; raw bit-equal); 64x1000 k=5:" in summary
    assert [(t["n"], t["classes"], t["k"]) for t in figures["timing"]] == list(check.TIMED)
    doc["summary"]["all_written"] = False  # an output the kernel never wrote fails the stage
    assert suite.judge_topk({"rc": 0, "tail": []}, doc)[0] == "failed"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="gpu" errors="0"
failures="{failures}" skipped="2" tests="{tests}" time="9.1"><testcase classname="tests.test_gpu_runtime"
name="test_topk_kernel_matches_numpy" time="0.2"/><testcase classname="tests.test_gpu_runtime"
name="test_preprocessing_kernel_matches_the_cpu_reference" time="1.0">{failure}</testcase><testcase
classname="tests.test_gpu_engine" name="test_fp16_engine_agrees" time="0"><skipped type="pytest.skip"
message="TensorRT is not importable (ModuleNotFoundError: No module named 'tensorrt')">x</skipped></testcase>
<testcase classname="tests.test_gpu_engine" name="test_fp32" time="0"><skipped type="pytest.skip"
message="TensorRT is not importable (ModuleNotFoundError: No module named 'tensorrt')">x</skipped></testcase>
</testsuite></testsuites>"""


def _write_junit(path, failed=False):
    failure = '<failure message="assert 1 == 0">trace</failure>' if failed else ""
    path.write_text(JUNIT.format(failures=int(failed), tests=4, failure=failure))
    return path


def test_pytest_verdicts(tmp_path):
    ok = suite.read_junit(_write_junit(tmp_path / "ok.xml"))
    assert (ok["passed"], ok["skipped"], ok["failures"]) == (2, 2, 0)
    status, summary, _ = suite.judge_pytest({"rc": 0, "tail": []}, ok, gpu_present=True)
    assert status == "passed"
    assert summary == ("2 passed, 0 failed, 0 errors, 2 skipped (skipped: 2x TensorRT is not importable "
                       "(ModuleNotFoundError: No module named 'tensorrt'))")
    bad = suite.read_junit(_write_junit(tmp_path / "bad.xml", failed=True))
    status, summary, _ = suite.judge_pytest({"rc": 1, "tail": []}, bad, gpu_present=True)
    assert status == "failed" and summary.endswith("failed: test_preprocessing_kernel_matches_the_cpu_reference")
    none_ran = {**ok, "passed": 0, "skipped": 4, "tests": 4}
    assert suite.judge_pytest({"rc": 0, "tail": []}, none_ran, gpu_present=True)[0] == "failed"
    assert suite.judge_pytest({"rc": 0, "tail": []}, none_ran, gpu_present=None)[0] == "skipped"
    assert suite.read_junit(tmp_path / "missing.xml") is None


def test_suite_with_canned_stages_reports_every_stage_and_fails_on_any(tmp_path, monkeypatch, capsys):
    """The driver on a 'GPU' whose stages are canned: a probe that passes, the real benchmark's JSON shape, a
    top-k stage that fails, pytest as it reports: every stage runs, the table is last, exit status 1."""
    probe_doc = {"gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}, "cuda_driver_version": 13000,
                 "nvrtc_version": "13.0", "kernel_target": ["cubin", "sm_90"], "compile_and_load_s": 0.4}
    topk_doc = {"summary": {"cases": 10, "passed": 9, "ids_equal": 9, "all_written": True,
                            "max_abs_error_softmax": 3e-8, "tolerance": {"rtol": 1e-5, "atol": 1e-7}},
                "timing": [{"n": 64, "classes": 1000, "k": 5, "gpu_ms": {"p50": 0.0123},
                            "cpu_topk_numpy_ms": {"p50": 2.5}}]}
    ran = []

    def fake_run_stage(name, command, timeout_s, log, env=None, echo=None):
        ran.append((name, timeout_s))
        out = tmp_path / "out"
        if name == "probe":
            (out / suite.FILES["probe"]).write_text(json.dumps(probe_doc))
        elif name == "preprocess":
            (out / suite.FILES["preprocess"]).write_text(json.dumps(PREPROCESS_DOC))
        elif name == "topk":
            (out / suite.FILES["topk"]).write_text(json.dumps(topk_doc))
            return {"command": command, "rc": 1, "seconds": 2.0, "timed_out": False, "tail": ["FAILED x"]}
        else:
            _write_junit(out / suite.FILES["pytest"])
        return {"command": command, "rc": 0, "seconds": 1.5, "timed_out": False, "tail": []}

    monkeypatch.setattr(suite, "run_stage", fake_run_stage)
    smi = {"list": "GPU 0: NVIDIA H200 (UUID: GPU-0)", "list_rc": 0, "query_rc": 0,
           "query": "NVIDIA H200, 580.159.03, 143771 MiB, 345 MHz, 1980 MHz, 3201 MHz, 30, 75.00 W, P0"}
    monkeypatch.setattr(suite, "nvidia_smi", lambda: smi)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / suite.FILES["topk"]).write_text("stale")  # an earlier run's file is removed first
    assert suite.main([str(tmp_path / "out"), "--budget-s", "300"]) == 1
    assert [n for n, _ in ran] == list(suite.STAGES)
    assert all(limit <= suite.TIMEOUTS[n] for n, limit in ran)
    lines = capsys.readouterr().out.splitlines()
    table = lines[lines.index(f"{'stage':<11} {'result':<8} {'time':>6}  figures") - 1:]
    assert table[0] == "GPU suite on NVIDIA H200 (compute 9.0), CUDA driver 13.0 (580.159.03), NVRTC 13.0"
    assert table[2].startswith("probe       passed     1.5s  NVIDIA H200, compute 9.0") and "cubin sm_90" in table[2]
    assert table[3].startswith("preprocess  passed") and "16/16 bit-identical" in table[3]
    assert table[4].split() == ["batch", "kernel", "p50", "us", "floor", "us", "x", "floor", "staged", "p50", "ms",
                                "H2D", "floor", "ms"]
    assert table[5].split() == ["1", "4.00", "0.30", "13.3", "0.100", "0.020"]
    assert table[8].startswith("topk        failed") and "9/10 cases agree" in table[8]
    assert "12.3 us GPU" in table[8]
    assert table[9].startswith("pytest      passed") and "2 passed" in table[9]
    assert table[10].startswith("exit 1: failed: topk")
    doc = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert doc["exit_status"] == 1 and doc["probe"] == probe_doc
    assert [s["status"] for s in doc["stages"]] == ["passed", "passed", "failed", "passed"]
    assert doc["stages"][1]["figures"]["timing"][0]["kernel_p50_us"] == pytest.approx(4.0)
    assert len(doc["files"]) <= 8


def test_budget_stops_stages_that_would_overrun(tmp_path, monkeypatch, capsys):
    clock = [0.0]
    monkeypatch.setattr(suite, "_now", lambda: clock[0])

    def slow_stage(name, command, timeout_s, log, env=None, echo=None):
        clock[0] += timeout_s  # each stage uses its whole limit
        return {"command": command, "rc": None, "seconds": timeout_s, "timed_out": True, "tail": []}

    monkeypatch.setattr(suite, "run_stage", slow_stage)
    monkeypatch.setattr(suite, "nvidia_smi", lambda: None)
    assert suite.main([str(tmp_path / "out"), "--budget-s", "200"]) == 1
    doc = json.loads((tmp_path / "out" / "gpu_suite.json").read_text())
    assert clock[0] <= 200
    assert [s["status"] for s in doc["stages"]] == ["failed"] * 4
    assert "budget spent" in doc["stages"][-1]["summary"]
