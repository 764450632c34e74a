"""``python -m kernel_lib report --truth TRAIN_CSV --cache DIR --images DIR [--config CFG]
[--out report.html] [--worst 6]``."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True, help="train.csv with the cached images' annotations")
    parser.add_argument(
        "--cache", default="oof_cache", help="instance cache filled by `evaluate` (default ./oof_cache)"
    )
    parser.add_argument("--images", help="folder of the <id>.png images, for the overlays (omit: no overlays)")
    parser.add_argument("--config", help="post-processing to report (default: the one evaluate used)")
    parser.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--worst", type=int, default=6, help="overlays of this many lowest-scoring images (default 6)")
    parser.add_argument("--title", default="Out-of-fold evaluation", help="page title")


def run(args: argparse.Namespace) -> int:
    from kernel_lib.config import load_config
    from kernel_lib.evaluate import MANIFEST, evaluate_cache
    from kernel_lib.outputs import check_input_file, check_output, file_kind, note_output
    from kernel_lib.report import render_html, write_report
    from kernel_lib.truth import read_truth

    if args.config is not None:
        check_input_file(args.config, "--config", "pass a JSON config (written by `tune` or `Config.to_json`)")
    config = load_config(args.config) if args.config is not None else None
    check_input_file(args.truth, "--truth", "pass the competition's train.csv")
    if args.images is not None:
        kind = file_kind(args.images)
        if kind != "a folder":
            what = "does not exist" if kind == "missing" else f"is {kind or 'a file'}, not a folder"
            raise ValueError(
                f"--images {args.images} {what}; pass the folder of the <id>.png images for the overlays "
                "(or leave --images out: no overlays)"
            )
    cache = Path(args.cache)
    inputs = {"--truth": args.truth, "--config": args.config, "cache manifest": cache / MANIFEST, "--cache": cache}
    if args.images is not None:
        inputs["--images"] = Path(args.images)
    note_output(check_output(args.out, inputs))
    evaluation, predictions = evaluate_cache(args.truth, args.cache, config)
    truth = read_truth(args.truth, ids=predictions)
    text = render_html(evaluation, predictions, truth, args.images, args.worst, args.title)
    path = write_report(args.out, text)
    print(f"wrote {path}: score {evaluation.report.score:.4f} over {evaluation.report.n_images} image(s)")
    return 0
