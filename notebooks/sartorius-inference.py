# %% [markdown]
# # Sartorius cell instance segmentation: offline inference
#
# Runs K detectron2 Mask R-CNN fold models (with test-time augmentation and mask-level
# ensembling, per-cell-type post-processing) on the test images and writes
# `submission.csv`. Internet is off: everything is installed from the bundle dataset built
# by `build_dataset.py`. All logic lives in `kernel_lib`; this notebook only sets paths,
# makes one call and shows what came out.
#
# Inputs (see `kernel-metadata.json`): the competition data, the bundle dataset (`wheels/`)
# and your model-weights dataset (one folder per fold model: `config.yaml` +
# `model_final.pth`, optional `models.json` with weights).

# %%
# 1. Install detectron2 and kernel_lib from the bundle dataset's wheels (offline), skipping what
#    is already importable and never changing a package the image already has.
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

KAGGLE_INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
# the bundle under every input layout: <slug>/, competitions/<slug>/, datasets/<owner>/<slug>/
LAYOUTS = ("*", "competitions/*", "datasets/*/*")
missing = [name for name in ("detectron2", "kernel_lib") if importlib.util.find_spec(name) is None]
if missing:
    found = [p for layout in LAYOUTS for p in sorted(KAGGLE_INPUT.glob(f"{layout}/wheels/sal_detectron2-*.whl"))]
    found = found or sorted(KAGGLE_INPUT.rglob("sal_detectron2-*.whl"))
    archives = [p for layout in LAYOUTS for p in sorted(KAGGLE_INPUT.glob(f"{layout}/wheels.zip"))]
    if not found and archives:  # the dataset's wheels/ folder arrived as an archive: unpack a copy
        unpacked = Path(tempfile.mkdtemp(prefix="bundle-wheels-"))
        with zipfile.ZipFile(archives[0]) as archive:
            archive.extractall(unpacked)
        found = sorted(unpacked.rglob("sal_detectron2-*.whl"))
        print(f"unpacked {archives[0]} into {unpacked}")
    if not found:
        seen = sorted(str(p.relative_to(KAGGLE_INPUT)) for layout in LAYOUTS for p in KAGGLE_INPUT.glob(layout))
        raise FileNotFoundError(
            f"no sal_detectron2 wheel (nor wheels.zip holding one) under {KAGGLE_INPUT}, which holds: "
            f"{', '.join(seen[:40]) or 'nothing'}{', ...' if len(seen) > 40 else ''}. Add the bundle dataset made by "
            "build_dataset.py to this notebook (kernel-metadata.json dataset_sources)"
        )
    wheels = found[0].parent
    # Pin every bundled package the image already has to its installed version: pip then never
    # downgrades (or upgrades) it, and stops with a conflict instead.
    bundled = {re.sub(r"[-_.]+", "-", p.name.split("-")[0]).lower() for p in wheels.glob("*.whl")}
    installed = {
        re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower(): d.version for d in importlib.metadata.distributions()
    }
    kept = sorted(f"{name}=={installed[name]}" for name in bundled & installed.keys())
    constraints = Path(tempfile.mkdtemp(prefix="bundle-")) / "constraints.txt"
    constraints.write_text("".join(f"{line}\n" for line in kept))
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels)]
    pip += ["--constraint", str(constraints)]
    if "detectron2" in missing:  # its dependencies that Kaggle's image lacks come from the same folder
        subprocess.run([*pip, "sal-detectron2"], check=True)
    if "kernel_lib" in missing:  # numpy, pandas, opencv and tqdm are Kaggle's own
        subprocess.run([*pip, "--no-deps", "kernel_lib"], check=True)
    importlib.invalidate_caches()
    print(f"installed {', '.join(missing)} from {wheels}; kept as the image has them: {', '.join(kept) or 'none'}")
else:
    print("detectron2 and kernel_lib are already importable: nothing to install")

# %%
# 2. Parameters: edit the dataset folder names to match yours.
import dataclasses
import os
from pathlib import Path

from kernel_lib.config import config_for_models
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
TIMINGS_CSV = KAGGLE_WORKING / "timings.csv"
OVERLAY_DIR = KAGGLE_WORKING / "overlays"

# Ensemble / TTA / post-processing configuration (kernel_lib.Config), chosen as
# `python -m kernel_lib predict` does without --config: the JSON named by KERNEL_LIB_CONFIG,
# else best_config.json (what `python -m kernel_lib tune` writes) when the models dataset ships
# one, else the library's defaults (CONFIG_JSON None). A JSON may set only some fields.
config, CONFIG_JSON = config_for_models(MODELS_DIR)
if config.inference.time_budget_s is None and TIME_BUDGET_S is not None:
    config = config.replace(inference=dataclasses.replace(config.inference, time_budget_s=float(TIME_BUDGET_S)))
print(f"models: {MODELS_DIR}\ntest images: {TEST_DIR}\nconfig: {CONFIG_JSON or 'defaults'}")
config

# %%
# 3. Inference: the one library call.
import kernel_lib.pipeline

result = kernel_lib.pipeline.run_inference(TEST_DIR, MODELS_DIR, OUT_CSV, config=config, sample_csv=SAMPLE_CSV)
print(f"{result.n_images} images, {result.n_instances} instances -> {result.submission}")

# %%
# 4. Validate the submission the way the scorer reads it.
from kernel_lib.submission import validate_submission

problems = validate_submission(result.submission, sample=SAMPLE_CSV)
for problem in problems[:20]:
    print(problem)
if problems:
    raise ValueError(f"{len(problems)} problem(s) in {result.submission} (first ones above)")
print(f"{result.submission} is valid: every test id present, no overlaps, runs sorted and in bounds")

# %%
# 5. Time per stage, as measured inside run_inference.
import pandas as pd

timings = pd.DataFrame({"stage": list(result.timings), "seconds": list(result.timings.values())})
timings["per image (s)"] = timings["seconds"] / max(result.n_images, 1)
timings.to_csv(TIMINGS_CSV, index=False)
# what ran for each image (the full ensemble, or a lighter one once the time budget got short)
result.per_image_table().to_csv(KAGGLE_WORKING / "per_image.csv", index=False)
timings.round(3)

# %%
# 6. A few predictions drawn over their images (also saved under OVERLAY_DIR).
import cv2
from IPython.display import Image, display

from kernel_lib import overlay
from kernel_lib.images import read_image

OVERLAY_DIR.mkdir(parents=True, exist_ok=True)
for image_id in sorted(result.predictions)[:N_OVERLAYS]:
    masks = result.predictions[image_id]
    path = OVERLAY_DIR / f"{image_id}.png"
    cv2.imwrite(str(path), overlay(read_image(TEST_DIR / f"{image_id}.png"), masks))
    print(f"{image_id}: {len(masks)} instances -> {path}")
    display(Image(filename=str(path)))
