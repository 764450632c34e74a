#!/usr/bin/env bash
# The prepared GPU check (issue 14): see bench/gpu_check.py and docs/benchmarks.md, "GPU check (issue 14)".
#   bash bench/gpu_check.sh --stage-data ../shared/data/sartorius-mini   # here: the pack to carry (build/gpu_data)
#   bash bench/gpu_check.sh --dry-run          # here: the upload measured, every step at toy sizes, ../shared hidden
#   bash bench/gpu_check.sh --device cuda      # on the GPU machine: results and weights under $OUT
#   bash bench/gpu_check.sh --device cpu --quick   # the same steps at toy sizes, here
# PYTHON picks the interpreter (default python3: the machine's preinstalled torch; here,
# for --stage-data and --dry-run, .venv/bin/python when it exists).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [[ -z "${PYTHON:-}" && -x .venv/bin/python && " $* " =~ \ --(dry-run|stage-data)\  ]]; then
    PYTHON=.venv/bin/python
fi
exec "${PYTHON:-python3}" bench/gpu_check.py "$@"
