#!/usr/bin/env python3
"""Everything a GPU can check without TensorRT, in one call, with one table at the end (docs/gpu_suite.md).

    bash benchmarks/gpu_suite.sh OUT_DIR [--budget-s 450] [--iterations 100] [--stages probe,preprocess,...]

Stages, in this order; each is a subprocess in its own process group, killed at its time limit, and a stage
that fails does not stop the ones after it:

  probe       the GPU, the driver, cuda-python and NVRTC: compiles the kernels for every target of
              tools/cuda_matrix.py, and loads this GPU's (warms the cache)
  preprocess  benchmarks/bench_gpu_preprocess.py on the photographs in tests/data and its synthetic sizes:
              the CUDA preprocessing kernel against the CPU reference (8-bit steps, and bit for bit against
              the numpy port of the kernel), and the kernel's time against its bytes-moved floor
  topk        benchmarks/check_gpu_topk.py: the softmax/top-k kernel against topk_numpy, and its time
  pytest      python -m pytest -m gpu (TensorRT tests skip with their reason where TensorRT is absent)

Files written under OUT_DIR (at most 6): gpu_suite.json (everything below, and each stage's verdict and
figures), gpu_suite.log (every stage's output), gpu_probe.json, bench_gpu_preprocess.json,
check_gpu_topk.json, pytest_gpu.xml (JUnit).

Exit status: 0 every check passed; 1 a check failed, a stage crashed, or ran out of time; 2 usage error;
3 no GPU on this machine (nothing was checked).

Standard library only at the top: everything that touches CUDA runs in the stage subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("probe", "preprocess", "topk", "pytest")
TIMEOUTS = {"probe": 90, "preprocess": 180, "topk": 90, "pytest": 240}  # seconds; the budget caps them
BUDGET_S = 450  # the whole suite: under 8 minutes with room to spare
FILES = {
    "suite": "gpu_suite.json",
    "log": "gpu_suite.log",
    "probe": "gpu_probe.json",
    "preprocess": "bench_gpu_preprocess.json",
    "topk": "check_gpu_topk.json",
    "pytest": "pytest_gpu.xml",
}
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_GPU = 0, 1, 2, 3
NO_GPU = "no GPU"
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
STEP_TOLERANCE = 1.0 + 1e-3  # the kernel's requirement: within one 8-bit step of the CPU reference


# --------------------------------------------------------------------------------------------------
# The probe (run as a subprocess: ``gpu_suite.py --probe PATH``)


def _package_versions() -> dict:
    from importlib import metadata

    names = ("numpy", "opencv-python-headless", "opencv-python", "cuda-python", "cuda-bindings",
             "nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu12", "onnx", "onnxruntime", "pytest", "torch",
             "tensorrt", "tensorrt-rtx-cu13")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def probe(path: Path) -> int:
    """Describe the GPU and the CUDA stack, compile and load the kernels; write ``path``. Exit as the CLIs do."""
    sys.path.insert(0, str(ROOT))
    from trt_res2net.core.errors import UserError
    from trt_res2net.core.files import write_json

    doc: dict = {"python": sys.version.split()[0], "packages": _package_versions()}
    try:
        from trt_res2net.cuda import device as cu
        from trt_res2net.cuda import kernels as cp

        mods = cu.cuda_modules()
        doc["cuda_python_layout"] = mods.layout
        doc["cuda_python_version"] = cu.cuda_python_version()
        try:  # NVRTC needs no GPU: recorded even where there is none, with the kernels compiled for every target
            doc["nvrtc_version"] = ".".join(map(str, cp.nvrtc_version()))
            doc["nvrtc_archs"] = cp.nvrtc_supported_archs()
            sys.path.insert(0, str(ROOT / "tools"))
            from cuda_matrix import compile_row

            doc["nvrtc_matrix"] = compile_row(None)["cells"]
        except UserError as e:
            doc["nvrtc_error"] = str(e)
        info = cu.init_device(0)
        doc["device_count"] = cu.device_count()
        doc["gpu"] = {**info.to_dict(), "free_memory": info.free_memory,
                      "memory_bus_width_bits": info.memory_bus_width_bits,
                      "memory_clock_khz": info.memory_clock_khz,
                      "datasheet_bandwidth_bytes_per_s": info.peak_bandwidth_bytes_per_s}
        doc["cuda_driver_version"] = int(cu.call(mods.runtime.cudaDriverGetVersion))
        doc["cuda_runtime_version"] = int(cu.call(mods.runtime.cudaRuntimeGetVersion))
        doc["nvrtc_version"] = ".".join(map(str, cp.nvrtc_version()))  # now an error stops the probe
        doc["kernel_target"] = list(cp.choose_target(info.compute_capability, cp.nvrtc_supported_archs()))
        t0 = time.perf_counter()
        stream = cu.Stream()
        kernels = cp.GpuKernels(stream, info.compute_capability)
        doc["kernel_image"] = str(kernels.cache_path)
        doc["compile_and_load_s"] = time.perf_counter() - t0
        kernels.close()
        stream.destroy()
    except (UserError, ValueError) as e:  # ValueError: choose_target, for a GPU older than NVRTC's oldest target
        doc["error"] = str(e)
        write_json(path, doc)
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", EXIT_FAILED)
    write_json(path, doc)
    failed = sorted(cc for cc, cell in doc.get("nvrtc_matrix", {}).items() if cell["result"] == "fails")
    print(f"GPU: {info.name}, compute {info.cc}, {info.total_memory / 2**30:.1f} GiB; CUDA driver "
          f"{_cuda_version(doc['cuda_driver_version'])}; cuda-python {doc['cuda_python_version']}; NVRTC "
          f"{doc['nvrtc_version']}, kernels for every target: "
          f"{'compile' if not failed else 'FAIL for ' + ', '.join(failed)}; this GPU's kernels: "
          f"{doc['kernel_target'][0]} {doc['kernel_target'][1]} ({doc['compile_and_load_s']:.2f} s to compile "
          f"or read and load)")
    return 0


def _cuda_version(v) -> str:
    return f"{v // 1000}.{v % 1000 // 10}" if isinstance(v, int) and v > 0 else "?"


# --------------------------------------------------------------------------------------------------
# Running a stage


def run_stage(name: str, command: list[str], timeout_s: float, log, env: dict | None = None,
              echo=None) -> dict:
    """Run one stage to completion or to its time limit; its output goes to ``echo`` and ``log`` as it comes.

    The stage runs in a new process group: at the limit the whole group gets SIGTERM, then SIGKILL 5 s later.
    """
    echo = echo or sys.stdout
    header = f"=== {name}: {' '.join(command)}  (limit {timeout_s:.0f} s)\n"
    for stream in (echo, log):
        stream.write(header)
        stream.flush()
    tail: list[str] = []
    t0 = time.monotonic()
    try:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except OSError as e:
        line = f"could not start: {e}"
        log.write(line + "\n")
        return {"command": command, "rc": None, "seconds": 0.0, "timed_out": False, "tail": [line]}

    def pump():
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace")
            echo.write(line)
            echo.flush()
            log.write(line)
            tail.append(line.rstrip("\n"))
            del tail[:-60]

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    seconds = time.monotonic() - t0
    if timed_out:
        line = f"=== {name}: stopped at its time limit of {timeout_s:.0f} s"
        for stream in (echo, log):
            stream.write(line + "\n")
        tail.append(line)
    log.flush()
    return {"command": command, "rc": proc.returncode, "seconds": round(seconds, 2), "timed_out": timed_out,
            "tail": tail[-40:]}


def _now() -> float:
    return time.monotonic()


def _kill_group(proc, sig) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group this suite started for the stage, and nothing else
    except ProcessLookupError:
        pass


def stage_commands(out: Path, python: str, iterations: int) -> dict[str, list[str]]:
    warmup = str(max(iterations // 10, 2))
    return {
        "probe": [python, str(ROOT / "benchmarks" / "gpu_suite.py"), "--probe", str(out / FILES["probe"])],
        "preprocess": [python, str(ROOT / "benchmarks" / "bench_gpu_preprocess.py"), "--batch", "1,8,32",
                       "--iterations", str(iterations), "--warmup", warmup, "--json", str(out / FILES["preprocess"])],
        "topk": [python, str(ROOT / "benchmarks" / "check_gpu_topk.py"), "--iterations", str(iterations * 2),
                 "--warmup", warmup, "--json", str(out / FILES["topk"])],
        "pytest": [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rs",
                   f"--junitxml={out / FILES['pytest']}", "-o", "junit_suite_name=gpu"],
    }


def stage_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", PYTHONDONTWRITEBYTECODE="1")
    return env


def nvidia_smi() -> dict | None:
    """What nvidia-smi says about the GPUs (None when it is not installed)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    fields = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,pstate"
    doc: dict = {}
    for key, argv in (("list", [exe, "-L"]),
                      ("query", [exe, f"--query-gpu={fields}", "--format=csv,noheader"])):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            doc[key] = (r.stdout or r.stderr).strip()
            doc[f"{key}_rc"] = r.returncode
        except (OSError, subprocess.TimeoutExpired) as e:
            doc[key] = f"{type(e).__name__}: {e}"
            doc[f"{key}_rc"] = None
    doc["fields"] = fields
    return doc


