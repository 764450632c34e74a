"""``python -m kernel_lib score --truth TRAIN_CSV --pred SUBMISSION_CSV [--json]``."""

from __future__ import annotations

import argparse
import json
import sys

from kernel_lib.config import IMAGE_SHAPE
from kernel_lib.metric import ScoreReport, score_submission
from kernel_lib.submission import check_fields, read_csv_columns
from kernel_lib.truth import describe_dropped


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--truth", required=True, help="train.csv-style truth (id, annotation[, cell_type, width, height])"
    )
    parser.add_argument("--pred", required=True, help="submission CSV to score (id, predicted)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--only-predicted",
        action="store_true",
        help="score only the ids the submission has (default: every truth id; a missing one scores 0)",
    )
    parser.add_argument("--height", type=int, default=IMAGE_SHAPE[0], help=f"image height (default {IMAGE_SHAPE[0]})")
    parser.add_argument("--width", type=int, default=IMAGE_SHAPE[1], help=f"image width (default {IMAGE_SHAPE[1]})")


def format_report(report: ScoreReport, why_none: str = "") -> str:
    """The tables: overall, per cell type (images, score), per IoU threshold; with no
    image scored, one line saying so (and ``why_none``) instead."""
    if report.n_images == 0:
        return "score: none, no image was scored" + (f" ({why_none})" if why_none else "")
    lines = [f"score {report.score:.4f} over {report.n_images} image(s)", "", "cell type   images   score"]
    counts = report.per_image["cell_type"].value_counts()
    for cell_type, value in report.per_cell_type.items():
        lines.append(f"{cell_type or '(none)':<10} {int(counts.get(cell_type, 0)):>7}   {value:.4f}")
    lines += ["", "IoU    precision"]
    lines += [f"{t:.2f}   {value:.4f}" for t, value in report.per_threshold.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    truth_fix = "pass the competition's train.csv (id, annotation, ...) as --truth"
    pred_fix = "pass a submission CSV (id, predicted) as --pred"
    truth = read_csv_columns(args.truth, ("id", "annotation"), truth_fix)
    pred = read_csv_columns(args.pred, ("id", "predicted"), pred_fix)
    check_fields(args.truth, truth_fix)  # else pandas may read a row's cells shifted, silently
    check_fields(args.pred, pred_fix)
    ids = list(dict.fromkeys(pred["id"].str.strip())) if args.only_predicted else None
    report = score_submission(
        truth,
        pred,
        ids=ids,
        shape=(args.height, args.width),
        truth_source=str(args.truth),
        pred_source=str(args.pred),
        progress=sys.stderr.isatty(),
    )
    dropped = describe_dropped(report.dropped, str(args.truth))
    if dropped:
        print(dropped, file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), allow_nan=False))  # no image: "score": null, not NaN
    else:
        why = (
            f"--only-predicted and {args.pred} has no id"
            if args.only_predicted
            else f"{args.truth} has no image; pass the competition's train.csv"
        )
        print(format_report(report, why))
    return 0
