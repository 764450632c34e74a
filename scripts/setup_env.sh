#!/usr/bin/env bash
# Build .venv from the package registries, idempotently: a second run with unchanged
# pins returns at once. Used by both README commands (and so by .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.setup-stamp
want=$(cat requirements-dev.txt scripts/wheelhouse.py pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x .venv/bin/python ]; then
  exit 0
fi
quiet() { "$@" 2> >(grep -v "is neither a file nor a directory" >&2); }
start=$(date +%s)
echo "setting up .venv (torch, detectron2, test tools; about 2 minutes on a fresh machine)..."
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
quiet .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
wheel=$(.venv/bin/python scripts/wheelhouse.py detectron2 --out wheels)
quiet .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
quiet .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
.venv/bin/python -c "import detectron2, torch, torchvision, kernel_lib; print('detectron2', detectron2.__version__, '| torch', torch.__version__, '| torchvision', torchvision.__version__)"
echo "$want" > "$stamp"
echo ".venv ready in $(( $(date +%s) - start )) s"
