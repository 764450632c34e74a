"""Benchmark: K fold models x TTA views of R50-FPN Mask R-CNN, this bundle vs the public loop.

Both sides run the same K model folders (``config.yaml`` + ``model_final.pth``, default:
5 random-weight R50-FPN demo folds, MIN_SIZE_TEST 800 as the zoo config: 520x704
images go in as 800x1083) on the same 704x520 images, with the same candidate score
(0.05) and detection limit (1000), in the same process, and write a submission:

- bundle: ``kernel_lib.pipeline.run_inference`` (batched calls into the detectron2
  models, the "roi" ensemble: boxes of every model and view merged, every model's mask
  head on the merged boxes, soft masks averaged as 28x28 RoI maps, pasted once into
  box crops; post-processing on crops in a background thread; DataLoader workers).
- baseline: the public notebooks' loop: a ``DefaultPredictor`` per model, called per
  image and view (the flipped image for hflip), its full-frame masks moved to numpy and
  un-flipped, every model's and view's masks concatenated, box NMS across them
  (torchvision, IoU 0.5, as the public ensemble notebooks' ``ensemble_boxes.nms``),
  then the detectron2 baseline notebook's per-instance full-frame post-processing
  (mode class, per-type thresholds, ``mask * (1 - used)``, minimum area,
  full-frame ``rle_encode``).

Model loading is excluded from both. Reported: images/s (wall) and CPU seconds per image
(process time, all threads; the development machine is shared, so wall time varies
with other users' load; both sides use the same torch thread count), detections per
view, merged boxes per image (bundle), mask-head RoIs per image (both).

Usage::

    .venv/bin/python bench/bench_inference.py [--images 4] [--folds 5] [--tta identity,hflip]
        [--device auto|cpu|cuda] [--models DIR] [--config FILE] [--data DIR] [--min-size 800] [--json OUT]

On a GPU use more images (e.g. ``--images 40``); ``--no-half`` for float32 only, ``--fp32``
for a float32 row beside the default one; ``--t4-like`` for a T4-like run on a larger GPU
(4 CPU threads, TF32 off, GPU memory capped at 14.5 GiB). ``--models
models/r50-narrow --config models/r50-narrow/best_config.json`` times the shipped folds
with their shipped pipeline (``--folds K``: the first K of them). ``--data DIR`` takes the
images from ``DIR/train/`` (an annotated pack) or ``DIR`` itself and stops when it holds
fewer than ``--images`` + 1 (the warm-up image); without it, the first of
``../shared/data/sartorius-mini/train`` and ``tests/data`` (10 images) that exists.
The baseline feeds every model the raw image (no per-image normalisation), so with the
shipped folds its masks differ: it is there for its time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernel_lib.config import Config, EnsembleConfig, InferenceConfig, PostprocessConfig  # noqa: E402
from kernel_lib.images import list_images, read_image, to_model_input  # noqa: E402
from kernel_lib.testing import reference_rle_encode  # noqa: E402


def machine(device: str) -> str:
    import torch

    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    if device.startswith("cuda"):
        gpu = ", GPU " + ", ".join(torch.cuda.get_device_name(k) for k in range(torch.cuda.device_count()))
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def pick_images(n: int, data: Path | None = None) -> list[Path]:
    """n 704x520 images: from ``data`` (its ``train/`` when it has one, else the folder
    itself), else the larger pack's train images when present, else tests/data.

    Raises:
        ValueError: fewer than n images there (nothing is padded or repeated).
    """
    if data is not None:
        folder = data / "train" if (data / "train").is_dir() else data
        if not folder.is_dir():
            raise ValueError(f"--data {data}: not a folder")
        candidates = list_images(folder)
        where = str(folder)
    else:
        candidates = []
        for folder in (ROOT.parent / "shared" / "data" / "sartorius-mini" / "train", ROOT / "tests" / "data" / "train"):
            if folder.is_dir():
                candidates = list_images(folder)
                break
        candidates += list_images(ROOT / "tests" / "data" / "test")
        where = "../shared/data/sartorius-mini or tests/data (pass --data)"
    if len(candidates) < n:
        raise ValueError(f"only {len(candidates)} images in {where}, asked for {n} (--images + 1 warm-up)")
    return candidates[:n]


def first_models(models_dir: Path, k: int | None, work: Path) -> Path:
    """``models_dir`` itself, or (``k`` below its number of models) a folder of links to its
    first ``k`` models with their models.json weights.

    Raises:
        ValueError: ``k`` above its number of models.
    """
    from kernel_lib.model_folder import read_manifest, write_manifest

    listed = read_manifest(models_dir)
    if k is None or k == len(listed):
        return models_dir
    if not 0 < k <= len(listed):
        raise ValueError(f"--folds {k}: {models_dir} holds {len(listed)} models")
    subset = work / "models_subset"
    subset.mkdir()
    for name, _ in listed[:k]:
        (subset / name).symlink_to((models_dir / name).resolve(), target_is_directory=True)
    write_manifest(subset, listed[:k], note=f"the first {k} of {models_dir}")
    return subset


# ------------------------------------------------------------------ baseline


class Baseline:
    """DefaultPredictor per model, per image and view; full-frame masks throughout."""

    def __init__(self, models_dir: Path, names: list[str], cfg: Config, device: str) -> None:
        from detectron2.config import get_cfg
        from detectron2.engine import DefaultPredictor

        self.predictors = []
        for name in names:
            d2cfg = get_cfg()
            d2cfg.set_new_allowed(True)
            d2cfg.merge_from_file(str(models_dir / name / "config.yaml"))
            d2cfg.MODEL.WEIGHTS = str(models_dir / name / "model_final.pth")
            d2cfg.MODEL.DEVICE = device
            d2cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = cfg.ensemble.candidate_score
            d2cfg.TEST.DETECTIONS_PER_IMAGE = cfg.ensemble.detections_per_image
            self.predictors.append(DefaultPredictor(d2cfg))
        self.tta = cfg.ensemble.tta
        self.pp: PostprocessConfig = cfg.postprocess
        self.nms_iou = 0.5
        self.mask_rois = 0
        self.detections: list[int] = []

    def warm_up(self, path: Path) -> None:
        """One call per predictor on one image (kernel caches), not counted."""
        image = to_model_input(read_image(path))
        for predictor in self.predictors:
            predictor(image)

    def predict(self, path: Path) -> list[str]:
        import torch
        from torchvision.ops import nms

        image = to_model_input(read_image(path))
        boxes, scores, classes, masks = [], [], [], []
        for predictor in self.predictors:
            for name in self.tta:
                flip_h, flip_v = name in ("hflip", "hvflip"), name in ("vflip", "hvflip")
                view = image[:, ::-1] if flip_h else image
                view = view[::-1] if flip_v else view
                inst = predictor(np.ascontiguousarray(view))["instances"].to("cpu")
                self.detections.append(len(inst))
                self.mask_rois += len(inst)
                m = inst.pred_masks.numpy()
                b = inst.pred_boxes.tensor.numpy().copy()
                width, height = image.shape[1], image.shape[0]
                if flip_h:
                    m = m[:, :, ::-1]
                    b[:, [0, 2]] = width - b[:, [2, 0]]
                if flip_v:
                    m = m[:, ::-1, :]
                    b[:, [1, 3]] = height - b[:, [3, 1]]
                masks.append(m)
                boxes.append(b)
                scores.append(inst.scores.numpy())
                classes.append(inst.pred_classes.numpy())
        all_boxes, all_scores = np.concatenate(boxes), np.concatenate(scores)
        all_classes, all_masks = np.concatenate(classes), np.concatenate(masks)
        keep = nms(torch.from_numpy(all_boxes), torch.from_numpy(all_scores), self.nms_iou).numpy()
        # the detectron2 baseline notebook's post-processing on full-frame masks
        if len(keep) == 0:
            return []
        cell_type = int(np.bincount(all_classes[keep]).argmax())
        take = keep[all_scores[keep] >= self.pp.score_threshold[cell_type]]
        used = np.zeros(image.shape[:2], dtype=int)
        rles = []
        for mask in all_masks[take]:
            mask = mask * (1 - used)
            if mask.sum() >= self.pp.min_area[cell_type]:
                used += mask
                rles.append(reference_rle_encode(mask))  # the public notebooks' encoder
        return rles


# ------------------------------------------------------------------ T4-like


T4_THREADS = 4
"""CPU threads of a Kaggle "GPU T4 x2" session (4 vCPUs)."""
T4_MEMORY_GIB = 14.5
"""GPU memory of a 16 GB T4 left to the process (15.1 GiB usable, minus the CUDA context)."""


def t4_like_settings(device: str) -> dict[str, Any]:
    """Make this process T4-like: :data:`T4_THREADS` torch threads, TF32 off (a T4,
    capability 7.5, has none), and on CUDA every GPU's memory capped at
    :data:`T4_MEMORY_GIB` (``torch.cuda.set_per_process_memory_fraction``). Returns
    what was set.

    Raises:
        ValueError: the GPU has less memory than the cap.
    """
    import torch

    torch.set_num_threads(T4_THREADS)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    settings: dict[str, Any] = {"threads": T4_THREADS, "tf32": False, "memory_cap_gib": None}
    if device.startswith("cuda"):
        fractions = []
        for k in range(torch.cuda.device_count()):
            total = torch.cuda.get_device_properties(k).total_memory
            if total < T4_MEMORY_GIB * 2**30:
                raise ValueError(
                    f"--t4-like: GPU {k} has {total / 2**30:.1f} GiB, expected at least the {T4_MEMORY_GIB} GiB cap"
                )
            fraction = T4_MEMORY_GIB * 2**30 / total
            torch.cuda.set_per_process_memory_fraction(fraction, k)
            fractions.append(fraction)
        settings.update(memory_cap_gib=T4_MEMORY_GIB, memory_fraction=fractions)
    return settings


# ------------------------------------------------------------------ run


T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--folds", type=int, default=None, help="demo folds to make (5), or the first K of --models")
    parser.add_argument("--tta", default=None, help="views (default: the --config's, else identity,hflip)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--models", type=Path, help="model folder (default: random R50 demo folds in a temp dir)")
    parser.add_argument(
        "--config", type=Path, help="config JSON (its ensemble and post-processing; e.g. best_config.json)"
    )
    parser.add_argument(
        "--data", type=Path, help="images: an annotated pack (its train/) or a folder of <id>.png (default: see above)"
    )
    parser.add_argument("--min-size", type=int, default=800, help="MIN_SIZE_TEST of the demo folds")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-half", action="store_true")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--agreeing", action="store_true", help="demo folds that agree: K copies of one random init (default: K seeds)"
    )
    parser.add_argument(
        "--fp32",
        "--cpu-fp32",
        dest="fp32",
        action="store_true",
        help="also time the bundle in float32 (row bundle_fp32): half off on CUDA, bfloat16 off on the CPU",
    )
    parser.add_argument(
        "--t4-like",
        action="store_true",
        help=f"a T4-like run on a larger GPU: {T4_THREADS} CPU threads, TF32 off, GPU memory capped at "
        f"{T4_MEMORY_GIB} GiB (torch.cuda.set_per_process_memory_fraction)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from kernel_lib.config import load_config
    from kernel_lib.demo_models import make_demo_models
    from kernel_lib.model import EnsemblePredictor, predict, read_manifest, resolve_device
    from kernel_lib.pipeline import load_models, run_inference

    device = str(resolve_device(args.device))
    inference = InferenceConfig(device="cuda" if device.startswith("cuda") else "cpu", half=not args.no_half)
    if args.batch_size:
        inference = dataclasses.replace(inference, batch_size=args.batch_size)
    if args.workers is not None:
        inference = dataclasses.replace(inference, num_workers=args.workers)
    loaded = load_config(args.config)
    ensemble = loaded.ensemble if args.config else EnsembleConfig()
    if args.tta or not args.config:
        ensemble = dataclasses.replace(ensemble, tta=tuple((args.tta or "identity,hflip").split(",")))
    cfg = Config(postprocess=loaded.postprocess, ensemble=ensemble, inference=inference)
    t4_like = t4_like_settings(device) if args.t4_like else None
    variants = {"bundle": cfg}
    if args.fp32:
        variants["bundle_fp32"] = cfg.replace(inference=dataclasses.replace(inference, half=False, cpu_bf16=False))
    work = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    images = pick_images(args.images + 1, args.data)
    models_dir = args.models
    if models_dir is not None:
        models_dir = first_models(models_dir, args.folds, work)
    else:
        models_dir = work / "models"
        n_folds = 5 if args.folds is None else args.folds
        if args.agreeing:
            # folds that agree (as trained folds mostly do): copies of one random init
            (first,) = make_demo_models(models_dir, n_folds=1, arch="R50", seed=0, min_size_test=args.min_size)
            for fold in range(1, n_folds):
                shutil.copytree(first, models_dir / f"fold{fold}")
                meta = json.loads((first / "meta.json").read_text())
                (models_dir / f"fold{fold}" / "meta.json").write_text(json.dumps({**meta, "fold": fold}))
            (models_dir / "models.json").unlink()
        else:
            make_demo_models(models_dir, n_folds=n_folds, arch="R50", seed=0, min_size_test=args.min_size)
    names = [name for name, _ in read_manifest(models_dir)]
    warm, timed_images = images[:1], images[1:]
    test_dir = work / "test"
    test_dir.mkdir()
    for path in timed_images:
        (test_dir / path.name).symlink_to(path.resolve())
    n = len(timed_images)
    assert n == args.images, (n, args.images)
    views = len(names) * len(cfg.ensemble.tta)
    report: dict[str, Any] = {
        "machine": machine(device),
        "folds": len(names),
        "models": str(args.models) if args.models else None,
        "config": str(args.config) if args.config else None,
        "method": cfg.ensemble.method,
        "tta": list(cfg.ensemble.tta),
        "data": str(args.data) if args.data else None,
        "images": n,
        "image_ids": [p.stem for p in timed_images],
        "min_size_test": args.min_size if args.models is None else "from the model configs",
        "demo_folds": None if args.models else ("copies of one random init" if args.agreeing else "independent seeds"),
        "inference": dataclasses.asdict(inference),
        "t4_like": t4_like,
    }
    print(f"machine: {report['machine']}")
    print(f"{len(names)} folds x {len(cfg.ensemble.tta)} views, {n} images (+1 warm-up), {inference}")

    # count merged boxes per image as the bundle runs (a wrapper records the fused sizes)
    merged: list[int] = []
    original = EnsemblePredictor.predict_batch

    def counting(self: EnsemblePredictor, items: list[dict[str, Any]]) -> list[Any]:
        outs = original(self, items)
        merged.extend(len(o.fused) for o in outs if o.fused is not None)
        return outs

    EnsemblePredictor.predict_batch = counting
    for label, variant in variants.items():
        # warm-up: one model, every view, one image (kernel caches, allocator)
        models = load_models(models_dir, variant)[:1]
        list(predict(warm, models, variant.ensemble, variant.inference, progress=False))
        del models
        merged.clear()
        load_before = os.getloadavg()[0]
        csv = work / f"{label}.csv"
        result, wall, cpu = timed(lambda v=variant, c=csv: run_inference(test_dir, models_dir, c, v, progress=False))
        seconds = wall - result.timings["load_models"]
        _, _, load_cpu = timed(lambda v=variant: load_models(models_dir, v))
        assert result.n_images == n, (result.n_images, n)
        report[label] = {
            "images_per_s": n / seconds,
            "wall_s_per_image": seconds / n,
            "cpu_s_per_image": (cpu - load_cpu) / n,  # loading's CPU time, measured on its own, left out
            # merged boxes: the roi method only (the instance-level methods merge after the models)
            "merged_boxes_per_image": float(np.mean(merged)) if merged else None,
            "mask_head_rois_per_image": float(np.mean(merged)) * views if merged else None,
            "instances_written": result.n_instances,
            "timings": result.timings,
            "load_average": [load_before, os.getloadavg()[0]],
        }
        print(label, json.dumps(report[label], indent=1), flush=True)

    if not args.skip_baseline:
        baseline = Baseline(models_dir, names, cfg, device)
        baseline.warm_up(warm[0])
        load_before = os.getloadavg()[0]

        def run_baseline() -> int:
            rows: list[str] = []
            for path in timed_images:
                rles = baseline.predict(path)
                rows.extend([f"{path.stem},{r}" for r in rles] or [f"{path.stem},"])
            (work / "baseline.csv").write_text("id,predicted\n" + "\n".join(rows) + "\n")
            return len(rows)

        rows, wall, cpu = timed(run_baseline)
        report["baseline"] = {
            "images_per_s": n / wall,
            "wall_s_per_image": wall / n,
            "cpu_s_per_image": cpu / n,
            "detections_per_view": float(np.mean(baseline.detections)),
            "mask_head_rois_per_image": baseline.mask_rois / n,
            "rows_written": rows,
            "load_average": [load_before, os.getloadavg()[0]],
        }
        print("baseline", json.dumps(report["baseline"], indent=1))
        for label in variants:
            wall_x = report[label]["images_per_s"] / report["baseline"]["images_per_s"]
            cpu_x = report["baseline"]["cpu_s_per_image"] / report[label]["cpu_s_per_image"]
            report[f"speedup_{label}"] = {"wall": wall_x, "cpu_time": cpu_x}
            print(f"speed-up {label}: wall {wall_x:.2f}x, cpu time {cpu_x:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
