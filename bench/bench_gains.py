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
  image predicted by the fold that did not train on it), applied to the holdout; and
  each instance-level method with that tuned post-processing (also on all four flips:
  the ``tuned_tta`` group).

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

from kernel_lib.config import ENSEMBLE_METHODS, Config, EnsembleConfig, InferenceConfig, load_config
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


class GainTable:
    """The rows of the table, group by group, on one holdout and one work folder."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.models = Path(args.models)
        self.data = Path(args.data)
        self.truth = self.data / "train.csv"
        self.holdout_ids = pd.read_csv(self.models / "holdout.csv")["id"].astype(str).tolist()[: args.limit or None]
        self.folds_csv = self.models / "folds.csv"
        self.names = [name for name, _ in read_manifest(self.models)]
        self.base = load_config(args.config) if args.config else Config()
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gains_"))
        self.holdout_dir = _link_images(self.holdout_ids, self.data / "train", self.work / "holdout_images")
        self.rows: list[dict[str, object]] = []
        self.ensemble_of = f"ensemble of {len(self.names)}"
        self.per_view: dict[tuple[EnsembleConfig, InferenceConfig], tuple[dict[str, object], float]] = {}

    def evaluate_on(self, images: Path, models_dir: Path, config: Config, cache: str) -> Evaluation:
        """One evaluate run on ``images`` with the work folder's cache ``cache`` (no row)."""
        return evaluate(
            self.truth, images, models_dir, config=config, cache_dir=self.work / "cache" / cache, progress=False
        )

    def run_row(self, what: str, models_dir: Path, config: Config, cache: str) -> Evaluation:
        start = time.perf_counter()
        ev = self.evaluate_on(self.holdout_dir, models_dir, config, cache)
        self.rows.append(_row(what, ev))
        print(f"{what:<58} {self.rows[-1]['score']:.4f}  ({time.perf_counter() - start:.0f} s)", flush=True)
        return ev

    def ens(self, **changes: object) -> Config:
        return self.base.replace(ensemble=replace(self.base.ensemble, **changes))

    def singles(self) -> None:
        """Each fold alone (identity + hflip), and the best one on the identity view."""
        scores = {}
        for name in self.names:
            one = _one_model(self.models, name, self.work / "one" / name)
            scores[name] = self.run_row(f"{name} alone, roi, identity + hflip", one, self.base, f"one_{name}")
        best = max(scores, key=lambda n: scores[n].report.score)
        if not self.args.lite:
            config = self.identity
            self.run_row(f"{best} alone (best fold), identity", self.work / "one" / best, config, f"one_{best}_id")

    def methods(self) -> None:
        """roi through evaluate; the instance-level methods fuse one shared set of per-view
        model outputs (the models run once for all four)."""
        self.run_row(f"{self.ensemble_of}, roi, identity + hflip", self.models, self.ens(method="roi"), "ens_roi")
        self.instance_method_rows(self.identity if self.args.lite else self.base, "")

    def instance_method_rows(self, shared: Config, suffix: str) -> None:
        """One row per instance-level method, all fusing one shared model pass under ``shared``."""
        views = " + ".join(shared.ensemble.tta)
        key = (replace(shared.ensemble, method=INSTANCE_METHODS[0]), shared.inference)
        if key not in self.per_view:  # the tuned group reuses the methods group's model pass
            self.per_view[key] = _per_view_outputs(self.models, self.holdout_dir, shared)
        fused = _instance_methods(*self.per_view[key], self.truth, shared, INSTANCE_METHODS)
        for method, row in fused:
            self.rows.append({"what": f"{self.ensemble_of}, {method}, {views}{suffix}", **row})
            print(f"{self.rows[-1]['what']:<58} {row['score']:.4f}", flush=True)

    def tta(self) -> None:
        """The roi ensemble under each TTA (identity only with --quick / --lite)."""
        base = self.base.ensemble
        rows: list[tuple[str, EnsembleConfig]] = [
            ("identity", self.identity.ensemble),
            ("identity + vflip", replace(base, tta=("identity", "vflip"))),
            ("all four flips", replace(base, tta=("identity", "hflip", "vflip", "hvflip"))),
            ("identity + hflip, scales 1 and 1.25", replace(base, scales=(1.0, 1.25))),
        ]
        if self.args.quick or self.args.lite:
            rows = rows[:1]
        for label, ensemble in rows:
            config = self.base.replace(ensemble=ensemble)
            self.run_row(f"{self.ensemble_of}, roi, {label}", self.models, config, f"tta_{label}")

    @property
    def identity(self) -> Config:
        """The default config on the identity view alone (the TTA group's first row)."""
        return self.ens(tta=("identity",))

    def fp32(self) -> None:
        """float32 on the CPU (lite: identity view, first 5 images, beside bfloat16 on the same images)."""
        fp32 = self.base.replace(inference=replace(self.base.inference, cpu_bf16=False))
        if not self.args.lite:
            self.run_row(f"{self.ensemble_of}, roi, identity + hflip, float32", self.models, fp32, "ens_roi_fp32")
            return
        few = self.holdout_ids[:5]
        few_dir = _link_images(few, self.data / "train", self.work / "holdout_images_5")
        config = fp32.replace(ensemble=replace(fp32.ensemble, tta=("identity",)))
        ev = self.evaluate_on(few_dir, self.models, config, "fp32_5")
        self.rows.append(_row(f"{self.ensemble_of}, roi, identity, float32 ({len(few)} images)", ev))
        # bfloat16 on the same images: the TTA group's identity run (from its cache when it ran)
        bf = self.evaluate_on(self.holdout_dir, self.models, self.identity, "tta_identity").report.per_image
        bf = bf[bf["id"].isin(few)]
        self.rows.append(
            {
                "what": f"{self.ensemble_of}, roi, identity, bfloat16 (the same {len(few)} images)",
                "images": len(bf),
                "score": round(float(bf["score"].mean()), 4),
                **{str(t): round(float(g["score"].mean()), 4) for t, g in bf.groupby("cell_type")},
            }
        )
        print(f"float32 vs bfloat16 on {len(few)} images: {self.rows[-2]['score']} vs {self.rows[-1]['score']}")

    def tuned(self) -> None:
        """Post-processing tuned out-of-fold on the folds' held-out images, applied to the holdout."""
        oof_base = self.identity if self.args.lite else self.base
        folds = pd.read_csv(self.folds_csv)
        tuned = _tune_out_of_fold(
            self.truth, self.data, folds, self.folds_csv, self.models, oof_base, self.work, self.args.trials,
            self.args.limit, print,
        )  # fmt: skip
        self.rows.append({"what": "tuning (out-of-fold images, default -> tuned)", **tuned["oof"]})
        config = self.base.replace(postprocess=tuned["config"].postprocess)
        self.run_row(
            f"{self.ensemble_of}, roi, identity + hflip, tuned post-processing", self.models, config, "ens_roi"
        )
        self.instance_method_rows(config, ", tuned post-processing")
        config.to_json(self.work / "best_config.json")
        print(f"tuned config: {self.work / 'best_config.json'}")

    def tuned_tta(self) -> None:
        """The instance-level methods with the tuned post-processing on all four flips
        (the tuned group's ``best_config.json`` in the work folder; one shared model pass)."""
        path = self.work / "best_config.json"
        if not path.is_file():
            raise ValueError(f"{path} does not exist: run the tuned group first with this --work")
        tuned = load_config(path)
        four = tuned.replace(ensemble=replace(tuned.ensemble, tta=("identity", "hflip", "vflip", "hvflip")))
        self.instance_method_rows(four, ", tuned post-processing")


