"""Issue 24's training levers screened on one shipped fold: each continues it alone.

Every run continues ``models/r50-narrow/fold<K>`` (``--init-weights``, the shipped recipe:
R50-narrow, 256 crops, per-image normalisation, batch 4, LR 0.02) for N iterations with
one lever on, and is scored with the shipped fold it started from on the 15 holdout
images no fold trains on (identity view, default post-processing, ``eval_identity.json``):

- ``shipped``: the fold as shipped (no training), the reference;
- ``continued``: N more iterations, no lever (the learning curve alone);
- ``copy-paste``: N more with ``--copy-paste P``;
- ``mended``: N more with ``--mend-masks``;
- ``both``: N more with copy-paste and mended masks;
- ``shsy5y-x1.5``: N more with ``--type-scale 1.5,1,1`` (shsy5y images resized 1.5 times
  larger), scored with the same factor at inference (``EnsembleConfig.type_scale``).

    python bench/bench_levers.py --iters 400 --out /tmp/levers [--fold 0] [--runs continued,copy-paste]

Resumes: a run whose folder holds model_final.pth is scored, not trained again. Writes
``results.json`` and prints a Markdown table (holdout overall and per cell type, train
seconds). Needs ``../shared/data/sartorius-mini`` (or ``$SARTORIUS_DATA``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from bench_extra_data import RECIPE, _pack  # the same recipe and pack (bench/ is on the path when run)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models" / "r50-narrow"


def _score(models: Path, pack: Path, holdout: list[str], type_scale: tuple[float, ...] = ()) -> dict[str, float]:
    import dataclasses

    from kernel_lib.config import load_config
    from kernel_lib.training.datasets import load_dataset_dicts
    from kernel_lib.training.scoring import score_models

    start = time.perf_counter()
    config = load_config(MODELS / "eval_identity.json")
    if type_scale:
        config = config.replace(ensemble=dataclasses.replace(config.ensemble, type_scale=type_scale))
    result = score_models(models, load_dataset_dicts(pack, holdout), config)
    scores = {"score": round(result.score, 4), **{k: round(v, 4) for k, v in result.per_cell_type.items()}}
    return {**scores, "score_seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=400)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--copy-paste", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", default="shipped,continued,copy-paste,mended,both,shsy5y-x1.5")
    args = parser.parse_args()
    pack, out = _pack(), args.out
    out.mkdir(parents=True, exist_ok=True)
    holdout = pd.read_csv(MODELS / "holdout.csv")["id"].astype(str).tolist()
    fold = f"fold{args.fold}"
    levers = {
        "continued": [],
        "copy-paste": ["--copy-paste", str(args.copy_paste)],
        "mended": ["--mend-masks"],
        "both": ["--copy-paste", str(args.copy_paste), "--mend-masks"],
        "shsy5y-x1.5": ["--type-scale", "1.5,1,1"],
    }
    inference_scale = {"shsy5y-x1.5": (1.5, 1.0, 1.0)}
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name in args.runs.split(","):
        models = out / name
        seconds = results.get(name, {}).get("train_seconds", 0.0)
        if name == "shipped":
            if not (models / fold).is_dir():
                models.mkdir(parents=True, exist_ok=True)
                shutil.copytree(MODELS / fold, models / fold)
        elif not (models / fold / "model_final.pth").is_file():
            start = time.perf_counter()
            cmd = [
                sys.executable, "-m", "kernel_lib", "train", "--data", str(pack), "--folds", str(MODELS / "folds.csv"),
                "--fold", str(args.fold), "--init-weights", str(MODELS / fold), "--iters", str(args.iters),
                "--out", str(models), *RECIPE, *levers[name],
            ]  # fmt: skip
            subprocess.run(cmd, check=True, cwd=ROOT)
            seconds = round(time.perf_counter() - start, 1)
        results[name] = {"train_seconds": seconds, **_score(models, pack, holdout, inference_scale.get(name, ()))}
        results_file.write_text(json.dumps(results, indent=2) + "\n")
        print(name, results[name], flush=True)

    print(f"\n| fold {args.fold} | holdout | shsy5y | astro | cort | train s |\n| --- | --- | --- | --- | --- | --- |")
    for name, row in results.items():
        cells = " | ".join(f"{row.get(k, float('nan')):.4f}" for k in ("score", "shsy5y", "astro", "cort"))
        print(f"| {name} | {cells} | {row['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
