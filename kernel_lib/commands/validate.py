"""``python -m kernel_lib validate SUBMISSION_CSV [--sample SAMPLE_CSV] [--height 520 --width 704]``.

Exit 0 when valid; otherwise exit 1 with one line per problem (``id: what (where)``)."""

from __future__ import annotations

import argparse
import sys

from kernel_lib.config import IMAGE_SHAPE
from kernel_lib.submission import validate_submission


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", metavar="SUBMISSION_CSV", help="submission CSV (id, predicted)")
    parser.add_argument("--sample", help="sample_submission.csv: its ids must be exactly the submission's")
    parser.add_argument("--height", type=int, default=IMAGE_SHAPE[0], help=f"image height (default {IMAGE_SHAPE[0]})")
    parser.add_argument("--width", type=int, default=IMAGE_SHAPE[1], help=f"image width (default {IMAGE_SHAPE[1]})")


def run(args: argparse.Namespace) -> int:
    problems = validate_submission(args.submission, sample=args.sample, shape=(args.height, args.width))
    if not problems:
        print(f"{args.submission}: valid")
        return 0
    for problem in problems:
        print(problem)
    print(f"{args.submission}: {len(problems)} problem(s)", file=sys.stderr)
    return 1
