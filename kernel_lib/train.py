"""Train one fold model (detectron2 Mask R-CNN) into the folder layout ``predict`` reads.

``train_fold(TrainOptions(...))`` trains on the images of a folds file whose fold is not
K and leaves ``OUT/<name>/`` (``name`` defaults to ``fold<K>``)::

    config.yaml            the detectron2 config the weights belong to (inference reads it)
    model_final.pth        {"model": state_dict} (weights only)
    meta.json              {"fold": K, "heldout_score": ..., "heldout_per_cell_type": {...}, ...}
    metrics.json           detectron2's loss log, one JSON line per logged iteration
    log.txt                the training log
    heldout_scores.csv     id, cell_type, score of every held-out image
    annotation_problems.csv  rows left out of training (see kernel_lib.data)

Recipe (the seeds'): Mask R-CNN R50-FPN from :func:`kernel_lib.d2config.sartorius_config`
(3 classes, 1,000 detections, small anchors, bitmask masks) or any detectron2 config;
augmentation = multi-scale ``ResizeShortestEdge``, optional random crop, horizontal and
vertical flips, exact 90-degree rotations, brightness and contrast; mixed precision on
CUDA; several GPUs through ``detectron2.engine.launch`` (one process per GPU, DDP).
Weights start from a local file only; with none the model trains from scratch (then
the backbone's frozen batch-norm layers, which would stay at their random start,
become GroupNorm and no stage is frozen). A fold folder as initial weights continues
that fold (same split, architecture and normalisation; meta.json records the chain).
At the end the fold's held-out images are predicted by the bundle's own pipeline
(:mod:`kernel_lib.pipeline`) and scored with the competition metric (:mod:`kernel_lib.metric`).

Images are read by :func:`kernel_lib.images.read_image` / ``normalize_image`` /
``to_model_input``, exactly as inference reads them; a fold trained with
``normalization="per_image"`` records it in its meta.json, and inference applies it from
there. Imports torch and detectron2.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import build_detection_train_loader
from detectron2.data import detection_utils as d2utils
from detectron2.data import transforms as T
from detectron2.engine import DefaultTrainer, hooks, launch
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from detectron2.utils.logger import setup_logger

from kernel_lib.config import CELL_TYPES, Config
from kernel_lib.d2config import sartorius_config, zoo_config_file
from kernel_lib.data import TrainingData, load_dataset_dicts, record_masks
from kernel_lib.folds import read_folds
from kernel_lib.images import normalize_image, read_image, to_model_input
from kernel_lib.masks import CropMasks
from kernel_lib.model_folder import CONFIG_FILE, NORMALIZATION_KEY, WEIGHTS_FILE, write_meta
from kernel_lib.outputs import atomic_output
from kernel_lib.train_options import AugmentSettings, TrainOptions

logger = logging.getLogger("kernel_lib.train")

WRITER_PERIOD = 20
"""Iterations between two lines of the loss log (fewer when training is shorter)."""


@dataclass(frozen=True)
class FoldSplit:
    """The images of one fold: training ids and held-out ids (both sorted)."""

    fold: int
    train_ids: tuple[str, ...]
    heldout_ids: tuple[str, ...]


def fold_split(folds_csv: str | Path, fold: int) -> FoldSplit:
    """Training and held-out ids of fold ``fold`` of a folds file.

    Raises:
        ValueError: the folds file is bad (see :func:`kernel_lib.folds.read_folds`), or
            ``fold`` is not one of its folds, or it leaves no training image.
    """
    folds = read_folds(folds_csv)
    present = sorted(set(folds["fold"].tolist()))
    if fold not in present:
        raise ValueError(f"fold {fold} is not in {folds_csv}; its folds are {present}")
    heldout = folds["fold"] == fold
    train_ids = tuple(sorted(folds.loc[~heldout, "id"]))
    if not train_ids:
        raise ValueError(f"{folds_csv}: fold {fold} holds every image; nothing left to train on")
    return FoldSplit(fold, train_ids, tuple(sorted(folds.loc[heldout, "id"])))


# ---------------------------------------------------------------------------- augmentation


class Rot90Transform(T.Transform):
    """Rotate by ``k`` x 90 degrees counter-clockwise (``np.rot90``), exactly.

    Coordinates are detectron2's continuous ones (pixel (r, c) spans x in [c, c+1],
    y in [r, r+1]); one quarter turn of a (h, w) image maps (x, y) -> (y, w - x).
    """

    def __init__(self, h: int, w: int, k: int) -> None:
        super().__init__()
        self._set_attributes({"h": h, "w": w, "k": k % 4})

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64).copy()
        h, w = float(self.h), float(self.w)
        for _ in range(self.k):
            x = coords[:, 0].copy()
            coords[:, 0] = coords[:, 1]
            coords[:, 1] = w - x
            h, w = w, h
        return coords

    def inverse(self) -> T.Transform:
        h, w = (self.w, self.h) if self.k % 2 else (self.h, self.w)
        return Rot90Transform(h, w, (4 - self.k) % 4)


class RandomRot90(T.Augmentation):
    """Rotate by 0, 90, 180 or 270 degrees, uniformly at random."""

    def get_transform(self, image: np.ndarray) -> T.Transform:
        k = int(np.random.randint(4))
        if k == 0:
            return T.NoOpTransform()
        return Rot90Transform(image.shape[0], image.shape[1], k)


def photometric_augmentations(augment: AugmentSettings) -> list[T.Augmentation]:
    """detectron2's RandomBrightness then RandomContrast, for the ranges that are not (1, 1)."""
    augs: list[T.Augmentation] = []
    if augment.brightness != (1.0, 1.0):
        augs.append(T.RandomBrightness(*augment.brightness))
    if augment.contrast != (1.0, 1.0):
        augs.append(T.RandomContrast(*augment.contrast))
    return augs


