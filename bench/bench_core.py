"""Benchmark of the pure-numpy core against the public notebooks' full-frame way.

Two measurements, each against a straightforward baseline in the same run, on ONE core
(BLAS threads pinned to 1 before numpy loads):

1. Post-processing + encoding of synthetic images with 1,000 instances (520x704):
   ``postprocess`` on CropMasks + ``rle_encode_crops`` vs the public detectron2
   notebook's loop over a (N, H, W) stack (``mask & ~used``, ``mask.sum()``,
   ``used |= mask``, full-frame ``rle_encode`` per kept mask). The outputs (RLE strings)
   must be identical; the stack / crops themselves are inputs, built before timing.
2. Scoring the larger annotated pack (95 images, 11,504 instances) with
   ``score_submission`` vs full-frame scoring: each RLE decoded into a (H, W) mask,
   (N, H*W) stacks, IoU matrix as one float32 matrix product per image (the vectorised
   form of the per-pair full-frame IoU of the public notebooks; a literal pair loop is
   slower still). The prediction is the truth with every instance shifted by up to 2
   pixels and every 10th dropped. Scores must agree. Skipped when the pack is absent.

Usage: ``.venv/bin/python bench/bench_core.py [--images N] [--repeats R] [--score-images K]``
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernel_lib.config import CELL_TYPES, IMAGE_SHAPE, IOU_THRESHOLDS, PostprocessConfig  # noqa: E402
from kernel_lib.masks import CropMasks  # noqa: E402
from kernel_lib.metric import score_submission  # noqa: E402
from kernel_lib.postprocess import postprocess  # noqa: E402
from kernel_lib.rle import rle_decode_crops, rle_encode_crops  # noqa: E402
from kernel_lib.testing import reference_rle_encode  # noqa: E402


def machine() -> str:
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = f"Python {platform.python_version()}, numpy {np.__version__}"
    return f"{model}, {os.cpu_count()} cores visible, 1 thread used; {versions}"


# ------------------------------------------------------------------ synthetic images


def synthetic_instances(
    n: int, shape: tuple[int, int] = IMAGE_SHAPE, seed: int = 0
) -> tuple[CropMasks, np.ndarray, np.ndarray]:
    """n elliptic masks like a Mask R-CNN output: ~0.6 n cells, the rest near-duplicates
    (centre jitter 2 px), semi-axes 5-14 px (mean area ~280 px), uniform scores in
    [0.05, 1), 90% of classes shsy5y."""
    rng = np.random.default_rng(seed)
    height, width = shape
    n_cells = max(1, int(0.6 * n))
    centres = rng.uniform([10, 10], [height - 10, width - 10], (n_cells, 2))
    crops, origins = [], []
    for i in range(n):
        cy, cx = centres[i % n_cells] + rng.normal(0, 2, 2)
        a, b = rng.uniform(5, 14, 2)
        theta = rng.uniform(0, np.pi)
        r = int(np.ceil(max(a, b)))
        y0, x0 = max(int(cy) - r, 0), max(int(cx) - r, 0)
        y1, x1 = min(int(cy) + r + 1, height), min(int(cx) + r + 1, width)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        crops.append(u * u + v * v <= 1)
        origins.append((y0, x0))
    scores = rng.uniform(0.05, 1.0, n).astype(np.float32)
    classes = np.where(rng.random(n) < 0.9, 0, rng.integers(0, len(CELL_TYPES), n)).astype(np.int64)
    return CropMasks(tuple(crops), np.array(origins), shape), scores, classes


# ------------------------------------------------------------------------ baselines


def baseline_postprocess_encode(
    stack: np.ndarray, scores: np.ndarray, classes: np.ndarray, cfg: PostprocessConfig
) -> list[str]:
    """The public detectron2 notebook's post-processing on a (N, H, W) stack."""
    cell_type = int(np.argmax(np.bincount(classes, minlength=len(CELL_TYPES))))
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= cfg.score_threshold[cell_type]]
    used = np.zeros(stack.shape[1:], bool)
    out = []
    for i in order:
        mask = stack[i] & ~used
        kept = mask.sum()
        if kept >= max(cfg.min_area[cell_type], 1) and kept >= cfg.min_kept_fraction[cell_type] * stack[i].sum():
            used |= mask
            out.append(reference_rle_encode(mask))  # the public notebooks' encoder
    return out


def baseline_rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The public notebooks' decoder: one full frame per instance."""
    s = rle.split()
    starts, lengths = (np.asarray(x, dtype=int) for x in (s[0:][::2], s[1:][::2]))
    starts -= 1
    img = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for lo, hi in zip(starts, starts + lengths):
        img[lo:hi] = 1
    return img


