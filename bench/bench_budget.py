"""Benchmark: the inference time-budget guard on the annotated pack (issue 14, item 1).

Runs ``run_inference`` with ``InferenceConfig.time_budget_s = B`` on N images of the
pack's ``train/`` folder and checks the guard's promise: inference (from the first model
call to the validated submission) ends within B, the submission is valid and has a row
for every image, and every image ran some ensemble. Model loading is not part of the
budget and is reported on its own. Reported: the budget, the time taken, the steps that
ran and how many images each, the log of the steps taken.

The models are random-weight demonstration folds (``kernel_lib.demo_models``; the guard
only needs their speed), by default 3 R50 folds x 2 views x 2 scales at MIN_SIZE_TEST
800, a heavy ensemble on a CPU; or ``--models DIR``.

Usage::

    nice -n 19 .venv/bin/python bench/bench_budget.py --budget 60 --images 8 [--folds 3]
        [--tta identity,hflip] [--scales 1.0,1.25] [--min-size 800] [--device cpu] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernel_lib.config import Config, EnsembleConfig, InferenceConfig  # noqa: E402
from kernel_lib.images import list_images  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, required=True, help="time_budget_s, seconds")
    parser.add_argument("--images", type=int, default=8, help="images of the pack's train/ (default 8)")
    parser.add_argument(
        "--pack", type=Path, default=None, help="annotated pack (default $SARTORIUS_DATA or ../shared/...)"
    )
    parser.add_argument("--models", type=Path, help="model folder (default: random R50 demo folds)")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--tta", default="identity,hflip")
    parser.add_argument("--scales", default="1.0,1.25")
    parser.add_argument("--min-size", type=int, default=800, help="MIN_SIZE_TEST of the demo folds")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from kernel_lib.demo_models import make_demo_models
    from kernel_lib.pipeline import run_inference
    from kernel_lib.submission import validate_submission

    pack = args.pack or Path(os.environ.get("SARTORIUS_DATA", ROOT.parent / "shared" / "data" / "sartorius-mini"))
    images = list_images(pack / "train")[: args.images]
    if len(images) < args.images:
        raise SystemExit(f"error: {pack / 'train'} has {len(images)} images, asked for {args.images}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    steps_log: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            steps_log.append(record.getMessage())

    logging.getLogger("kernel_lib.budget").addHandler(Keep())
    work = Path(tempfile.mkdtemp(prefix="bench_budget_"))
    models = args.models
    if models is None:
        models = work / "models"
        make_demo_models(models, n_folds=args.folds, arch="R50", seed=0, min_size_test=args.min_size)
    test = work / "test"
    test.mkdir()
    for path in images:
        (test / path.name).symlink_to(path.resolve())
    config = Config(
        ensemble=EnsembleConfig(tta=tuple(args.tta.split(",")), scales=tuple(float(s) for s in args.scales.split(","))),
        inference=InferenceConfig(
            device=args.device, batch_size=args.batch_size, num_workers=1, time_budget_s=args.budget
        ),
    )
    out = work / "submission.csv"
    start = time.perf_counter()
    result = run_inference(test, models, out, config, progress=False)
    wall = time.perf_counter() - start
    spent = result.timings["total"] - result.timings["load_models"]
    problems = validate_submission(out)
    written = {line.split(",", 1)[0] for line in out.read_text().splitlines()[1:]}
    per_step: dict[str, int] = {}
    for run in result.runs:
        key = f"{run.step}: {run.label}"
        per_step[key] = per_step.get(key, 0) + 1
    report = {
        "budget_s": args.budget,
        "images": len(images),
        "ensemble": {
            "folds": args.folds if args.models is None else str(models),
            "tta": args.tta,
            "scales": args.scales,
        },
        "load_models_s": result.timings["load_models"],
        "inference_to_valid_submission_s": spent,
        "wall_s": wall,
        "within_budget": spent <= args.budget,
        "valid": not problems,
        "every_image_written": written == {p.stem for p in images},
        "images_per_step": per_step,
        "steps_log": steps_log,
        "timings": result.timings,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    ok = report["within_budget"] and report["valid"] and report["every_image_written"]
    verdict = "OK" if ok else "NOT OK"
    print(f"budget {args.budget:.0f} s: took {spent:.1f} s (+ {report['load_models_s']:.1f} s loading): {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