def build_augmentations(cfg: CfgNode, augment: AugmentSettings) -> list[T.Augmentation]:
    """The training augmentation list: multi-scale resize from ``cfg.INPUT`` then ``augment``."""
    augs: list[T.Augmentation] = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if augment.crop:
        augs.append(T.RandomCrop("absolute", (augment.crop, augment.crop)))
    if augment.hflip:
        augs.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
    if augment.vflip:
        augs.append(T.RandomFlip(prob=0.5, horizontal=False, vertical=True))
    if augment.rot90:
        augs.append(RandomRot90())
    return augs + photometric_augmentations(augment)


class SartoriusMapper:
    """Dataset dict -> model input: image read like inference, augmented, bitmask instances.

    Boxes are recomputed from the transformed masks (tight boxes, as detectron2's own
    mapper does when it crops), and instances left empty by a crop are dropped.
    """

    def __init__(
        self, augmentations: list[T.Augmentation], image_format: str = "BGR", normalization: str = "none"
    ) -> None:
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT: expected BGR or RGB (grey images), got {image_format!r}")
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.normalization = normalization

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        record = copy.deepcopy(record)
        grey = normalize_image(read_image(record["file_name"]), self.normalization)
        image = to_model_input(grey)  # grey repeated: BGR == RGB
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        size = image.shape[:2]
        annotations = [d2utils.transform_instance_annotations(a, transforms, size) for a in record.pop("annotations")]
        instances = d2utils.annotations_to_instances(annotations, size, mask_format="bitmask")
        # boxes from the transformed masks: a cropped cell's box is the box of what is left of it
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        record["instances"] = d2utils.filter_empty_instances(instances)
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return record


