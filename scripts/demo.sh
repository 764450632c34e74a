#!/usr/bin/env bash
# The README's main job: run the Kaggle inference notebook locally, offline, on the CPU.
#
#   bash scripts/demo.sh [MODELS_DIR | --random-weights]
#
# Builds a /kaggle-like tree under demo/ (git-ignored), in the layout Kaggle mounts for
# notebooks pushed from the CLI:
#   demo/kaggle/input/competitions/sartorius-cell-instance-segmentation/  test/ (3 shipped images) + sample_submission.csv
#   demo/kaggle/input/datasets/demo-user/sartorius-offline-bundle/       the dataset build_dataset.py stages
#   demo/kaggle/input/datasets/demo-user/sartorius-fold-models/          MODELS_DIR (linked), or demonstration checkpoints
#   demo/kaggle/working/                                                  what the notebook writes
# DEMO_LAYOUT=classic puts every input at demo/kaggle/input/<slug>/ instead (the older mount).
# then executes notebooks/sartorius-inference.ipynb with KAGGLE_INPUT/KAGGLE_WORKING pointing
# there and saves the executed copy as demo/sartorius-inference.executed.ipynb.
#
# MODELS_DIR holds one folder per fold model (config.yaml + model_final.pth, optional meta.json)
# and optionally models.json, as `python -m kernel_lib train` writes them. Without it, the fold
# models shipped in models/r50-narrow/ run (trained from scratch on the annotated pack; see
# docs/benchmarks.md). --random-weights makes two checkpoints with RANDOM weights instead (the
# path runs, the predictions are noise). KERNEL_LIB_CONFIG=path/to/config.json runs the
# notebook with that pipeline config.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

usage() { sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; }
if [ $# -gt 1 ]; then
  echo "error: expected at most one argument (MODELS_DIR), got $#; see: bash scripts/demo.sh --help" >&2
  exit 2
fi
case "${1:-}" in -h | --help) usage; exit 0 ;; esac
SHIPPED=models/r50-narrow
MODELS_SRC=${1:-$SHIPPED}
if [ "$MODELS_SRC" = "--random-weights" ]; then
  MODELS_SRC=""
elif [ "$MODELS_SRC" = "$SHIPPED" ] && [ ! -f "$SHIPPED/models.json" ]; then
  echo "error: the shipped fold models $SHIPPED/models.json are missing (a partial checkout?);" \
    "pass MODELS_DIR or --random-weights" >&2
  exit 2
fi
if [ -n "$MODELS_SRC" ]; then
  if [ ! -d "$MODELS_SRC" ]; then
    echo "error: MODELS_DIR $MODELS_SRC is not a folder; pass the folder that holds your fold model folders" >&2
    exit 2
  fi
  if ! compgen -G "$MODELS_SRC/*/model_final.pth" >/dev/null; then
    echo "error: no $MODELS_SRC/<fold>/model_final.pth found; MODELS_DIR must hold one folder per fold model" \
      "(config.yaml + model_final.pth), e.g. runs/models with runs/models/fold0/..." >&2
    exit 2
  fi
  MODELS_SRC=$(cd "$MODELS_SRC" && pwd)
fi

bash scripts/setup_env.sh
PY=.venv/bin/python

DEMO=$ROOT/demo
INPUT=$DEMO/kaggle/input
WORKING=$DEMO/kaggle/working
case "${DEMO_LAYOUT:-new}" in
  new) COMPETITIONS=$INPUT/competitions DATASETS=$INPUT/datasets/demo-user ;;
  classic) COMPETITIONS=$INPUT DATASETS=$INPUT ;;
  *) echo "error: DEMO_LAYOUT must be new or classic, got ${DEMO_LAYOUT}" >&2; exit 2 ;;
