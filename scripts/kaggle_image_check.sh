#!/usr/bin/env bash
# The Kaggle-image check: the bundle and the inference notebook in a stand-in of Kaggle's
# notebook image, offline, as a first push would meet them.
#
#   bash scripts/kaggle_image_check.sh [--pins FILE] [--python X.Y|PATH] [--models DIR | --random-weights]
#                                      [--work DIR] [--keep-image]
#
# 1. image:    a fresh venv of Python 3.12 (Kaggle's; --python picks another version or an
#              interpreter) with the pins of scripts/kaggle_image.txt installed from the package
#              index: torch 2.10 (PyPI's CUDA 12.8 build, ~3.5 GB download, ~7 GB installed),
#              numpy, pandas, opencv, ipykernel... as Kaggle's image has them, each line saying
#              where its version comes from. No detectron2, fvcore, iopath (Kaggle has none).
#              Kept by --keep-image for a rerun (same pins and interpreter), less what the notebook installed.
# 2. bundle:   build_dataset.py stages the dataset the notebook installs from.
# 3. tree:     a /kaggle tree in the layout of CLI-pushed notebooks under WORK/kaggle:
#              input/competitions/sartorius-cell-instance-segmentation/ (the 3 shipped test images),
#              input/datasets/check-user/{sartorius-offline-bundle,sartorius-fold-models}/, working/.
#              Models: --models DIR, else the shipped models/r50-narrow (when its models.json is
#              there), else (or with --random-weights) 2 random-weight checkpoints (the path runs,
#              the masks are noise).
# 4. notebook: notebooks/sartorius-inference.ipynb executed by the image's own nbclient and
#              ipykernel, with KAGGLE_INPUT/KAGGLE_WORKING on the tree, on the CPU, with no network
#              (a fresh network namespace when `unshare -n` works, PIP_NO_INDEX always): its own
#              install cell runs the bundle's kernel_lib_bootstrap.py, which installs its wheels.
# 5. verdict:  the submission validated against sample_submission.csv; `pip freeze` of the image
#              before and after the notebook compared: what the install cell added, and whether it
#              upgraded, downgraded or removed anything the image had (that fails the check).
#              A summary (versions installed, the cell's changes, times) is printed and written to
#              WORK/summary.txt. Exit 0 only when the notebook ran, the submission is valid and
#              nothing preinstalled changed.
#
# Too heavy for CI (the image is several GB); the last result is in docs/compat.md.
# Runs at nice 19 (KAGGLE_CHECK_NICE=N to change) so as not to slow other work on the machine.
# KERNEL_LIB_CONFIG=config.json runs the notebook with that pipeline config (default, as on
# Kaggle: the models' best_config.json, else the defaults). WORK: build/kaggle-image-check (git-ignored);
# the image venv is deleted at the end unless --keep-image.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

if [ -z "${_KAGGLE_CHECK_NICED:-}" ]; then
  export _KAGGLE_CHECK_NICED=1
  exec nice -n "${KAGGLE_CHECK_NICE:-19}" bash "$0" "$@"
fi

usage() { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; }
fail() { echo "error: $*" >&2; exit 2; }

PINS=scripts/kaggle_image.txt
WANT_PYTHON=3.12
MODELS_SRC=""
RANDOM_WEIGHTS=0
WORK=$ROOT/build/kaggle-image-check
KEEP_IMAGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --pins) PINS=${2:?--pins needs a file}; shift 2 ;;
    --python) WANT_PYTHON=${2:?--python needs X.Y or an interpreter}; shift 2 ;;
    --models) MODELS_SRC=${2:?--models needs a folder}; shift 2 ;;
    --random-weights) RANDOM_WEIGHTS=1; shift ;;
    --work) WORK=${2:?--work needs a folder}; shift 2 ;;
    --keep-image) KEEP_IMAGE=1; shift ;;
    *) fail "unknown argument $1; see: bash scripts/kaggle_image_check.sh --help" ;;
  esac
done
[ -f "$PINS" ] || fail "--pins $PINS does not exist; it lists the image's packages, one name==version a line"
PINS=$(cd "$(dirname "$PINS")" && pwd)/$(basename "$PINS")
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
if [ -n "$MODELS_SRC" ] && [ "$RANDOM_WEIGHTS" = 1 ]; then fail "give --models DIR or --random-weights, not both"; fi

