"""Soft instances: the hand-off from the models to fusion and post-processing (pure numpy).

Models return each instance as a box plus a small soft mask: the (M, M) probabilities
of the mask head (M = 28 for Mask R-CNN) on a grid laid over the box. The bundle keeps
instances in that form (:class:`SoftInstances`) from ``kernel_lib.model`` through
ensembling (``kernel_lib.ensemble``) and turns them into hard
:class:`~kernel_lib.masks.CropMasks` once, with :func:`paste`: each mask is resampled
into the pixels around its own box only, never into a full frame. What the models give
for one image, before fusion, is a :class:`ViewOutputs`.

Pixel convention: box coordinates are continuous, pixel ``j`` covers ``[j, j+1)``; the
soft mask's cell ``k`` (of M) over a box ``[x0, x1)`` is centred at
``x0 + (k + 0.5) * (x1 - x0) / M``. Pasting samples it bilinearly with zeros outside,
exactly what detectron2's ``paste_masks_in_image`` (``grid_sample``,
``align_corners=False``) computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kernel_lib.masks import CropMasks

DEFAULT_MASK_SIZE = 28
"""Mask R-CNN's RoI mask resolution (M)."""


@dataclass(frozen=True)
class SoftInstances:
    """N instances of one (H, W) frame as boxes plus RoI-sized soft masks.

    Attributes:
        boxes: (N, 4) float32 xyxy, continuous pixel coordinates of the frame.
        scores: (N,) float32 in [0, 1].
        classes: (N,) int64 class indices (order of ``kernel_lib.config.CELL_TYPES``).
        masks: (N, M, M) float32 probabilities over each box (see the module notes).
        shape: (H, W) of the frame.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        masks = np.asarray(self.masks, dtype=np.float32)
        if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
            raise ValueError(f"SoftInstances: masks must be (N, M, M), got shape {masks.shape}")
        n = len(boxes)
        if not len(scores) == len(classes) == len(masks) == n:
            raise ValueError(
                f"SoftInstances: expected one score, class and mask per box, got {n} boxes, "
                f"{len(scores)} scores, {len(classes)} classes, {len(masks)} masks"
            )
        if len(self.shape) != 2 or min(self.shape) < 1:
            raise ValueError(f"SoftInstances: shape must be a positive (H, W), got {self.shape!r}")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "classes", classes)
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def mask_size(self) -> int:
        """M, the side of the RoI masks."""
        return int(self.masks.shape[1])

    @classmethod
    def empty(cls, shape: tuple[int, int], mask_size: int = DEFAULT_MASK_SIZE) -> SoftInstances:
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros((0, mask_size, mask_size), np.float32),
            shape,
        )

    def subset(self, index: Sequence[int] | np.ndarray) -> SoftInstances:
        """The instances at ``index`` (ints or a bool mask), in that order."""
        idx = np.arange(len(self))[np.asarray(index)] if len(self) else np.zeros(0, np.int64)
        return SoftInstances(self.boxes[idx], self.scores[idx], self.classes[idx], self.masks[idx], self.shape)

    @classmethod
    def concatenate(cls, parts: Sequence[SoftInstances]) -> SoftInstances:
        """All instances of ``parts`` (same frame and mask size) in order. Empty parts
        may have any mask size.

        Raises:
            ValueError: no part, or parts of different frames or (non-empty) mask sizes.
        """
        if not parts:
            raise ValueError("SoftInstances.concatenate: expected at least one part, got none")
        filled = [p for p in parts if len(p)] or [parts[0]]
        shape, size = filled[0].shape, filled[0].mask_size
        for part in parts:
            if part.shape != shape or (len(part) and part.mask_size != size):
                raise ValueError(
                    f"SoftInstances.concatenate: parts differ: frame {part.shape} mask {part.mask_size} "
                    f"vs frame {shape} mask {size}"
                )
        return cls(
            np.concatenate([p.boxes for p in filled]),
            np.concatenate([p.scores for p in filled]),
            np.concatenate([p.classes for p in filled]),
            np.concatenate([p.masks for p in filled]),
            shape,
        )


@dataclass
class ViewOutputs:
    """What the models produced for one image, before fusion.

    Attributes:
        fused: the "roi"-fused instances (None for the other methods).
        views: per (model, view) instances in the frame (empty for "roi").
        weights: the model weight of each entry of ``views``.
        names: "<model>/<view>" of each entry of ``views``.
    """

    fused: SoftInstances | None
    views: list[SoftInstances]
    weights: list[float]
    names: list[str]


# ---------------------------------------------------------------------------------
# pasting


def _interp_matrix(coords: np.ndarray, size: int) -> np.ndarray:
    """(len(coords), size) bilinear weights sampling a length-``size`` signal at
    fractional indices ``coords`` with zeros outside (``grid_sample`` semantics)."""
    lo = np.floor(coords)
    frac = (coords - lo).astype(np.float32)
    lo = lo.astype(np.int64)
    weights = np.zeros((len(coords), size), np.float32)
    rows = np.arange(len(coords))
    ok = (lo >= 0) & (lo < size)
    weights[rows[ok], lo[ok]] = 1.0 - frac[ok]
    ok = (lo + 1 >= 0) & (lo + 1 < size)
    weights[rows[ok], lo[ok] + 1] = frac[ok]
    return weights


def _paste_region(box: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel rows y0:y1 and columns x0:x1 where a box's soft mask can be non-zero:
    the box grown by half a mask cell (bilinear reach), clipped to the frame."""
    bx0, by0, bx1, by1 = (float(v) for v in box)
    half_w = max(bx1 - bx0, 0.0) / (2 * size)
    half_h = max(by1 - by0, 0.0) / (2 * size)
    x0 = max(int(np.floor(bx0 - half_w)), 0)
    x1 = min(int(np.ceil(bx1 + half_w)), shape[1])
    y0 = max(int(np.floor(by0 - half_h)), 0)
    y1 = min(int(np.ceil(by1 + half_h)), shape[0])
    return y0, max(y1, y0), x0, max(x1, x0)


