"""Seconds per CPU training iteration, step by step from the plain detectron2 path to the default.

    .venv/bin/python bench/bench_train.py --data ../shared/data/sartorius-mini [--arch R50-narrow]

One process, the same images, batch, crop and model config for every variant; each
variant builds a fresh model (same seed), runs ``--warmup`` iterations, then times
``--iters`` iterations of data mapping + forward + backward + SGD step on the main
process (as ``train --workers 0`` does). Variants, each adding one change:

1. ``baseline``: detectron2's augmentation list on the full frame (full-frame bitmask
   targets, then the crop), torchvision RoIAlign, float32;
2. ``+bf16``: bfloat16 autocast (AMX / AVX512-BF16);
3. ``+crop-first mapper``: :class:`kernel_lib.training.mappers.CropFirstMapper` (only the crop's
   pixels resampled, masks decoded once per image);
4. ``+sparse RoIAlign``: :func:`kernel_lib.training.roi_align.use_sparse_roi_align` (the default).

Ratios are against the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from kernel_lib.tables import read_csv
from kernel_lib.training.augment import build_augmentations
from kernel_lib.training.datasets import load_dataset_dicts
from kernel_lib.training.mappers import CropFirstMapper, SartoriusMapper
from kernel_lib.training.options import AugmentSettings, TrainOptions
from kernel_lib.training.recipe import build_config
from kernel_lib.training.roi_align import use_sparse_roi_align

VARIANTS = (
    ("baseline", False, False, False),
    ("+bf16", True, False, False),
    ("+crop-first mapper", True, True, False),
    ("+sparse RoIAlign (default)", True, True, True),
)


def time_variant(args: argparse.Namespace, dicts: list[dict], bf16: bool, crop_first: bool, sparse: bool) -> float:
    opts = TrainOptions(
        data_dir=args.data,
        folds_csv="folds.csv",  # named, not read: build_config reads no data
        fold=0,
        out_dir="",
        arch=args.arch,
        batch=args.batch,
        min_sizes=(480, 520, 560),
        max_size=1000,
        augment=AugmentSettings(crop=args.crop),
    )
    cfg = build_config(opts, "cpu")
    if crop_first:
        mapper = CropFirstMapper(tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN, opts.augment)
    else:
        mapper = SartoriusMapper(build_augmentations(cfg, opts.augment), cfg.INPUT.FORMAT)
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_model(cfg)
    model.train()
    if sparse:
        use_sparse_roi_align(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9)
    times = []
    with EventStorage(0):
        for it in range(args.warmup + args.iters):
            start = time.perf_counter()
            batch = [mapper(dicts[(it * args.batch + k) % len(dicts)]) for k in range(args.batch)]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                losses = model(batch)
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if it >= args.warmup:
                times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="competition folder (train.csv, train/)")
    parser.add_argument("--arch", default="R50-narrow", help="kernel_lib.d2config architecture (default R50-narrow)")
    parser.add_argument("--images", type=int, default=16, help="training images cycled through (default 16)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ids = sorted(set(read_csv(f"{args.data}/train.csv", "pass the competition folder")["id"]))[: args.images]
    dicts = load_dataset_dicts(args.data, ids).dicts
    rows = []
    for name, bf16, crop_first, sparse in VARIANTS:
        seconds = time_variant(args, dicts, bf16, crop_first, sparse)
        rows.append({"variant": name, "s_per_iteration": round(seconds, 3)})
        print(f"{name:<30} {seconds:.3f} s / iteration", flush=True)
    base = rows[0]["s_per_iteration"]
    print(f"\n{args.arch}, batch {args.batch}, {args.crop} crops, {torch.get_num_threads()} threads (median)")
    print("| variant | s / iteration | speed-up |\n| --- | --- | --- |")
    for row in rows:
        row["speedup"] = round(base / row["s_per_iteration"], 2)
        print(f"| {row['variant']} | {row['s_per_iteration']:.3f} | {row['speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "batch": args.batch, "crop": args.crop, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