t0=$(date +%s)
phase() { echo; echo "== $*"; }
elapsed() { echo $(($(date +%s) - $1)); }

# --------------------------------------------------------------------------- 1. the image
phase "1/5 the image: a venv of Python $WANT_PYTHON with $(basename "$PINS")"
is_python() {  # is_python CANDIDATE X.Y: runs, and is that version
  "$1" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$2' else 1)" >/dev/null 2>&1
}
find_python() {  # an interpreter of version $1: PATH, pyenv, /usr/local, /usr, uv's
  local want=$1 c
  for c in "$(command -v "python$want" || true)" "$HOME"/.pyenv/versions/"$want"*/bin/python"$want" \
    /usr/local/bin/python"$want" /usr/bin/python"$want"; do
    if [ -n "$c" ] && [ -x "$c" ] && is_python "$c" "$want"; then echo "$c"; return 0; fi
  done
  if command -v uv >/dev/null && c=$(uv python find "$want" 2>/dev/null) && is_python "$c" "$want"; then
    echo "$c"; return 0
  fi
  return 1
}
PYTHON_NOTE=""
if [[ "$WANT_PYTHON" =~ ^3\.[0-9]+$ ]]; then
  if ! BASE_PYTHON=$(find_python "$WANT_PYTHON"); then
    BASE_PYTHON=$(command -v python3)
    PYTHON_NOTE="NO Python $WANT_PYTHON on this machine: the image uses $("$BASE_PYTHON" -V 2>&1) ($BASE_PYTHON) instead, NOT Kaggle's Python"
    echo "warning: $PYTHON_NOTE" >&2
  fi
else
  BASE_PYTHON=$WANT_PYTHON
  [ -x "$BASE_PYTHON" ] || fail "--python $BASE_PYTHON is neither X.Y nor an interpreter"
fi
IMAGE_PY_VERSION=$("$BASE_PYTHON" -c 'import platform; print(platform.python_version())')
IMAGE_XY=${IMAGE_PY_VERSION%.*}
echo "interpreter: $BASE_PYTHON (Python $IMAGE_PY_VERSION)"

