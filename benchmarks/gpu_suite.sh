#!/usr/bin/env bash
# Everything a GPU can check without TensorRT, in one call; prints a short table last (docs/gpu_suite.md).
#
#   bash benchmarks/gpu_suite.sh OUT_DIR [--budget-s 450] [--iterations 100] [--stages probe,preprocess,topk,pytest]
#
# Runs from a plain copy of the repository (no pip install): the repository root goes on PYTHONPATH.
# PYTHON picks the interpreter (default python3). Exit status: 0 every check passed, 1 a check failed or a
# stage crashed or ran out of time, 2 usage error, 3 no GPU on this machine (nothing was checked).
set -u
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONIOENCODING=utf-8
exec "${PYTHON:-python3}" "$root/benchmarks/gpu_suite.py" "$@"