def _sample_coords(pixels_start: int, pixels_stop: int, lo: float, hi: float, size: int) -> np.ndarray:
    """Fractional mask indices of pixel centres ``start+0.5 .. stop-0.5`` for a box side [lo, hi)."""
    extent = max(hi - lo, 1e-6)
    centres = np.arange(pixels_start, pixels_stop, dtype=np.float64) + 0.5
    return (centres - lo) / extent * size - 0.5


def paste_soft(inst: SoftInstances) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Resample each soft RoI mask into the frame pixels around its box.

    Returns:
        (crops, origins): crops[i] is a (h_i, w_i) float32 probability crop whose
        top-left pixel is at origins[i] = (y0, x0) (origins (N, 2) int64); pixels
        outside every crop are 0.
    """
    size = inst.mask_size
    crops: list[np.ndarray] = []
    origins = np.zeros((len(inst), 2), np.int64)
    for i in range(len(inst)):
        box = inst.boxes[i]
        y0, y1, x0, x1 = _paste_region(box, size, inst.shape)
        wy = _interp_matrix(_sample_coords(y0, y1, box[1], box[3], size), size)
        wx = _interp_matrix(_sample_coords(x0, x1, box[0], box[2], size), size)
        crops.append(wy @ inst.masks[i] @ wx.T)
        origins[i] = (y0, x0)
    return tuple(crops), origins


def paste(inst: SoftInstances, threshold: float) -> CropMasks:
    """Hard masks (probability >= ``threshold``) as tight :class:`CropMasks`.

    The one place where soft RoI masks become pixels; each is resampled only into the
    pixels around its box (cost ~ box area, never H*W per instance). An instance whose
    mask has no pixel at or above the threshold becomes an empty (0, 0) crop.

    Args:
        inst: N soft instances of a (H, W) frame.
        threshold: probability threshold in (0, 1), e.g. ``PostprocessConfig.mask_threshold``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"paste: expected a threshold in (0, 1), got {threshold!r}")
    soft, origins = paste_soft(inst)
    crops: list[np.ndarray] = []
    out = np.zeros((len(inst), 2), np.int64)
    for i, crop in enumerate(soft):
        hard = crop >= threshold
        rows = np.flatnonzero(hard.any(axis=1))
        if rows.size == 0:
            crops.append(np.zeros((0, 0), bool))
            continue
        cols = np.flatnonzero(hard.any(axis=0))
        crops.append(hard[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy())
        out[i] = (origins[i][0] + rows[0], origins[i][1] + cols[0])
    return CropMasks(tuple(crops), out, inst.shape)


def mask_confidence(inst: SoftInstances, threshold: float) -> np.ndarray:
    """Each instance's mean mask probability over its own mask: the mean of the (M, M)
    RoI probabilities at or above ``threshold`` (the cells that become mask pixels when
    pasted), 0 for an instance with none. The grid stands in for the pasted pixels: every
    cell covers an equal share of the box.

    Args:
        inst: N soft instances.
        threshold: probability threshold in (0, 1) (``PostprocessConfig.mask_threshold``).

    Returns:
        (N,) float32 in [0, 1] (values >= ``threshold`` wherever a cell passes).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"mask_confidence: expected a threshold in (0, 1), got {threshold!r}")
    inside = inst.masks >= threshold
    counts = inside.sum(axis=(1, 2))
    sums = np.where(inside, inst.masks, 0.0).sum(axis=(1, 2))
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0).astype(np.float32)


def resample_to_boxes(inst: SoftInstances, boxes: np.ndarray) -> np.ndarray:
    """Soft masks of ``inst`` re-expressed on the (M, M) grids of other boxes.

    Args:
        inst: N soft instances.
        boxes: (N, 4) target boxes (frame coordinates), one per instance.

    Returns:
        (N, M, M) float32: mask i sampled (bilinear, zeros outside its own box's
        reach) at the cell centres of ``boxes[i]``.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != len(inst):
        raise ValueError(f"resample_to_boxes: expected {len(inst)} boxes, got {len(boxes)}")
    size = inst.mask_size
    out = np.empty_like(inst.masks)
    cells = (np.arange(size, dtype=np.float64) + 0.5) / size
    for i in range(len(inst)):
        src = inst.boxes[i].astype(np.float64)
        dst = boxes[i]
        ys = dst[1] + cells * (dst[3] - dst[1])
        xs = dst[0] + cells * (dst[2] - dst[0])
        wy = _interp_matrix((ys - src[1]) / max(src[3] - src[1], 1e-6) * size - 0.5, size)
        wx = _interp_matrix((xs - src[0]) / max(src[2] - src[0], 1e-6) * size - 0.5, size)
        out[i] = wy @ inst.masks[i] @ wx.T
    return out