INSTANCE_METHODS = tuple(method for method in ENSEMBLE_METHODS if method != "roi")
"""The ensemble methods that fuse instances (``roi`` merges boxes inside the model pass)."""

GROUPS = ("singles", "methods", "tta", "fp32", "tuned", "tuned_tta")
"""Row groups (``--groups``), in the table's order: each fold alone; the ensemble
methods; the TTA views; float32 vs bfloat16; post-processing tuned out-of-fold; the
instance-level methods tuned on all four flips."""


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    table = GainTable(args)
    for group in GROUPS:
        if group in args.groups:
            getattr(table, group)()
    return table.rows


def _per_view_outputs(models: Path, images: Path, base: Config) -> tuple[dict[str, object], float]:
    """The models' per-view outputs on ``images`` under ``base`` (method: an instance-level
    one, so nothing is fused yet), and the seconds the pass took (loading included)."""
    from kernel_lib.images import list_images
    from kernel_lib.model import predict
    from kernel_lib.pipeline import load_models

    per_view = base.replace(ensemble=replace(base.ensemble, method=INSTANCE_METHODS[0]))
    start = time.perf_counter()
    loaded = load_models(models, per_view)
    paths = list_images(images)
    outputs = {
        i: out for i, _grey, out in predict(paths, loaded, per_view.ensemble, per_view.inference, progress=False)
    }
    return outputs, time.perf_counter() - start


def _instance_methods(
    outputs: dict[str, object], model_seconds: float, truth_csv: Path, base: Config, methods: tuple[str, ...]
) -> list[tuple[str, dict[str, object]]]:
    """Score each instance-level method on the same per-view outputs (:func:`_per_view_outputs`).

    Seconds per image: the shared model pass plus that method's fusion, over the images.
    """
    from kernel_lib.evaluate import compact, score_instances
    from kernel_lib.pipeline import fuse_outputs
    from kernel_lib.truth import read_truth

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
    parser.add_argument(
        "--groups",
        nargs="+",
        choices=GROUPS,
        default=list(GROUPS),
        help="row groups to run (default all); with --work of an earlier run, rows already run come from its caches",
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