def _smi_driver(smi: dict | None) -> str:
    """' (580.159.03)': the driver's own version from nvidia-smi, when it answered."""
    if not smi or smi.get("query_rc") != 0:
        return ""
    fields = smi.get("query", "").splitlines()[0].split(",") if smi.get("query") else []
    return f" ({fields[1].strip()})" if len(fields) > 1 else ""


def _smi_sees_gpu(smi: dict | None) -> bool:
    return bool(smi and smi.get("list_rc") == 0 and "GPU" in smi.get("list", ""))


# --------------------------------------------------------------------------------------------------
# Verdicts: (status, one-line summary, figures) per stage, from its exit status and its JSON/XML


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(run: dict) -> str:
    lines = [ln.strip() for ln in run.get("tail", []) if ln.strip() and not ln.startswith("===")]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":", 1)[0]]
    return (errors or lines or ["no output"])[-1][:300]


def _failure(run: dict) -> tuple[str, str] | None:
    """(status, summary) for a stage that did not finish on its own or could not start."""
    if run.get("timed_out"):
        return FAILED, f"stopped at its time limit after {run['seconds']:.0f} s: {_last_line(run)}"
    if run.get("rc") is None:
        return FAILED, _last_line(run)
    return None


def judge_probe(run: dict, doc: dict | None, smi: dict | None) -> tuple[str, str, dict]:
    failure = _failure(run)
    if failure:
        return (*failure, {})
    doc = doc or {}
    if run["rc"] == 0 and "gpu" in doc:
        g = doc["gpu"]
        matrix = doc.get("nvrtc_matrix") or {}
        failed = sorted(cc for cc, cell in matrix.items() if cell.get("result") == "fails")
        figures = {"gpu": g.get("name"), "compute_capability": g.get("compute_capability"),
                   "driver": _cuda_version(doc.get("cuda_driver_version")), "nvrtc": doc.get("nvrtc_version"),
                   "cuda_python": doc.get("cuda_python_version"), "kernel_target": doc.get("kernel_target"),
                   "compile_and_load_s": doc.get("compile_and_load_s"), "targets_failing": failed}
        target = " ".join(doc.get("kernel_target") or ["?"])
        summary = (f"{g.get('name')}, compute {g.get('compute_capability')}, CUDA driver {figures['driver']}, "
                   f"cuda-python {figures['cuda_python']}, NVRTC {figures['nvrtc']}: kernels {target} compiled and "
                   f"loaded")
        if failed:
            return FAILED, f"{summary}; the kernels do not compile for {', '.join(failed)}", figures
        return PASSED, summary + (f"; {len(matrix)} targets compile" if matrix else ""), figures
    reason = doc.get("error") or _last_line(run)
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")
    if run["rc"] == EXIT_NO_GPU and (hidden or not _smi_sees_gpu(smi)):
        if hidden:
            seen = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
        else:
            seen = "nvidia-smi not found" if smi is None else f"nvidia-smi: {smi.get('list') or 'no GPU listed'}"
        return NO_GPU, f"no GPU present ({reason.removeprefix('error: ')}; {seen})", {}
    if run["rc"] == EXIT_NO_GPU:
        return FAILED, f"nvidia-smi lists a GPU but CUDA cannot use it: {reason}", {}
    return FAILED, f"exit {run['rc']}: {reason}", {}


