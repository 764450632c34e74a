"""Helpers for tests and benchmarks (as ``numpy.testing``): not part of the pipeline.

Nothing in the inference, training, tuning or scoring path imports this module (the
demonstration models' ``tiny=True`` option, itself for tests, uses
:func:`shrink_config`). What lives here:

- :func:`reference_rle_encode`: the public notebooks' run-length encoder on one
  full-frame mask, the reference the fast encoders of :mod:`kernel_lib.rle` are
  tested against and the baseline the benchmarks time;
- :func:`mask_iou_matrix`: the dense IoU matrix of two sets of masks;
- :func:`simulate_instances`, :func:`soft_from_masks`, :func:`write_synthetic_cache`:
  model-like instances made from the truth, as hard masks, as soft instances and as
  an ``evaluate`` cache, for ``tune`` and ``report`` without trained models;
- :func:`shrink_config`: a test-sized detectron2 config;
- :func:`write_livecell_standin`: a LIVECell-shaped folder (TIFF images, a COCO JSON
  with dict-keyed annotations and polygon segmentations) made from annotated images;
- :func:`load_script`: one of the project's scripts (``build_dataset.py``,
  ``scripts/*.py``) imported as a module.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from kernel_lib.config import CELL_TYPES, Config
from kernel_lib.masks import CropMasks
from kernel_lib.metric import instance_pixels, sparse_iou
from kernel_lib.soft import SoftInstances

if TYPE_CHECKING:
    from detectron2.config import CfgNode

__all__ = [
    "load_script",
    "mask_iou_matrix",
    "reference_rle_encode",
    "shrink_config",
    "simulate_instances",
    "soft_from_masks",
    "write_livecell_standin",
    "write_synthetic_cache",
]

STANDIN_LINES: dict[str, str] = {"shsy5y": "SHSY5Y", "astro": "A172", "cort": "BV2"}
"""Cell type -> the LIVECell line whose name a stand-in image gets: SH-SY5Y is in both
sets; A172 and BV2 stand for LIVECell's lines that are no Sartorius type."""


# ----------------------------------------------------------------------------- references


