"""``python -m kernel_lib train --data DIR --folds FOLDS_CSV --fold K --out DIR [...]``.

Trains fold model K (Mask R-CNN, detectron2) on the images whose fold is not K and
leaves ``OUT/fold<K>/`` (config.yaml, model_final.pth, meta.json with the held-out
score, metrics.json) in the layout ``predict`` reads. ``--fold all`` trains every fold
of the folds file in turn.
"""

from __future__ import annotations

import argparse


def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one size")
    return values


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (e.g. 0.8,1.2), got {text!r}") from None
    return lo, hi


def _fold(text: str) -> int | str:
    if text == "all":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a fold number >= 0 or 'all', got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="competition folder: train.csv and train/<id>.png")
    parser.add_argument("--folds", required=True, help="folds CSV id,cell_type,fold (python -m kernel_lib folds)")
    parser.add_argument("--fold", required=True, type=_fold, help="fold K to hold out, or 'all' (each in turn)")
    parser.add_argument("--out", required=True, help="models folder; the fold lands in OUT/fold<K>/")
    parser.add_argument("--name", default="", help="fold folder name (default fold<K>; one fold only)")
    parser.add_argument("--config", default="", help="detectron2 config file or model-zoo name (default: --arch)")
    parser.add_argument(
        "--arch",
        default="R50",
        help="kernel_lib.d2config architecture: R50, R101, X101, cascade, or R50-narrow (6 M parameters, from scratch)",
    )
    parser.add_argument("--init-weights", default="", help="local .pth/.pkl to start from (default: from scratch)")
    parser.add_argument("--iters", type=int, default=3000, help="training iterations (default 3000)")
    parser.add_argument("--batch", type=int, default=2, help="images per iteration over all GPUs (default 2)")
    parser.add_argument("--lr", type=float, default=0.0, help="base learning rate (default 0.02 * batch / 16)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if available")
    parser.add_argument("--num-gpus", type=int, default=1, help="GPUs (processes, detectron2 launch; default 1)")
    parser.add_argument("--no-amp", action="store_true", help="full precision on CUDA (default: mixed precision)")
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="float32 on the CPU (default: bfloat16 autocast where the CPU has AMX or AVX512-BF16)",
    )
    parser.add_argument(
        "--min-sizes", type=_sizes, default=(), help="short-edge sizes for scale jitter, e.g. 640,704,800"
    )
    parser.add_argument("--max-size", type=int, default=0, help="longest edge after resize (default: base config's)")
    parser.add_argument("--test-size", type=int, default=0, help="INPUT.MIN_SIZE_TEST written to config.yaml")
    parser.add_argument("--crop", type=int, default=0, help="random square crop side after resize (default 0: none)")
    parser.add_argument("--no-flip", action="store_true", help="no horizontal/vertical flips")
    parser.add_argument("--no-rot90", action="store_true", help="no 90-degree rotations")
    parser.add_argument("--brightness", type=_pair, default=(0.8, 1.2), help="brightness factor range MIN,MAX")
    parser.add_argument("--contrast", type=_pair, default=(0.8, 1.2), help="contrast factor range MIN,MAX")
    parser.add_argument(
        "--normalization",
        choices=("none", "per_image"),
        default="none",
        help="input normalisation: per_image brings each image to one mean and spread (recorded in meta.json, "
        "applied by inference; default none)",
    )
    parser.add_argument("--eval-period", type=int, default=0, help="also score held-out images every N iterations")
    parser.add_argument("--eval-config", default="", help="pipeline config JSON for held-out scoring (tune's)")
    parser.add_argument("--no-heldout", action="store_true", help="skip scoring the held-out images at the end")
    parser.add_argument(
        "--score-only", action="store_true", help="no training: score an existing fold folder again, update meta.json"
    )
    parser.add_argument("--checkpoint-period", type=int, default=1000, help="iterations between checkpoints")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep periodic checkpoints after the run")
    parser.add_argument("--resume", action="store_true", help="continue from the fold folder's last checkpoint")
    parser.add_argument("--workers", type=int, default=2, help="data-loader processes per GPU (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--max-images", type=int, default=0, help="train on at most N images (smoke tests)")
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="detectron2 config overrides, applied last, e.g. --set MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 128",
    )


def run(args: argparse.Namespace) -> int:
    from kernel_lib.folds import read_folds
    from kernel_lib.train import AugmentSettings, TrainOptions, rescore_fold, train_fold

    if args.fold == "all":
        folds = sorted(set(read_folds(args.folds)["fold"].tolist()))
        if args.name:
            raise ValueError("--name names one fold's folder; with --fold all the folders are fold<K>")
    else:
        folds = [args.fold]
    augment = AugmentSettings(
        crop=args.crop,
        hflip=not args.no_flip,
        vflip=not args.no_flip,
        rot90=not args.no_rot90,
        brightness=args.brightness,
        contrast=args.contrast,
    )
    for fold in folds:
        opts = TrainOptions(
            data_dir=args.data,
            folds_csv=args.folds,
            fold=fold,
            out_dir=args.out,
            name=args.name,
            base_config=args.config,
            arch=args.arch,
            init_weights=args.init_weights,
            iters=args.iters,
            batch=args.batch,
            lr=args.lr,
            device=args.device,
            num_gpus=args.num_gpus,
            amp=not args.no_amp,
            bf16=False if args.no_bf16 else None,
            min_sizes=args.min_sizes,
            max_size=args.max_size,
            test_size=args.test_size,
            augment=augment,
            normalization=args.normalization,
            eval_period=args.eval_period,
            eval_config=args.eval_config,
            heldout=not args.no_heldout,
            checkpoint_period=args.checkpoint_period,
            keep_checkpoints=args.keep_checkpoints,
            resume=args.resume,
            workers=args.workers,
            seed=args.seed,
            max_images=args.max_images,
            overrides=tuple(args.set),
        )
        result = rescore_fold(opts) if args.score_only else train_fold(opts)
        meta = result.meta
        score = meta.get("heldout_score")
        shown = (
            f"held-out score {score:.4f} on {meta.get('heldout_images')} images" if score is not None else "not scored"
        )
        print(
            f"{result.fold_dir}: {meta['iters']} iterations in {meta['train_seconds']:.0f} s "
            f"({meta['iters_per_second']} it/s), {shown}"
        )
        if meta.get("heldout_per_cell_type"):
            print("  per cell type: " + ", ".join(f"{k} {v:.4f}" for k, v in meta["heldout_per_cell_type"].items()))
    return 0
