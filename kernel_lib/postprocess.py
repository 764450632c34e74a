"""Post-processing of one image's instances: cell type, thresholds, overlap removal.

The steps, all configured per cell type by :class:`~kernel_lib.config.PostprocessConfig`
(defaults: the public detectron2 baseline's score thresholds (0.15, 0.35, 0.55) and
minimum areas (75, 150, 75) for shsy5y, astro, cort):

1. the image's cell type is the majority of the predicted classes (:func:`image_cell_type`);
2. with the instances' mask confidences given and that type's ``rescore`` exponent
   ``a`` > 0, each score becomes score * confidence ** a (:func:`rescore`);
3. instances scoring below that type's ``score_threshold`` are dropped;
4. the rest claim pixels in descending score order (ties: input order): a mask loses
   the pixels already claimed by a kept mask; it is dropped when what remains is
   smaller than ``min_area`` or than ``min_kept_fraction`` of its own area (or is
   empty), and a dropped mask claims nothing.

The claiming works crop-locally on :class:`~kernel_lib.masks.CropMasks` against one
(H, W) "taken" image, so it costs the masks' pixels, not N full frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernel_lib.config import CELL_TYPES, PostprocessConfig
from kernel_lib.masks import CropMasks

__all__ = ["Postprocessed", "image_cell_type", "postprocess", "remove_overlaps", "rescore"]


@dataclass(frozen=True)
class Postprocessed:
    """One image's instances after post-processing.

    Attributes:
        masks: K disjoint, non-empty masks, in descending score order.
        scores: (K,) float32 scores of the kept masks (rescored where the config says so).
        keep: (K,) int64 indices of the kept masks in the input.
        cell_type: the image's cell type, an index into :data:`~kernel_lib.config.CELL_TYPES`.
    """

    masks: CropMasks
    scores: np.ndarray
    keep: np.ndarray
    cell_type: int

    def __len__(self) -> int:
        return len(self.masks)


def image_cell_type(classes: np.ndarray) -> int:
    """The image's cell type: the most frequent predicted class (majority vote).

    Args:
        classes: (N,) int class ids in 0..len(CELL_TYPES)-1.

    Returns:
        The most frequent class; a tie goes to the lower class id (as ``torch.mode``
        in the public baseline). With no instances, 0: nothing is left to filter then,
        so the choice does not change any output.
    """
    classes = np.asarray(classes).reshape(-1)
    if classes.size == 0:
        return 0
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"image_cell_type: expected integer class ids, got dtype {classes.dtype}")
    lo, hi = int(classes.min()), int(classes.max())
    if lo < 0 or hi >= len(CELL_TYPES):
        raise ValueError(f"image_cell_type: expected class ids in 0..{len(CELL_TYPES) - 1}, got {lo}..{hi}")
    return int(np.argmax(np.bincount(classes, minlength=len(CELL_TYPES))))


def rescore(scores: np.ndarray, confidence: np.ndarray, exponent: float) -> np.ndarray:
    """Scores weighed by mask confidence: ``scores * confidence ** exponent`` (float32).

    Args:
        scores: (N,) instance scores in [0, 1].
        confidence: (N,) mean mask probability inside each mask, in [0, 1]
            (:func:`kernel_lib.soft.mask_confidence`).
        exponent: >= 0; 0 returns the scores unchanged.
    """
    scores = np.asarray(scores, np.float32).reshape(-1)
    confidence = np.asarray(confidence, np.float32).reshape(-1)
    if confidence.size != scores.size:
        raise ValueError(f"rescore: expected one confidence per score ({scores.size}), got {confidence.size}")
    if exponent < 0:
        raise ValueError(f"rescore: expected an exponent >= 0, got {exponent!r}")
    if exponent == 0:
        return scores
    return (scores * np.clip(confidence, 0.0, 1.0) ** np.float32(exponent)).astype(np.float32)


def remove_overlaps(
    masks: CropMasks, order: np.ndarray, min_area: float = 1, min_kept_fraction: float = 0.0
) -> tuple[CropMasks, np.ndarray]:
    """Greedy overlap removal: masks claim pixels in ``order``; a later mask loses
    pixels already claimed and is dropped when what remains is below ``min_area`` or
    below ``min_kept_fraction`` of its own area (an empty remainder is always dropped).

    Args:
        masks: N masks (may overlap).
        order: (M,) int indices into ``masks``, the claiming order (highest priority first).
        min_area: fewest pixels a kept remainder may have (values below 1 act as 1).
        min_kept_fraction: in [0, 1], fewest pixels kept as a fraction of the mask's area.

    Returns:
        ``(kept_masks, kept)``: the remainders (disjoint, non-empty, crops of the
        original boxes) and (K,) int64 indices into ``masks``, in claiming order.
    """
    order = np.asarray(order, dtype=np.int64).reshape(-1)
    taken = np.zeros(masks.shape, bool)
    crops: list[np.ndarray] = []
    origins: list[tuple[int, int]] = []
    kept: list[int] = []
    floor = max(float(min_area), 1.0)
    origin_list = masks.origins.tolist()
    for i in order.tolist():
        crop = masks.crops[i]
        h, w = crop.shape
        if h == 0 or w == 0:
            continue
        y0, x0 = origin_list[i]
        region = taken[y0 : y0 + h, x0 : x0 + w]
        remain = crop & ~region
        count = np.count_nonzero(remain)
        if count < floor:
            continue
        if min_kept_fraction > 0 and count < min_kept_fraction * np.count_nonzero(crop):
            continue
        region |= remain
        crops.append(remain)
        origins.append((y0, x0))
        kept.append(i)
    out = CropMasks(tuple(crops), np.array(origins, np.int64).reshape(-1, 2), masks.shape)
    return out, np.array(kept, np.int64)


def postprocess(
    masks: CropMasks | np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    cfg: PostprocessConfig,
    confidence: np.ndarray | None = None,
) -> Postprocessed:
    """Post-process one image's hard masks (see the module docstring for the steps).

    Args:
        masks: N masks, a :class:`CropMasks` or a (N, H, W) bool stack.
        scores: (N,) float scores.
        classes: (N,) int predicted classes (indices into CELL_TYPES).
        cfg: per-cell-type thresholds.
        confidence: (N,) mean mask probability inside each mask, for ``cfg.rescore``;
            None leaves the scores as they are whatever the config says.

    Returns:
        :class:`Postprocessed` with disjoint, non-empty masks in descending score order.
    """
    if isinstance(masks, np.ndarray):
        masks = CropMasks.from_stack(masks)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    classes = np.asarray(classes).reshape(-1)
    n = len(masks)
    if scores.size != n or classes.size != n:
        raise ValueError(
            f"postprocess: expected {n} scores and classes (one per mask), got {scores.size} and {classes.size}"
        )
    cell_type = image_cell_type(classes)
    if confidence is not None:
        scores = rescore(scores, confidence, cfg.rescore[cell_type])
    candidates = np.flatnonzero(scores >= cfg.score_threshold[cell_type])
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    kept_masks, keep = remove_overlaps(
        masks, order, min_area=cfg.min_area[cell_type], min_kept_fraction=cfg.min_kept_fraction[cell_type]
    )
    return Postprocessed(kept_masks, scores[keep], keep, cell_type)
