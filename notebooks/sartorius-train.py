# %% [markdown]
# # Sartorius cell instance segmentation: train the fold models
#
# Trains K detectron2 Mask R-CNN fold models on the competition's annotated images with
# `python -m kernel_lib train` (stratified folds by cell type; flips, 90-degree rotations,
# brightness/contrast and scale jitter; mixed precision; several GPUs through detectron2's
# launcher) and scores each fold on its held-out images with the competition metric.
#
# The whole recipe of the top solutions, one parameter per stage (0 skips it; each stage
# resumes where a previous run stopped, folders already holding a `meta.json` are kept):
# 1. pretrain on LIVECell (`LIVECell_dataset_2021/` in the competition input), class-agnostic;
# 2. train the folds (fine-tuned from the pretraining when there is one);
# 3. pseudo-label `train_semi_supervised/` with those folds and train them again on both,
#    `PSEUDO_ROUNDS` times.
#
# Output: `/kaggle/working/models/fold<K>/` (`config.yaml`, `model_final.pth`, `meta.json`
# with the held-out score, `metrics.json` loss log), plus `models.json` and
# `dataset-metadata.json`: the folder is ready to become the model-weights dataset that
# the inference notebook reads (see the README, "Training fold models"). Pretraining and
# the rounds before the last stay in `/kaggle/working/work/`.
#
# Settings: GPU on, internet off. Inputs: the competition data and the bundle dataset
# (`kernel_lib_bootstrap.py` and `wheels/`, made by `build_dataset.py`); optionally a dataset
# holding initial weights (`INIT_WEIGHTS`, e.g. a COCO Mask R-CNN `.pkl`); without one the
# models train from scratch.

# %%
# 1. Install detectron2 and kernel_lib: the inference notebook's install cell (its first code
#    cell, notebooks/sartorius-inference.py), which scripts/make_notebooks.py copies here.

# %%
# 2. Parameters (environment variables override them for a local run).
import os
from pathlib import Path

import torch

from kernel_lib.kaggle import find_input

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
COMPETITION = "sartorius-cell-instance-segmentation"

# train.csv + train/<id>.png, under any of Kaggle's layouts (<slug>/, competitions/<slug>/, ...)
DATA_DIR = find_input(COMPETITION, KAGGLE_INPUT)
FOLDS_CSV = KAGGLE_WORKING / "folds.csv"
MODELS_DIR = KAGGLE_WORKING / "models"  # one folder per fold: becomes the model-weights dataset
MODELS_DATASET_ID = "your-kaggle-username/sartorius-fold-models"  # as in kernel-metadata.json

N_FOLDS = 5
FOLDS_TO_TRAIN = os.environ.get("TRAIN_FOLDS", "all")  # "all" or e.g. "0" / "0,1"
ARCH = "R50"  # R50, R101, X101, cascade (kernel_lib.d2config)
INIT_WEIGHTS = os.environ.get("TRAIN_INIT_WEIGHTS", "")  # local .pth/.pkl in an attached dataset; "" = from scratch
ITERS = int(os.environ.get("TRAIN_ITERS", "3000"))
BATCH_PER_GPU = int(os.environ.get("TRAIN_BATCH_PER_GPU", "2"))  # 520x704 images upscaled to ~800 px
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NUM_GPUS = torch.cuda.device_count() if DEVICE == "cuda" else 1  # 2xT4: both, through detectron2's launcher
BATCH = BATCH_PER_GPU * NUM_GPUS
# anything else for `python -m kernel_lib train`, e.g. "--min-sizes 96 --test-size 96" for a smoke run
EXTRA_ARGS = os.environ.get("TRAIN_EXTRA_ARGS", "").split()

# the competition's other data, one parameter per stage (0 skips it)
PRETRAIN_ITERS = int(os.environ.get("TRAIN_PRETRAIN_ITERS", "0"))  # LIVECell pretraining, e.g. 6000
LIVECELL_JSON = DATA_DIR / "LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_train.json"
LIVECELL_IMAGES = DATA_DIR / "LIVECell_dataset_2021/images"
PSEUDO_ROUNDS = int(os.environ.get("TRAIN_PSEUDO_ROUNDS", "0"))  # pseudo-label and retrain, e.g. 1 or 2
UNLABELLED = DATA_DIR / "train_semi_supervised"
PSEUDO_MIN_SCORE = float(os.environ.get("TRAIN_PSEUDO_MIN_SCORE", "0.5"))  # an instance's least score to be a label
PSEUDO_WEIGHT = 0.5  # how often a pseudo-labelled image is drawn relative to a labelled one
WORK_DIR = KAGGLE_WORKING / "work"  # pretraining and the rounds before the last

MODELS_DIR.mkdir(parents=True, exist_ok=True)
print(f"data: {DATA_DIR}\nmodels: {MODELS_DIR}")
print(f"device: {DEVICE} x {NUM_GPUS}, {ITERS} iterations of {BATCH} images")

# %%
# 3. Folds: stratified by cell type; kept when already written (re-runs train the same split).
import subprocess
import sys


def kernel_lib_cli(*args: object) -> None:
    """Run `python -m kernel_lib ARGS`, streaming its output here; raise if it fails."""
    command = [sys.executable, "-m", "kernel_lib", *map(str, args)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end="")
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {process.returncode}")