esac
COMPETITION=$COMPETITIONS/sartorius-cell-instance-segmentation
BUNDLE=$DATASETS/sartorius-offline-bundle
MODELS=$DATASETS/sartorius-fold-models
EXECUTED=$DEMO/sartorius-inference.executed.ipynb
start=$(date +%s)

echo "== 1/4 competition data: the 3 shipped test images -> $COMPETITION"
rm -rf "$INPUT" "$WORKING" "$EXECUTED"  # one layout at a time: nothing stale for the notebook to find
mkdir -p "$COMPETITION" "$WORKING"
cp -r tests/data/test "$COMPETITION/test"
cp tests/data/sample_submission.csv "$COMPETITION/"

echo "== 2/4 bundle dataset -> $BUNDLE"
if ! "$PY" build_dataset.py --out "$BUNDLE"; then
  echo "warning: the bundle dataset could not be built (its first build needs the package index);" \
    "the notebook still runs here, from .venv's detectron2 and kernel_lib" >&2
fi

echo "== 3/4 fold models -> $MODELS"
if [ -n "$MODELS_SRC" ]; then
  ln -s "$MODELS_SRC" "$MODELS"
  echo "using your models: $MODELS_SRC"
else
  "$PY" -c "import sys; from kernel_lib.demo_models import make_demo_models; make_demo_models(sys.argv[1], n_folds=2)" "$MODELS"
  echo "******************************************************************************************"
  echo "* --random-weights: made 2 DEMONSTRATION fold checkpoints with RANDOM WEIGHTS.          *"
  echo "* They show that the whole path runs; their predictions are noise and score about 0.     *"
  echo "* Drop the flag for the shipped trained folds, or pass yours: bash scripts/demo.sh DIR   *"
  echo "******************************************************************************************"
fi

echo "inputs, as the notebook finds them (kernel_lib.kaggle.find_input):"
"$PY" -c "import sys; from kernel_lib.kaggle import find_input
for slug in sys.argv[2:]: print(f'  {slug}: {find_input(slug, sys.argv[1])}')" "$INPUT" \
  sartorius-cell-instance-segmentation sartorius-offline-bundle sartorius-fold-models

echo "== 4/4 executing notebooks/sartorius-inference.ipynb offline on the CPU (a few minutes)"
# Offline: pip may not reach any index, and the notebook sees only the demo tree.
KAGGLE_INPUT=$INPUT KAGGLE_WORKING=$WORKING PIP_NO_INDEX=1 CUDA_VISIBLE_DEVICES="" \
  "$PY" - notebooks/sartorius-inference.ipynb "$EXECUTED" "$WORKING" <<'EOF'
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

source, executed, working = sys.argv[1:4]
notebook = nbformat.read(source, as_version=4)
try:
    NotebookClient(notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": working}}).execute()
except CellExecutionError as err:
    nbformat.write(notebook, executed)
    lines = [line for line in str(err).splitlines() if line.strip()]
    print("\n".join(lines[-6:]), file=sys.stderr)
    print(f"error: the notebook stopped with the error above; the executed copy is {executed}", file=sys.stderr)
    sys.exit(1)
nbformat.write(notebook, executed)
for cell in notebook.cells:  # echo what the notebook printed, without the progress bars
    for output in cell.get("outputs", []):
        if output.get("name") == "stdout":
            print(output["text"], end="")
EOF

echo
echo "timing table ($WORKING/timings.csv):"
"$PY" -c "import sys, pandas as pd; print(pd.read_csv(sys.argv[1]).round(3).to_string(index=False))" "$WORKING/timings.csv"
echo
echo "done in $(($(date +%s) - start)) s"
echo "  submission:         $WORKING/submission.csv"
echo "  overlays:           $WORKING/overlays/"
echo "  timing table:       $WORKING/timings.csv"
echo "  executed notebook:  $EXECUTED"
if [ -z "$MODELS_SRC" ]; then
  echo "  (models: demonstration checkpoints with RANDOM weights; drop --random-weights for trained ones)"
fi
