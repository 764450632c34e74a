"""``python -m kernel_lib train --data DIR --folds FOLDS_CSV --fold K --out DIR [...]``.

Trains fold model K (Mask R-CNN, detectron2) on the images whose fold is not K and
leaves ``OUT/fold<K>/`` (config.yaml, model_final.pth, meta.json with the held-out
score, metrics.json) in the layout ``predict`` reads. ``--fold all`` trains every fold
of the folds file in turn. ``--coco FILE.json --coco-images DIR`` (repeatable) adds COCO
data (LIVECell) to a fold's training images, or trains on it alone: a pretraining run,
``OUT/pretrain/``, that a fold run then fine-tunes with ``--init-weights OUT/pretrain``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernel_lib.config import COCO_CLASSES, NORMALIZATIONS
from kernel_lib.training.options import AugmentSettings, TrainOptions  # torch-free: --help stays light


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


def _triple(text: str) -> tuple[float, float, float]:
    try:
        a, b, c = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three factors SHSY5Y,ASTRO,CORT (e.g. 1.5,1,1), got {text!r}"
        ) from None
    return a, b, c


def _fold(text: str) -> int | str:
    if text == "all":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a fold number >= 0 or 'all', got {text!r}")


@dataclass(frozen=True)
class Option:
    """One command-line option and the :class:`~kernel_lib.training.options.TrainOptions`
    field(s) it sets (``augment.<name>``: an :class:`~kernel_lib.training.options.AugmentSettings`
    field). Its default is the dataclass field's; a field without one is required.

    ``switch``: "off" for a ``--no-...`` flag that sets its field(s) False when given,
    "on" for a flag that sets them True; "" for an option with a value. ``repeat``: the
    option may be given several times; its field gets the tuple of the values.
    """

    flag: str
    fields: tuple[str, ...]
    help: str
    parse: Callable[[str], Any] | None = None
    switch: str = ""
    choices: tuple[str, ...] | None = None
    nargs: str | None = None
    metavar: str | None = None
    repeat: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _o(flag: str, fields: str, help: str, **kw: Any) -> Option:
    return Option(flag, tuple(fields.split()), help, **kw)


OPTIONS: tuple[Option, ...] = (
    _o("--data", "data_dir", "competition folder: train.csv and train/<id>.png"),
    _o("--folds", "folds_csv", "folds CSV id,cell_type,fold (python -m kernel_lib folds); with --data"),
    _o("--fold", "fold", "fold K to hold out, or 'all' (each in turn); with --data", parse=_fold),
    _o(
        "--coco",
        "coco",
        "COCO instances JSON to train on too, or alone (LIVECell's: dict annotations, polygons); repeatable",
        repeat=True,
        metavar="FILE.json",
    ),
    _o("--coco-images", "coco_images", "image folder of each --coco file, in the same order", repeat=True),
    _o(
        "--coco-classes",
        "coco_classes",
        "sartorius: the three classes (LIVECell's SH-SY5Y as shsy5y, other lines left out); "
        "cell: one class-agnostic class, for COCO-only pretraining",
        choices=COCO_CLASSES,
    ),
    _o(
        "--extra-truth",
        "extra_truth",
        "more annotations as train.csv rows (pseudo-labels from the pseudo command), beside --data; repeatable",
        repeat=True,
        metavar="CSV",
    ),
    _o("--extra-images", "extra_images", "image folder of each --extra-truth file, in the same order", repeat=True),
    _o(
        "--extra-weight",
        "extra_weight",
        "how often an --extra-truth image is drawn relative to a labelled one",
        parse=float,
    ),
    _o(
        "--mend-masks",
        "mend_masks",
        "train on mended masks (holes filled, fragments dropped; each change in mended_masks.csv)",
        switch="on",
    ),
    _o("--out", "out_dir", "models folder; the fold lands in OUT/fold<K>/ (OUT/pretrain/ without --data)"),
    _o("--name", "name", "fold folder name (default fold<K>, or pretrain; one fold only)"),
    _o("--config", "base_config", "detectron2 config file or model-zoo name (default: --arch)"),
    _o(
        "--arch",
        "arch",
        "kernel_lib.d2config architecture: R50, R101, X101, cascade, or R50-narrow (6 M parameters, from scratch)",
    ),
    _o(
        "--init-weights",
        "init_weights",
        "local .pth/.pkl to start from, a fold folder to continue, or a pretraining folder to fine-tune "
        "(default: from scratch)",
    ),
    _o("--iters", "iters", "training iterations", parse=int),
    _o("--batch", "batch", "images per iteration over all GPUs", parse=int),
    _o("--lr", "lr", "base learning rate (0: 0.02 * batch / 16)", parse=float),
    _o("--device", "device", "auto: cuda if available", choices=("auto", "cpu", "cuda")),
    _o("--num-gpus", "num_gpus", "GPUs (processes, detectron2 launch)", parse=int),
    _o("--no-amp", "amp", "full precision on CUDA (default: mixed precision)", switch="off"),
    _o(
        "--no-bf16",
        "bf16",
        "float32 on the CPU (default: bfloat16 autocast where the CPU has AMX or AVX512-BF16)",
        switch="off",
    ),
    _o(
        "--min-sizes",
        "min_sizes",
        "short-edge sizes for scale jitter, e.g. 640,704,800 (default: the base config's)",
        parse=_sizes,
    ),
    _o("--max-size", "max_size", "longest edge after resize (0: the base config's)", parse=int),
    _o("--test-size", "test_size", "INPUT.MIN_SIZE_TEST written to config.yaml (0: the base config's)", parse=int),
    _o("--crop", "augment.crop", "random square crop side after resize (0: none)", parse=int),
    _o("--no-flip", "augment.hflip augment.vflip", "no horizontal/vertical flips", switch="off"),
    _o("--no-rot90", "augment.rot90", "no 90-degree rotations", switch="off"),
    _o("--brightness", "augment.brightness", "brightness factor range MIN,MAX", parse=_pair),
    _o("--contrast", "augment.contrast", "contrast factor range MIN,MAX", parse=_pair),
    _o(
        "--copy-paste",
        "augment.copy_paste",
        "probability that a crop gets cells pasted from images of its cell type (0: off; needs --crop)",
        parse=float,
    ),
    _o("--copy-paste-max", "augment.copy_paste_max", "most cells pasted into one crop", parse=int),
    _o(
        "--type-scale",
        "augment.type_scale",
        "per-type resize factor SHSY5Y,ASTRO,CORT, e.g. 1.5,1,1 (needs --crop; match it at inference)",
        parse=_triple,
    ),
    _o(
        "--normalization",
        "normalization",
        "input normalisation: per_image brings each image to one mean and "
        "spread (recorded in meta.json, applied by inference)",
        choices=NORMALIZATIONS,
    ),
    _o("--eval-period", "eval_period", "also score held-out images every N iterations (0: at the end only)", parse=int),
    _o("--eval-config", "eval_config", "pipeline config JSON for held-out scoring (tune's)"),
    _o("--no-heldout", "heldout", "skip scoring the held-out images at the end", switch="off"),
    _o("--checkpoint-period", "checkpoint_period", "iterations between checkpoints", parse=int),
    _o("--keep-checkpoints", "keep_checkpoints", "keep periodic checkpoints after the run", switch="on"),
    _o("--resume", "resume", "continue from the fold folder's last checkpoint", switch="on"),
    _o("--workers", "workers", "data-loader processes per GPU", parse=int),
    _o("--seed", "seed", "random seed", parse=int),
    _o("--max-images", "max_images", "train on at most N images (0: all; smoke tests)", parse=int),
    _o(
        "--set",
        "overrides",
        "detectron2 config overrides, applied last, e.g. --set MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 128",
        nargs="+",
        metavar="KEY VALUE",
    ),
)
"""Every option of the command, in --help order; ``--score-only`` is the command's own."""


