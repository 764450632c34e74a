"""``python -m kernel_lib pseudo --images DIR --models DIR --out pseudo.csv [--config CFG]
[--min-score S] [--min-image-score S] [--device auto|cpu|cuda]``.

Pseudo-labels unlabelled images (the competition's ``train_semi_supervised/``) with the
fold-model ensemble as a submission runs it, and writes the confident instances as
train.csv rows plus ``score`` and ``image_score`` (:mod:`kernel_lib.pseudo`). Train on
them with ``train --extra-truth pseudo.csv --extra-images DIR``. Without ``--config``
the config is the one ``predict`` takes for the same models.
"""

from __future__ import annotations

import argparse

from kernel_lib.kaggle import cli_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=cli_path, help="folder of unlabelled <id>.png images")
    parser.add_argument("--models", required=True, type=cli_path, help="model folder (as predict takes it)")
    parser.add_argument("--out", default="pseudo.csv", help="pseudo-label CSV to write (default pseudo.csv)")
    parser.add_argument("--config", help="JSON config (tune's); default: as predict (best_config.json beside --models)")
    parser.add_argument(
        "--min-score", type=float, default=0.5, help="an instance's least score to become a label (default 0.5)"
    )
    parser.add_argument(
        "--min-image-score",
        type=float,
        default=0.0,
        help="an image's least mean score of its labels to be kept (default 0: every image with a label)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the models run (default: config)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from kernel_lib.config import config_for_models
    from kernel_lib.images import list_images
    from kernel_lib.outputs import atomic_output, check_input_file, check_output, note_output
    from kernel_lib.pseudo import pseudo_label, summary_lines

    if args.config is not None:
        check_input_file(args.config, "--config", "pass a JSON config written by `tune`")
    config, config_file = config_for_models(args.models, args.config)
    paths = list_images(args.images)
    inputs = {"--images": args.images, "--models": args.models, "config": config_file}
    note_output(check_output(args.out, inputs))
    if args.device is not None:
        config = config.with_inference(device=args.device)
    frame, images = pseudo_label(
        paths, args.models, config, args.min_score, args.min_image_score, progress=not args.quiet
    )
    with atomic_output(args.out) as tmp:
        frame.to_csv(tmp, index=False)
    kept = sum(i.kept for i in images)
    print(f"wrote {args.out}: {len(frame)} labels on {kept} of {len(images)} images (min score {args.min_score})")
    for line in summary_lines(images):
        print(f"  {line}")
    return 0
