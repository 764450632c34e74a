#!/usr/bin/env bash
# The prepared GPU check (issue 14): see bench/gpu_check.py and docs/benchmarks.md, "GPU check (issue 14)".
#   bash bench/gpu_check.sh --device cuda          # on the GPU machine: results and weights under $OUT
#   bash bench/gpu_check.sh --device cpu --quick   # the same steps at toy sizes, here
# PYTHON picks the interpreter (default python3: the machine's preinstalled torch).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
