# %% [markdown]
# # Sartorius cell instance segmentation: offline inference
#
# Runs K detectron2 Mask R-CNN fold models (with test-time augmentation and mask-level
# ensembling, per-cell-type post-processing) on the test images and writes
# `submission.csv`. Internet is off: everything is installed from the bundle dataset built
# by `build_dataset.py`. All logic lives in `kernel_lib`; this notebook only sets paths,
# makes one call and shows what came out.
#
# Inputs (see `kernel-metadata.json`): the competition data, the bundle dataset
# (`kernel_lib_bootstrap.py` and `wheels/`) and your model-weights dataset (one folder per
# fold model: `config.yaml` + `model_final.pth`, optional `models.json` with weights).

# %%
# 1. Install detectron2 and kernel_lib offline: the bundle dataset (build_dataset.py) ships
#    kernel_lib_bootstrap.py, which pip-installs them from its wheels/ (--no-index --find-links)
#    without changing any package the image has, and does nothing when both are importable.
import os
import runpy
from pathlib import Path

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
LAYOUTS = ("*", "competitions/*", "datasets/*/*")  # <slug>/, competitions/<slug>/, datasets/<owner>/<slug>/
found = [p for layout in LAYOUTS for p in sorted(KAGGLE_INPUT.glob(f"{layout}/kernel_lib_bootstrap.py"))]
found = found or sorted(KAGGLE_INPUT.rglob("kernel_lib_bootstrap.py"))  # else anywhere below
if not found:
    inputs = sorted(str(p.relative_to(KAGGLE_INPUT)) for layout in LAYOUTS for p in KAGGLE_INPUT.glob(layout))
    raise FileNotFoundError(
        f"no kernel_lib_bootstrap.py under {KAGGLE_INPUT}, which holds: {', '.join(inputs) or 'nothing'}. Add the "
        "bundle dataset made by build_dataset.py to this notebook (kernel-metadata.json dataset_sources)"
    )
runpy.run_path(str(found[0]))["main"]()

# %%
# 2. Parameters: edit the dataset folder names to match yours.
import os
from pathlib import Path

from kernel_lib import config_for_models
from kernel_lib.kaggle import find_input

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
KAGGLE_WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
COMPETITION = "sartorius-cell-instance-segmentation"
MODELS_DATASET = "sartorius-fold-models"  # your model-weights dataset (its slug): one folder per fold model
N_OVERLAYS = 3  # predictions to draw
# wall-clock budget for inference: Kaggle stops a notebook at 9 hours; past this the remaining
# images run a lighter ensemble (kernel_lib.budget). None: no limit. A config JSON may set its own.
TIME_BUDGET_S = 8 * 3600

# each input under any of Kaggle's layouts: <slug>/, competitions/<slug>/, datasets/<owner>/<slug>/
COMPETITION_DIR = find_input(COMPETITION, KAGGLE_INPUT)
MODELS_DIR = find_input(MODELS_DATASET, KAGGLE_INPUT)
TEST_DIR = COMPETITION_DIR / "test"
SAMPLE_CSV = COMPETITION_DIR / "sample_submission.csv"
OUT_CSV = KAGGLE_WORKING / "submission.csv"
OVERLAY_DIR = KAGGLE_WORKING / "overlays"

# Ensemble / TTA / post-processing configuration (kernel_lib.Config), chosen as
# `python -m kernel_lib predict` does without --config: the JSON named by KERNEL_LIB_CONFIG,
# else best_config.json (what `python -m kernel_lib tune` writes) when the models dataset ships
# one, else the library's defaults (CONFIG_JSON None). A JSON may set only some fields.
config, CONFIG_JSON = config_for_models(MODELS_DIR)
if config.inference.time_budget_s is None and TIME_BUDGET_S is not None:
    config = config.with_inference(time_budget_s=float(TIME_BUDGET_S))
print(f"models: {MODELS_DIR}\ntest images: {TEST_DIR}\nconfig: {CONFIG_JSON or 'defaults'}")
config

# %%
# 3. Inference: the one library call.
import kernel_lib.pipeline

result = kernel_lib.pipeline.run_inference(TEST_DIR, MODELS_DIR, OUT_CSV, config=config, sample_csv=SAMPLE_CSV)
print(f"{result.n_images} images, {result.n_instances} instances -> {result.submission}")

# %%
# 4. Validate the submission the way the scorer reads it.
from kernel_lib import validate_submission

problems = validate_submission(result.submission, sample=SAMPLE_CSV)
if problems:
    raise ValueError(f"{len(problems)} problem(s) in {result.submission}, the first ones:\n" + "\n".join(problems[:20]))
print(f"{result.submission} is valid: every test id present, no overlaps, runs sorted and in bounds")

# %%
# 5. Time per stage, as measured inside run_inference.
import pandas as pd

timings = pd.DataFrame({"stage": list(result.timings), "seconds": list(result.timings.values())})
timings["per image (s)"] = timings["seconds"] / max(result.n_images, 1)
timings.to_csv(KAGGLE_WORKING / "timings.csv", index=False)
# what ran for each image (the full ensemble, or a lighter one once the time budget got short)
result.per_image_table().to_csv(KAGGLE_WORKING / "per_image.csv", index=False)
timings.round(3)

# %%
# 6. A few predictions drawn over their images (also saved under OVERLAY_DIR).
import cv2
from IPython.display import Image, display

from kernel_lib import overlay

OVERLAY_DIR.mkdir(parents=True, exist_ok=True)
for image_id, masks in sorted(result.predictions.items())[:N_OVERLAYS]:
    path = OVERLAY_DIR / f"{image_id}.png"
    cv2.imwrite(str(path), overlay(cv2.imread(str(TEST_DIR / f"{image_id}.png"), cv2.IMREAD_GRAYSCALE), masks))
    print(f"{image_id}: {len(masks)} instances -> {path}")
    display(Image(filename=str(path)))
