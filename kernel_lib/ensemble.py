"""Soft instances and mask-level ensembling (pure numpy).

Models return each instance as a box plus a small soft mask: the (M, M) probabilities
of the mask head (M = 28 for Mask R-CNN) on a grid laid over the box. This module
keeps instances in that form (:class:`SoftInstances`) through ensembling and turns
them into hard :class:`~kernel_lib.masks.CropMasks` once, with :func:`paste`: each
mask is resampled into the pixels around its own box only, never into a full frame.

Ensembling across models and TTA views (all inputs already mapped back to the
original frame by ``kernel_lib.model``):

- :func:`weighted_mask_fusion` ("wmf"): cluster instances by mask IoU (one instance
  per view per cluster), fuse each cluster's soft masks by score-weighted averaging on
  the union box, keep clusters that enough views agree on, scale the score by the
  fraction of views that agree.
- :func:`mask_nms` ("mask_nms", the simple baseline): greedy non-maximum suppression
  on mask IoU; surviving instances keep their own masks.
- "roi" fusion (every model's mask head on the same merged boxes) happens in
  ``kernel_lib.model``; its soft masks are averaged there and come out here as one
  :class:`SoftInstances`.

Pixel convention: box coordinates are continuous, pixel ``j`` covers ``[j, j+1)``; the
soft mask's cell ``k`` (of M) over a box ``[x0, x1)`` is centred at
``x0 + (k + 0.5) * (x1 - x0) / M``. Pasting samples it bilinearly with zeros outside,
exactly what detectron2's ``paste_masks_in_image`` (``grid_sample``,
``align_corners=False``) computes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kernel_lib.config import ENSEMBLE_METHODS, EnsembleConfig
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


# ---------------------------------------------------------------------------------
# mask IoU between hard crops


def _crop_intersection(masks: CropMasks, i: int, j: int) -> int:
    (ay, ax), (by, bx) = masks.origins[i], masks.origins[j]
    a, b = masks.crops[i], masks.crops[j]
    y0, x0 = max(ay, by), max(ax, bx)
    y1, x1 = min(ay + a.shape[0], by + b.shape[0]), min(ax + a.shape[1], bx + b.shape[1])
    if y1 <= y0 or x1 <= x0:
        return 0
    sub_a = a[y0 - ay : y1 - ay, x0 - ax : x1 - ax]
    sub_b = b[y0 - by : y1 - by, x0 - bx : x1 - bx]
    return int(np.count_nonzero(sub_a & sub_b))


def _crop_boxes(masks: CropMasks) -> np.ndarray:
    """(N, 4) int64 y0, x0, y1, x1 of each crop."""
    sizes = np.array([c.shape for c in masks.crops], dtype=np.int64).reshape(-1, 2)
    return np.concatenate([masks.origins, masks.origins + sizes], axis=1)


class _GreedyMatcher:
    """Greedy clustering helper: keeps representatives and finds, for a new mask, the
    representatives whose mask IoU exceeds a threshold (only box-overlapping ones are
    compared)."""

    def __init__(self, masks: CropMasks) -> None:
        self.masks = masks
        self.areas = masks.areas()
        self.boxes = _crop_boxes(masks)
        self.reps: list[int] = []
        self._rep_boxes = np.zeros((0, 4), np.int64)

    def ious(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions into reps, IoUs) of representatives overlapping instance i."""
        if not self.reps or self.areas[i] == 0:
            return np.zeros(0, np.int64), np.zeros(0)
        rb, box = self._rep_boxes, self.boxes[i]
        hit = np.flatnonzero((rb[:, 0] < box[2]) & (rb[:, 2] > box[0]) & (rb[:, 1] < box[3]) & (rb[:, 3] > box[1]))
        values = np.zeros(len(hit))
        for k, pos in enumerate(hit):
            j = self.reps[pos]
            inter = _crop_intersection(self.masks, i, j)
            values[k] = inter / (self.areas[i] + self.areas[j] - inter) if inter else 0.0
        return hit, values

    def add(self, i: int) -> None:
        self.reps.append(i)
        self._rep_boxes = np.concatenate([self._rep_boxes, self.boxes[i : i + 1]])


