"""What the competition's other data would give, measured by proxy on the annotated pack.

Here there is no LIVECell and no unlabelled Sartorius set, so two proxies, on one fold of
``models/r50-narrow/folds.csv`` (its training images split in two halves, stratified by
cell type: H1 keeps its labels, H2's are hidden), every run with the shipped recipe
(R50-narrow, 256 crops, per-image normalisation) from scratch, scored on the 15 holdout
images no run trains on (identity view, default post-processing):

- pseudo-labels by label-drop: ``half`` (H1 alone, N iterations) -> ``pseudo`` labels
  H2 with ``half``'s model (``python -m kernel_lib pseudo``), then ``half+pseudo`` trains
  on H1 + those labels (N iterations) -> ``all labels`` (H1 + H2 labelled, N iterations);
- pretrain -> fine-tune: ``pretrain`` is class-agnostic (``--coco-classes cell``) on a
  LIVECell-shaped copy of H2 (COCO JSON, dict annotations, polygons, TIFFs) for N/2
  iterations, fine-tuned on H1 with three classes for N/2 (``--init-weights``), against
  ``half`` (H1 from scratch, N iterations: equal total iterations).

    python bench/bench_extra_data.py --iters 600 --out /tmp/extra-data [--fold 0]

Writes ``results.json`` and prints a Markdown table (score overall and per cell type,
train seconds). Needs ``../shared/data/sartorius-mini`` (or ``$SARTORIUS_DATA``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models" / "r50-narrow"
RECIPE = [
    "--arch", "R50-narrow", "--batch", "4", "--lr", "0.02", "--device", "cpu", "--normalization", "per_image",
    "--min-sizes", "480,520,560", "--max-size", "1000", "--test-size", "520", "--crop", "256", "--workers", "0",
    "--no-heldout",
]  # fmt: skip


def _pack() -> Path:
    pack = Path(os.environ.get("SARTORIUS_DATA", ROOT.parent / "shared" / "data" / "sartorius-mini"))
    if not (pack / "train.csv").is_file():
        sys.exit(f"no annotated pack at {pack}; set SARTORIUS_DATA")
    return pack


def _kernel_lib(*args: str) -> float:
    """Run one command of the library; its wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kernel_lib", *args], check=True, cwd=ROOT)
    return time.perf_counter() - start


def _halves(folds: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """The fold's training ids split in two, alternating within each cell type (sorted)."""
    train = folds[folds["fold"] != fold].sort_values(["cell_type", "id"])
    first, second = [], []
    for _, rows in train.groupby("cell_type"):
        ids = rows["id"].tolist()
        first += ids[0::2]
        second += ids[1::2]
    return sorted(first), sorted(second)


def _data_dir(pack: Path, ids: list[str], out: Path) -> Path:
    """A competition folder whose train.csv holds only ``ids``' rows (images linked)."""
    out.mkdir(parents=True, exist_ok=True)
    truth = pd.read_csv(pack / "train.csv")
    truth[truth["id"].isin(ids)].to_csv(out / "train.csv", index=False)
    if not (out / "train").exists():
        (out / "train").symlink_to((pack / "train").resolve(), target_is_directory=True)
    return out


def _score(models: Path, pack: Path, holdout: list[str]) -> dict[str, object]:
    from kernel_lib.config import load_config
    from kernel_lib.training.datasets import load_dataset_dicts
    from kernel_lib.training.scoring import score_models

    config = load_config(MODELS / "eval_identity.json")
    result = score_models(models, load_dataset_dicts(pack, holdout), config)
    return {"score": round(result.score, 4), **{k: round(v, 4) for k, v in result.per_cell_type.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--min-score", type=float, default=0.5, help="pseudo-label instance threshold")
    args = parser.parse_args()
    pack, out, n = _pack(), args.out, args.iters
    out.mkdir(parents=True, exist_ok=True)
    folds = pd.read_csv(MODELS / "folds.csv")
    holdout = pd.read_csv(MODELS / "holdout.csv")["id"].astype(str).tolist()
    heldout = folds.loc[folds["fold"] == args.fold, "id"].tolist()
    h1, h2 = _halves(folds, args.fold)
    half_folds = out / "folds-half.csv"
    folds[folds["id"].isin(h1 + heldout)].to_csv(half_folds, index=False)
    half_data = _data_dir(pack, h1 + heldout, out / "data-half")
    unlabelled = out / "unlabelled"
    unlabelled.mkdir(exist_ok=True)
    for image_id in h2:
        link = unlabelled / f"{image_id}.png"
        if not link.exists():
            link.symlink_to((pack / "train" / f"{image_id}.png").resolve())
    fold = ["--fold", str(args.fold)]
    results: dict[str, dict[str, object]] = {}

    def run(name: str, models: Path, *train_args: str, score: bool = True) -> None:
        if (
            not (models / f"fold{args.fold}" / "model_final.pth").is_file()
            and not (models / "pretrain" / "model_final.pth").is_file()
        ):
            seconds = _kernel_lib("train", *train_args, "--out", str(models), *RECIPE)
        else:
            seconds = float("nan")  # already trained by an earlier call
        scored = _score(models, pack, holdout) if score else {}
        results[name] = {"train_seconds": round(seconds, 1), **scored}
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(name, results[name], flush=True)

    half = ["--data", str(half_data), "--folds", str(half_folds), *fold, "--iters", str(n)]
    run("half (H1 labelled)", out / "half", *half)
    pseudo_csv = out / "pseudo.csv"
    if not pseudo_csv.is_file():
        seconds = _kernel_lib(
            "pseudo", "--images", str(unlabelled), "--models", str(out / "half"), "--out", str(pseudo_csv),
            "--config", str(MODELS / "eval_identity.json"), "--min-score", str(args.min_score), "--quiet",
        )  # fmt: skip
        results["pseudo-labelling H2"] = {"seconds": round(seconds, 1), "labels": len(pd.read_csv(pseudo_csv))}
    extra = ["--extra-truth", str(pseudo_csv), "--extra-images", str(unlabelled)]
    run("half + pseudo-labels of H2", out / "half-pseudo", *half, *extra)

    from kernel_lib.testing import write_livecell_standin

    coco, images = write_livecell_standin(pack, out / "livecell-h2", h2)
    run("pretrain (class-agnostic, H2 as LIVECell)", out / "pretrain", "--coco", str(coco), "--coco-images",
        str(images), "--coco-classes", "cell", "--iters", str(n // 2), score=False)  # fmt: skip
    run("pretrain -> fine-tune on H1", out / "finetune", *half[:-1], str(n - n // 2), "--init-weights",
        str(out / "pretrain" / "pretrain"))  # fmt: skip

    run("all labels (H1 + H2)", out / "all", "--data", str(pack), "--folds", str(MODELS / "folds.csv"), *fold,
        "--iters", str(n))  # fmt: skip

    print("\n| run | holdout | shsy5y | astro | cort | train s |\n| --- | --- | --- | --- | --- | --- |")
    for name, row in results.items():
        if "score" in row:
            cells = " | ".join(f"{row.get(k, float('nan')):.4f}" for k in ("score", "shsy5y", "astro", "cort"))
            print(f"| {name} | {cells} | {row['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
