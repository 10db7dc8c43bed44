#!/usr/bin/env python3
"""The INT8 build of a full-size Res2Net, before and after issue 12, in one run; and build.py --onnx against
polygraphy convert on the same ONNX.

    python benchmarks/bench_int8_build.py [--model res2net200_vd_26w_4s] [--calib-images 64] [--runs 2]
                                          [--before REF] [--workdir DIR] [--json PATH] [--skip-polygraphy]

Part 1 — where ``build.py --model M --precision int8 --random-weights --calib-dir IMAGES --engine-family
tensorrt-rtx --quiet`` spends its time and memory, for two versions of this repository: ``--before`` (a git ref,
checked out with ``git worktree add`` into a temporary folder, removed at the end) and the working tree. The same
calibration images (generated once: ``data/synthetic.py``, seed 101, mixed with crops of tests/data's photographs),
each run in a fresh folder (no cache reused), the versions alternating. Per run: wall time and peak RSS of the
process (``wait4``), and per step — export, calibration, Q/DQ model, engine build — the time between the lines
each version prints on stdout when a step ends, and the largest RSS of the process tree sampled every 0.1 s in it.

Part 2 — ``build.py --onnx X --engine-family tensorrt-rtx --quiet`` against the polygraphy line its manifest
records (``POLYGRAPHY_USE_TENSORRT_RTX=1 polygraphy convert X --convert-to trt ...``), alternating, ``--runs`` each,
for res2net50 fp32, and the FP16 and INT8 ONNX of ``--model``: wall time, CPU time and peak RSS, medians and
ratios.

Needs the rtx and quant extras (and git for --before). Takes about 4 × (old + new build) + part 2: ~15-20 minutes
for res2net200 on 2 cores. ``--wait-quiet S`` waits before each run for the machine to be idle (other work on two
cores distorts the wall times; the CPU time of each run is reported too).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The stdout line that ends each step, in both versions (build.py's result lines).
STEP_ENDS = [
    ("export", lambda line, m: line.startswith("wrote ") and line.find(f"{m}.onnx (fp32 ONNX") >= 0),
    ("calibration", lambda line, m: line.startswith("calibrated on ")),
    ("Q/DQ model", lambda line, m: line.startswith("wrote ") and "_int8.onnx (INT8 Q/DQ ONNX" in line),
    ("engine build", lambda line, m: line.startswith("engine ready: ")),
]


def _tree_rss_mib(pid: int) -> float:
    """RSS of a process and its children (MiB)."""
    total = 0
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def measured(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run ``cmd``: wall time, peak RSS (wait4), stdout lines with their times, RSS samples every 0.1 s."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples, lines, done = [], [], threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.perf_counter() - started, _tree_rss_mib(proc.pid)))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    for line in proc.stdout:
        lines.append((time.perf_counter() - started, line.rstrip("\n")))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    reader.join()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"failed ({code}): {shlex.join(cmd)}\n{''.join(err)[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "lines": lines, "samples": samples, "stderr_bytes": len("".join(err))}


def wait_quiet(limit_s: float, threshold: float = 0.6) -> float:
    """Wait (at most ``limit_s``) until the 1-minute load average is below ``threshold``: other work on a 2-core
    machine distorts wall times. Returns the load average when it stopped waiting."""
    deadline = time.monotonic() + limit_s
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def steps(run: dict, model: str) -> list[dict]:
    """Per step: seconds and the largest sampled RSS between the line that ended the step before and its own."""
    out, start = [], 0.0
    for name, ends in STEP_ENDS:
        t = next((t for t, line in run["lines"] if ends(line, model)), None)
        if t is None:
            continue
        peak = max([rss for s, rss in run["samples"] if start <= s <= t] or [0.0])
        out.append({"step": name, "seconds": round(t - start, 1), "peak_rss_mib": round(peak)})
        start = t
    return out


def prepare_images(work: Path, n: int) -> Path:
    from trt_res2net.data.synthetic import write_images

    images = work / f"calib_{n}"
    if not images.is_dir() or len(list(images.glob("*.jpg"))) != n:
        write_images(images, n, seed=101, photos=sorted((ROOT / "tests" / "data").glob("*.jpg")))
    return images


def int8_builds(args, work: Path, images: Path) -> dict:
    trees = {"after": ROOT}
    before_dir = None
    if args.before:
        before_dir = Path(tempfile.mkdtemp(prefix="trt_res2net_before_"))
        shutil.rmtree(before_dir)
        subprocess.run(["git", "worktree", "add", "--detach", str(before_dir), args.before], cwd=ROOT, check=True,
                       capture_output=True)
        trees = {"before": before_dir, "after": ROOT}
    results = {name: [] for name in trees}
    try:
        for run in range(args.runs):
            for name, tree in trees.items():
                cwd = work / f"{name}_{run}"
                shutil.rmtree(cwd, ignore_errors=True)
                cwd.mkdir(parents=True)
                cmd = [sys.executable, str(tree / "build.py"), "--model", args.model, "--precision", "int8",
                       "--random-weights", "--calib-dir", str(images), "--calib-images", str(args.calib_images),
                       "--engine-family", "tensorrt-rtx", "--quiet"]
                env = {**os.environ, "PYTHONPATH": str(tree)}
                load = wait_quiet(args.wait_quiet) if args.wait_quiet else os.getloadavg()[0]
                r = measured(cmd, cwd, env)
                r["steps"] = steps(r, args.model)
                r["load_before"] = round(load, 2)
                del r["samples"]
                results[name].append(r)
                print(f"{name} run {run}: {r['wall_s']:.1f} s (CPU {r['cpu_s']:.1f} s, load before {load:.2f}), "
                      f"peak {r['peak_rss_mib']:.0f} MiB, "
                      f"steps {[(s['step'], s['seconds'], s['peak_rss_mib']) for s in r['steps']]}", flush=True)
                shutil.rmtree(cwd / "engines", ignore_errors=True)
    finally:
        if before_dir is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(before_dir)], cwd=ROOT, check=False,
                           capture_output=True)
    return results


def polygraphy_ratios(args, work: Path, images: Path) -> list[dict]:
    """build.py --onnx against the recorded polygraphy line, alternating."""
    if shutil.which("polygraphy") is None:
        raise SystemExit("polygraphy is not installed (the quant extra brings it)")
    cases = []
    src = work / "poly"
    src.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    base = [sys.executable, str(ROOT / "build.py"), "--engine-family", "tensorrt-rtx", "--quiet"]
    onnx50 = src / "engines" / "res2net50_vd_26w_4s.onnx"
    if not onnx50.exists():
        subprocess.run([*base, "--model", "res2net50_vd_26w_4s", "--random-weights", "--onnx-only"], cwd=src,
                       env=env, check=True, capture_output=True)
    cases.append(("res2net50_vd_26w_4s fp32", onnx50))
    big = src / "engines" / f"{args.model}.onnx"
    for precision in ("fp16", "int8"):
        out = src / "engines" / f"{args.model}_{precision}.onnx"
        if not out.exists():
            extra = (["--calib-dir", str(images), "--calib-images", str(args.calib_images)] if precision == "int8"
                     else [])
            subprocess.run([*base, "--model", args.model, "--random-weights", "--precision", precision,
                            "--onnx-only", *extra], cwd=src, env=env, check=True, capture_output=True)
        cases.append((f"{args.model} {precision}", out))
    del big
    rows = []
    for label, onnx in cases:
        ours_dir = work / "ours"
        shutil.rmtree(ours_dir, ignore_errors=True)
        ours = [*base, "--onnx", str(onnx), "--engine-dir", str(ours_dir)]
        first = measured(ours, work, env)  # also gives the polygraphy line to compare with
        engine = next(ours_dir.glob("*.engine"))
        line = json.loads(Path(str(engine) + ".json").read_text())["build_options"]["equivalent_commands"][
            "polygraphy"]
        theirs_engine = work / "theirs.rtx.engine"
        parts = shlex.split(line)
        parts[parts.index("-o") + 1] = str(theirs_engine)
        poly_env = {**os.environ, parts[0].split("=")[0]: parts[0].split("=")[1]}
        theirs = parts[1:]
        ours_runs, their_runs = [], []
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        for _ in range(args.runs + 1):
            shutil.rmtree(ours_dir, ignore_errors=True)
            ours_runs.append(measured(ours, work, env))
            their_runs.append(measured(theirs, work, poly_env))
        ours_runs, their_runs = ours_runs[1:], their_runs[1:]  # the first pair warms the page cache
        row = {"case": label, "onnx_mb": round(onnx.stat().st_size / 1e6, 1),
               "build_py_s": statistics.median(r["wall_s"] for r in ours_runs),
               "polygraphy_s": statistics.median(r["wall_s"] for r in their_runs),
               "build_py_peak_mib": statistics.median(r["peak_rss_mib"] for r in ours_runs),
               "polygraphy_peak_mib": statistics.median(r["peak_rss_mib"] for r in their_runs),
               "build_py_cpu_s": statistics.median(r["cpu_s"] for r in ours_runs),
               "polygraphy_cpu_s": statistics.median(r["cpu_s"] for r in their_runs),
               "build_py_runs_s": [round(r["wall_s"], 2) for r in ours_runs],
               "polygraphy_runs_s": [round(r["wall_s"], 2) for r in their_runs],
               "same_size": engine.stat().st_size == theirs_engine.stat().st_size,
               "polygraphy_command": line, "first_build_py_stdout": [x for _, x in first["lines"]]}
        row["time_ratio"] = round(row["build_py_s"] / row["polygraphy_s"], 3)
        row["memory_ratio"] = round(row["build_py_peak_mib"] / row["polygraphy_peak_mib"], 3)
        row["cpu_ratio"] = round(row["build_py_cpu_s"] / row["polygraphy_cpu_s"], 3)
        rows.append(row)
        print(f"{label}: build.py {row['build_py_s']:.2f} s / {row['build_py_peak_mib']:.0f} MiB, polygraphy "
              f"{row['polygraphy_s']:.2f} s / {row['polygraphy_peak_mib']:.0f} MiB → {row['time_ratio']}×, "
              f"{row['memory_ratio']}×; CPU {row['build_py_cpu_s']:.2f} s against {row['polygraphy_cpu_s']:.2f} s → "
              f"{row['cpu_ratio']}×", flush=True)
    return rows


def table(results: dict) -> str:
    lines = ["| version | run | export s / MiB | calibration s / MiB | Q/DQ model s / MiB | engine build s / MiB "
             "| total s | CPU s | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for i, r in enumerate(runs):
            cells = {s["step"]: f"{s['seconds']} / {s['peak_rss_mib']}" for s in r["steps"]}
            lines.append(f"| {name} | {i} | {cells.get('export', '')} | {cells.get('calibration', '')} | "
                         f"{cells.get('Q/DQ model', '')} | {cells.get('engine build', '')} | {r['wall_s']:.1f} | "
                         f"{r['cpu_s']:.1f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="res2net200_vd_26w_4s")
    p.add_argument("--calib-images", type=int, default=64)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--before", default=None, help="git ref of the code to compare with (a temporary worktree)")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--skip-polygraphy", action="store_true")
    p.add_argument("--skip-int8", action="store_true")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="before each measured run wait up to S seconds for a 1-minute load average below 0.6")
    args = p.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_int8_"))
    work.mkdir(parents=True, exist_ok=True)
    images = prepare_images(work, args.calib_images)
    doc = {"model": args.model, "calib_images": args.calib_images, "runs": args.runs, "before": args.before,
           "python": sys.version.split()[0], "cpus": os.cpu_count()}
    if not args.skip_int8:
        doc["int8"] = int8_builds(args, work, images)
        print(table(doc["int8"]))
    if not args.skip_polygraphy:
        doc["polygraphy"] = polygraphy_ratios(args, work, images)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