def reference_rle_encode(mask: np.ndarray) -> str:
    """The public notebooks' encoder on one full-frame mask: row-major flatten, pad with
    a 0 at both ends, the positions where the value changes, every second one turned
    into a run length. 1-indexed ``start length`` pairs; "" for an empty mask."""
    pixels = np.concatenate([[0], np.asarray(mask).ravel().astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[0::2]
    return " ".join(str(x) for x in runs)


def mask_iou_matrix(a: CropMasks, b: CropMasks) -> np.ndarray:
    """(len(a), len(b)) float64 mask IoUs (the metric's sparse IoU: only pairs that share
    pixels are computed; the rest are 0)."""
    if a.shape != b.shape:
        raise ValueError(f"mask_iou_matrix: expected masks of one frame, got {a.shape} and {b.shape}")
    out = np.zeros((len(a), len(b)))
    t, p, iou = sparse_iou(instance_pixels(a), instance_pixels(b), a.shape[0] * a.shape[1])
    out[t, p] = iou
    return out


def shrink_config(cfg: CfgNode) -> CfgNode:
    """Make a detectron2 Mask R-CNN config test-sized, in place: ResNet-18 (ResNeXt-50
    8x4d when the config is grouped, e.g. X101), 64 FPN channels, a 2-conv 64-channel
    mask head and a 128-wide box head. Same meta-architecture, ROI heads (standard or
    cascade) and mask resolution as the original."""
    grouped = cfg.MODEL.RESNETS.NUM_GROUPS > 1
    cfg.MODEL.RESNETS.DEPTH = 50 if grouped else 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    if grouped:
        cfg.MODEL.RESNETS.NUM_GROUPS, cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 8, 4
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 128
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    return cfg


# ----------------------------------------------------------------------------- simulation


def simulate_instances(
    truth: CropMasks, cell_type: int, seed: int = 0, duplicates: float = 0.4, false_positives: float = 0.3
) -> tuple[CropMasks, np.ndarray, np.ndarray]:
    """Model-like instances made from an image's truth.

    Every truth is detected with probability 0.9 as a copy shifted by up to 2 px and
    grown or shrunk by 1 px (score ~ Beta(5, 2)); about ``duplicates`` per truth extra
    copies shifted by up to 4 px (score ~ Beta(2, 4)); about ``false_positives`` per
    truth stray blobs cut from other truths at random places (score ~ Beta(1, 4)).
    Classes are ``cell_type`` with probability 0.9, else another type.

    Returns:
        ``(masks, scores (N,) float32, classes (N,) int64)``, in no particular order.
    """
    import cv2

    rng = np.random.default_rng(seed)
    height, width = truth.shape
    kernel = np.ones((3, 3), np.uint8)
    crops: list[np.ndarray] = []
    origins: list[tuple[int, int]] = []
    scores: list[float] = []
    n = len(truth)

    def add(crop: np.ndarray, y0: int, x0: int, score: float) -> None:
        pad = 2
        grown = np.pad(crop, pad).astype(np.uint8)
        change = rng.integers(-1, 2)
        if change > 0:
            grown = cv2.dilate(grown, kernel)
        elif change < 0:
            grown = cv2.erode(grown, kernel)
        y0, x0 = y0 - pad, x0 - pad
        ys, xs = max(0, -y0), max(0, -x0)
        ye, xe = min(grown.shape[0], height - y0), min(grown.shape[1], width - x0)
        if ye <= ys or xe <= xs:
            return
        piece = grown[ys:ye, xs:xe].astype(bool)
        if not piece.any():
            return
        crops.append(piece)
        origins.append((y0 + ys, x0 + xs))
        scores.append(score)

    for i in range(n):
        crop, (y0, x0) = truth.crops[i], truth.origins[i]
        if crop.size == 0:
            continue
        if rng.random() < 0.9:
            dy, dx = rng.integers(-2, 3, 2)
            add(crop, y0 + dy, x0 + dx, rng.beta(5, 2))
        if rng.random() < duplicates:
            dy, dx = rng.integers(-4, 5, 2)
            add(crop, y0 + dy, x0 + dx, rng.beta(2, 4))
        if rng.random() < false_positives:
            y, x = rng.integers(0, height - crop.shape[0] + 1), rng.integers(0, width - crop.shape[1] + 1)
            add(crop, int(y), int(x), rng.beta(1, 4))
    k = len(crops)
    classes = np.full(k, cell_type, np.int64)
    other = rng.random(k) < 0.1
    classes[other] = (cell_type + rng.integers(1, len(CELL_TYPES), other.sum())) % len(CELL_TYPES)
    masks = CropMasks(tuple(crops), np.array(origins, np.int64).reshape(-1, 2), truth.shape)
    return masks, np.array(scores, np.float32), classes


def soft_from_masks(masks: CropMasks, scores: np.ndarray, classes: np.ndarray, mask_size: int = 28) -> SoftInstances:
    """Hard masks as :class:`~kernel_lib.soft.SoftInstances` (box = the crop's extent,
    soft mask = the crop area-resized to ``mask_size`` squared); pasting at 0.5 gives the
    masks back up to resampling at their edges."""
    import cv2

    n = len(masks)
    boxes = np.zeros((n, 4), np.float32)
    soft = np.zeros((n, mask_size, mask_size), np.float32)
    for i, (crop, (y0, x0)) in enumerate(zip(masks.crops, masks.origins)):
        h, w = crop.shape
        boxes[i] = (x0, y0, x0 + w, y0 + h)
        if h and w:
            soft[i] = cv2.resize(crop.astype(np.float32), (mask_size, mask_size), interpolation=cv2.INTER_LINEAR)
    return SoftInstances(boxes, scores, classes, soft, masks.shape)


def write_synthetic_cache(
    truth_csv: str | Path,
    cache_dir: str | Path,
    ids: Sequence[str] | None = None,
    seed: int = 0,
    config: Config | None = None,
) -> list[str]:
    """Fill a cache folder as ``evaluate`` would, with instances SIMULATED from the truth
    (:func:`simulate_instances` -> :func:`soft_from_masks`), to test and benchmark
    ``tune`` and ``report`` without models. The manifest names the model "synthetic".

    Args:
        truth_csv: train.csv.
        cache_dir: folder to fill.
        ids: images to simulate (None: all of the file).
        seed: simulation seed (image k uses seed + k).
        config: recorded as the config used (None: defaults).

    Returns:
        the cached ids.
    """
    from kernel_lib.evaluate import CacheEntry, save_instances, write_cache_manifest
    from kernel_lib.truth import read_truth

    truth = read_truth(truth_csv, ids=ids)
    cache_dir = Path(cache_dir)
    entries = []
    for k, (image_id, t) in enumerate(truth.items()):
        masks, scores, classes = simulate_instances(t.masks, CELL_TYPES.index(t.cell_type), seed + k)
        path = cache_dir / f"{image_id}.npz"
        save_instances(path, soft_from_masks(masks, scores, classes), key="synthetic")
        entries.append(CacheEntry(image_id, path, "synthetic", ("synthetic",), None))
    write_cache_manifest(cache_dir, entries, config or Config())
    return [e.id for e in entries]


def load_script(path: str | Path, name: str) -> ModuleType:
    """Import the Python file ``path`` (a script, not a package module) as module ``name``.

    The module is registered in ``sys.modules`` under ``name`` before it runs, as
    dataclasses defined in it need; give each caller that wants its own copy its own name.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"load_script: {path} is not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_livecell_standin(
    data_dir: str | Path, out_dir: str | Path, ids: Sequence[str] | None = None, *, polygons: bool = True
) -> tuple[Path, Path]:
    """Write a LIVECell-shaped copy of annotated images, for testing the COCO path:
    ``OUT/images/livecell_train_val_images/<LINE>_Phase_<id>_1.tif`` (LINE from
    :data:`STANDIN_LINES`) and ``OUT/annotations/LIVECell/livecell_coco_train.json`` with
    LIVECell's layout: ``annotations`` a dict keyed by id, one category "cell", and each
    instance as polygons (its outer contours, OpenCV) or, with ``polygons=False``, as an
    uncompressed column-major RLE (exact).

    Args:
        data_dir: a competition folder (train.csv, train/<id>.png).
        out_dir: the folder to write (made).
        ids: images to copy (None: all of train.csv).

    Returns:
        (the JSON file, the images folder) as ``train --coco ... --coco-images ...`` take them.
    """
    import json

    import cv2

    from kernel_lib.images import read_image
    from kernel_lib.training.datasets import load_dataset_dicts, record_masks

    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    (images_dir / "livecell_train_val_images").mkdir(parents=True, exist_ok=True)
    data = load_dataset_dicts(data_dir, ids)
    images, annotations = [], {}
    for k, record in enumerate(data.dicts, start=1):
        name = f"{STANDIN_LINES[record['cell_type']]}_Phase_{record['image_id']}_1.tif"
        cv2.imwrite(str(images_dir / "livecell_train_val_images" / name), read_image(record["file_name"]))
        height, width = int(record["height"]), int(record["width"])
        images.append({"id": k, "file_name": name, "width": width, "height": height})
        masks = record_masks(record).to_stack()
        for mask in masks:
            segmentation = _polygons(mask) if polygons else _column_major_rle(mask)
            if not segmentation:
                continue
            ann_id = len(annotations) + 1
            ys, xs = np.nonzero(mask)
            bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
            annotations[str(ann_id)] = {
                "id": ann_id,
                "image_id": k,
                "category_id": 1,
                "segmentation": segmentation,
                "area": float(mask.sum()),
                "bbox": bbox,
                "iscrowd": 0,
            }
    coco = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}
    json_path = out_dir / "annotations" / "LIVECell" / "livecell_coco_train.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(coco))
    return json_path, images_dir


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """The outer contours of a (H, W) bool mask as COCO polygons (pixel centres + 0.5,
    as COCO's rasteriser expects), those of at least 3 points."""
    import cv2

    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return [(c.reshape(-1, 2).astype(np.float64) + 0.5).ravel().tolist() for c in contours if len(c) >= 3]


def _column_major_rle(mask: np.ndarray) -> dict[str, object]:
    """COCO's uncompressed RLE of a (H, W) bool mask: column-major run lengths, the first
    one of 0s (0 when the first pixel is set)."""
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}