def mask_nms(inst: SoftInstances, iou_threshold: float, mask_threshold: float, max_instances: int) -> np.ndarray:
    """Greedy mask NMS: in score order, drop an instance whose hard mask has IoU above
    ``iou_threshold`` with an already kept one.

    Args:
        inst: N soft instances (e.g. all models' and views' instances concatenated).
        iou_threshold: mask IoU in (0, 1] above which the lower-scored one is dropped.
        mask_threshold: probability threshold that makes the hard masks compared.
        max_instances: keep at most this many (the highest-scored).

    Returns:
        (K,) int64 indices into ``inst`` of the kept instances, by descending score
        (ties keep input order). Instances with empty hard masks are dropped.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"mask_nms: expected iou_threshold in (0, 1], got {iou_threshold!r}")
    order = np.argsort(-inst.scores, kind="stable")
    matcher = _GreedyMatcher(paste(inst, mask_threshold))
    for i in order:
        if len(matcher.reps) >= max_instances:
            break
        if matcher.areas[i] == 0:
            continue
        _, ious = matcher.ious(int(i))
        if ious.size and ious.max() > iou_threshold:
            continue
        matcher.add(int(i))
    return np.asarray(matcher.reps, dtype=np.int64)


def _mask_clusters(
    allin: SoftInstances, view_of: np.ndarray, iou_threshold: float, mask_threshold: float
) -> list[list[int]]:
    """Greedy clusters by mask IoU, at most one instance of each view per cluster.

    In descending score order each instance joins the cluster whose representative (its
    first, highest-scored member) has the highest mask IoU above ``iou_threshold`` and no
    member of the same view yet; otherwise it starts one. Instances with an empty hard
    mask start none.

    Returns:
        Each cluster's member indices into ``allin``, representative first.
    """
    order = np.argsort(-allin.scores, kind="stable")
    matcher = _GreedyMatcher(paste(allin, mask_threshold))
    members: list[list[int]] = []
    views_in: list[set[int]] = []
    for i in order:
        i = int(i)
        hit, ious = matcher.ious(i)
        best = -1
        for pos in np.argsort(-ious, kind="stable"):
            if ious[pos] <= iou_threshold:
                break
            if view_of[i] not in views_in[hit[pos]]:
                best = int(hit[pos])
                break
        if best < 0:
            if matcher.areas[i] == 0:
                continue
            matcher.add(i)
            members.append([i])
            views_in.append({int(view_of[i])})
        else:
            members[best].append(i)
            views_in[best].add(int(view_of[i]))
    return members


def weighted_mask_fusion(
    views: Sequence[SoftInstances],
    weights: Sequence[float] | None,
    iou_threshold: float,
    min_votes: float,
    mask_threshold: float,
    max_instances: int,
) -> SoftInstances:
    """Weighted mask fusion of instances from several views (models x TTA views).

    In descending score order each instance joins the cluster whose representative
    (its first, highest-scored member) has the highest mask IoU above
    ``iou_threshold`` and no member from the same view yet; otherwise it starts a
    cluster. A cluster becomes one instance:

    - box: the union of the members' boxes;
    - mask: the members' soft masks resampled onto that box, averaged with weights
      ``view_weight * score``;
    - class: the class with the largest summed ``view_weight * score``;
    - score: ``sum(view_weight * score) / sum(view_weight)`` over members, times the
      agreement ``sum of members' view weights / sum of all view weights`` (<= 1);
      that is, the weighted mean score over all views, counting a missing view as 0.

    Clusters with agreement below ``min_votes`` are dropped.

    Args:
        views: one :class:`SoftInstances` per view, all of the same frame and mask size.
        weights: one weight per view (e.g. the model's weight from models.json), or None
            for equal weights.
        iou_threshold: mask IoU in (0, 1] to join a cluster.
        min_votes: minimum agreement in [0, 1].
        mask_threshold: probability threshold for the hard masks compared.
        max_instances: keep at most this many fused instances (highest scores).

    Returns:
        The fused instances, by descending score.
    """
    w, allin = _fusion_inputs(views, weights, iou_threshold, "weighted_mask_fusion")
    if len(allin) == 0:
        return SoftInstances.empty(allin.shape, allin.mask_size)
    view_of = np.concatenate([np.full(len(v), k) for k, v in enumerate(views)])
    members = _mask_clusters(allin, view_of, iou_threshold, mask_threshold)
    total = w.sum()
    boxes, scores, classes, masks = [], [], [], []
    for group in members:
        idx = np.asarray(group)
        vw = w[view_of[idx]]
        agreement = vw.sum() / total
        if agreement + 1e-9 < min_votes:
            continue
        sw = vw * allin.scores[idx]
        box = np.concatenate([allin.boxes[idx, :2].min(0), allin.boxes[idx, 2:].max(0)])
        sub = allin.subset(idx)
        resampled = resample_to_boxes(sub, np.repeat(box[None], len(idx), axis=0))
        fused = np.tensordot(sw / max(sw.sum(), 1e-12), resampled, axes=1)
        votes = np.bincount(allin.classes[idx], weights=sw)
        boxes.append(box)
        scores.append(sw.sum() / vw.sum() * agreement)
        classes.append(int(np.argmax(votes)))
        masks.append(fused)
    if not boxes:
        return SoftInstances.empty(allin.shape, allin.mask_size)
    out = SoftInstances(np.stack(boxes), np.asarray(scores), np.asarray(classes), np.stack(masks), allin.shape)
    keep = np.argsort(-out.scores, kind="stable")[:max_instances]
    return out.subset(keep)


def vote_screen(
    views: Sequence[SoftInstances],
    model_of: Sequence[int],
    weights: Sequence[float] | None,
    iou_threshold: float,
    min_votes: float,
    mask_threshold: float,
    max_instances: int,
) -> SoftInstances:
    """Keep an instance only when enough models agree on it (IoU screening).

    Instances of all views are clustered as in :func:`weighted_mask_fusion` (mask IoU
    above ``iou_threshold``, one instance per view per cluster). A cluster is kept when
    the models with a member in it, in any of their views, carry at least ``min_votes``
    of the total model weight; it becomes its representative (highest-scored member)
    unchanged: box, mask, score and class. With 3 equal models and ``min_votes`` 0.6, a
    cell needs 2 of the 3.

    Args:
        views: one :class:`SoftInstances` per (model, view).
        model_of: the model index of each view.
        weights: one weight per view (its model's), or None for equal weights.
        iou_threshold: mask IoU in (0, 1] to join a cluster.
        min_votes: the fraction of model weight in [0, 1] a cluster needs.
        mask_threshold: probability threshold of the hard masks compared.
        max_instances: keep at most this many (highest scores).

    Returns:
        The kept instances, by descending score.
    """
    if len(model_of) != len(views):
        raise ValueError(f"vote_screen: expected one model index per view ({len(views)}), got {len(model_of)}")
    w, allin = _fusion_inputs(views, weights, iou_threshold, "vote_screen")
    if len(allin) == 0:
        return SoftInstances.empty(allin.shape, allin.mask_size)
    model_of = np.asarray(model_of, dtype=np.int64)
    view_of = np.concatenate([np.full(len(v), k) for k, v in enumerate(views)])
    model_weight = {int(m): float(w[k]) for k, m in enumerate(model_of)}
    total = sum(model_weight.values())
    kept = []
    for group in _mask_clusters(allin, view_of, iou_threshold, mask_threshold):
        models = {int(model_of[view_of[i]]) for i in group}
        if sum(model_weight[m] for m in models) / total + 1e-9 >= min_votes:
            kept.append(group[0])
    out = allin.subset(np.asarray(kept, dtype=np.int64))
    return out.subset(np.argsort(-out.scores, kind="stable")[:max_instances])


def _fusion_inputs(
    views: Sequence[SoftInstances], weights: Sequence[float] | None, iou_threshold: float, who: str
) -> tuple[np.ndarray, SoftInstances]:
    """Checked inputs of an instance-level method: (per-view weights, all views concatenated)."""
    w = np.ones(len(views)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not views:
        raise ValueError(f"{who}: expected at least one view, got none")
    if w.shape != (len(views),) or (w <= 0).any():
        raise ValueError(f"{who}: expected {len(views)} positive weights, got {weights!r}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"{who}: expected iou_threshold in (0, 1], got {iou_threshold!r}")
    return w, SoftInstances.concatenate(views)


def box_iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(K,) IoU of one xyxy box (4,) with (K, 4) boxes; 0 where both are empty."""
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def non_maximum_weighted(
    views: Sequence[SoftInstances], weights: Sequence[float] | None, iou_threshold: float, max_instances: int
) -> SoftInstances:
    """Non-maximum weighted fusion (ensemble_boxes' ``non_maximum_weighted``), with masks.

    Scores are multiplied by their view's weight / the largest weight. In descending
    (weighted) score order, the best unassigned instance takes every unassigned
    instance whose box IoU with it exceeds ``iou_threshold`` (itself included, IoU 1).
    The cluster becomes one instance: box = sum(box_i * s_i * iou_i) / sum(s_i * iou_i);
    soft mask = the members' masks resampled onto that box, averaged with the same
    weights; score and class = the best's.

    Args:
        views: one :class:`SoftInstances` per (model, view).
        weights: one weight per view, or None for equal weights.
        iou_threshold: box IoU in (0, 1] to join a cluster.
        max_instances: keep at most this many clusters (highest scores).

    Returns:
        The fused instances, by descending score.
    """
    w, allin = _fusion_inputs(views, weights, iou_threshold, "non_maximum_weighted")
    if len(allin) == 0:
        return SoftInstances.empty(allin.shape, allin.mask_size)
    view_w = np.concatenate([np.full(len(v), w[k] / w.max()) for k, v in enumerate(views)])
    scores = allin.scores.astype(np.float64) * view_w
    boxes64 = allin.boxes.astype(np.float64)
    free = np.ones(len(allin), bool)
    out_boxes, out_scores, out_classes, out_masks = [], [], [], []
    for best in np.argsort(-scores, kind="stable"):
        if len(out_boxes) >= max_instances:
            break
        if not free[best]:
            continue
        cand = np.flatnonzero(free)
        ious = box_iou_one(boxes64[best], boxes64[cand])
        inside = ious > iou_threshold
        members, member_iou = cand[inside], ious[inside]
        member_iou[members == best] = 1.0
        if best not in members:  # an empty box: IoU 0 with itself
            members, member_iou = np.append(members, best), np.append(member_iou, 1.0)
        free[members] = False
        mw = scores[members] * member_iou
        mw = mw / mw.sum() if mw.sum() > 0 else np.full(len(members), 1.0 / len(members))
        box = (boxes64[members] * mw[:, None]).sum(0)
        resampled = resample_to_boxes(allin.subset(members), np.repeat(box[None].astype(np.float32), len(members), 0))
        out_boxes.append(box)
        out_scores.append(scores[best])
        out_classes.append(int(allin.classes[best]))
        out_masks.append(np.tensordot(mw, resampled, axes=1))
    return SoftInstances(
        np.stack(out_boxes), np.asarray(out_scores), np.asarray(out_classes), np.stack(out_masks), allin.shape
    )


FusionMethod = Callable[
    [Sequence[SoftInstances], Sequence[float] | None, Sequence[int], EnsembleConfig, float], SoftInstances
]
"""One instance-level ensemble method: (views, per-view weights or None, per-view model
index, ensemble config, mask threshold) -> fused instances."""


def _fuse_wmf(
    views: Sequence[SoftInstances],
    weights: Sequence[float] | None,
    model_of: Sequence[int],
    cfg: EnsembleConfig,
    mask_threshold: float,
) -> SoftInstances:
    return weighted_mask_fusion(
        views, weights, cfg.cluster_iou, cfg.min_votes, mask_threshold, cfg.detections_per_image
    )


def _fuse_mask_nms(
    views: Sequence[SoftInstances],
    weights: Sequence[float] | None,
    model_of: Sequence[int],
    cfg: EnsembleConfig,
    mask_threshold: float,
) -> SoftInstances:
    allin = SoftInstances.concatenate(views)
    return allin.subset(mask_nms(allin, cfg.cluster_iou, mask_threshold, cfg.detections_per_image))


def _fuse_vote(
    views: Sequence[SoftInstances],
    weights: Sequence[float] | None,
    model_of: Sequence[int],
    cfg: EnsembleConfig,
    mask_threshold: float,
) -> SoftInstances:
    return vote_screen(
        views, model_of, weights, cfg.cluster_iou, cfg.min_votes, mask_threshold, cfg.detections_per_image
    )


def _fuse_nmw(
    views: Sequence[SoftInstances],
    weights: Sequence[float] | None,
    model_of: Sequence[int],
    cfg: EnsembleConfig,
    mask_threshold: float,
) -> SoftInstances:
    return non_maximum_weighted(views, weights, cfg.cluster_iou, cfg.detections_per_image)


FUSION_METHODS: dict[str, FusionMethod] = {
    "wmf": _fuse_wmf,
    "mask_nms": _fuse_mask_nms,
    "vote": _fuse_vote,
    "nmw": _fuse_nmw,
}
"""The instance-level methods of ``EnsembleConfig.method`` ("roi" fuses in ``kernel_lib.model``)."""
if set(FUSION_METHODS) | {"roi"} != set(ENSEMBLE_METHODS):
    raise ImportError(f"ensemble: FUSION_METHODS {sorted(FUSION_METHODS)} do not match config {ENSEMBLE_METHODS}")


def fuse_views(
    views: Sequence[SoftInstances],
    weights: Sequence[float] | None,
    cfg: EnsembleConfig,
    mask_threshold: float,
    model_of: Sequence[int] | None = None,
) -> SoftInstances:
    """Combine per-view instances with the instance-level method named in ``cfg.method``.

    Args:
        views: one :class:`SoftInstances` per (model, view), mapped to the frame.
        weights: one weight per view (the model's), or None for equal weights.
        cfg: ``method`` (a key of :data:`FUSION_METHODS`), ``cluster_iou``,
            ``min_votes``, ``detections_per_image``.
        mask_threshold: probability threshold of the hard masks compared.
        model_of: the model index of each view ("vote" counts models); None: each view
            is its own model.

    Raises:
        ValueError: ``cfg.method`` is "roi" (fused inside the model module) or no view.
    """
    method = FUSION_METHODS.get(cfg.method)
    if method is None:
        raise ValueError(
            f"fuse_views: expected method {', '.join(FUSION_METHODS)}, got {cfg.method!r} "
            "(roi fuses in kernel_lib.model)"
        )
    if not views:
        raise ValueError("fuse_views: expected at least one view, got none")
    return method(views, weights, list(range(len(views))) if model_of is None else model_of, cfg, mask_threshold)
