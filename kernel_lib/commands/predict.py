"""``python -m kernel_lib predict --test-dir DIR --models DIR --out submission.csv
[--config CFG] [--device auto|cpu|cuda] [--sample SAMPLE_CSV] [--batch-size N] [--workers N] [--no-half]``.

Runs the fold-model ensemble (TTA, ensembling, post-processing) on a test folder and
writes a validated submission. Options given here override the config file. Without
``--config`` the config is the one the inference notebook takes for the same models
(:func:`kernel_lib.config.config_for_models`): the file named by ``KERNEL_LIB_CONFIG``,
else ``best_config.json`` in the models folder, else the built-in defaults.
"""

from __future__ import annotations

import argparse
import os
import sys

from kernel_lib.kaggle import cli_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test-dir", required=True, type=cli_path, help="folder of <id>.png test images (or kaggle:SLUG/test)"
    )
    parser.add_argument(
        "--models",
        required=True,
        type=cli_path,
        help="model folder: <name>/config.yaml + model_final.pth (or kaggle:SLUG: an attached dataset)",
    )
    parser.add_argument("--out", default="submission.csv", help="submission CSV to write (default submission.csv)")
    parser.add_argument(
        "--config",
        help="JSON config (written by `tune`); default, as the inference notebook: the file named by the "
        "KERNEL_LIB_CONFIG environment variable, else best_config.json in --models, else built-in defaults",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the models run (default: config)")
    parser.add_argument(
        "--sample", type=cli_path, help="sample_submission.csv: predict and write exactly its ids (or kaggle:SLUG/...)"
    )
    parser.add_argument("--batch-size", type=int, help="images per model call (default: config)")
    parser.add_argument("--workers", type=int, help="data-loader worker processes (default: config)")
    parser.add_argument("--no-half", action="store_true", help="run float32 on CUDA")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from kernel_lib.config import CONFIG_ENV, config_for_models
    from kernel_lib.images import IMAGE_SUFFIXES, list_images
    from kernel_lib.outputs import check_input_file, check_output, file_kind, note_output
    from kernel_lib.pipeline import run_inference
    from kernel_lib.submission import id_problems, read_csv_columns

    if args.config is not None:
        check_input_file(args.config, "--config", "pass a JSON config written by `tune`")
    models_kind = file_kind(args.models)
    if models_kind not in (None, "a folder", "missing"):
        raise ValueError(f"--models {args.models} is {models_kind}; pass the folder of fold folders")
    if models_kind is None:
        raise ValueError(
            f"--models {args.models} is a file, not a folder; pass the folder of fold folders "
            "(<name>/config.yaml + model_final.pth)"
        )
    config, config_file = config_for_models(args.models, args.config)
    if args.config is None and config_file is not None:
        where = f"named by {CONFIG_ENV}" if os.environ.get(CONFIG_ENV) else "beside the models"
        print(f"note: config {config_file} ({where}; --config overrides it)", file=sys.stderr)
    # everything that can be checked before the models run: the images (one file per
    # id, the competition's frame, no broken link), the ids as CSV cells, and the
    # output path (never a file of an input: the models, the images, the sample, the config)
    broken = []
    if args.test_dir.is_dir():
        try:
            entries = sorted(args.test_dir.iterdir())
        except OSError as err:
            raise ValueError(
                f"--test-dir {args.test_dir}: cannot list the folder ({err.strerror or err}); make it readable"
            ) from None
        broken = [
            f"{p.name} ({file_kind(p)})"
            for p in entries
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and file_kind(p) is not None
        ]
    if broken:
        raise ValueError(
            f"image folder {args.test_dir}: {len(broken)} image name(s) that are not readable image files: "
            f"{', '.join(broken[:3])}; their ids would be missing from the submission: fix or remove them"
        )
    paths = list_images(args.test_dir)
    inputs = {"--sample": args.sample, "--config" if args.config is not None else "config": config_file}
    inputs.update({f"--test-dir image {p.name}": p for p in paths})
    inputs.update({"--test-dir": args.test_dir, "--models": args.models})
    note_output(check_output(args.out, inputs))
    ids = [p.stem for p in paths]
    if args.sample is not None:
        fix = "pass the competition's sample_submission.csv"
        check_input_file(args.sample, "--sample", fix)
        sample = read_csv_columns(args.sample, ("id",), fix)
        ids = list(dict.fromkeys(sample["id"].str.strip()))  # as run_inference reads them
        if not ids:
            raise ValueError(
                f"--sample {args.sample} lists no id (a header alone); a submission of no row scores nothing: {fix}"
            )
    bad = id_problems(ids)
    if bad:
        where = args.sample or args.test_dir
        raise ValueError(
            f"{len(bad)} id(s) of {where} cannot be written as a submission row (empty, a comma, a quote, a "
            f"newline or surrounding spaces), e.g. {', '.join(bad[:3])}; rename them"
        )
    overrides = {}
    if args.device is not None:
        overrides["device"] = args.device
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    if args.workers is not None:
        overrides["num_workers"] = args.workers
    if args.no_half:
        overrides["half"] = False
    if overrides:
        config = config.with_inference(**overrides)
    result = run_inference(
        args.test_dir, args.models, args.out, config, sample_csv=args.sample, progress=not args.quiet
    )
    seconds = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    print(f"wrote {result.submission}: {result.n_images} images, {result.n_instances} instances ({seconds})")
    return 0
