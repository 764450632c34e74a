"""Benchmark of ``tune``'s search engine against re-running the reference pipeline.

Data: 600 images' cached instances SIMULATED from the larger annotated pack's truth
(95 images, each used ~6 times with different perturbation seeds, see
``kernel_lib.testing.simulate_instances``: shifted / grown / shrunk copies of every cell,
lower-scored duplicates, stray false positives; ~190 instances per image on average,
~760 on the densest shsy5y images). No trained model outputs exist at this size; the
engine's cost depends on instance counts and overlaps, which the simulation makes
model-like (heavy duplicate overlap), not on where the masks came from.

Measured in the same run, on ONE core (BLAS threads pinned to 1), as CPU time of the
process (``time.process_time``: the development machine is shared, wall time is not
reproducible there; the process is single-threaded, so CPU time is its wall time on an
idle core):

1. precomputation: read the cache + paste every instance once, then
   ``InstanceTable.build`` (cells of shared pixels, instance x truth intersections);
2. the engine: per-cell-type settings (each on the images predicted as that type,
   as ``tune_postprocess`` runs them), and whole configs over all 600 images
   (``score_config``);
3. the baseline: what a search without the engine does per setting on the same
   pre-pasted masks: ``postprocess`` + ``metric.image_score`` image by image.

The engine's image scores must equal the baseline's for every compared config.

Usage: ``.venv/bin/python bench/bench_tune.py [--images 600] [--settings 300] [--baseline-configs 2]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernel_lib.config import CELL_TYPES, PostprocessConfig  # noqa: E402
from kernel_lib.metric import image_score  # noqa: E402
from kernel_lib.postprocess import postprocess  # noqa: E402
from kernel_lib.testing import write_synthetic_cache  # noqa: E402
from kernel_lib.tune import (  # noqa: E402
    InstanceTable,
    candidate_settings,
    images_from_cache,
    run_setting,
    score_config,
    setting_of,
    tune_postprocess,
)


def machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def pack_dir() -> Path | None:
    env = os.environ.get("SARTORIUS_DATA")
    path = Path(env) if env else ROOT.parent / "shared" / "data" / "sartorius-mini"
    return path if (path / "train.csv").is_file() else None


def replicated_truth(train_csv: Path, n_images: int, out: Path) -> Path:
    """A train.csv of ``n_images`` ids ``<id>_<c>``: the pack's images repeated."""
    df = pd.read_csv(train_csv)
    ids = list(dict.fromkeys(df["id"]))
    groups = {i: g for i, g in df.groupby("id", sort=False)}
    parts = []
    for k in range(n_images):
        src = ids[k % len(ids)]
        part = groups[src].copy()
        part["id"] = f"{src}_{k // len(ids)}"
        parts.append(part)
    pd.concat(parts).to_csv(out, index=False)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--settings", type=int, default=300, help="per-type settings timed (split over the 3 types)")
    parser.add_argument("--configs", type=int, default=20, help="whole configs timed with the engine")
    parser.add_argument("--baseline-configs", type=int, default=2, help="whole configs timed with the baseline")
    args = parser.parse_args()
    pack = pack_dir()
    if pack is None:
        print("SKIPPED: the larger annotated pack is absent (set SARTORIUS_DATA)")
        return 0
    print(f"machine: {machine()}, 1 thread; {args.images} images simulated from {pack.name}")
    with tempfile.TemporaryDirectory() as tmp:
        truth = replicated_truth(pack / "train.csv", args.images, Path(tmp) / "train.csv")
        t0 = time.process_time()
        write_synthetic_cache(truth, Path(tmp) / "cache", seed=0)
        t_sim = time.process_time() - t0
        cache_mb = sum(p.stat().st_size for p in (Path(tmp) / "cache").glob("*.npz")) / 2**20
        t0 = time.process_time()
        images, _ = images_from_cache(truth, Path(tmp) / "cache", 0.5, progress=False)
        t_paste = time.process_time() - t0
    n_inst = np.array([len(img.masks) for img in images])
    t0 = time.process_time()
    table = InstanceTable.build(images)
    t_build = time.process_time() - t0
    print(
        f"instances: {n_inst.sum()} ({n_inst.mean():.0f}/image, max {n_inst.max()}); "
        f"cells {len(table.e_inst)} entries, pairs {len(table.pair_inst)}; "
        f"cache {cache_mb:.1f} MiB ({1024 * cache_mb / len(images):.0f} KiB/image)"
    )
    print(f"simulate + write cache {t_sim:.1f} s; read cache + paste {t_paste:.1f} s; build {t_build:.1f} s")

    # engine: per-type settings, as the search runs them (view cache warm per score threshold)
    base = PostprocessConfig()
    per_type = max(1, args.settings // len(CELL_TYPES))
    n_settings, t_settings = 0, 0.0
    for t in range(len(CELL_TYPES)):
        sub = table.subset(np.flatnonzero(table.cell_types == t))
        settings = candidate_settings(setting_of(base, t), per_type, seed=t)
        t0 = time.process_time()
        for s in settings:
            run_setting(sub, s.score_threshold, s.min_area, s.min_kept_fraction)
        t_settings += time.process_time() - t0
        n_settings += len(settings)
    rate_settings = 60 * n_settings / t_settings
    print(f"engine: {n_settings} per-type settings in {t_settings:.2f} s = {rate_settings:.0f} settings/min")

    rng = np.random.default_rng(0)
    configs = [base] + [
        PostprocessConfig(
            score_threshold=tuple(float(v) for v in rng.choice(np.arange(0.05, 0.96, 0.05).round(2), 3)),
            min_area=tuple(float(v) for v in rng.choice(np.arange(0, 301, 25), 3)),
            min_kept_fraction=tuple(float(v) for v in rng.choice(np.arange(0, 1.0, 0.1).round(1), 3)),
        )
        for _ in range(max(args.configs, args.baseline_configs) - 1)
    ]
    t0 = time.process_time()
    outcomes = [score_config(table, pp) for pp in configs[: args.configs]]
    t_configs = time.process_time() - t0
    rate_configs = 60 * len(outcomes) / t_configs
    print(
        f"engine: {len(outcomes)} whole configs (all {len(images)} images) in {t_configs:.2f} s "
        f"= {rate_configs:.0f}/min"
    )

    t0 = time.process_time()
    mismatches = 0
    for k, pp in enumerate(configs[: args.baseline_configs]):
        ref = np.array(
            [image_score(img.truth, postprocess(img.masks, img.scores, img.classes, pp).masks).score for img in images]
        )
        mine = outcomes[k].image_scores if k < len(outcomes) else score_config(table, pp).image_scores
        mismatches += int(np.count_nonzero(ref != mine))
    t_base = time.process_time() - t0
    rate_base = 60 * args.baseline_configs / t_base
    print(
        f"baseline (postprocess + image_score per image): {args.baseline_configs} whole configs in {t_base:.1f} s "
        f"= {rate_base:.1f}/min; engine/baseline = {rate_configs / rate_base:.0f}x; "
        f"image scores differing: {mismatches}"
    )
    t0 = time.process_time()
    result = tune_postprocess(table, base, trials=300, seed=0)
    t_tune = time.process_time() - t0
    n_tried = sum(r.trials for r in result.per_type)
    print(
        f"tune_postprocess(trials=300, refine): {n_tried} settings in {t_tune:.1f} s; "
        f"{result.default_score:.4f} -> {result.best_score:.4f} on the simulated instances"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