def judge_preprocess(run: dict, doc: dict | None) -> tuple[str, str, dict]:
    failure = _failure(run)
    if failure:
        return (*failure, {})
    if not doc:
        return FAILED, f"exit {run['rc']}, no JSON: {_last_line(run)}", {}
    rows = doc.get("agreement", [])
    identical = sum(bool(r.get("equals_numpy_port")) for r in rows)
    worst = float(doc.get("max_steps", float("nan")))
    timing = [{
        "batch": t["batch"],
        "kernel_p50_us": t["kernel_ms"]["p50"] * 1e3,
        "floor_us": t["kernel_floor_ms"] * 1e3,
        "over_floor": t["kernel_over_floor"],
        "staged_p50_ms": t["staged_ms"]["p50"],
        "h2d_floor_ms": t["h2d_floor_ms"],
    } for t in doc.get("timing", [])]
    figures = {"images": len(rows), "max_steps": worst, "bit_identical_to_port": identical, "timing": timing,
               "dram_gb_per_s": doc.get("dram_bandwidth_bytes_per_s", 0) / 1e9,
               "h2d_gb_per_s": doc.get("h2d_bandwidth_bytes_per_s", 0) / 1e9,
               "cpu_reference_ms_per_image": doc.get("cpu_reference_ms_per_image")}
    summary = (f"{len(rows)} images: max {worst:.2f} 8-bit steps from the CPU reference, {identical}/{len(rows)} "
               f"bit-identical to the numpy port; D2D {figures['dram_gb_per_s']:.0f} GB/s, "
               f"H2D {figures['h2d_gb_per_s']:.1f} GB/s")
    ok = run["rc"] == 0 and rows and worst <= STEP_TOLERANCE and identical == len(rows) and timing
    return (PASSED if ok else FAILED), summary + ("" if ok else f" (exit {run['rc']})"), figures


