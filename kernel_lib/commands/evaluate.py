"""``python -m kernel_lib evaluate --truth TRAIN_CSV --images DIR --models DIR [--folds FOLDS_CSV]
[--config CFG] [--cache DIR] [--json]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kernel_lib.config import load_config
from kernel_lib.metric import ScoreReport


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True, help="train.csv with the images' annotations")
    parser.add_argument("--images", required=True, help="folder of the annotated <id>.png images")
    parser.add_argument("--models", required=True, help="model folder: <name>/config.yaml + model_final.pth")
    parser.add_argument("--folds", help="folds CSV (id,cell_type,fold): each model runs only on its own fold's images")
    parser.add_argument("--config", help="config JSON (ensemble for prediction, postprocess for scoring)")
    parser.add_argument(
        "--cache", default="oof_cache", help="instance cache folder, reused across runs (default ./oof_cache)"
    )
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the cache")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of tables")


def print_report(report: ScoreReport, title: str) -> None:
    """Overall, per cell type and per threshold tables on stdout."""
    per_image = report.per_image
    print(f"{title}: score {report.score:.4f} over {report.n_images} image(s)")
    print("per cell type (truth's type):")
    for cell_type, score in report.per_cell_type.items():
        n = int((per_image["cell_type"] == cell_type).sum())
        print(f"  {cell_type:<8} {score:.4f}  ({n} image(s))")
    print("per IoU threshold (mean precision):")
    print("  IoU > " + " ".join(f"{t:>5.2f}" for t in report.per_threshold))
    print("        " + " ".join(f"{v:>5.3f}" for v in report.per_threshold.values()))


def run(args: argparse.Namespace) -> int:
    from kernel_lib.evaluate import MANIFEST, evaluate
    from kernel_lib.outputs import check_input_file, check_output, file_kind, note_output

    if args.config is not None:
        check_input_file(args.config, "--config", "pass a JSON config (written by `tune` or `Config.to_json`)")
    config = load_config(args.config)
    check_input_file(args.truth, "--truth", "pass the competition's train.csv")
    if args.folds is not None:
        check_input_file(args.folds, "--folds", "pass the folds CSV written by `python -m kernel_lib folds`")
    if not args.no_cache:
        cache = Path(args.cache)
        kind = file_kind(cache)
        if kind not in ("a folder", "missing"):
            raise ValueError(
                f"--cache {cache} is {kind or 'a file'}, not a folder; pass a folder for the instance cache"
            )
        inputs = {
            "--truth": args.truth,
            "--folds": args.folds,
            "--config": args.config,
            "--images": args.images,
            "--models": args.models,
        }
        note_output(check_output(cache / MANIFEST, inputs, flag="--cache"))
    result = evaluate(
        args.truth,
        args.images,
        args.models,
        folds_csv=args.folds,
        config=config,
        cache_dir=None if args.no_cache else args.cache,
        progress=not args.json,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
        return 0
    for note in result.notes:
        print(f"note: {note}")
    where = "no cache" if args.no_cache else f"cache {args.cache}"
    print(f"{result.cached} image(s) from the cache, {result.predicted} predicted ({where})")
    print_report(result.report, "out-of-fold" if args.folds else "evaluation")
    return 0