def baseline_image_precision(truth_rles: list[str], pred_rles: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Full-frame IoU matrix (float32 matrix product, in chunks of 128 truths), then the rule."""
    t = np.stack([baseline_rle_decode(r, shape) for r in truth_rles]).astype(np.float32)
    p = np.stack([baseline_rle_decode(r, shape) for r in pred_rles]).astype(np.float32) if pred_rles else None
    if p is None:
        return np.zeros(len(IOU_THRESHOLDS))
    inter = np.concatenate([t[k : k + 128] @ p.T for k in range(0, len(t), 128)])
    union = t.sum(1)[:, None] + p.sum(1)[None, :] - inter
    iou = inter / union
    out = []
    for th in IOU_THRESHOLDS:
        m = iou > th
        tp, fn, fp = np.sum(m.sum(1) == 1), np.sum(m.sum(1) == 0), np.sum(m.sum(0) == 0)
        out.append(tp / (tp + fp + fn))
    return np.array(out)


# --------------------------------------------------------------------------- benches


def bench_postprocess(n_images: int, n_instances: int, repeats: int) -> dict[str, float]:
    cfg = PostprocessConfig()
    fast_times, base_times, kept = [], [], []
    for seed in range(n_images):
        masks, scores, classes = synthetic_instances(n_instances, seed=seed)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = postprocess(masks, scores, classes, cfg)
            rles = rle_encode_crops(result.masks)
            best = min(best, time.perf_counter() - t0)
        fast_times.append(best)
        stack = masks.to_stack()
        t0 = time.perf_counter()
        expected = baseline_postprocess_encode(stack, scores, classes, cfg)
        base_times.append(time.perf_counter() - t0)
        del stack
        if rles != expected:
            raise SystemExit(f"image {seed}: fast and baseline outputs differ ({len(rles)} vs {len(expected)} masks)")
        kept.append(len(rles))
    fast, base = float(np.median(fast_times)), float(np.median(base_times))
    print(
        f"post-processing + encoding, {n_images} synthetic images x {n_instances} instances "
        f"({np.mean(kept):.0f} kept on average):\n"
        f"  fast     {fast * 1e3:8.1f} ms/image (median of per-image best of {repeats})\n"
        f"  baseline {base * 1e3:8.1f} ms/image (median, one run each)\n"
        f"  ratio    {base / fast:8.1f}x   (outputs identical)"
    )
    return {"fast_ms": fast * 1e3, "baseline_ms": base * 1e3, "ratio": base / fast}


def shifted_prediction(truth: pd.DataFrame, shape: tuple[int, int], seed: int = 0) -> pd.DataFrame:
    """The truth with each instance shifted by up to 2 px and every 10th dropped."""
    rng = np.random.default_rng(seed)
    rows = []
    for image_id, group in truth.groupby("id", sort=False):
        masks = rle_decode_crops(group["annotation"].tolist(), shape)
        hw = np.array([c.shape for c in masks.crops])
        limit = np.array(shape) - hw
        origins = np.clip(masks.origins + rng.integers(-2, 3, masks.origins.shape), 0, limit)
        moved = CropMasks(masks.crops, origins, shape)
        rles = rle_encode_crops(moved)
        rows += [(image_id, r) for k, r in enumerate(rles) if k % 10 != 9]
    return pd.DataFrame(rows, columns=["id", "predicted"])


def bench_score(pack: Path, n_images: int | None, repeats: int) -> dict[str, float] | None:
    if not (pack / "train.csv").is_file():
        print(f"scoring: SKIPPED, larger annotated pack not found at {pack} (set SARTORIUS_DATA)")
        return None
    shape = IMAGE_SHAPE
    truth = pd.read_csv(pack / "train.csv", dtype=str, keep_default_na=False)
    pred = shifted_prediction(truth, shape)
    ids = list(dict.fromkeys(truth["id"]))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        report = score_submission(truth, pred)
        best = min(best, time.perf_counter() - t0)
    base_ids = ids if n_images is None else ids[:n_images]
    t_groups = truth.groupby("id")["annotation"].agg(list)
    p_groups = pred.groupby("id")["predicted"].agg(list)
    t0 = time.perf_counter()
    base_scores = [baseline_image_precision(t_groups[i], p_groups.get(i, []), shape).mean() for i in base_ids]
    base = time.perf_counter() - t0
    fast_scores = report.per_image.set_index("id").loc[base_ids, "score"].to_numpy()
    if not np.allclose(fast_scores, base_scores):
        raise SystemExit("scoring: fast and baseline image scores differ")
    # fast time on the same images as the baseline, for the ratio
    fast_same = best
    if len(base_ids) < len(ids):
        fast_same = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            score_submission(truth, pred, ids=base_ids)
            fast_same = min(fast_same, time.perf_counter() - t0)
    n_inst = int(truth["id"].isin(base_ids).sum())
    print(
        f"scoring, {len(ids)} images ({len(truth)} truth / {len(pred)} predicted instances), "
        f"score {report.score:.4f}:\n"
        f"  fast     {best * 1e3:8.1f} ms for all {len(ids)} images (best of {repeats}), "
        f"{best / len(ids) * 1e3:.1f} ms/image\n"
        f"  baseline {base * 1e3:8.1f} ms for {len(base_ids)} images ({n_inst} truth instances), "
        f"{base / len(base_ids) * 1e3:.1f} ms/image; fast on the same images {fast_same * 1e3:.1f} ms\n"
        f"  ratio    {base / fast_same:8.1f}x   (image scores identical)"
    )
    return {"fast_ms": best * 1e3, "baseline_ms": base * 1e3, "ratio": base / fast_same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5, help="synthetic 1,000-instance images (default 5)")
    parser.add_argument("--instances", type=int, default=1000, help="instances per synthetic image (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the fast path (default 5)")
    parser.add_argument("--score-images", type=int, default=None, help="baseline-score only the first K images")
    parser.add_argument(
        "--pack", type=Path, default=None, help="annotated pack (default $SARTORIUS_DATA or ../shared/...)"
    )
    args = parser.parse_args(argv)
    pack = args.pack or Path(os.environ.get("SARTORIUS_DATA", ROOT.parent / "shared" / "data" / "sartorius-mini"))
    print(f"machine: {machine()}")
    bench_postprocess(args.images, args.instances, args.repeats)
    bench_score(pack, args.score_images, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
