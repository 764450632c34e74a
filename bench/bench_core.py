"""Benchmark of the pure-numpy core against the public notebooks' full-frame way.

Two measurements, each against a straightforward baseline in the same run, on ONE core
(BLAS threads pinned to 1 before numpy loads):

1. Post-processing + encoding of synthetic images with 1,000 instances (520x704):
   ``postprocess`` on CropMasks + ``rle_encode_crops`` vs the public detectron2
   notebook's loop over a (N, H, W) stack (``mask & ~used``, ``mask.sum()``,
   ``used |= mask``, full-frame ``rle_encode`` per kept mask). The outputs (RLE strings)
   must be identical; the stack / crops themselves are inputs, built before timing.
2. Scoring the larger annotated pack (95 images, 11,504 instances) against the public
   notebooks' scorer: each RLE decoded into a (H, W) mask, (N, H*W) stacks, IoU matrix
   as one float32 matrix product per image (the vectorised form of the per-pair
   full-frame IoU of the public notebooks; a literal pair loop is slower still). The
   prediction is the truth with every instance shifted by up to 2 pixels and every 10th
   dropped. Two ratios: in-process (``score_submission`` vs the scorer's loop, inputs
   already read) and whole-process (``python -m kernel_lib score --truth --pred --json``
   vs the public scorer as a stand-alone numpy + pandas script: interpreter start,
   imports, reading both CSVs, scoring). The public scorer runs once (about a minute
   for the 95 images on the development machine); both are given the same images and
   their image scores must agree. Skipped when the pack is absent.

Usage: ``.venv/bin/python bench/bench_core.py [--images N] [--repeats R] [--score-images K]
[--other-tree DIR ...] [--skip-postprocess]``; ``--other-tree`` also times ``score`` from
another checkout (before / after figures in one run), e.g.
``git archive COMMIT | tar -x -C /tmp/before`` then ``--other-tree /tmp/before``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
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


PUBLIC_SCORER_MAIN = """
def main(truth_csv: str, pred_csv: str, out_json: str) -> None:
    truth = pd.read_csv(truth_csv, dtype=str, keep_default_na=False)
    pred = pd.read_csv(pred_csv, dtype=str, keep_default_na=False)
    t_groups = truth.groupby("id")["annotation"].agg(list)
    p_groups = pred.groupby("id")["predicted"].agg(list)
    ids = list(dict.fromkeys(truth["id"]))
    start = time.perf_counter()
    scores = {i: float(baseline_image_precision(t_groups[i], p_groups.get(i, []), SHAPE).mean()) for i in ids}
    seconds = time.perf_counter() - start
    Path(out_json).write_text(json.dumps({"scores": scores, "seconds": seconds}))
    print(f"score {np.mean(list(scores.values())):.4f} over {len(ids)} image(s)")


main(*sys.argv[1:])
"""


def public_scorer_script(shape: tuple[int, int]) -> str:
    """The public notebooks' scorer as a stand-alone script (numpy + pandas only, no
    kernel_lib): ``python -c SCRIPT TRUTH_CSV PRED_CSV OUT_JSON`` reads both CSVs, scores
    every truth image with :func:`baseline_image_precision`, writes ``{"scores": {id:
    score}, "seconds": scoring time}`` to OUT_JSON and prints the mean."""
    header = (
        "import json, sys, time\nfrom pathlib import Path\nimport numpy as np\nimport pandas as pd\n"
        f"IOU_THRESHOLDS = {tuple(IOU_THRESHOLDS)!r}\nSHAPE = {tuple(shape)!r}\n\n"
    )
    functions = "\n\n".join(inspect.getsource(f) for f in (baseline_rle_decode, baseline_image_precision))
    return header + functions + "\n" + PUBLIC_SCORER_MAIN


def run_process(cmd: list[str], repeats: int, cwd: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``cmd`` ``repeats`` times; best wall and CPU seconds (user + system of the
    child) and the stdout of the last run. Fails loudly when the command fails."""
    walls, cpus, out = [], [], ""
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        out = proc.stdout
    return {"wall_s": min(walls), "cpu_s": min(cpus), "stdout": out}


