"""``python -m kernel_lib tune --truth TRAIN_CSV --cache DIR [--config CFG] [--out best_config.json]
[--trials N] [--rescore A,B,...]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from kernel_lib.config import load_config
from kernel_lib.evaluate import MANIFEST, read_cache_manifest
from kernel_lib.outputs import atomic_output, check_input_file, check_output, note_output
from kernel_lib.tune import DEFAULT_RESCORE_GRID, Setting, images_from_cache, tune_rescoring


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--truth", required=True, help="train.csv with the cached images' annotations")
    parser.add_argument(
        "--cache", default="oof_cache", help="instance cache filled by `evaluate` (default ./oof_cache)"
    )
    parser.add_argument(
        "--config",
        help="config whose post-processing is the starting point (default: the one evaluate used); "
        "its ensemble should be the cache's",
    )
    parser.add_argument("--out", default="best_config.json", help="config JSON to write (default best_config.json)")
    parser.add_argument("--trials", type=int, default=300, help="grid settings per cell type (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="grid sampling seed (default 0)")
    parser.add_argument("--no-refine", action="store_true", help="skip the finer coordinate search around the best")
    parser.add_argument(
        "--rescore",
        default=",".join(f"{e:g}" for e in DEFAULT_RESCORE_GRID),
        help="rescoring exponents to try per cell type, comma-separated: score * mask confidence ** a "
        f"(default {','.join(f'{e:g}' for e in DEFAULT_RESCORE_GRID)}; 0 alone keeps the models' scores)",
    )
    parser.add_argument("--history", help="also write every setting tried and its score to this CSV")


def _fmt(s: Setting, rescore: float) -> str:
    rescored = f" rescore^{rescore:g}" if rescore else ""
    return f"score>={s.score_threshold:g} area>={s.min_area:g} kept>={s.min_kept_fraction:g}{rescored}"


def _exponents(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(0.0 <= v <= 4.0 for v in values):
        raise ValueError(f"--rescore: expected comma-separated exponents in [0, 4] (e.g. 0,1), got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        check_input_file(args.config, "--config", "pass a JSON config (written by `tune` or `Config.to_json`)")
    given = load_config(args.config) if args.config is not None else None
    if args.trials < 1:
        raise ValueError(f"--trials: expected at least 1, got {args.trials}")
    exponents = _exponents(args.rescore)
    check_input_file(args.truth, "--truth", "pass the competition's train.csv")
    cache = Path(args.cache)
    inputs = {"--truth": args.truth, "--config": args.config, "cache manifest": cache / MANIFEST, "--cache": cache}
    note_output(check_output(args.out, inputs))
    if args.history is not None:
        note_output(check_output(args.history, {**inputs, "--out": args.out}, flag="--history"))

    entries, used = read_cache_manifest(args.cache)
    if not entries:
        raise ValueError(
            f"{cache / MANIFEST} lists no image: nothing to tune on; fill the cache with "
            f"`python -m kernel_lib evaluate ... --cache {cache}` on annotated images first"
        )
    base = given or used
    if given is not None and given.ensemble != used.ensemble:
        print(
            f"warning: {args.config}'s ensemble differs from the one that filled {args.cache}; "
            "the tuned thresholds fit the cached ensemble, which the written config keeps"
        )
        base = given.replace(ensemble=used.ensemble)
    images, _ = images_from_cache(args.truth, args.cache, base.postprocess.mask_threshold)
    if not images:
        raise ValueError(f"no cached image of {cache} to tune on; run evaluate on annotated images first")
    result = tune_rescoring(
        images, base.postprocess, exponents, trials=args.trials, seed=args.seed, refine=not args.no_refine,
        progress=lambda it: tqdm(it, desc="precompute", unit="img", leave=False),
    )  # fmt: skip
    n_tried = len(result.history)
    print(
        f"tried {n_tried} settings on {len(images)} images in {result.seconds:.1f} s "
        f"({60 * n_tried / max(result.seconds, 1e-9):.0f} per minute)"
    )
    print("per predicted cell type:")
    for t, r in enumerate(result.per_type):
        if not r.n_images:
            print(f"  {r.cell_type:<7} no image predicted as this type: kept {_fmt(r.default, r.rescore)}")
            continue
        print(
            f"  {r.cell_type:<7} {r.n_images:>4} img  default {_fmt(r.default, base.postprocess.rescore[t])} "
            f"-> {r.default_score:.4f}\n"
            f"  {'':<7} {'':>4}      best    {_fmt(r.best, r.rescore)} -> {r.best_score:.4f} "
            f"({r.best_score - r.default_score:+.4f})"
        )
    print(f"overall: {result.default_score:.4f} -> {result.best_score:.4f} ({result.gain:+.4f}) on the tuned images")
    best = base.replace(postprocess=result.config)
    best.to_json(args.out)
    print(f"wrote {args.out} (pass it as --config to evaluate/predict, or load_config in the notebook)")
    if args.history is not None:
        with atomic_output(args.history) as tmp:
            result.history.to_csv(tmp, index=False)
        print(f"wrote {args.history}")
    return 0