def judge_topk(run: dict, doc: dict | None) -> tuple[str, str, dict]:
    failure = _failure(run)
    if failure:
        return (*failure, {})
    if not doc:
        return FAILED, f"exit {run['rc']}, no JSON: {_last_line(run)}", {}
    s = doc.get("summary", {})
    tol = s.get("tolerance", {})
    timing = [{"n": t["n"], "classes": t["classes"], "k": t["k"], "gpu_p50_us": t["gpu_ms"]["p50"] * 1e3,
               "cpu_p50_us": t["cpu_topk_numpy_ms"]["p50"] * 1e3} for t in doc.get("timing", [])]
    figures = {key: s.get(key) for key in ("cases", "passed", "ids_equal", "all_written", "max_abs_error_softmax",
                                           "gpu_vs_float64", "cpu_vs_float64")}
    figures["timing"] = timing
    summary = (f"{s.get('passed')}/{s.get('cases')} cases agree (ids equal in {s.get('ids_equal')}); max "
               f"|gpu-cpu| softmax score {s.get('max_abs_error_softmax', float('nan')):.2g} "
               f"(tolerance {tol.get('rtol', float('nan')):g}*|cpu| + {tol.get('atol', float('nan')):g}; "
               f"raw bit-equal)")
    ref = next((t for t in timing if (t["n"], t["classes"], t["k"]) == (64, 1000, 5)), None)
    if ref:
        summary += f"; 64x1000 k=5: {ref['gpu_p50_us']:.1f} us GPU, {ref['cpu_p50_us']:.0f} us CPU"
    ok = run["rc"] == 0 and s.get("cases") and s.get("passed") == s.get("cases") and s.get("all_written")
    return (PASSED if ok else FAILED), summary + ("" if ok else f" (exit {run['rc']})"), figures