def bench_score(
    pack: Path, n_images: int | None, repeats: int, other_trees: Sequence[Path] = ()
) -> dict[str, float] | None:
    """Scoring the annotated pack: ``score_submission`` in-process and ``python -m
    kernel_lib score`` whole-process, against the public notebooks' scorer (one run, in
    its own process) on the same images; scores checked identical.

    The public scorer has no truth policy: it is given the rows the policy keeps (the
    pack's duplicated rows scored twice would move 3 image scores by < 0.001). Each
    tree of ``other_trees`` (a checkout of this repository, e.g. an older commit) has
    its ``score`` timed whole-process on the same files as well."""
    if not (pack / "train.csv").is_file():
        print(f"scoring: SKIPPED, larger annotated pack not found at {pack} (set SARTORIUS_DATA)")
        return None
    shape = IMAGE_SHAPE
    truth = pd.read_csv(pack / "train.csv", dtype=str, keep_default_na=False)
    ids = list(dict.fromkeys(truth["id"]))
    if n_images is not None:
        ids = ids[:n_images]
        truth = truth[truth["id"].isin(ids)]
    pred = shifted_prediction(truth, shape)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        report = score_submission(truth, pred)
        best = min(best, time.perf_counter() - t0)
    fast_scores = report.per_image.set_index("id").loc[ids, "score"].to_numpy()
    kept = truth.drop(index=[p.row for p in report.dropped])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        truth_csv = pack / "train.csv" if n_images is None else Path(tmp) / "truth.csv"
        if n_images is not None:
            truth.to_csv(truth_csv, index=False)
        pred_csv, kept_csv, out_json = Path(tmp) / "pred.csv", Path(tmp) / "kept.csv", Path(tmp) / "public.json"
        pred.to_csv(pred_csv, index=False)
        kept.to_csv(kept_csv, index=False)
        score_cmd = ["-m", "kernel_lib", "score", "--truth", str(truth_csv), "--pred", str(pred_csv), "--json"]
        cli = run_process([sys.executable, *score_cmd], repeats, ROOT, env)
        others = {}
        for tree in other_trees:
            others[tree] = run_process([sys.executable, *score_cmd], repeats, tree, {**env, "PYTHONPATH": str(tree)})
        public = run_process(
            [sys.executable, "-c", public_scorer_script(shape), str(kept_csv), str(pred_csv), str(out_json)], 1, ROOT
        )
        public_out = json.loads(out_json.read_text())
    base_scores = np.array([public_out["scores"][i] for i in ids])
    cli_scores = pd.DataFrame(json.loads(str(cli["stdout"]))["per_image"]).set_index("id").loc[ids, "score"].to_numpy()
    if not (np.allclose(fast_scores, base_scores) and np.allclose(cli_scores, base_scores)):
        raise SystemExit("scoring: kernel_lib and public scorer image scores differ")
    base_in = float(public_out["seconds"])
    ratio_wall = float(public["wall_s"]) / float(cli["wall_s"])
    ratio_cpu = float(public["cpu_s"]) / float(cli["cpu_s"])
    n_truth = len(truth)
    print(
        f"scoring, {len(ids)} images ({n_truth} truth rows, {len(kept)} kept by the truth policy; "
        f"{len(pred)} predicted instances), score {report.score:.4f}:\n"
        f"  in-process (scoring only; inputs read):\n"
        f"    fast     {best * 1e3:8.1f} ms, {best / len(ids) * 1e3:.1f} ms/image "
        f"(score_submission, best of {repeats})\n"
        f"    baseline {base_in * 1e3:8.1f} ms, {base_in / len(ids) * 1e3:.1f} ms/image (one run)\n"
        f"    ratio    {base_in / best:8.1f}x   (image scores identical)\n"
        f"  whole process (start-up, imports, reading the CSVs, scoring, output):\n"
        f"    python -m kernel_lib score  wall {cli['wall_s']:7.2f} s  cpu {cli['cpu_s']:7.2f} s (best of {repeats})\n"
        f"    public notebooks' scorer    wall {public['wall_s']:7.2f} s  cpu {public['cpu_s']:7.2f} s (one run)\n"
        f"    ratio                       wall {ratio_wall:6.1f}x  cpu {ratio_cpu:6.1f}x"
    )
    result = {
        "fast_ms": best * 1e3,
        "baseline_ms": base_in * 1e3,
        "ratio": base_in / best,
        "score_wall_s": float(cli["wall_s"]),
        "score_cpu_s": float(cli["cpu_s"]),
        "public_wall_s": float(public["wall_s"]),
        "public_cpu_s": float(public["cpu_s"]),
        "whole_process_ratio": ratio_wall,
        "whole_process_cpu_ratio": ratio_cpu,
    }
    for tree, row in others.items():
        line = json.loads(str(row["stdout"]))
        print(
            f"    score from {tree}: wall {row['wall_s']:.2f} s  cpu {row['cpu_s']:.2f} s  "
            f"(ratio wall {float(public['wall_s']) / float(row['wall_s']):.1f}x, "
            f"cpu {float(public['cpu_s']) / float(row['cpu_s']):.1f}x; its score {line['score']:.4f})"
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5, help="synthetic 1,000-instance images (default 5)")
    parser.add_argument("--instances", type=int, default=1000, help="instances per synthetic image (default 1000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of the fast path (default 5)")
    parser.add_argument("--score-images", type=int, default=None, help="baseline-score only the first K images")
    parser.add_argument(
        "--pack", type=Path, default=None, help="annotated pack (default $SARTORIUS_DATA or ../shared/...)"
    )
    parser.add_argument(
        "--other-tree",
        type=Path,
        action="append",
        default=[],
        help="also time `score` whole-process from this checkout (e.g. an older commit's `git archive`); repeatable",
    )
    parser.add_argument("--skip-postprocess", action="store_true", help="only the scoring bench")
    args = parser.parse_args(argv)
    pack = args.pack or Path(os.environ.get("SARTORIUS_DATA", ROOT.parent / "shared" / "data" / "sartorius-mini"))
    print(f"machine: {machine()}")
    if not args.skip_postprocess:
        bench_postprocess(args.images, args.instances, args.repeats)
    bench_score(pack, args.score_images, args.repeats, args.other_tree)
    return 0


if __name__ == "__main__":
    sys.exit(main())
