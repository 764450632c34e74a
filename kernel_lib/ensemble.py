"""Mask-level ensembling of soft instances (pure numpy).

Ensembling across models and TTA views (all inputs already mapped back to the
original frame by ``kernel_lib.model``, as :class:`~kernel_lib.soft.SoftInstances`):

- :func:`weighted_mask_fusion` ("wmf"): cluster instances by mask IoU (one instance
  per view per cluster), fuse each cluster's soft masks by score-weighted averaging on
  the union box, keep clusters that enough views agree on, scale the score by the
  fraction of views that agree.
- :func:`mask_nms` ("mask_nms", the simple baseline): greedy non-maximum suppression
  on mask IoU; surviving instances keep their own masks.
- "roi" fusion (every model's mask head on the same merged boxes) happens in
  ``kernel_lib.model``; its soft masks are averaged there and come out here as one
  :class:`SoftInstances`.

The soft-instance type, pasting and resampling are :mod:`kernel_lib.soft`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kernel_lib.config import ENSEMBLE_METHODS, EnsembleConfig
from kernel_lib.masks import CropMasks
from kernel_lib.soft import SoftInstances, paste, resample_to_boxes

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


@dataclass(frozen=True)
class FusionInput:
    """What every instance-level method fuses for one image.

    Attributes:
        views: one :class:`SoftInstances` per (model, view), mapped to the frame.
        weights: one weight per view (its model's), or None for equal weights.
        model_of: the model index of each view ("vote" counts models, not views); None:
            each view is its own model.
    """

    views: Sequence[SoftInstances]
    weights: Sequence[float] | None = None
    model_of: Sequence[int] | None = None

    def models(self) -> np.ndarray:
        """(n_views,) int64 model index of each view."""
        if self.model_of is None:
            return np.arange(len(self.views), dtype=np.int64)
        if len(self.model_of) != len(self.views):
            raise ValueError(f"fusion: expected one model index per view ({len(self.views)}), got {len(self.model_of)}")
        return np.asarray(self.model_of, dtype=np.int64)


def weighted_mask_fusion(x: FusionInput, cfg: EnsembleConfig, mask_threshold: float) -> SoftInstances:
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
        x: the views (all of the same frame and mask size) and their weights (e.g. the
            models' weights from models.json; None: equal); ``model_of`` is not used.
        cfg: ``cluster_iou`` (mask IoU in (0, 1] to join a cluster), ``min_votes``
            (minimum agreement in [0, 1]), ``detections_per_image`` (the most fused
            instances kept, highest scores first).
        mask_threshold: probability threshold for the hard masks compared.

    Returns:
        The fused instances, by descending score.
    """
    views, iou_threshold = x.views, cfg.cluster_iou
    w, allin = _fusion_inputs(views, x.weights, iou_threshold, "weighted_mask_fusion")
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
        if agreement + 1e-9 < cfg.min_votes:
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
    keep = np.argsort(-out.scores, kind="stable")[: cfg.detections_per_image]
    return out.subset(keep)


def vote_screen(x: FusionInput, cfg: EnsembleConfig, mask_threshold: float) -> SoftInstances:
    """Keep an instance only when enough models agree on it (IoU screening).

    Instances of all views are clustered as in :func:`weighted_mask_fusion` (mask IoU
    above ``iou_threshold``, one instance per view per cluster). A cluster is kept when
    the models with a member in it, in any of their views, carry at least ``min_votes``
    of the total model weight; it becomes its representative (highest-scored member)
    unchanged: box, mask, score and class. With 3 equal models and ``min_votes`` 0.6, a
    cell needs 2 of the 3.

    Args:
        x: the views, their weights (their models'; None: equal) and the model of each
            view.
        cfg: ``cluster_iou`` (mask IoU in (0, 1] to join a cluster), ``min_votes`` (the
            fraction of model weight in [0, 1] a cluster needs), ``detections_per_image``
            (the most kept, highest scores first).
        mask_threshold: probability threshold of the hard masks compared.

    Returns:
        The kept instances, by descending score.
    """
    views, iou_threshold = x.views, cfg.cluster_iou
    model_of = x.models()
    w, allin = _fusion_inputs(views, x.weights, iou_threshold, "vote_screen")
    if len(allin) == 0:
        return SoftInstances.empty(allin.shape, allin.mask_size)
    view_of = np.concatenate([np.full(len(v), k) for k, v in enumerate(views)])
    model_weight = {int(m): float(w[k]) for k, m in enumerate(model_of)}
    total = sum(model_weight.values())
    kept = []
    for group in _mask_clusters(allin, view_of, iou_threshold, mask_threshold):
        models = {int(model_of[view_of[i]]) for i in group}
        if sum(model_weight[m] for m in models) / total + 1e-9 >= cfg.min_votes:
            kept.append(group[0])
    out = allin.subset(np.asarray(kept, dtype=np.int64))
    return out.subset(np.argsort(-out.scores, kind="stable")[: cfg.detections_per_image])


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


FusionMethod = Callable[[FusionInput, EnsembleConfig, float], SoftInstances]
"""One instance-level ensemble method: (inputs, ensemble config, mask threshold) -> fused instances."""


def _fuse_mask_nms(x: FusionInput, cfg: EnsembleConfig, mask_threshold: float) -> SoftInstances:
    allin = SoftInstances.concatenate(x.views)
    return allin.subset(mask_nms(allin, cfg.cluster_iou, mask_threshold, cfg.detections_per_image))


def _fuse_nmw(x: FusionInput, cfg: EnsembleConfig, mask_threshold: float) -> SoftInstances:
    return non_maximum_weighted(x.views, x.weights, cfg.cluster_iou, cfg.detections_per_image)


FUSION_METHODS: dict[str, FusionMethod] = {
    "wmf": weighted_mask_fusion,
    "mask_nms": _fuse_mask_nms,
    "vote": vote_screen,
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
    return method(FusionInput(views, weights, model_of), cfg, mask_threshold)