def read_junit(path: Path) -> dict | None:
    """Counts, failed test ids and skip reasons from a pytest JUnit XML (None when it is missing or broken)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed, reasons = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        skip = case.find("skipped")
        if skip is not None:
            reason = (skip.get("message") or "").removeprefix("Skipped: ").strip()
            reasons[reason] = reasons.get(reason, 0) + 1
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed_tests": failed, "skip_reasons": reasons}


def judge_pytest(run: dict, junit: dict | None, gpu_present: bool | None = None) -> tuple[str, str, dict]:
    """``gpu_present``: what the probe found (None: not run, or it failed); all skipped on a GPU is a failure."""
    failure = _failure(run)
    if failure:
        return (*failure, junit or {})
    if junit is None:
        return FAILED, f"exit {run['rc']}, no JUnit XML: {_last_line(run)}", {}
    summary = (f"{junit['passed']} passed, {junit['failures']} failed, {junit['errors']} errors, "
               f"{junit['skipped']} skipped")
    if junit["skip_reasons"]:
        top = sorted(junit["skip_reasons"].items(), key=lambda kv: -kv[1])[:2]
        summary += " (skipped: " + "; ".join(f"{n}x {r[:90]}" for r, n in top) + ")"
    if junit["failed_tests"]:
        summary += "; failed: " + ", ".join(t.rsplit("::", 1)[-1] for t in junit["failed_tests"][:4])
    if run["rc"] == 0 and junit["passed"] > 0:
        return PASSED, summary, junit
    if run["rc"] == 0 and gpu_present:
        return FAILED, summary + "; no GPU test ran although the probe found a GPU", junit
    if run["rc"] == 0:
        return SKIPPED, summary, junit
    return FAILED, f"exit {run['rc']}: {summary}", junit


# --------------------------------------------------------------------------------------------------
# The table


def render_table(report: dict) -> str:
    lines = []
    head = report.get("gpu_line")
    if head:
        lines.append(f"GPU suite on {head}")
    lines.append(f"{'stage':<11} {'result':<8} {'time':>6}  figures")
    for s in report["stages"]:
        secs = s.get("seconds")
        t = f"{secs:.1f}s" if isinstance(secs, int | float) else "-"
        lines.append(f"{s['stage']:<11} {s['status']:<8} {t:>6}  {s['summary']}")
        timing = s.get("figures", {}).get("timing") if s["stage"] == "preprocess" else None
        if timing:
            lines.append(f"{'':<29}batch  kernel p50 us  floor us  x floor  staged p50 ms  H2D floor ms")
            for r in timing:
                lines.append(f"{'':<29}{r['batch']:>5}  {r['kernel_p50_us']:>13.2f}  {r['floor_us']:>8.2f}  "
                             f"{r['over_floor']:>7.1f}  {r['staged_p50_ms']:>13.3f}  {r['h2d_floor_ms']:>12.3f}")
    lines.append(report["verdict"])
    return "\n".join(lines)


def verdict(stages: list[dict]) -> tuple[int, str]:
    statuses = [s["status"] for s in stages]
    if NO_GPU in statuses:
        return EXIT_NO_GPU, "exit 3: no GPU present on this machine; nothing was checked"
    failed = [s["stage"] for s in stages if s["status"] == FAILED]
    if failed:
        return EXIT_FAILED, f"exit 1: failed: {', '.join(failed)}"
    if not any(s == PASSED for s in statuses):
        return EXIT_FAILED, "exit 1: nothing was checked (every stage skipped)"
    return EXIT_OK, "exit 0: every check passed"


# --------------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="Exit status: 0 all passed, 1 a check failed, 2 usage, 3 no GPU.")
    parser.add_argument("out", type=Path, nargs="?", metavar="OUT_DIR", help="folder for the JSON, XML and log")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S,
                        help=f"wall-time budget of the whole suite in seconds (default {BUDGET_S})")
    parser.add_argument("--iterations", type=int, default=100,
                        help="timed iterations per preprocessing batch size (top-k: twice that; default 100)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # the probe stage itself
    args = parser.parse_args(argv)
    if args.probe is None and args.out is None:
        parser.error("OUT_DIR is required")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        parser.error(f"--stages: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(STAGES)}")
    args.stages = [s for s in STAGES if s in stages]
    if args.iterations < 1 or args.budget_s <= 0:
        parser.error("--iterations and --budget-s must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe is not None:
        return probe(args.probe)
    out = args.out.resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES.values():  # stale results of an earlier run must not be read as this run's
            (out / name).unlink(missing_ok=True)
        log = open(out / FILES["log"], "w", encoding="utf-8")  # noqa: SIM115 (closed below)
    except OSError as e:
        print(f"error: cannot write to {args.out}: {e}", file=sys.stderr)
        return EXIT_USAGE

    started = time.time()
    deadline = _now() + args.budget_s
    commands = stage_commands(out, sys.executable, args.iterations)
    env = stage_env()
    smi = nvidia_smi()
    report: dict = {
        "suite": "trt_res2net benchmarks/gpu_suite.py", "format": 1,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "host": {"hostname": platform.node(), "machine": platform.machine(), "python": sys.version.split()[0],
                 "executable": sys.executable},
        "settings": {"budget_s": args.budget_s, "iterations": args.iterations, "stages": args.stages},
        "nvidia_smi": smi, "stages": [],
    }
    gpu_present = None  # the probe's finding: True, False (no GPU: skip the rest), None (not run, or it failed)
    for name in STAGES:
        entry: dict = {"stage": name}
        if name not in args.stages:
            entry.update(status=SKIPPED, summary="not asked for (--stages)", seconds=None)
        elif gpu_present is False:
            entry.update(status=SKIPPED, summary="no GPU present", seconds=None)
        else:
            left = deadline - _now() - 8  # room to stop a stage and write the report
            limit = min(TIMEOUTS[name], left)
            if limit < 10:
                entry.update(status=FAILED, summary=f"not run: {args.budget_s:.0f} s budget spent", seconds=None)
            else:
                run = run_stage(name, commands[name], limit, log, env)
                entry["run"] = run
                entry["seconds"] = run["seconds"]
                if name == "probe":
                    doc = _read_json(out / FILES["probe"])
                    status, summary, figures = judge_probe(run, doc, smi)
                    report["probe"] = doc
                    if status == NO_GPU:
                        gpu_present = False
                    elif status == PASSED:
                        gpu_present = True
                    if doc and "gpu" in doc:
                        g = doc["gpu"]
                        report["gpu_line"] = (f"{g.get('name')} (compute {g.get('compute_capability')}), CUDA driver "
                                              f"{_cuda_version(doc.get('cuda_driver_version'))}{_smi_driver(smi)}, "
                                              f"NVRTC {doc.get('nvrtc_version')}")
                elif name == "preprocess":
                    status, summary, figures = judge_preprocess(run, _read_json(out / FILES["preprocess"]))
                elif name == "topk":
                    status, summary, figures = judge_topk(run, _read_json(out / FILES["topk"]))
                else:
                    status, summary, figures = judge_pytest(run, read_junit(out / FILES["pytest"]), gpu_present)
                entry.update(status=status, summary=summary, figures=figures)
        report["stages"].append(entry)

    for leftover in out.glob(".*.part"):  # a stage killed while writing atomically leaves its temporary file
        leftover.unlink(missing_ok=True)
    status, line = verdict(report["stages"])
    report["exit_status"] = status
    report["seconds"] = round(time.time() - started, 1)
    report["verdict"] = f"{line} ({report['seconds']:.0f} s; results in {out / FILES['suite']})"
    report["files"] = sorted({p.name for p in out.iterdir() if p.is_file()} | {FILES["suite"]})
    table = render_table(report)
    log.write("\n" + table + "\n")
    log.close()
    tmp = out / f".{FILES['suite']}.part"
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, out / FILES["suite"])
    print("\n" + table, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