def _defaults() -> dict[str, Any]:
    """Field -> default of TrainOptions and (as ``augment.<name>``) AugmentSettings;
    fields without a default are left out."""
    out: dict[str, Any] = {}
    for prefix, cls in (("", TrainOptions), ("augment.", AugmentSettings)):
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[prefix + f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                out[prefix + f.name] = f.default_factory()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = _defaults()
    for opt in OPTIONS:
        field = opt.fields[0]
        if opt.switch:
            parser.add_argument(opt.flag, action="store_true", help=opt.help)
            continue
        kw: dict[str, Any] = {"help": opt.help}
        if field not in defaults:
            kw["required"] = True
        else:
            default = defaults[field]
            kw["default"] = list(default) if opt.nargs else None if opt.repeat else default
            if default not in ("", (), None, 0, -1):  # 0 and 0.0 mean "the base config's" or "none"
                shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
                kw["help"] = f"{opt.help} (default {shown})"
        for key in ("choices", "nargs", "metavar"):
            if getattr(opt, key) is not None:
                kw[key] = getattr(opt, key)
        if opt.repeat:
            kw["action"] = "append"
        if opt.parse is not None:
            kw["type"] = opt.parse
        parser.add_argument(opt.flag, **kw)
    parser.add_argument(
        "--score-only", action="store_true", help="no training: score an existing fold folder again, update meta.json"
    )


def options_from(args: argparse.Namespace, fold: int) -> TrainOptions:
    """The :class:`~kernel_lib.training.options.TrainOptions` of parsed ``args`` for one fold."""
    values: dict[str, Any] = {}
    augment: dict[str, Any] = {}
    for opt in OPTIONS:
        value = getattr(args, opt.dest)
        if opt.switch:
            if not value:
                continue  # not given: the field keeps its default
            value = opt.switch == "on"
        elif opt.nargs or opt.repeat:
            value = tuple(value or ())
        for field in opt.fields:
            if field.startswith("augment."):
                augment[field.removeprefix("augment.")] = value
            else:
                values[field] = value
    values["fold"] = fold
    return TrainOptions(**values, augment=AugmentSettings(**augment))


def run(args: argparse.Namespace) -> int:
    from kernel_lib.folds import read_folds
    from kernel_lib.training.trainer import rescore_fold, train_fold

    if args.fold == "all":
        if not args.folds:
            raise ValueError("--fold all: pass --folds FOLDS_CSV (and --data) to train each of its folds")
        folds = sorted(set(read_folds(args.folds)["fold"].tolist()))
        if args.name:
            raise ValueError("--name names one fold's folder; with --fold all the folders are fold<K>")
    else:
        folds = [args.fold]
    for fold in folds:
        opts = options_from(args, fold)
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