class CropFirstMapper:
    """Dataset dict -> model input for random-crop training, touching only the crop's pixels.

    Same augmentation as :class:`SartoriusMapper` with ``crop`` > 0 (resize to a random
    short edge of ``min_sizes``, at most ``max_size`` long; a random ``crop`` x ``crop``
    window; flips, 90-degree turns, brightness, contrast), computed in the other order:
    the window is mapped back onto the original image and only that region of the image
    and of the instances that reach it is resampled (bilinear for the image, nearest for
    the masks). Each image's masks are decoded once per worker and kept as
    :class:`~kernel_lib.masks.CropMasks`, so an iteration never builds a full-frame mask.
    The region's integer bounds make the scale exact to within one original pixel per
    window side.
    """

    def __init__(
        self, min_sizes: tuple[int, ...], max_size: int, augment: AugmentSettings, normalization: str = "none"
    ) -> None:
        if augment.crop <= 0:
            raise ValueError(f"CropFirstMapper: expected a crop side > 0, got {augment.crop}")
        if not min_sizes:
            raise ValueError("CropFirstMapper: expected at least one short-edge size")
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.augment = augment
        self.normalization = normalization
        self._photometric = T.AugmentationList(photometric_augmentations(augment))
        self._cache: dict[str, tuple[np.ndarray, CropMasks, np.ndarray]] = {}

    def _load(self, record: dict[str, Any]) -> tuple[np.ndarray, CropMasks, np.ndarray]:
        key = str(record["file_name"])
        if key not in self._cache:
            classes = np.array([a["category_id"] for a in record["annotations"]], np.int64)
            grey = normalize_image(read_image(key), self.normalization)  # the whole image's mean and spread
            self._cache[key] = (grey, record_masks(record), classes)
        return self._cache[key]

    def _window(self, height: int, width: int) -> tuple[int, int, int, int, int]:
        """Random (y0, y1, x0, x1) of the original image and the output side."""
        size = self.min_sizes[np.random.randint(len(self.min_sizes))]
        scale = size / min(height, width)
        if self.max_size and max(height, width) * scale > self.max_size:
            scale = self.max_size / max(height, width)
        new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
        side = min(self.augment.crop, new_h, new_w)
        top = np.random.randint(new_h - side + 1) / scale
        left = np.random.randint(new_w - side + 1) / scale
        y0, x0 = int(np.floor(top)), int(np.floor(left))
        y1 = min(height, max(y0 + 1, int(np.ceil(top + side / scale))))
        x1 = min(width, max(x0 + 1, int(np.ceil(left + side / scale))))
        return y0, y1, x0, x1, side

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        from detectron2.structures import BitMasks, Boxes, Instances
        from PIL import Image

        grey, masks, classes = self._load(record)
        y0, y1, x0, x1, side = self._window(*grey.shape)
        image = np.asarray(Image.fromarray(grey[y0:y1, x0:x1]).resize((side, side), Image.BILINEAR))
        stack, keep = _window_masks(masks, y0, y1, x0, x1, side)
        image, stack = self._flip_and_turn(image, stack)
        photometric = T.AugInput(np.ascontiguousarray(image))
        self._photometric(photometric)
        image = photometric.image
        areas = stack.any(axis=(1, 2))
        stack, keep = stack[areas], keep[areas]
        instances = Instances((side, side))
        instances.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(stack)))
        instances.gt_boxes = Boxes(instances.gt_masks.get_bounding_boxes().tensor)
        instances.gt_classes = torch.from_numpy(classes[keep])
        out = {k: v for k, v in record.items() if k != "annotations"}
        out["instances"] = instances
        out["image"] = torch.from_numpy(np.ascontiguousarray(to_model_input(image).transpose(2, 0, 1)))
        out["height"], out["width"] = side, side
        return out

    def _flip_and_turn(self, image: np.ndarray, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.augment.hflip and np.random.rand() < 0.5:
            image, stack = image[:, ::-1], stack[:, :, ::-1]
        if self.augment.vflip and np.random.rand() < 0.5:
            image, stack = image[::-1], stack[:, ::-1]
        if self.augment.rot90:
            k = int(np.random.randint(4))
            image, stack = np.rot90(image, k, axes=(0, 1)), np.rot90(stack, k, axes=(1, 2))
        return image, stack


def _window_masks(masks: CropMasks, y0: int, y1: int, x0: int, x1: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The instances reaching the window [y0, y1) x [x0, x1), resized (nearest) to side x side.

    Returns:
        (K, side, side) bool stack and the (K,) int64 indices of those instances.
    """
    heights = np.array([c.shape[0] for c in masks.crops], np.int64).reshape(-1)
    widths = np.array([c.shape[1] for c in masks.crops], np.int64).reshape(-1)
    oy, ox = masks.origins[:, 0], masks.origins[:, 1]
    keep = np.flatnonzero((oy < y1) & (oy + heights > y0) & (ox < x1) & (ox + widths > x0))
    rows = y0 + ((np.arange(side) + 0.5) * (y1 - y0) / side).astype(np.int64)
    cols = x0 + ((np.arange(side) + 0.5) * (x1 - x0) / side).astype(np.int64)
    stack = np.zeros((len(keep), side, side), bool)
    for j, i in enumerate(keep):
        crop, (cy, cx) = masks.crops[i], masks.origins[i]
        r = rows - cy
        c = cols - cx
        r_in = np.flatnonzero((r >= 0) & (r < crop.shape[0]))
        c_in = np.flatnonzero((c >= 0) & (c < crop.shape[1]))
        if r_in.size and c_in.size:
            stack[j, r_in[0] : r_in[-1] + 1, c_in[0] : c_in[-1] + 1] = crop[np.ix_(r[r_in], c[c_in])]
    return stack, keep


def build_mapper(
    cfg: CfgNode, augment: AugmentSettings, normalization: str = "none"
) -> CropFirstMapper | SartoriusMapper:
    """:class:`CropFirstMapper` for crop training with a choice of short edges, else
    :class:`SartoriusMapper` (whole images, or a short edge drawn from a range)."""
    if augment.crop and cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and cfg.INPUT.FORMAT in ("BGR", "RGB"):
        return CropFirstMapper(tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN, augment, normalization)
    return SartoriusMapper(build_augmentations(cfg, augment), cfg.INPUT.FORMAT, normalization)


# -------------------------------------------------------------------------- fast RoIAlign


class _SparseGather(torch.autograd.Function):
    """``out = S @ x`` with a fixed sparse ``S``; the gradient is ``S^T @ grad``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
        ctx.s_t = s_t
        with torch.autocast("cpu", enabled=False):  # no bfloat16 sparse kernel
            return torch.sparse.mm(s, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        with torch.autocast("cpu", enabled=False):
            return torch.sparse.mm(ctx.s_t, grad.float().contiguous()), None, None


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols[order], values[order], shape)


def _bilinear_corners(v: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """torchvision's ``bilinear_interpolate`` along one axis: low/high index, their weights."""
    inside = ((v >= -1.0) & (v <= size)).float()
    v = v.clamp(min=0)
    low = v.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(v), v - low.float())
    return low, high, (1 - frac) * inside, frac * inside


def sparse_roi_align(
    features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int
) -> torch.Tensor:
    """``torchvision.ops.roi_align(..., aligned=True)`` with a fixed ``sampling_ratio`` > 0,
    as one sparse matrix product.

    Every output bin is a fixed weighted sum of at most 4 x ratio^2 feature pixels, so
    the whole op is ``S @ features`` (S: bins x pixels, sparse); the backward pass is
    ``S^T @ grad``, a multi-threaded sparse product where torchvision's CPU kernel
    scatters one value at a time (3.3x faster forward + backward on 512 RoIs here).

    Args:
        features: (N, C, H, W) float feature map.
        rois: (R, 5) float boxes (batch index, x0, y0, x1, y1) in image coordinates.
        output_size: (ph, pw) bins.
        spatial_scale: feature pixels per image pixel.
        sampling_ratio: samples per bin side (> 0).

    Returns:
        (R, C, ph, pw) in ``features``' dtype.
    """
    ph, pw = output_size
    ratio = int(sampling_ratio)
    n, c, h, w = features.shape
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros((0, c, ph, pw))
    rois = rois.detach().float()
    x0, y0 = rois[:, 1] * spatial_scale - 0.5, rois[:, 2] * spatial_scale - 0.5
    bin_w = (rois[:, 3] * spatial_scale - 0.5 - x0) / pw
    bin_h = (rois[:, 4] * spatial_scale - 0.5 - y0) / ph
    steps_y = (torch.arange(ph * ratio, dtype=torch.float32) + 0.5) / ratio
    steps_x = (torch.arange(pw * ratio, dtype=torch.float32) + 0.5) / ratio
    ys = _bilinear_corners(y0[:, None] + steps_y[None] * bin_h[:, None], h)  # each (R, ph*ratio)
    xs = _bilinear_corners(x0[:, None] + steps_x[None] * bin_w[:, None], w)
    bins_y = (torch.arange(ph * ratio) // ratio)[None, :, None]
    bins_x = (torch.arange(pw * ratio) // ratio)[None, None, :]
    out_rows = (torch.arange(r)[:, None, None] * (ph * pw) + bins_y * pw + bins_x).expand(r, ph * ratio, pw * ratio)
    base = (rois[:, 0].long() * (h * w))[:, None, None]
    cols, values = [], []
    for y_index, y_weight in ((ys[0], ys[2]), (ys[1], ys[3])):
        for x_index, x_weight in ((xs[0], xs[2]), (xs[1], xs[3])):
            cols.append(base + y_index[:, :, None] * w + x_index[:, None, :])
            values.append(y_weight[:, :, None] * x_weight[:, None, :] / (ratio * ratio))
    rows = out_rows.unsqueeze(0).expand(4, *out_rows.shape).reshape(-1)
    col = torch.stack(cols).reshape(-1)
    val = torch.stack(values).reshape(-1)
    s = _csr(rows, col, val, (r * ph * pw, n * h * w))
    s_t = _csr(col, rows, val, (n * h * w, r * ph * pw))
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c).float()
    out = _SparseGather.apply(flat, s, s_t)
    return out.reshape(r, ph, pw, c).permute(0, 3, 1, 2).to(features.dtype)


class SparseROIAlign(torch.nn.Module):
    """Drop-in for one level of detectron2's ``ROIAlign`` (aligned, fixed sampling ratio)."""

    def __init__(self, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int) -> None:
        super().__init__()
        self.output_size = tuple(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return sparse_roi_align(features, rois, self.output_size, self.spatial_scale, self.sampling_ratio)


def use_sparse_roi_align(model: torch.nn.Module) -> int:
    """Swap every aligned, fixed-ratio RoIAlign level of ``model``'s poolers for
    :class:`SparseROIAlign` (same outputs, faster backward on the CPU).

    Returns:
        The number of levels swapped (0 when the model's poolers do not qualify).
    """
    swapped = 0
    for module in _unwrap(model).modules():
        levels = getattr(module, "level_poolers", None)
        if not isinstance(levels, torch.nn.ModuleList):
            continue
        for i, level in enumerate(levels):
            ratio = getattr(level, "sampling_ratio", 0)
            if type(level).__name__ == "ROIAlign" and getattr(level, "aligned", False) and ratio > 0:
                size = level.output_size if isinstance(level.output_size, tuple) else (level.output_size,) * 2
                levels[i] = SparseROIAlign(size, level.spatial_scale, ratio)
                swapped += 1
    return swapped


# -------------------------------------------------------------------------------- config


def build_config(opts: TrainOptions, device: str) -> CfgNode:
    """The detectron2 config of a fold run (also what config.yaml records).

    The base is :func:`~kernel_lib.d2config.sartorius_config` (``opts.arch``), or
    ``opts.base_config`` as it is apart from 3 classes and bitmask masks; then the
    options (weights, sizes, solver) and last ``opts.overrides``.

    Raises:
        ValueError: unknown config file, non-local initial weights, bad overrides.
    """
    if opts.base_config:
        cfg = get_cfg()
        path = Path(opts.base_config)
        if not path.is_file():
            try:
                path = zoo_config_file(opts.base_config)
            except ValueError:
                raise ValueError(
                    f"--config {opts.base_config}: no such file and not a detectron2 model-zoo config name"
                ) from None
        try:
            cfg.merge_from_file(str(path))
        except Exception as err:  # yacs and yaml raise many kinds; all mean a config this detectron2 cannot read
            raise ValueError(f"--config {path}: not a detectron2 config this version reads ({err})") from None
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(CELL_TYPES)
        cfg.MODEL.RETINANET.NUM_CLASSES = len(CELL_TYPES)
        cfg.INPUT.MASK_FORMAT = "bitmask"
    else:
        cfg = sartorius_config(opts.arch)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = str(_initial_weights(opts) or "")
    source = opts.continued_fold
    if not opts.init_weights or (source is not None and source.meta.get("from_scratch")):
        # from scratch, or continuing a fold that was: the same normalisation layers
        if cfg.MODEL.RESNETS.NORM == "FrozenBN":
            cfg.MODEL.RESNETS.NORM = "GN"
            cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
            cfg.MODEL.FPN.NORM = "GN"
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if opts.min_sizes:
        cfg.INPUT.MIN_SIZE_TRAIN = tuple(opts.min_sizes)
        cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    if opts.max_size:
        cfg.INPUT.MAX_SIZE_TRAIN = opts.max_size
        cfg.INPUT.MAX_SIZE_TEST = opts.max_size
    if opts.test_size:
        cfg.INPUT.MIN_SIZE_TEST = opts.test_size
    cfg.SOLVER.IMS_PER_BATCH = opts.batch
    cfg.SOLVER.BASE_LR = opts.lr or 0.02 * opts.batch / 16
    cfg.SOLVER.MAX_ITER = opts.iters
    # learning rate x0.1 at 70% and 90% of the run, warm-up over its first 10% (at most the base config's)
    steps = {int(opts.iters * 0.7), int(opts.iters * 0.9)}
    cfg.SOLVER.STEPS = tuple(sorted(step for step in steps if 0 < step < opts.iters))
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, opts.iters // 10)
    cfg.SOLVER.CHECKPOINT_PERIOD = opts.checkpoint_period or opts.iters
    cfg.SOLVER.AMP.ENABLED = bool(opts.amp and device == "cuda")
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    cfg.DATALOADER.NUM_WORKERS = opts.workers
    cfg.DATASETS.TRAIN = ()  # the trainer takes the dataset dicts directly (meta.json names the images)
    cfg.DATASETS.TEST = ()
    cfg.TEST.EVAL_PERIOD = opts.eval_period
    cfg.OUTPUT_DIR = str(opts.fold_dir)
    cfg.SEED = opts.seed
    if opts.overrides:
        try:
            cfg.merge_from_list(list(opts.overrides))
        except (KeyError, ValueError, AssertionError) as err:
            raise ValueError(f"--set {' '.join(opts.overrides)}: {err}") from None
    return cfg


def _initial_weights(opts: TrainOptions) -> Path | None:
    """The weights file a run starts from (None: from scratch): ``init_weights``, or the
    model_final.pth of the fold folder it names.

    Raises:
        ValueError: not a local file, or a folder that is not a fold folder.
    """
    if not opts.init_weights:
        return None
    if "://" not in opts.init_weights:
        source = opts.continued_fold
        weights = source.weights if source else Path(opts.init_weights)
        if weights.is_file():
            return weights.resolve()
    raise ValueError(
        f"--init-weights {opts.init_weights}: expected a local .pth/.pkl file or a fold folder "
        "(no download at run time); omit it to train from scratch"
    )


def check_continuation(opts: TrainOptions, split: FoldSplit) -> None:
    """A run that continues a fold folder (``--init-weights FOLDER``) must keep what that
    fold's weights and scores depend on: the architecture, the input normalisation and
    the held-out images (else it would train on images it is then scored on).

    Raises:
        ValueError: naming the fold folder, what it was trained with and the option to pass.
    """
    source = opts.continued_fold
    if source is None:
        return
    meta, where = source.meta, f"--init-weights {source.folder}"
    arch = meta.get("arch")
    if not opts.base_config and arch and arch != opts.arch:
        raise ValueError(f"{where}: that fold is --arch {arch}, this run --arch {opts.arch}; pass --arch {arch}")
    trained = meta.get(NORMALIZATION_KEY, "none")
    if trained != opts.normalization:
        raise ValueError(
            f"{where}: that fold was trained with --normalization {trained}, this run has "
            f"{opts.normalization}; pass --normalization {trained}"
        )
    heldout = meta.get("heldout_ids")
    if isinstance(heldout, list) and sorted(heldout) != sorted(split.heldout_ids):
        raise ValueError(
            f"{where}: that fold held out other images than fold {opts.fold} of {opts.folds_csv}, so this run "
            "would train on images that fold is scored on; pass the folds file and --fold it was trained with"
        )


# ------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class HeldoutScore:
    """Competition-metric score of models on annotated images.

    Attributes:
        score: mean image score.
        per_cell_type: cell type -> mean image score (types present only).
        per_image: DataFrame[id, cell_type, score, n_truth, n_pred].
        n_images: images scored.
        seconds: wall time of prediction and scoring.
    """

    score: float
    per_cell_type: dict[str, float]
    per_image: pd.DataFrame
    n_images: int
    seconds: float


def score_models(models_dir: str | Path, data: TrainingData, config: Config | None = None) -> HeldoutScore:
    """Predict ``data``'s images with every model of ``models_dir`` through the bundle's
    pipeline (ensemble, TTA, post-processing of ``config``) and score them.

    Args:
        models_dir: a models folder (``<name>/config.yaml`` + ``model_final.pth``).
        data: annotated images (:func:`kernel_lib.data.load_dataset_dicts`); rows
            left out as problems are not part of the truth.
        config: pipeline config; defaults to :class:`kernel_lib.config.Config`.
    """
    from kernel_lib.metric import image_score, report_from_scores
    from kernel_lib.pipeline import finalize, load_models, predict_instances

    config = config or Config()
    start = time.perf_counter()
    models = load_models(models_dir, config)
    records = {str(record["image_id"]): record for record in data.dicts}
    paths = [Path(record["file_name"]) for record in data.dicts]
    scores = {}
    lowest = min(config.postprocess.score_threshold)  # below it post-processing drops boxes anyway
    for image_id, grey, instances in predict_instances(paths, models, config, mask_min_score=lowest):
        kept = finalize(instances, grey.shape, config.postprocess)
        # the truth is the rows the data kept (duplicates and broken rows left out, as for training)
        scores[image_id] = image_score(record_masks(records[image_id]), kept.masks)
    report = report_from_scores(scores, {i: str(records[i]["cell_type"]) for i in scores})
    per_image = report.per_image[["id", "cell_type", "score", "n_truth", "n_pred"]].reset_index(drop=True)
    per_type = {str(k): float(v) for k, v in report.per_cell_type.items()}
    return HeldoutScore(float(report.score), per_type, per_image, len(per_image), time.perf_counter() - start)


def _score_weights(
    cfg: CfgNode, model: torch.nn.Module, data: TrainingData, config: Config, name: str, normalization: str = "none"
) -> HeldoutScore:
    """Score in-memory weights: written to a temporary model folder (with the run's input
    normalisation in its meta.json), read back by the pipeline."""
    with tempfile.TemporaryDirectory(prefix="kernel_lib_eval_") as tmp:
        folder = Path(tmp) / name
        write_model_folder(folder, cfg, model, meta={NORMALIZATION_KEY: normalization})
        return score_models(tmp, data, config)


# ------------------------------------------------------------------------------ training


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def inference_config(cfg: CfgNode) -> CfgNode:
    """The config.yaml written beside the weights: the training config, weights path
    cleared (the weights are the folder's model_final.pth), device cpu (the reader
    chooses)."""
    out = cfg.clone()
    out.defrost()
    out.MODEL.WEIGHTS = ""
    out.MODEL.DEVICE = "cpu"
    return out


def write_model_folder(
    folder: Path, cfg: CfgNode, model: torch.nn.Module, meta: dict[str, Any] | None, half: bool = True
) -> None:
    """Write ``config.yaml`` + ``model_final.pth`` (+ ``meta.json``) into ``folder``.

    ``half`` stores floating-point weights as float16 (half the file; loading copies
    them into the float32 model, see :func:`kernel_lib.model.load_fold_model`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_output(folder / WEIGHTS_FILE) as tmp:
        torch.save({"model": state}, tmp)
    (folder / CONFIG_FILE).write_text(inference_config(cfg).dump())
    if meta is not None:
        write_meta(folder, meta)


class _FoldTrainer(DefaultTrainer):
    """DefaultTrainer on an in-memory dataset with the Sartorius mapper, a JSON loss log
    (no TensorBoard) and held-out scoring as its evaluation."""

    def __init__(
        self, cfg: CfgNode, dataset: list[dict[str, Any]], mapper: Any, evaluate: Any, bf16: bool = False
    ) -> None:
        self._dataset = dataset
        self._mapper = mapper
        self._evaluate = evaluate
        self._bf16 = bf16
        super().__init__(cfg)
        if cfg.MODEL.DEVICE == "cpu":
            logger.info("RoIAlign: %d pooler levels on the sparse CPU kernel", use_sparse_roi_align(self.model))

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16):
            self._trainer.run_step()

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_model(cfg)  # DefaultTrainer's also prints the whole module tree
        n = sum(p.numel() for p in model.parameters())
        logger.info("model %s: %.1f M parameters on %s", cfg.MODEL.META_ARCHITECTURE, n / 1e6, cfg.MODEL.DEVICE)
        return model

    def build_train_loader(self, cfg: CfgNode) -> Any:  # type: ignore[override]
        return build_detection_train_loader(
            self._dataset,
            mapper=self._mapper,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    def build_writers(self) -> list[Any]:
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]

    def build_hooks(self) -> list[Any]:
        out = []
        for hook in super().build_hooks():
            if isinstance(hook, hooks.EvalHook):
                # periodic held-out scoring; the final one is done after training, from the written folder
                hook = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate, eval_after_train=False)
            elif isinstance(hook, hooks.PeriodicWriter):
                hook = hooks.PeriodicWriter(self.build_writers(), period=min(WRITER_PERIOD, self.max_iter))
            out.append(hook)
        return out


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_fold` leaves: the fold folder and its meta.json content."""

    fold_dir: Path
    meta: dict[str, Any]


def _eval_config(opts: TrainOptions, device: str) -> Config:
    from kernel_lib.config import load_config

    config = load_config(opts.eval_config or None)
    return config.replace(inference=dataclasses.replace(config.inference, device=device))


LOGGERS = ("detectron2", "kernel_lib", "fvcore")
"""Loggers whose records go to the fold folder's log.txt."""


def _train_worker(opts: TrainOptions, device: str) -> None:
    """One training process (all of training on one GPU or the CPU; one of several with DDP).

    Logs go to the console (rank 0) and to the fold folder's ``log.txt`` (``log.txt.rank<r>``
    for the other ranks); the file handler is removed at the end, so that folds trained in
    turn by one process each get their own log.
    """
    rank = comm.get_rank()
    opts.fold_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(distributed_rank=rank, name="detectron2", abbrev_name="d2")  # console, once per process
    setup_logger(distributed_rank=rank, name="kernel_lib", abbrev_name="kl")
    log_file = logging.FileHandler(opts.fold_dir / ("log.txt" if rank == 0 else f"log.txt.rank{rank}"))
    log_file.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S"))
    log_file.setLevel(logging.DEBUG)
    for name in LOGGERS:
        logging.getLogger(name).addHandler(log_file)
    try:
        _train_and_score(opts, device, rank)
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(log_file)
        log_file.close()


@dataclass(frozen=True)
class _FoldData:
    """The images of one run: the split, the training records and the held-out ones
    (None when not scored)."""

    split: FoldSplit
    train: TrainingData
    heldout: TrainingData | None


def _load_fold_data(opts: TrainOptions, rank: int) -> _FoldData:
    """Read the split's images; rank 0 logs and writes the annotation rows left out."""
    split = fold_split(opts.folds_csv, opts.fold)
    train_ids = split.train_ids[: opts.max_images] if opts.max_images else split.train_ids
    train = load_dataset_dicts(opts.data_dir, train_ids)
    heldout = load_dataset_dicts(opts.data_dir, split.heldout_ids) if split.heldout_ids and opts.heldout else None
    if rank == 0:
        problems = train.problems + (heldout.problems if heldout else [])
        frame = pd.DataFrame([(p.id, p.row, p.what) for p in problems], columns=["id", "row", "what"])
        frame.to_csv(opts.fold_dir / "annotation_problems.csv", index=False)
        for problem in problems[:20]:
            logger.warning("annotation left out: %s", problem)
        if len(problems) > 20:
            logger.warning("... %d more in %s", len(problems) - 20, opts.fold_dir / "annotation_problems.csv")
        logger.info(
            "fold %d: %d training images (%d instances), %d held-out images (%s), %d rows left out",
            opts.fold,
            len(train.dicts),
            sum(len(r["annotations"]) for r in train.dicts),
            len(split.heldout_ids),
            "scored at the end" if heldout else "not scored",
            len(problems),
        )
    return _FoldData(split, train, heldout)


def _data_meta(opts: TrainOptions, data: _FoldData) -> dict[str, Any]:
    """meta.json: what the fold was trained on."""
    problems = len(data.train.problems) + (len(data.heldout.problems) if data.heldout else 0)
    return {
        "fold": opts.fold,
        "name": opts.fold_name,
        "arch": "" if opts.base_config else opts.arch,
        "base_config": opts.base_config or f"kernel_lib.d2config.sartorius_config({opts.arch!r})",
        **_start_meta(opts),
        "folds_csv": str(opts.folds_csv),
        "data_dir": str(opts.data_dir),
        "train_images": len(data.train.dicts),
        "train_instances": sum(len(r["annotations"]) for r in data.train.dicts),
        "heldout_ids": list(data.split.heldout_ids),
        "annotation_problems": problems,
    }


def _start_meta(opts: TrainOptions) -> dict[str, Any]:
    """meta.json: what the weights started from. A run that continues a fold folder is
    from scratch when that fold was, names it (``continues``: its iterations and held-out
    score) and counts ``total_iters`` over the whole chain."""
    source = opts.continued_fold
    return {
        "init_weights": opts.init_weights or None,
        "from_scratch": bool(source.meta.get("from_scratch")) if source else not opts.init_weights,
        "continues": None
        if source is None
        else {
            "folder": str(source.folder),
            "iters": source.total_iters,
            "heldout_score": source.meta.get("heldout_score"),
        },
        "total_iters": opts.iters + (source.total_iters if source else 0),
    }


def _recipe_meta(opts: TrainOptions, cfg: CfgNode, device: str, bf16: bool, mapper: Any) -> dict[str, Any]:
    """meta.json: how it was trained (inference reads ``input_normalization`` back)."""
    return {
        "iters": opts.iters,
        "batch": opts.batch,
        "base_lr": cfg.SOLVER.BASE_LR,
        "device": device,
        "num_gpus": opts.num_gpus,
        "amp": bool(cfg.SOLVER.AMP.ENABLED),
        "bf16": bf16,
        "mapper": type(mapper).__name__,
        "min_size_train": list(cfg.INPUT.MIN_SIZE_TRAIN),
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "augment": dataclasses.asdict(opts.augment),
        NORMALIZATION_KEY: opts.normalization,
        "seed": opts.seed,
    }


def _run_meta(first_iter: int, done: int, seconds: float) -> dict[str, Any]:
    """meta.json: the run itself."""
    return {
        "resumed_from_iter": first_iter,
        "train_seconds": round(seconds, 1),
        "iters_per_second": round(done / seconds, 4) if seconds > 0 else None,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _finish_fold(opts: TrainOptions, cfg: CfgNode, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write the fold folder (weights, config, meta) and drop the periodic checkpoints."""
    write_model_folder(opts.fold_dir, cfg, model, meta)
    if not opts.keep_checkpoints:
        for path in opts.fold_dir.glob("model_*.pth"):
            if path.name != "model_final.pth":
                path.unlink()
        (opts.fold_dir / "last_checkpoint").unlink(missing_ok=True)


def _train_and_score(opts: TrainOptions, device: str, rank: int) -> None:
    """One process's run: read the data, train, write the fold, score it on its held-out images."""
    seed_all_rng(opts.seed + rank)
    data = _load_fold_data(opts, rank)
    cfg = build_config(opts, device)
    cfg.freeze()
    mapper = build_mapper(cfg, opts.augment, opts.normalization)
    bf16 = opts.resolved_bf16(device)
    config = _eval_config(opts, device)
    trainer: _FoldTrainer | None = None

    def periodic_eval() -> dict[str, float]:
        if data.heldout is None or not comm.is_main_process() or trainer is None:
            return {}
        result = _score_weights(cfg, trainer.model, data.heldout, config, opts.fold_name, opts.normalization)
        logger.info("iteration %d: held-out score %.4f", trainer.iter + 1, result.score)
        return {"heldout_score": result.score, **{f"heldout_{k}": v for k, v in result.per_cell_type.items()}}

    trainer = _FoldTrainer(cfg, data.train.dicts, mapper, periodic_eval, bf16=bf16)
    trainer.resume_or_load(resume=opts.resume)
    start, first_iter = time.perf_counter(), trainer.start_iter
    trainer.train()
    seconds = time.perf_counter() - start
    if not comm.is_main_process():
        return
    meta = {
        **_data_meta(opts, data),
        **_recipe_meta(opts, cfg, device, bf16, mapper),
        **_run_meta(first_iter, opts.iters - first_iter, seconds),
    }
    _finish_fold(opts, cfg, trainer.model, meta)
    if data.heldout is not None:
        meta.update(score_fold(opts.fold_dir, data.heldout, config, opts.eval_config))
        logger.info("fold %d held-out score %.4f %s", opts.fold, meta["heldout_score"], meta["heldout_per_cell_type"])
    write_meta(opts.fold_dir, meta)


def score_fold(fold_dir: Path, heldout: TrainingData, config: Config, config_name: str = "") -> dict[str, Any]:
    """Score one model folder on its held-out images; writes ``heldout_scores.csv`` there.

    Returns:
        The meta.json entries: heldout_score, heldout_per_cell_type, heldout_images,
        heldout_eval (method, tta, config, seconds).
    """
    with tempfile.TemporaryDirectory(prefix="kernel_lib_heldout_") as tmp:
        (Path(tmp) / fold_dir.name).symlink_to(fold_dir.resolve(), target_is_directory=True)
        result = score_models(tmp, heldout, config)
    result.per_image.to_csv(fold_dir / "heldout_scores.csv", index=False)
    return {
        "heldout_score": round(result.score, 6),
        "heldout_per_cell_type": {k: round(v, 6) for k, v in result.per_cell_type.items()},
        "heldout_images": result.n_images,
        "heldout_eval": {
            "method": config.ensemble.method,
            "tta": list(config.ensemble.tta),
            "config": config_name or "defaults",
            "seconds": round(result.seconds, 1),
        },
    }


def rescore_fold(opts: TrainOptions) -> TrainResult:
    """Score an already trained fold folder again (e.g. with a tuned ``eval_config``) and
    update its meta.json; no training.

    Raises:
        ValueError: the fold folder has no model_final.pth / meta.json, or the folds file
            gives the fold no held-out image.
    """
    fold_dir = opts.fold_dir
    meta_path = fold_dir / "meta.json"
    if not (fold_dir / "model_final.pth").is_file() or not meta_path.is_file():
        raise ValueError(f"--score-only: {fold_dir} holds no trained model (model_final.pth and meta.json)")
    split = fold_split(opts.folds_csv, opts.fold)
    if not split.heldout_ids:
        raise ValueError(f"--score-only: fold {opts.fold} of {opts.folds_csv} holds no image to score")
    heldout = load_dataset_dicts(opts.data_dir, split.heldout_ids)
    meta = json.loads(meta_path.read_text())
    meta.update(score_fold(fold_dir, heldout, _eval_config(opts, opts.resolved_device()), opts.eval_config))
    write_meta(fold_dir, meta)
    return TrainResult(fold_dir, meta)


RUN_FILES: tuple[str, ...] = (
    "config.yaml",
    "meta.json",
    "metrics.json",
    "log.txt",
    "last_checkpoint",
    "heldout_scores.csv",
    "annotation_problems.csv",
)
"""Files a training run writes in its fold folder (besides ``model_*.pth``)."""


def _clear_leftovers(fold_dir: Path) -> None:
    """Remove an unfinished run's files; refuse when the folder holds anything else."""
    paths = list(fold_dir.iterdir())
    ours = [p for p in paths if p.is_file() and (p.name in RUN_FILES or p.name.startswith(("model_", "log.txt")))]
    others = sorted(p.name for p in paths if p not in ours)
    if others:
        raise ValueError(
            f"{fold_dir} exists and holds files a training run does not write ({others[:5]}); "
            "pick another --out/--name or empty it"
        )
    for path in ours:
        path.unlink()


def train_fold(opts: TrainOptions) -> TrainResult:
    """Train fold ``opts.fold`` and score its held-out images; see the module docstring.

    With ``num_gpus`` > 1 the work runs in that many processes started by
    ``detectron2.engine.launch`` (DDP); this process waits for them.

    Raises:
        ValueError: bad options, folds file, data folder or initial weights.
    """
    device = opts.resolved_device()
    check_continuation(opts, fold_split(opts.folds_csv, opts.fold))  # fail early, before any process starts
    build_config(opts, device)
    fold_dir = opts.fold_dir
    if (fold_dir / "model_final.pth").exists() and not opts.resume:
        raise ValueError(f"{fold_dir} already holds a trained model; remove it, pick another --out/--name or --resume")
    if opts.resume and not (fold_dir / "last_checkpoint").is_file():
        raise ValueError(f"--resume: {fold_dir} holds no last_checkpoint to resume from (keep_checkpoints off?)")
    if fold_dir.exists() and not opts.resume:
        _clear_leftovers(fold_dir)
    launch(_train_worker, opts.num_gpus if device == "cuda" else 1, dist_url="auto", args=(opts, device))
    meta_path = fold_dir / "meta.json"
    if not meta_path.is_file():
        raise RuntimeError(f"training of {fold_dir} ended without writing {meta_path}")
    return TrainResult(fold_dir, json.loads(meta_path.read_text()))