if not FOLDS_CSV.is_file():
    kernel_lib_cli("folds", "--truth", DATA_DIR / "train.csv", "--out", FOLDS_CSV, "--n-folds", N_FOLDS)
print(open(FOLDS_CSV).read()[:300])  # noqa: SIM115

# %%
# 4. Stage 1, pretraining: class-agnostic on every LIVECell line; the folds then fine-tune from it.
RECIPE = ["--arch", ARCH, "--batch", BATCH, "--device", DEVICE, "--num-gpus", NUM_GPUS]
PRETRAINED = WORK_DIR / "pretrain" / "pretrain"
if PRETRAIN_ITERS and not (PRETRAINED / "meta.json").is_file():
    kernel_lib_cli(
        "train", "--coco", LIVECELL_JSON, "--coco-images", LIVECELL_IMAGES, "--coco-classes", "cell",
        "--out", PRETRAINED.parent, "--iters", PRETRAIN_ITERS, *RECIPE, *EXTRA_ARGS,
    )  # fmt: skip
init = ["--init-weights", PRETRAINED] if (PRETRAINED / "meta.json").is_file() else []
init = init or (["--init-weights", INIT_WEIGHTS] if INIT_WEIGHTS else [])
print(f"the folds start from {init[1] if init else 'scratch'}")

# %%
# 5. Stages 2 and 3: the folds, then each pseudo-labelling round (the last one lands in MODELS_DIR).
import pandas as pd

from kernel_lib.model_folder import write_manifest

all_folds = sorted(pd.read_csv(FOLDS_CSV)["fold"].unique().tolist())
folds = all_folds if FOLDS_TO_TRAIN == "all" else [int(k) for k in FOLDS_TO_TRAIN.split(",")]


def train_folds(out_dir: Path, *extra: object) -> None:
    """Train every fold into out_dir (one process each; a fold with a meta.json is kept)."""
    for fold in folds:
        if (out_dir / f"fold{fold}" / "meta.json").is_file():
            print(f"{out_dir / f'fold{fold}'}: already trained, kept")
            continue
        kernel_lib_cli(
            "train", "--data", DATA_DIR, "--folds", FOLDS_CSV, "--fold", fold, "--out", out_dir,
            "--iters", ITERS, *RECIPE, *init, *extra, *EXTRA_ARGS,
        )  # fmt: skip
    write_manifest(out_dir, [(f"fold{k}", 1.0) for k in folds])


rounds = [WORK_DIR / f"round{r}" for r in range(PSEUDO_ROUNDS)] + [MODELS_DIR]
train_folds(rounds[0])
for r, out_dir in enumerate(rounds[1:], start=1):
    pseudo_csv = WORK_DIR / f"pseudo{r}.csv"
    if not pseudo_csv.is_file():
        kernel_lib_cli(
            "pseudo", "--images", UNLABELLED, "--models", rounds[r - 1], "--out", pseudo_csv,
            "--min-score", PSEUDO_MIN_SCORE, "--device", DEVICE, "--quiet",
        )  # fmt: skip
    labels = ["--extra-truth", pseudo_csv, "--extra-images", UNLABELLED, "--extra-weight", PSEUDO_WEIGHT]
    train_folds(out_dir, *labels)

# %%
# 6. Held-out scores, and the files that make MODELS_DIR a model-weights dataset.
import json

from kernel_lib.model_folder import read_meta

rows = []
for meta_path in sorted(MODELS_DIR.glob("*/meta.json")):
    meta = read_meta(meta_path.parent)
    rows.append(
        {
            "model": meta_path.parent.name,
            "fold": meta["fold"],
            "held-out score": meta.get("heldout_score"),
            **{f"{k}": v for k, v in meta.get("heldout_per_cell_type", {}).items()},
            "held-out images": meta.get("heldout_images"),
            "iterations": meta["iters"],
            "it/s": meta["iters_per_second"],
            "train (min)": round(meta["train_seconds"] / 60, 1),
        }
    )
summary = pd.DataFrame(rows)
summary.to_csv(KAGGLE_WORKING / "heldout_scores.csv", index=False)
write_manifest(MODELS_DIR, [(row["model"], 1.0) for row in rows])
dataset = {"title": "Sartorius fold models", "id": MODELS_DATASET_ID, "licenses": [{"name": "other"}]}
(MODELS_DIR / "dataset-metadata.json").write_text(json.dumps(dataset, indent=2) + "\n")
print(f"{len(rows)} fold model(s) in {MODELS_DIR}; mean held-out score {summary['held-out score'].mean():.4f}")
summary

# %% [markdown]
# ## Next: from these folds to a submission
#
# 1. Make `models/` a dataset: from this notebook's output page ("New Dataset"), or download
#    it and run `kaggle datasets create -p models --dir-mode zip` (its `dataset-metadata.json`
#    is written above; put your user name in `id`).
# 2. Add that dataset to the inference notebook (`kernel-metadata.json` `dataset_sources`,
#    `MODELS_DATASET` in its parameters cell), push it with `kaggle kernels push -p .`.
# 3. Submit the notebook's output with `kaggle competitions submit sartorius-cell-instance-segmentation
#    -f submission.csv -k <user>/sartorius-inference -v <version> -m "<message>"`.
