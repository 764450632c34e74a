"""The gain table: what ensembling, TTA and tuned post-processing add on held-out images.

    .venv/bin/python bench/bench_gains.py --models models/r50-narrow \
        --data ../shared/data/sartorius-mini --out docs/gains.json

Every row is one :func:`kernel_lib.evaluate.evaluate` run on the models' holdout
(``holdout.csv`` beside the models: images no fold model trained on), scored with the
competition metric; seconds per image are the prediction wall time over the images
(model loading included, scoring not). Rows:

- each fold alone (default pipeline: "roi", identity + hflip) and the best fold
  without TTA;
- the ensemble of all folds with each method (roi, wmf, mask_nms, vote, nmw);
- the roi ensemble with each TTA (identity, +hflip, +vflip, all four flips, +scale);
- the roi ensemble in float32 on the CPU (the default is bfloat16 where the CPU has
  AMX: the difference is the cost of that default);
- the roi ensemble with post-processing tuned by :func:`kernel_lib.tune.tune_postprocess`
  on the out-of-fold predictions of the folds' own held-out images (``folds.csv``: each
  image predicted by the fold that did not train on it), applied to the holdout.

Nothing here trains; the holdout is never tuned on.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from kernel_lib.config import Config, EnsembleConfig, load_config
from kernel_lib.evaluate import Evaluation, evaluate
from kernel_lib.model_folder import read_manifest
from kernel_lib.tune import InstanceTable, images_from_cache, tune_postprocess


def _link_images(ids: list[str], source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        link = folder / f"{image_id}.png"
        if not link.exists():  # a --work folder of an earlier run keeps its links (and caches)
            link.symlink_to((source / f"{image_id}.png").resolve())
    return folder


def _one_model(models: Path, name: str, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / name).exists():
        (folder / name).symlink_to((models / name).resolve(), target_is_directory=True)
    return folder


def _row(what: str, ev: Evaluation) -> dict[str, object]:
    n = max(ev.predicted, 1)
    per_type = {str(k): round(float(v), 4) for k, v in ev.report.per_cell_type.items()}
    return {
        "what": what,
        "images": len(ev.report.per_image),
        "score": round(float(ev.report.score), 4),
        **per_type,
        "s_per_image": round(ev.seconds["predict"] / n, 2) if ev.predicted else None,
    }


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    models = Path(args.models)
    data = Path(args.data)
    truth = data / "train.csv"
    holdout_ids = pd.read_csv(models / "holdout.csv")["id"].astype(str).tolist()[: args.limit or None]
    folds_csv = models / "folds.csv"
    folds = pd.read_csv(folds_csv)
    names = [name for name, _ in read_manifest(models)]
    base = load_config(args.config) if args.config else Config()
    work = Path(args.work or tempfile.mkdtemp(prefix="gains_"))
    holdout_dir = _link_images(holdout_ids, data / "train", work / "holdout_images")
    rows: list[dict[str, object]] = []

    def run_row(what: str, models_dir: Path, config: Config, cache: str) -> Evaluation:
        start = time.perf_counter()
        ev = evaluate(truth, holdout_dir, models_dir, config=config, cache_dir=work / "cache" / cache, progress=False)
        rows.append(_row(what, ev))
        print(f"{what:<58} {rows[-1]['score']:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
        return ev

    def ens(**changes: object) -> Config:
        return base.replace(ensemble=replace(base.ensemble, **changes))

    # 1. single folds
    singles = {}
    for name in names:
        singles[name] = run_row(
            f"{name} alone, roi, identity + hflip", _one_model(models, name, work / "one" / name), base, f"one_{name}"
        )
    best = max(singles, key=lambda n: singles[n].report.score)
    if not args.lite:
        run_row(f"{best} alone (best fold), identity", work / "one" / best, ens(tta=("identity",)), f"one_{best}_id")
    # 2. ensemble methods: "roi" through evaluate; the instance-level ones fuse one shared set of
    # per-view model outputs (the models run once for all four)
    run_row(f"ensemble of {len(names)}, roi, identity + hflip", models, ens(method="roi"), "ens_roi")
    shared = ens(tta=("identity",)) if args.lite else base
    views = " + ".join(shared.ensemble.tta).replace("identity + hflip", "identity + hflip")
    for method, row in _instance_methods(models, holdout_dir, truth, shared, ("wmf", "mask_nms", "vote", "nmw")):
        rows.append({"what": f"ensemble of {len(names)}, {method}, {views}", **row})
        print(f"{rows[-1]['what']:<58} {row['score']:.4f}", flush=True)
    # 3. TTA
    tta_rows: list[tuple[str, EnsembleConfig]] = [
        ("identity", replace(base.ensemble, tta=("identity",))),
        ("identity + vflip", replace(base.ensemble, tta=("identity", "vflip"))),
        ("all four flips", replace(base.ensemble, tta=("identity", "hflip", "vflip", "hvflip"))),
        ("identity + hflip, scales 1 and 1.25", replace(base.ensemble, scales=(1.0, 1.25))),
    ]
    if args.quick or args.lite:
        tta_rows = tta_rows[:1]
    by_tta = {}
    for label, ensemble in tta_rows:
        by_tta[label] = run_row(
            f"ensemble of {len(names)}, roi, {label}", models, base.replace(ensemble=ensemble), f"tta_{label}"
        )
    # 4. float32 on the CPU (lite: identity view, first 5 images, beside bfloat16 on the same images)
    fp32 = base.replace(inference=replace(base.inference, cpu_bf16=False))
    if args.lite:
        few = holdout_ids[:5]
        few_dir = _link_images(few, data / "train", work / "holdout_images_5")
        config = fp32.replace(ensemble=replace(fp32.ensemble, tta=("identity",)))
        ev = evaluate(truth, few_dir, models, config=config, cache_dir=work / "cache" / "fp32_5", progress=False)
        rows.append(_row(f"ensemble of {len(names)}, roi, identity, float32 ({len(few)} images)", ev))
        bf = by_tta["identity"].report.per_image
        bf = bf[bf["id"].isin(few)]
        rows.append(
            {
                "what": f"ensemble of {len(names)}, roi, identity, bfloat16 (the same {len(few)} images)",
                "images": len(bf),
                "score": round(float(bf["score"].mean()), 4),
                **{str(t): round(float(g["score"].mean()), 4) for t, g in bf.groupby("cell_type")},
            }
        )
        print(f"float32 vs bfloat16 on {len(few)} images: {rows[-2]['score']} vs {rows[-1]['score']}", flush=True)
    else:
        run_row(f"ensemble of {len(names)}, roi, identity + hflip, float32", models, fp32, "ens_roi_fp32")
    # 5. tuned post-processing: out-of-fold on the folds' held-out images, applied to the holdout
    oof_base = ens(tta=("identity",)) if args.lite else base
    tuned = _tune_out_of_fold(truth, data, folds, folds_csv, models, oof_base, work, args.trials, args.limit, print)
    rows.append({"what": "tuning (out-of-fold images, default -> tuned)", **tuned["oof"]})
    run_row(
        f"ensemble of {len(names)}, roi, identity + hflip, tuned post-processing",
        models,
        base.replace(postprocess=tuned["config"].postprocess),
        "ens_roi",
    )
    base.replace(postprocess=tuned["config"].postprocess).to_json(work / "best_config.json")
    print(f"tuned config: {work / 'best_config.json'}")
    return rows


def _instance_methods(
    models: Path, images: Path, truth_csv: Path, base: Config, methods: tuple[str, ...]
) -> list[tuple[str, dict[str, object]]]:
    """Score each instance-level method on the same per-view outputs (models run once).

    Seconds per image: the shared model pass plus that method's fusion, over the images.
    """
    from kernel_lib.evaluate import compact, read_truth, score_instances
    from kernel_lib.images import list_images
    from kernel_lib.model import predict
    from kernel_lib.pipeline import fuse_outputs, load_models

    per_view = base.replace(ensemble=replace(base.ensemble, method=methods[0]))
    start = time.perf_counter()
    loaded = load_models(models, per_view)
    paths = list_images(images)
    outputs = {
        i: out for i, _grey, out in predict(paths, loaded, per_view.ensemble, per_view.inference, progress=False)
    }
    model_seconds = time.perf_counter() - start
    truth = read_truth(truth_csv, ids=outputs)
    out = []
    for method in methods:
        config = base.replace(ensemble=replace(base.ensemble, method=method))
        start = time.perf_counter()
        fused = {i: compact(fuse_outputs(o, config)) for i, o in outputs.items()}
        fuse_seconds = time.perf_counter() - start
        report, _, _ = score_instances(fused, truth, config.postprocess)
        row: dict[str, object] = {
            "images": len(fused),
            "score": round(float(report.score), 4),
            **{str(k): round(float(v), 4) for k, v in report.per_cell_type.items()},
            "s_per_image": round((model_seconds + fuse_seconds) / len(fused), 2),
        }
        out.append((method, row))
    return out


def _tune_out_of_fold(
    truth: Path,
    data: Path,
    folds: pd.DataFrame,
    folds_csv: Path,
    models: Path,
    base: Config,
    work: Path,
    trials: int,
    limit: int,
    say: Callable[[str], None],
) -> dict[str, object]:
    from kernel_lib.model_folder import fold_of, read_meta

    trained = {fold_of(name, read_meta(models / name)) for name, _ in read_manifest(models)}
    oof_ids = folds.loc[folds["fold"].isin(trained), "id"].astype(str).tolist()[: limit or None]
    oof_dir = _link_images(oof_ids, data / "train", work / "oof_images")
    cache = work / "cache" / "oof"
    ev = evaluate(truth, oof_dir, models, folds_csv=folds_csv, config=base, cache_dir=cache, progress=False)
    say(f"out-of-fold ({len(oof_ids)} images of folds {sorted(trained)}): {ev.report.score:.4f}")
    images, _ = images_from_cache(truth, cache, base.postprocess.mask_threshold, progress=False)
    table = InstanceTable.build(images)
    result = tune_postprocess(table, base.postprocess, trials=trials)
    say(f"tuned on them: {result.default_score:.4f} -> {result.best_score:.4f}")
    return {
        "config": base.replace(postprocess=result.config),
        "oof": {
            "images": len(oof_ids),
            "score": round(result.best_score, 4),
            "default_score": round(result.default_score, 4),
            "s_per_image": round(ev.seconds["predict"] / max(ev.predicted, 1), 2) if ev.predicted else None,
        },
    }


def markdown(rows: list[dict[str, object]]) -> str:
    cols = ["what", "images", "score", "shsy5y", "astro", "cort", "s_per_image"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", required=True, help="models folder with holdout.csv and folds.csv beside the folds")
    parser.add_argument("--data", required=True, help="competition folder (train.csv, train/)")
    parser.add_argument("--config", help="base pipeline config JSON (default: the defaults)")
    parser.add_argument("--work", help="work folder for image links and caches (default: a new temporary one)")
    parser.add_argument("--trials", type=int, default=300, help="tuning settings per cell type (default 300)")
    parser.add_argument("--quick", action="store_true", help="only the identity TTA row (fewer model runs)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N holdout and out-of-fold images")
    parser.add_argument(
        "--lite",
        action="store_true",
        help="fewer model runs: instance-level methods, float32 (5 images) and the out-of-fold tuning pass on the "
        "identity view only; TTA rows identity and identity + hflip only",
    )
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = run(args)
    print(markdown(rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
