"""``python -m kernel_lib folds --truth TRAIN_CSV --out folds.csv [--n-folds 5] [--seed 0]``."""

from __future__ import annotations

import argparse

from kernel_lib.config import CELL_TYPES
from kernel_lib.folds import make_folds, write_folds
from kernel_lib.outputs import check_input_file, check_output, note_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True, help="train.csv (id, annotation, ..., cell_type)")
    parser.add_argument("--out", required=True, help="folds CSV to write (id,cell_type,fold)")
    parser.add_argument("--n-folds", type=int, default=5, help="number of folds, >= 2 (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed, a whole number >= 0 (default 0)")


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:  # numpy's generator refuses it, after the truth was read
        raise ValueError(f"--seed: expected a whole number >= 0, got {args.seed}; pass e.g. --seed 0")
    if args.n_folds < 2:
        raise ValueError(f"--n-folds: expected at least 2 folds, got {args.n_folds}; pass e.g. --n-folds 5")
    check_input_file(args.truth, "--truth", "pass the competition's train.csv")
    note_output(check_output(args.out, {"--truth": args.truth}))
    folds = make_folds(args.truth, n_folds=args.n_folds, seed=args.seed)
    path = write_folds(folds, args.out)
    counts = folds.groupby(["fold", "cell_type"]).size().unstack(fill_value=0).reindex(columns=list(CELL_TYPES))
    counts = counts.fillna(0).astype(int)
    counts["total"] = counts.sum(axis=1)
    print(f"wrote {path}: {len(folds)} images in {args.n_folds} folds (seed {args.seed})")
    print(counts.to_string())
    return 0
