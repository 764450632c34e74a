"""Rewrite fold folders' model_final.pth in the compact int8 format (kernel_lib.weights).

    .venv/bin/python scripts/compact_weights.py models/r50-narrow/fold0 [FOLD_DIR ...] [--dry-run]

For each fold folder: reads its weights (float16 or float32, ``weights_only=True``),
writes ``{"model": compact_state_dict(state), "weights_format": FORMAT}`` over
``model_final.pth`` (replaced only when complete), checks that reading it back gives every
value within half a quantisation step of the original, and records ``weights_format``
in its meta.json. Prints each file's size before and after and the largest error.
A folder already compact is left as it is. The one-off that shrank the shipped folds
(docs/benchmarks.md, "Compact weights").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from kernel_lib.model_folder import META_FILE, WEIGHTS_FILE, read_meta, write_meta
from kernel_lib.weights import (
    FORMAT,
    FORMAT_KEY,
    QUANTIZED_SUFFIX,
    SCALE_SUFFIX,
    compact_state_dict,
    dequantize_per_channel,
    is_compact,
    read_state_dict,
)


def convert(folder: Path, dry_run: bool = False) -> tuple[int, int, float]:
    """(bytes before, bytes after, largest |error| / step) of one fold folder."""
    path = folder / WEIGHTS_FILE
    before = path.stat().st_size
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if is_compact(raw.get("model", raw)):
        print(f"{folder}: already compact ({before / 2**20:.2f} MiB), left as it is")
        return before, before, 0.0
    state = read_state_dict(path, str(path))
    compact = compact_state_dict(state)
    worst = 0.0
    for key, value in state.items():
        scale = compact.get(key + SCALE_SUFFIX)
        if scale is None:
            continue
        err = (dequantize_per_channel(compact[key + QUANTIZED_SUFFIX], scale) - value).abs().reshape(value.shape[0], -1)
        step = torch.where(scale > 0, scale, torch.ones_like(scale))
        worst = max(worst, float((err.amax(dim=1) / step).max()))
    if worst > 0.5 + 1e-4:
        raise SystemExit(f"{folder}: round-trip error {worst:.4f} steps > 0.5; not written")
    tmp = folder / (WEIGHTS_FILE + ".compact-tmp")
    torch.save({"model": compact, FORMAT_KEY: FORMAT}, tmp)
    after = tmp.stat().st_size
    if dry_run:
        tmp.unlink()
    else:
        os.replace(tmp, path)  # replaced only when complete
        back = read_state_dict(path, str(path))
        assert back.keys() == state.keys()
        if (folder / META_FILE).is_file():
            meta = read_meta(folder)
            meta[FORMAT_KEY] = FORMAT
            write_meta(folder, meta)
    quantized = sum(1 for key in compact if key.endswith(SCALE_SUFFIX))
    print(
        f"{folder}: {before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB "
        f"({quantized} of {len(state)} tensors int8; largest error {worst:.3f} of a step)"
        + (" [dry run]" if dry_run else "")
    )
    return before, after, worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="fold folders (config.yaml + model_final.pth)")
    parser.add_argument("--dry-run", action="store_true", help="report sizes and errors, write nothing")
    args = parser.parse_args(argv)
    total_before = total_after = 0
    for folder in args.folders:
        before, after, _ = convert(folder, args.dry_run)
        total_before, total_after = total_before + before, total_after + after
    print(f"total: {total_before / 2**20:.2f} MiB -> {total_after / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