VENV=$WORK/image
stamp=$VENV/.image-stamp
want_stamp=$( (cat "$PINS"; "$BASE_PYTHON" -c 'import sys; print(sys.version)'; echo "$BASE_PYTHON") | sha256sum | cut -d' ' -f1)
t_image=$(date +%s)
baseline=$VENV/.image-freeze  # `pip freeze --all` of the image as built
freeze_image() { "$VENV/bin/python" -m pip freeze --all --disable-pip-version-check; }
restore_image() {  # a kept image is the image again: what an earlier notebook run installed into it goes
  local added
  [ -f "$baseline" ] || return 1
  added=$(comm -13 <(sed 's/[=@ ].*//' "$baseline" | sort) <(freeze_image | sed 's/[=@ ].*//' | sort)) || return 1
  if [ -n "$added" ]; then
    echo "uninstalling what an earlier notebook run installed into the kept image: $(echo $added)"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip uninstall --yes --quiet --disable-pip-version-check $added || return 1
  fi
  [ "$(freeze_image)" = "$(cat "$baseline")" ]  # anything else changed: build it again
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && [ -x "$VENV/bin/python" ] && restore_image; then
  echo "reusing the image venv $VENV (same pins, same interpreter)"
  IMAGE_REUSED=1
else
  IMAGE_REUSED=0
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv "$VENV"
  echo "installing $(grep -cE '^[A-Za-z0-9]' "$PINS") pins from the package index into $VENV (torch alone is GBs)..."
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PINS" \
    2> >(grep -v "is neither a file nor a directory" >&2)
  freeze_image > "$baseline"
  echo "$want_stamp" > "$stamp"
fi
IMAGE_SECONDS=$(elapsed "$t_image")
IMAGE_SIZE=$(du -sh "$VENV" | cut -f1)
"$VENV/bin/python" -m pip freeze --all --disable-pip-version-check > "$WORK/freeze-image.txt"
# The pins as installed, the packages the pins pulled in unpinned, and what Kaggle does not have.
image_ok=0
"$VENV/bin/python" - "$PINS" > "$WORK/image-report.txt" <<'EOF' || image_ok=1
import importlib.metadata as md
import re
import sys

norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
pins = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        name, version = line.split("==")
        pins[norm(name)] = (name.strip(), version.strip())
installed = {norm(d.metadata["Name"]): d.version for d in md.distributions()}
wrong = [f"{name}=={want} pinned, {installed.get(key)} installed" for key, (name, want) in pins.items()
         if installed.get(key) != want]
extra = sorted(f"{key}=={v}" for key, v in installed.items() if key not in pins)
present = [n for n in ("sal-detectron2", "detectron2", "fvcore", "iopath", "kernel-lib") if n in installed]
print(f"pins installed as pinned: {len(pins) - len(wrong)}/{len(pins)}" + (f"; NOT: {'; '.join(wrong)}" if wrong else ""))
print(f"pulled in unpinned ({len(extra)}): {', '.join(extra) or 'none'}")
print(f"absent as on Kaggle (detectron2, fvcore, iopath, kernel_lib): {'yes' if not present else 'NO, present: ' + ', '.join(present)}")
sys.exit(1 if wrong or present else 0)
EOF
cat "$WORK/image-report.txt"
[ "$image_ok" = 0 ] || fail "the image does not match $PINS (above); delete $VENV and run again"
"$VENV/bin/python" -m pip check --disable-pip-version-check > "$WORK/pip-check-image.txt" 2>&1 || true
echo "image ready: $IMAGE_SIZE in $VENV ($([ "$IMAGE_REUSED" = 1 ] && echo reused || echo "built in ${IMAGE_SECONDS} s"))"

# --------------------------------------------------------------------------- 2. the bundle
if [ ! -x .venv/bin/python ]; then bash scripts/setup_env.sh; fi  # build_dataset.py and the demo models need it
PROJECT_PY=$ROOT/.venv/bin/python
TREE=$WORK/kaggle
INPUT=$TREE/input
WORKING=$TREE/working
COMPETITION=$INPUT/competitions/sartorius-cell-instance-segmentation
DATASETS=$INPUT/datasets/check-user
BUNDLE=$DATASETS/sartorius-offline-bundle
MODELS=$DATASETS/sartorius-fold-models
EXECUTED=$WORK/sartorius-inference.executed.ipynb
rm -rf "$TREE" "$EXECUTED"
mkdir -p "$COMPETITION" "$DATASETS" "$WORKING"

phase "2/5 the bundle: build_dataset.py -> $BUNDLE"
pythons=(3.10 3.11 3.12)
[[ " ${pythons[*]} " == *" $IMAGE_XY "* ]] || pythons+=("$IMAGE_XY")
TQDM_DISABLE=1 "$PROJECT_PY" build_dataset.py --out "$BUNDLE" --python "${pythons[@]}"

# --------------------------------------------------------------------------- 3. the tree
phase "3/5 the tree (new layout): $INPUT"
cp -r tests/data/test "$COMPETITION/test"
cp tests/data/sample_submission.csv "$COMPETITION/"
SHIPPED=models/r50-narrow
MODELS_NOTE=""
if [ -z "$MODELS_SRC" ] && [ "$RANDOM_WEIGHTS" = 0 ]; then
  if [ -f "$SHIPPED/models.json" ]; then
    MODELS_SRC=$SHIPPED
  else
    RANDOM_WEIGHTS=1
    MODELS_NOTE="the shipped $SHIPPED/models.json is not there (yet): "
  fi
fi
if [ "$RANDOM_WEIGHTS" = 1 ]; then
  "$PROJECT_PY" -c "import sys; from kernel_lib.demo_models import make_demo_models; make_demo_models(sys.argv[1], n_folds=2)" "$MODELS"
  MODELS_NOTE="${MODELS_NOTE}2 demonstration fold checkpoints with RANDOM weights (the path runs; the masks are noise)"
else
  compgen -G "$MODELS_SRC/*/model_final.pth" >/dev/null \
    || fail "no $MODELS_SRC/<fold>/model_final.pth: --models takes the folder of fold model folders"
  MODELS_SRC=$(cd "$MODELS_SRC" && pwd)
  ln -s "$MODELS_SRC" "$MODELS"
  MODELS_NOTE="$MODELS_SRC (fold folders: $(ls -d "$MODELS_SRC"/*/ | wc -l))"
fi
echo "models: $MODELS_NOTE"
(cd "$INPUT" && find . -maxdepth 4 -not -path "*/test/*" | sort | sed 's/^/  /')

# --------------------------------------------------------------------------- 4. the notebook
phase "4/5 notebooks/sartorius-inference.ipynb in the image, offline, on the CPU"
"$VENV/bin/python" -m pip freeze --all --disable-pip-version-check > "$WORK/freeze-before.txt"
# Only the image: no pip configuration or index, no user site, no user Jupyter kernels, no GPU.
JUPYTER_HOME=$WORK/jupyter
rm -rf "$JUPYTER_HOME"
mkdir -p "$JUPYTER_HOME"/{data,config,runtime,ipython}
clean_env=(env -i "HOME=$HOME" "PATH=$VENV/bin:/usr/bin:/bin" "LANG=${LANG:-C.UTF-8}" "TERM=dumb"
  "KAGGLE_INPUT=$INPUT" "KAGGLE_WORKING=$WORKING" "PIP_NO_INDEX=1" "PIP_CONFIG_FILE=/dev/null"
  "PIP_DISABLE_PIP_VERSION_CHECK=1" "PYTHONNOUSERSITE=1" "CUDA_VISIBLE_DEVICES="
  "JUPYTER_DATA_DIR=$JUPYTER_HOME/data" "JUPYTER_CONFIG_DIR=$JUPYTER_HOME/config"
  "JUPYTER_RUNTIME_DIR=$JUPYTER_HOME/runtime" "IPYTHONDIR=$JUPYTER_HOME/ipython")
for var in OPENBLAS_CORETYPE OPENBLAS_L2_SIZE; do  # this machine's OpenBLAS workaround, if set
  if [ -n "${!var:-}" ]; then clean_env+=("$var=${!var}"); fi
done
if [ -n "${KERNEL_LIB_CONFIG:-}" ]; then
  clean_env+=("KERNEL_LIB_CONFIG=$(cd "$(dirname "$KERNEL_LIB_CONFIG")" && pwd)/$(basename "$KERNEL_LIB_CONFIG")")
fi
if unshare -n sh -c 'ip link set lo up' >/dev/null 2>&1; then
  offline=(unshare -n sh -c 'ip link set lo up && exec "$@"' sh)
  NETWORK="none (a fresh network namespace: loopback only)"
else
  offline=()
  NETWORK="not cut (\`unshare -n\` is not allowed here); pip kept off the index by PIP_NO_INDEX=1"
fi
echo "network in the notebook: $NETWORK"
t_nb=$(date +%s)
set +e
"${offline[@]}" "${clean_env[@]}" "$VENV/bin/python" - notebooks/sartorius-inference.ipynb "$EXECUTED" "$WORKING" <<'EOF'
import sys

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

source, executed, working = sys.argv[1:4]
notebook = nbformat.read(source, as_version=4)
status = 0
try:
    NotebookClient(notebook, timeout=None, kernel_name="python3", resources={"metadata": {"path": working}}).execute()
except CellExecutionError as err:
    lines = [line for line in str(err).splitlines() if line.strip()]
    print("\n".join(lines[-8:]), file=sys.stderr)
    print(f"error: the notebook stopped with the error above; the executed copy is {executed}", file=sys.stderr)
    status = 1
nbformat.write(notebook, executed)
for cell in notebook.cells:  # what the notebook printed, without the progress bars
    for output in cell.get("outputs", []):
        if output.get("name") == "stdout":
            print(output["text"], end="")
sys.exit(status)
EOF
NOTEBOOK_RC=$?
set -e
NOTEBOOK_SECONDS=$(elapsed "$t_nb")
"$VENV/bin/python" -m pip freeze --all --disable-pip-version-check > "$WORK/freeze-after.txt"

# --------------------------------------------------------------------------- 5. the verdict
phase "5/5 the verdict"
"$PROJECT_PY" - "$WORK" "$COMPETITION/sample_submission.csv" "$WORKING/submission.csv" "$NOTEBOOK_RC" <<'EOF' || true
import json
import re
import sys
from pathlib import Path

work, sample, submission, rc = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])


def freeze(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
        elif " @ " in line:
            name, version = line.split(" @ ", 1)
        else:
            continue
        out[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return out


before, after = freeze(work / "freeze-before.txt"), freeze(work / "freeze-after.txt")
verdict = {
    "added": sorted(f"{n}=={after[n]}" for n in after.keys() - before.keys()),
    "changed": sorted(f"{n}: {before[n]} -> {after[n]}" for n in before.keys() & after.keys() if before[n] != after[n]),
    "removed": sorted(f"{n}=={before[n]}" for n in before.keys() - after.keys()),
    "submission": None,
}
if rc == 0 and submission.is_file():
    import pandas as pd

    from kernel_lib.submission import validate_submission

    problems = validate_submission(submission, sample=sample)
    table = pd.read_csv(submission, keep_default_na=False)
    verdict["submission"] = {
        "valid": not problems,
        "problems": problems[:10],
        "ids": int(table["id"].nunique()),
        "rows": len(table),
        "empty_rows": int((table["predicted"] == "").sum()),
    }
(work / "verdict.json").write_text(json.dumps(verdict, indent=2) + "\n")
EOF

summary=$WORK/summary.txt
status=0
"$VENV/bin/python" - "$WORK" > "$summary" <<EOF || status=1
import json, platform, sys
import importlib.metadata as md
from pathlib import Path

work = Path(sys.argv[1])
verdict = json.loads((work / "verdict.json").read_text()) if (work / "verdict.json").is_file() else {}
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"
print("Kaggle-image check  $(date -u +%Y-%m-%dT%H:%MZ)  on $(uname -m), $(nproc) cores")
print("checkout: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- kernel_lib notebooks build_dataset.py scripts/wheelhouse.py wheels 2>/dev/null || echo ' with uncommitted changes to the shipped code')")
print(f"python: {platform.python_version()} ($BASE_PYTHON)")
note = """$PYTHON_NOTE"""
if note:
    print("  " + note)
print("pins: $PINS")
for line in (work / "image-report.txt").read_text().splitlines():
    print("  " + line)
print("image: $IMAGE_SIZE, $([ "$IMAGE_REUSED" = 1 ] && echo "reused" || echo "built in $IMAGE_SECONDS s")")
names = ["torch", "torchvision", "numpy", "pandas", "opencv-python-headless", "pillow", "scipy", "matplotlib",
         "pycocotools", "omegaconf", "setuptools", "pip", "ipykernel", "nbclient", "nbformat"]
print("installed: " + ", ".join(f"{n}=={v(n)}" for n in names))
print("after the notebook: " + ", ".join(f"{n}=={v(n)}" for n in ["sal-detectron2", "kernel-lib", "fvcore", "iopath", "yacs", "portalocker"]))
print("models: $MODELS_NOTE")
print("network: $NETWORK")
print("notebook: " + ("ran to the end" if $NOTEBOOK_RC == 0 else "STOPPED with an error (see above)") + f" in $NOTEBOOK_SECONDS s")
sub = verdict.get("submission")
if sub:
    print(f"submission: {'VALID' if sub['valid'] else 'INVALID'}, {sub['ids']} ids, {sub['rows']} rows ({sub['empty_rows']} empty)"
          + ("" if sub["valid"] else f"; {sub['problems']}"))
else:
    print("submission: none written")
print("install cell, pip freeze before -> after:")
print(f"  added ({len(verdict.get('added', []))}): {', '.join(verdict.get('added', [])) or 'nothing'}")
print(f"  upgraded or downgraded: {', '.join(verdict.get('changed', [])) or 'nothing'}")
print(f"  removed: {', '.join(verdict.get('removed', [])) or 'nothing'}")
print("total: $(elapsed "$t0") s")
ok = $NOTEBOOK_RC == 0 and bool(sub and sub["valid"]) and not verdict.get("changed") and not verdict.get("removed")
print("RESULT: " + ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
EOF
cat "$summary"
echo
echo "  summary:            $summary"
echo "  executed notebook:  $EXECUTED"
echo "  submission:         $WORKING/submission.csv"
echo "  pip freeze:         $WORK/freeze-before.txt, $WORK/freeze-after.txt"
if [ "$KEEP_IMAGE" = 1 ]; then
  echo "  image venv:         $VENV (kept; a rerun with the same pins reuses it)"
else
  rm -rf "$VENV"
  echo "  image venv:         deleted ($IMAGE_SIZE; --keep-image keeps it for a rerun)"
fi
exit "$status"
