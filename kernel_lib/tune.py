"""Per-cell-type post-processing search on cached out-of-fold instances (numpy).

``postprocess`` keeps an image's instances by a per-cell-type score threshold and
minimum area, then removes overlaps greedily in score order (a mask loses the pixels
already taken; it is dropped when what it keeps is under the minimum area or under
``min_kept_fraction`` of its own area). Running that and the metric from scratch for
every candidate setting is far too slow to try hundreds of settings on 600 images, so
this module pastes every instance once and precomputes, for all images of one cell
type together:

- each instance's area and each truth's area;
- the *shared* pixels (covered by two or more instances) as incidence entries sorted
  by (pixel, score rank): only these pixels can be taken by an earlier mask;
- every (instance, truth) pair that shares pixels, with its intersection, and which
  shared entries fall inside which truth.

A setting is then a few vectorised passes: the greedy overlap rule is solved as the
fixed point of "instance i is kept iff it passes the filters given which earlier
instances are kept" (a triangular system: iterating from any start reaches its unique
solution, the greedy result, in at most the length of the longest chain of overlapping
instances; in practice a handful of passes), and the IoUs of the kept remainders with
the truths follow from the precomputed intersections minus the taken pixels.
:func:`score_config` equals running :func:`kernel_lib.postprocess.postprocess` and
:func:`kernel_lib.metric.image_score` on every image (tests check it).

The images of one predicted cell type are independent of the other types' settings,
so each type is tuned on its own images and the overall score is their weighted sum.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kernel_lib.config import CELL_TYPES, IOU_THRESHOLDS, Config, PostprocessConfig
from kernel_lib.masks import CropMasks
from kernel_lib.postprocess import image_cell_type, rescore
from kernel_lib.soft import mask_confidence, paste

Progress = Callable[[Iterable], Iterable]
"""A wrapper that shows progress over an iterable, e.g. ``tqdm.tqdm``."""

N_THRESHOLDS = len(IOU_THRESHOLDS)
_THRESHOLDS = np.asarray(IOU_THRESHOLDS, np.float64)

DEFAULT_SCORE_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
"""Score thresholds tried: 0.05, 0.10, ..., 0.95."""
DEFAULT_AREA_GRID: tuple[int, ...] = tuple(range(0, 301, 25))
"""Minimum areas tried (pixels): 0, 25, ..., 300."""
DEFAULT_KEPT_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(0, 10))
"""Minimum kept fractions tried: 0.0, 0.1, ..., 0.9."""
DEFAULT_RESCORE_GRID: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
"""Rescoring exponents tried (``PostprocessConfig.rescore``; 0 = the models' scores)."""


@dataclass(frozen=True, eq=False)
class TuneImage:
    """One image's fused instances (pasted, before post-processing) and its truth.

    Attributes:
        id: image id.
        masks: N hard masks (the soft masks pasted at ``mask_threshold``), any order.
        scores: (N,) float32 instance scores.
        classes: (N,) int64 class per instance (index into CELL_TYPES).
        truth: the annotated instances (may overlap each other).
        cell_type: predicted cell type (majority vote of ``classes``), which selects
            the per-type thresholds; computed when not given.
        confidence: (N,) float32 mean mask probability inside each mask
            (:func:`kernel_lib.soft.mask_confidence`), for rescoring
            (:func:`tune_rescoring`); None when unknown.
    """

    id: str
    masks: CropMasks
    scores: np.ndarray
    classes: np.ndarray
    truth: CropMasks
    cell_type: int = -1
    confidence: np.ndarray | None = None

    def __post_init__(self) -> None:
        scores = np.asarray(self.scores, np.float32).reshape(-1)
        classes = np.asarray(self.classes, np.int64).reshape(-1)
        if not len(self.masks) == len(scores) == len(classes):
            raise ValueError(
                f"image {self.id}: expected one score and class per mask, got {len(self.masks)} masks, "
                f"{len(scores)} scores, {len(classes)} classes"
            )
        if self.masks.shape != self.truth.shape:
            raise ValueError(
                f"image {self.id}: mask frame {self.masks.shape} differs from truth frame {self.truth.shape}"
            )
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "classes", classes)
        if self.confidence is not None:
            confidence = np.asarray(self.confidence, np.float32).reshape(-1)
            if len(confidence) != len(scores):
                raise ValueError(
                    f"image {self.id}: expected one confidence per mask ({len(scores)}), got {len(confidence)}"
                )
            object.__setattr__(self, "confidence", confidence)
        if self.cell_type < 0:
            object.__setattr__(self, "cell_type", image_cell_type(np.asarray(classes, np.int64)))


_INDEX_INTO: dict[str, str] = {
    "inst_image": "ids",
    "truth_image": "ids",
    "e_inst": "score",
    "pair_inst": "score",
    "e_start": "e_inst",
    "q_entry": "e_inst",
    "pair_truth": "truth_area",
    "q_pair": "pair_inst",
}
""":class:`InstanceTable`'s index fields -> the field whose entries they index (images,
instances, shared entries, truths, pairs)."""


@dataclass(frozen=True, eq=False)
class InstanceTable:
    """Precomputed arrays for a set of images (all instances concatenated).

    Instances are ordered by image, then by score rank (descending, stable), as the
    greedy overlap removal visits them. All index arrays are int64.

    Attributes:
        ids: image ids, (n_images,).
        cell_types: (n_images,) predicted cell type of each image.
        inst_image: (N,) image of each instance.
        score: (N,) float32 score.
        area: (N,) pixels of each pasted mask.
        e_inst: (E,) instance of each shared-cell entry: a cell is a set of pixels
            covered by the same two or more instances (and the same truths); entries
            of one cell are contiguous and in rank order.
        e_start: (E,) position of the first entry of the entry's cell.
        e_weight: (E,) pixels in the entry's cell.
        truth_image: (T,) image of each truth; truth_area: (T,) its pixels.
        pair_inst, pair_truth, pair_inter: (P,) instance/truth pairs sharing pixels and
            the size of their intersection.
        q_entry, q_pair, q_weight: (Q,) a shared entry whose cell lies inside the
            pair's truth, and the cell's pixels.
    """

    ids: tuple[str, ...]
    cell_types: np.ndarray
    inst_image: np.ndarray
    score: np.ndarray
    area: np.ndarray
    e_inst: np.ndarray
    e_start: np.ndarray
    e_weight: np.ndarray
    truth_image: np.ndarray
    truth_area: np.ndarray
    pair_inst: np.ndarray
    pair_truth: np.ndarray
    pair_inter: np.ndarray
    q_entry: np.ndarray
    q_pair: np.ndarray
    q_weight: np.ndarray
    _views: dict[float, _View] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.ids)

    @property
    def n_instances(self) -> int:
        return len(self.score)

    @classmethod
    def build(cls, images: Sequence[TuneImage], progress: Progress | None = None) -> InstanceTable:
        """Paste-free precomputation over ``images`` (their masks are already hard)."""
        return cls.concat([_image_table(img) for img in (progress(images) if progress else images)])

    @classmethod
    def concat(cls, tables: Sequence[InstanceTable]) -> InstanceTable:
        """One table of several, their images in order: every index field is shifted by
        the sizes of what it indexes in the tables before it (:data:`_INDEX_INTO`)."""

        def column(name: str) -> np.ndarray:
            arrays = [getattr(t, name) for t in tables]
            target = _INDEX_INTO.get(name)
            if target is not None:
                shifts = np.cumsum([0] + [len(getattr(t, target)) for t in tables[:-1]])
                arrays = [a + s for a, s in zip(arrays, shifts)]
            return np.concatenate(arrays) if arrays else np.zeros(0, np.float32 if name == "score" else np.int64)

        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("ids", "_views")]
        return cls(ids=tuple(i for t in tables for i in t.ids), **{name: column(name) for name in names})

    def subset(self, images: np.ndarray) -> InstanceTable:
        """The table of the images at ``images`` (ascending indices)."""
        images = np.asarray(images, np.int64)
        new_image = np.full(self.n_images, -1, np.int64)
        new_image[images] = np.arange(len(images))
        inst = np.flatnonzero(new_image[self.inst_image] >= 0)
        truth = np.flatnonzero(new_image[self.truth_image] >= 0)
        entry = np.flatnonzero(new_image[self.inst_image[self.e_inst]] >= 0)
        pair = np.flatnonzero(new_image[self.inst_image[self.pair_inst]] >= 0)
        q = np.flatnonzero(new_image[self.inst_image[self.e_inst[self.q_entry]]] >= 0)
        inst_map = _inverse(inst, self.n_instances)
        truth_map = _inverse(truth, len(self.truth_area))
        entry_map = _inverse(entry, len(self.e_inst))
        pair_map = _inverse(pair, len(self.pair_inst))
        return InstanceTable(
            ids=tuple(self.ids[i] for i in images),
            cell_types=self.cell_types[images],
            inst_image=new_image[self.inst_image[inst]],
            score=self.score[inst],
            area=self.area[inst],
            e_inst=inst_map[self.e_inst[entry]],
            e_start=entry_map[self.e_start[entry]],
            e_weight=self.e_weight[entry],
            truth_image=new_image[self.truth_image[truth]],
            truth_area=self.truth_area[truth],
            pair_inst=inst_map[self.pair_inst[pair]],
            pair_truth=truth_map[self.pair_truth[pair]],
            pair_inter=self.pair_inter[pair],
            q_entry=entry_map[self.q_entry[q]],
            q_pair=pair_map[self.q_pair[q]],
            q_weight=self.q_weight[q],
        )

    def view(self, min_score: float) -> _View:
        """The shared entries among instances scoring at least ``min_score`` (cached)."""
        key = float(min_score)
        if key not in self._views:
            if len(self._views) > 64:
                self._views.clear()
            self._views[key] = _View.build(self, self.score >= np.float32(min_score))
        return self._views[key]


def _inverse(index: np.ndarray, size: int) -> np.ndarray:
    out = np.full(size, -1, np.int64)
    out[index] = np.arange(len(index))
    return out


def _group_starts(new_group: np.ndarray) -> np.ndarray:
    """(E,) position of each entry's group start, given (E,) bool 'starts a group'."""
    return np.maximum.accumulate(np.where(new_group, np.arange(len(new_group)), 0))


def _pixels(masks: CropMasks, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices of masks[order] concatenated, and the position in ``order`` of each."""
    width = masks.shape[1]
    pix: list[np.ndarray] = []
    for i in order:
        ys, xs = np.nonzero(masks.crops[i])
        y0, x0 = masks.origins[i]
        pix.append((ys + y0).astype(np.int64) * width + (xs + x0))
    lengths = np.array([len(p) for p in pix], np.int64)
    flat = np.concatenate(pix) if pix else np.zeros(0, np.int64)
    return flat, np.repeat(np.arange(len(order)), lengths)


_HASH = np.random.default_rng(20211231).integers(0, np.iinfo(np.int64).max, size=(2, 1 << 16), dtype=np.int64)


def _hash_keys(n: int, salt: int) -> np.ndarray:
    """(2, n) uint64 random keys of objects 0..n-1 (fixed: the same n and salt give the same keys)."""
    if n <= _HASH.shape[1] // 2:
        return _HASH[:, salt * (_HASH.shape[1] // 2) : salt * (_HASH.shape[1] // 2) + n].astype(np.uint64)
    return np.random.default_rng([20211231, salt]).integers(0, np.iinfo(np.int64).max, (2, n)).astype(np.uint64)


def _segment_hash(keys: np.ndarray, items: np.ndarray, lo: np.ndarray, count: np.ndarray) -> np.ndarray:
    """(2, G) uint64 sum (mod 2**64) of ``keys[:, items[lo_g : lo_g + count_g]]`` per segment g."""
    with np.errstate(over="ignore"):
        cums = np.zeros((2, len(items) + 1), np.uint64)
        np.cumsum(keys[:, items], axis=1, out=cums[:, 1:])
        return cums[:, lo + count] - cums[:, lo]


def _expand(lo: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segment number and position of every item of segments ``[lo_g, lo_g + count_g)``."""
    seg = np.repeat(np.arange(len(lo)), count)
    pos = np.arange(len(seg)) - np.repeat(np.cumsum(count) - count, count) + lo[seg]
    return seg, pos


def _image_table(img: TuneImage) -> InstanceTable:
    """The table of one image. Shared pixels (covered by two or more instances) are
    grouped into *cells*: pixels with the same covering instances and the same covering
    truths behave alike in every setting, so each cell is stored once with its pixel
    count as weight. Cells are found by hashing those sets (two random 64-bit keys per
    instance and truth, summed); a collision would need two 128-bit sums to agree."""
    n = len(img.masks)
    order = np.argsort(-img.scores, kind="stable")
    pix, inst = _pixels(img.masks, order)
    area = np.bincount(inst, minlength=n).astype(np.int64)
    by_pixel = np.argsort(pix, kind="stable")  # stable: rank order within a pixel
    pix, inst = pix[by_pixel], inst[by_pixel]
    new_group = np.ones(len(pix), bool)
    new_group[1:] = pix[1:] != pix[:-1]
    starts = np.flatnonzero(new_group)
    counts = np.diff(np.append(starts, len(pix)))

    n_truth = len(img.truth)
    t_pix, t_idx = _pixels(img.truth, np.arange(n_truth))
    t_order = np.argsort(t_pix, kind="stable")
    t_pix, t_idx = t_pix[t_order], t_idx[t_order]
    truth_area = np.bincount(t_idx, minlength=n_truth).astype(np.int64)

    # instance x truth intersections over all pixels
    lo = np.searchsorted(t_pix, pix, "left")
    src, pos = _expand(lo, np.searchsorted(t_pix, pix, "right") - lo)
    stride = max(n_truth, 1)
    pair_keys, pair_inter = np.unique(inst[src] * stride + t_idx[pos], return_counts=True)

    # shared pixels -> cells of identical (instances, truths)
    g_start, g_count = starts[counts >= 2], counts[counts >= 2]
    g_pix = pix[g_start]
    g_lo = np.searchsorted(t_pix, g_pix, "left")
    g_hits = np.searchsorted(t_pix, g_pix, "right") - g_lo
    with np.errstate(over="ignore"):
        key = _segment_hash(_hash_keys(n, 0), inst, g_start, g_count)
        key += _segment_hash(_hash_keys(n_truth, 1), t_idx, g_lo, g_hits)
    by_key = np.lexsort((key[1], key[0]))
    first = np.ones(len(by_key), bool)
    first[1:] = (key[0, by_key[1:]] != key[0, by_key[:-1]]) | (key[1, by_key[1:]] != key[1, by_key[:-1]])
    cell_group = by_key[first]  # one representative pixel per cell
    weight = np.diff(np.append(np.flatnonzero(first), len(by_key))).astype(np.int64)

    c_start, c_count = g_start[cell_group], g_count[cell_group]
    e_cell, e_pos = _expand(c_start, c_count)
    e_inst = inst[e_pos]
    e_start = np.repeat(np.cumsum(c_count) - c_count, c_count)
    # entries x truths of their cell
    c_lo, c_hits = g_lo[cell_group], g_hits[cell_group]
    q_entry, q_pos = _expand(c_lo[e_cell], c_hits[e_cell])
    q_pair = np.searchsorted(pair_keys, e_inst[q_entry] * stride + t_idx[q_pos])
    return InstanceTable(
        ids=(img.id,),
        cell_types=np.array([img.cell_type], np.int64),
        inst_image=np.zeros(n, np.int64),
        score=img.scores[order].astype(np.float32, copy=False),
        area=area,
        e_inst=e_inst.astype(np.int64, copy=False),
        e_start=e_start.astype(np.int64, copy=False),
        e_weight=weight[e_cell],
        truth_image=np.zeros(n_truth, np.int64),
        truth_area=truth_area,
        pair_inst=(pair_keys // stride).astype(np.int64, copy=False),
        pair_truth=(pair_keys % stride).astype(np.int64, copy=False),
        pair_inter=pair_inter.astype(np.int64),
        q_entry=q_entry.astype(np.int64, copy=False),
        q_pair=q_pair.astype(np.int64, copy=False),
        q_weight=weight[e_cell[q_entry]],
    )


@dataclass(frozen=True, eq=False)
class _View:
    """Shared entries restricted to a candidate set (instances that can be kept):
    only cells that two or more candidates cover can lose pixels."""

    e_inst: np.ndarray
    e_start: np.ndarray
    e_weight: np.ndarray
    q_entry: np.ndarray
    q_pair: np.ndarray
    q_weight: np.ndarray

    @classmethod
    def build(cls, table: InstanceTable, candidate: np.ndarray) -> _View:
        on = candidate[table.e_inst]
        n_on = np.bincount(table.e_start[on], minlength=len(on))
        keep_entry = on & (n_on[table.e_start] >= 2)
        entry_map = _inverse(np.flatnonzero(keep_entry), len(keep_entry))
        new_group = np.ones(int(keep_entry.sum()), bool)
        old_start = table.e_start[keep_entry]
        new_group[1:] = old_start[1:] != old_start[:-1]
        q_on = keep_entry[table.q_entry]
        return cls(
            e_inst=table.e_inst[keep_entry],
            e_start=_group_starts(new_group),
            e_weight=table.e_weight[keep_entry],
            q_entry=entry_map[table.q_entry[q_on]],
            q_pair=table.q_pair[q_on],
            q_weight=table.q_weight[q_on],
        )


@dataclass(frozen=True, eq=False)
class Outcome:
    """Post-processing outcome of a setting on a table.

    Attributes:
        kept: (N,) bool, instance survives post-processing.
        remainder: (N,) int64 pixels each instance keeps after overlap removal.
        precision: (n_images, 10) float64 metric precision per IoU threshold.
        tp, fp, fn: (n_images, 10) int64 counts.
        iterations: passes the overlap fixed point took.
    """

    kept: np.ndarray
    remainder: np.ndarray
    precision: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    iterations: int

    @property
    def image_scores(self) -> np.ndarray:
        """(n_images,) mean precision over the IoU thresholds."""
        return self.precision.mean(axis=1)


def run_setting(
    table: InstanceTable,
    score_threshold: float | np.ndarray,
    min_area: float | np.ndarray,
    min_kept_fraction: float | np.ndarray,
) -> Outcome:
    """Post-process every image of ``table`` with one setting and score it.

    Args:
        table: the precomputed images.
        score_threshold, min_area, min_kept_fraction: scalars, or (n_images,) arrays
            (one value per image, e.g. from its cell type).

    Returns:
        the :class:`Outcome` (what :func:`kernel_lib.postprocess.postprocess` keeps and
        :func:`kernel_lib.metric.image_score` gives, per image).
    """
    per_image = np.ndim(score_threshold) > 0
    if per_image:
        thr = np.asarray(score_threshold, np.float32)[table.inst_image]
        candidate = table.score >= thr
        view = _View.build(table, candidate)
        min_area = np.asarray(min_area, np.float64)[table.inst_image]
        min_kept_fraction = np.asarray(min_kept_fraction, np.float64)[table.inst_image]
    else:
        candidate = table.score >= np.float32(score_threshold)
        view = table.view(float(score_threshold))
    need = np.maximum(min_area, 1)
    passes = candidate & (table.area >= need)
    min_kept = np.asarray(min_kept_fraction, np.float64) * table.area
    kept, taken_entry, taken, iterations = _greedy(view, passes, need, min_kept, table.area)
    remainder = table.area - taken
    on = taken_entry[view.q_entry]
    lost = np.bincount(view.q_pair[on], weights=view.q_weight[on], minlength=len(table.pair_inst))
    lost = lost.astype(np.int64)
    tp, fp, fn = _counts(table, kept, remainder, table.pair_inter - lost)
    return Outcome(kept, remainder, _precision(tp, fp, fn), tp, fp, fn, iterations)


def _greedy(
    view: _View, passes: np.ndarray, need: np.ndarray, min_kept: np.ndarray, area: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    kept = passes.copy()
    n = len(passes)
    iterations = 0
    while True:
        iterations += 1
        on = kept[view.e_inst]
        before = np.cumsum(on, dtype=np.int64) - on
        taken_entry = before > before[view.e_start]
        taken = np.bincount(view.e_inst[taken_entry], weights=view.e_weight[taken_entry], minlength=n)
        taken = taken.astype(np.int64)
        remainder = area - taken
        new = passes & (remainder >= need) & (remainder >= min_kept)
        if np.array_equal(new, kept):
            return kept, taken_entry, taken, iterations
        kept = new


def _counts(
    table: InstanceTable, kept: np.ndarray, remainder: np.ndarray, inter: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_images, 10) TP, FP, FN. Only pairs with IoU > the lowest threshold can match,
    so counts are taken over those few pairs: FN = truths - truths matched at least
    once, FP = kept - predictions matched at least once."""
    live = kept[table.pair_inst] & (inter > 0)
    pi, pt, it = table.pair_inst[live], table.pair_truth[live], inter[live]
    iou = it / (remainder[pi] + table.truth_area[pt] - it)
    near = iou > _THRESHOLDS[0]
    pi, pt, iou = pi[near], pt[near], iou[near]
    match = iou[:, None] > _THRESHOLDS[None, :]  # (M, 10)
    n_img = table.n_images

    def hits(owner: np.ndarray, owner_image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image and threshold: owners matched exactly once, and at least once."""
        ids, local = np.unique(owner, return_inverse=True)
        counts = _per_image(local, match, len(ids))
        image = owner_image[ids]
        once = _per_image(image, counts == 1, n_img)
        some = _per_image(image, counts >= 1, n_img)
        return once, some

    tp, truth_some = hits(pt, table.truth_image)
    _, pred_some = hits(pi, table.inst_image)
    n_truth = np.bincount(table.truth_image, minlength=n_img)[:, None]
    n_kept = np.bincount(table.inst_image[kept], minlength=n_img)[:, None]
    return tp, (n_kept - pred_some).astype(np.int64), (n_truth - truth_some).astype(np.int64)


def _per_image(image: np.ndarray, flags: np.ndarray, n_img: int) -> np.ndarray:
    """(n_img, 10) count of rows with ``flags[row, k]`` per ``image[row]`` (any grouping)."""
    idx = (image[:, None] * N_THRESHOLDS + np.arange(N_THRESHOLDS))[flags]
    return np.bincount(idx, minlength=n_img * N_THRESHOLDS).reshape(n_img, N_THRESHOLDS).astype(np.int64)


def _precision(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    denominator = tp + fp + fn
    # an image with neither truth nor prediction is perfect
    return np.where(denominator > 0, tp / np.maximum(denominator, 1), 1.0)


# ----------------------------------------------------------------------------- search


@dataclass(frozen=True)
class Setting:
    """One cell type's post-processing: score threshold, minimum area, min kept fraction."""

    score_threshold: float
    min_area: float
    min_kept_fraction: float


def setting_of(pp: PostprocessConfig, cell_type: int) -> Setting:
    """The setting ``pp`` uses for cell type index ``cell_type``."""
    return Setting(pp.score_threshold[cell_type], pp.min_area[cell_type], pp.min_kept_fraction[cell_type])


def with_setting(pp: PostprocessConfig, cell_type: int, setting: Setting) -> PostprocessConfig:
    """``pp`` with cell type ``cell_type``'s three values replaced by ``setting``."""

    def put(values: tuple[float, ...], value: float) -> tuple[float, ...]:
        out = list(values)
        out[cell_type] = value
        return tuple(out)

    return dataclasses.replace(
        pp,
        score_threshold=put(pp.score_threshold, setting.score_threshold),
        min_area=put(pp.min_area, setting.min_area),
        min_kept_fraction=put(pp.min_kept_fraction, setting.min_kept_fraction),
    )


def score_config(table: InstanceTable, pp: PostprocessConfig) -> Outcome:
    """Every image post-processed with its predicted cell type's values of ``pp``."""
    types = table.cell_types
    return run_setting(
        table,
        np.asarray(pp.score_threshold, np.float32)[types],
        np.asarray(pp.min_area, np.float64)[types],
        np.asarray(pp.min_kept_fraction, np.float64)[types],
    )


@dataclass(frozen=True)
class TypeResult:
    """Search result for one cell type.

    Attributes:
        cell_type: name from CELL_TYPES.
        n_images: images predicted as this type (the ones its values act on).
        default: the defaults' setting and mean image score on those images.
        best: the best setting found and its mean score (== default when none is better).
        trials: settings evaluated.
        rescore: the rescoring exponent of ``best`` (``PostprocessConfig.rescore``).
    """

    cell_type: str
    n_images: int
    default: Setting
    default_score: float
    best: Setting
    best_score: float
    trials: int
    rescore: float = 0.0


@dataclass(frozen=True)
class TuneResult:
    """Outcome of :func:`tune_postprocess`.

    Attributes:
        config: the best PostprocessConfig (the defaults where nothing beat them).
        default_score, best_score: mean image score over all images.
        per_type: one TypeResult per cell type.
        history: DataFrame[cell_type, score_threshold, min_area, min_kept_fraction,
            score] of every setting tried.
        seconds: search wall time (after precomputation).
    """

    config: PostprocessConfig
    default_score: float
    best_score: float
    per_type: tuple[TypeResult, ...]
    history: pd.DataFrame
    seconds: float

    @property
    def gain(self) -> float:
        return self.best_score - self.default_score


def candidate_settings(
    default: Setting,
    trials: int,
    seed: int = 0,
    score_grid: Sequence[float] = DEFAULT_SCORE_GRID,
    area_grid: Sequence[float] = DEFAULT_AREA_GRID,
    kept_grid: Sequence[float] = DEFAULT_KEPT_GRID,
) -> list[Setting]:
    """``trials`` settings to try: the default first, then the grid (all of it when it
    fits, else a seeded random sample), sorted by score threshold for view reuse."""
    if trials < 1:
        raise ValueError(f"trials: expected at least 1, got {trials}")
    grid = [Setting(s, a, k) for s, a, k in itertools.product(score_grid, area_grid, kept_grid)]
    grid = [g for g in grid if g != default]
    if trials - 1 < len(grid):
        rng = np.random.default_rng(seed)
        grid = [grid[i] for i in sorted(rng.choice(len(grid), size=trials - 1, replace=False))]
    grid.sort(key=lambda g: (g.score_threshold, g.min_area, g.min_kept_fraction))
    return [default, *grid]


def tune_postprocess(
    table: InstanceTable,
    base: PostprocessConfig,
    trials: int = 300,
    seed: int = 0,
    refine: bool = True,
    progress: Progress | None = None,
) -> TuneResult:
    """Search each cell type's score threshold, minimum area and min kept fraction.

    Each type is tuned on the images predicted as that type: ``trials`` settings from
    :func:`candidate_settings` (the defaults always among them), then, if ``refine``,
    a coordinate search around the best on finer steps. A setting replaces the
    default only when it scores strictly higher, so the result never scores lower than
    ``base`` on these images.

    Args:
        table: the precomputed images (:meth:`InstanceTable.build`).
        base: the defaults (also supplies ``mask_threshold``, which is not searched).
        trials: settings per cell type from the grid (>= 1).
        seed: grid sampling seed.
        refine: also try neighbours of the best on finer steps.

    Returns:
        the :class:`TuneResult`.
    """
    start = time.perf_counter()
    rows: list[dict[str, object]] = []
    results: list[TypeResult] = []
    config = base
    total_default = 0.0
    total_best = 0.0
    for t, name in enumerate(CELL_TYPES):
        images = np.flatnonzero(table.cell_types == t)
        default = setting_of(base, t)
        if len(images) == 0:
            results.append(TypeResult(name, 0, default, float("nan"), default, float("nan"), 0))
            continue
        trial = _Trials(table.subset(images), name, rows)
        settings = candidate_settings(default, trials, seed)
        for setting in progress(settings) if progress else settings:
            trial(setting)
        tried = trial.tried
        best = max(tried, key=lambda s: (tried[s], s == default))
        if refine:
            best = _refine(best, trial)
        default_sum, best_sum = tried[default], tried[best]
        if best_sum <= default_sum:
            best, best_sum = default, default_sum
        total_default += default_sum
        total_best += best_sum
        config = with_setting(config, t, best)
        results.append(
            TypeResult(
                name, len(images), default, default_sum / len(images), best, best_sum / len(images), len(tried),
                base.rescore[t],
            )
        )  # fmt: skip
    n = max(table.n_images, 1)
    return TuneResult(
        config=config,
        default_score=total_default / n,
        best_score=total_best / n,
        per_type=tuple(results),
        history=pd.DataFrame(rows, columns=["cell_type", "score_threshold", "min_area", "min_kept_fraction", "score"]),
        seconds=time.perf_counter() - start,
    )


def rescored(images: Sequence[TuneImage], exponent: float) -> list[TuneImage]:
    """``images`` with every score weighed by its mask confidence
    (:func:`kernel_lib.postprocess.rescore`); exponent 0 returns them as they are.

    Raises:
        ValueError: an exponent > 0 and an image without confidences.
    """
    if exponent == 0:
        return list(images)
    missing = [img.id for img in images if img.confidence is None]
    if missing:
        raise ValueError(f"rescoring needs mask confidences; image(s) {missing[:3]} have none")
    return [dataclasses.replace(img, scores=rescore(img.scores, img.confidence, exponent)) for img in images]


def tune_rescoring(
    images: Sequence[TuneImage],
    base: PostprocessConfig,
    exponents: Sequence[float] = DEFAULT_RESCORE_GRID,
    trials: int = 300,
    seed: int = 0,
    refine: bool = True,
    progress: Progress | None = None,
) -> TuneResult:
    """:func:`tune_postprocess` once per rescoring exponent, keeping per cell type the
    exponent whose best setting scores highest (``base``'s own exponent on ties).

    Rescoring changes the scores, hence the claiming order, so each exponent gets its own
    :class:`InstanceTable`; the images of one predicted type are the same for every
    exponent (the vote uses classes, not scores), so the types choose independently.
    The default of each type is ``base`` as it is (its thresholds at its own exponent).

    Args:
        images: the tuned images, with confidences (:func:`images_from_cache`).
        base: the defaults; its exponents are always among those tried.
        exponents: rescoring exponents in [0, 4] to try.
        trials, seed, refine, progress: as :func:`tune_postprocess`.
    """
    start = time.perf_counter()
    grid = sorted({float(e) for e in exponents} | {float(e) for e in base.rescore})
    runs: dict[float, TuneResult] = {}
    for exponent in grid:
        table = InstanceTable.build(rescored(images, exponent), progress=progress)
        pp = dataclasses.replace(base, rescore=(exponent,) * len(CELL_TYPES))
        runs[exponent] = tune_postprocess(table, pp, trials=trials, seed=seed, refine=refine)
    config, per_type, total_default, total_best = base, [], 0.0, 0.0
    for t in range(len(CELL_TYPES)):
        own = runs[float(base.rescore[t])].per_type[t]
        best = max(runs.values(), key=lambda r: (r.per_type[t].best_score, r is runs[float(base.rescore[t])]))
        chosen = best.per_type[t]
        chosen = dataclasses.replace(chosen, default=own.default, default_score=own.default_score)
        per_type.append(chosen)
        if chosen.n_images:
            total_default += own.default_score * own.n_images
            total_best += chosen.best_score * chosen.n_images
            config = with_setting(config, t, chosen.best)
            config = dataclasses.replace(
                config, rescore=tuple(chosen.rescore if i == t else v for i, v in enumerate(config.rescore))
            )
    n = max(sum(r.n_images for r in per_type), 1)
    history = pd.concat([r.history.assign(rescore=e) for e, r in runs.items()], ignore_index=True)
    return TuneResult(config, total_default / n, total_best / n, tuple(per_type), history, time.perf_counter() - start)


class _Trials:
    """Scores settings on one cell type's images, remembering each (sum of image scores)."""

    def __init__(self, table: InstanceTable, cell_type: str, rows: list[dict[str, object]]) -> None:
        self.table, self.cell_type, self.rows = table, cell_type, rows
        self.tried: dict[Setting, float] = {}

    def __call__(self, setting: Setting) -> float:
        if setting not in self.tried:
            outcome = run_setting(self.table, *dataclasses.astuple(setting))
            self.tried[setting] = float(outcome.image_scores.sum())
            score = self.tried[setting] / max(self.table.n_images, 1)
            self.rows.append({"cell_type": self.cell_type, **dataclasses.asdict(setting), "score": score})
        return self.tried[setting]


def _refine(best: Setting, trial: _Trials) -> Setting:
    """Coordinate search: move one value at a time by a step, halving steps, while it helps."""
    steps = {"score_threshold": 0.05, "min_area": 25.0, "min_kept_fraction": 0.1}
    bounds = {"score_threshold": (0.0, 1.0), "min_area": (0.0, 2000.0), "min_kept_fraction": (0.0, 1.0)}
    for _ in range(3):  # step sizes: 1, 1/2, 1/4 of the grid's
        improved = True
        while improved:
            improved = False
            for name, step in steps.items():
                for sign in (-1, 1):
                    lo, hi = bounds[name]
                    value = round(min(max(getattr(best, name) + sign * step, lo), hi), 4)
                    if name == "min_area":
                        value = float(round(value))
                    candidate = dataclasses.replace(best, **{name: value})
                    if trial(candidate) > trial(best):
                        best, improved = candidate, True
        steps = {k: v / 2 for k, v in steps.items()}
    return best


# ----------------------------------------------------------------------------- cache


def images_from_cache(
    truth_csv: str | Path, cache_dir: str | Path, mask_threshold: float, progress: bool = True
) -> tuple[list[TuneImage], Config]:
    """The last evaluation's cached instances (pasted at ``mask_threshold``) with their
    truth, and the config that evaluation used.

    Raises:
        ValueError: no manifest, a stale or missing cache file, or a cached image
            without annotation in ``truth_csv``.
    """
    from tqdm.auto import tqdm

    from kernel_lib.evaluate import load_cached, read_cache_manifest
    from kernel_lib.truth import read_truth

    entries, used = read_cache_manifest(cache_dir)
    instances = load_cached(entries)
    truth = read_truth(truth_csv, ids=instances)
    absent = [i for i in instances if i not in truth]
    if absent:
        raise ValueError(f"{len(absent)} cached image(s) have no annotation in {truth_csv}, e.g. {absent[:3]}")
    images = [
        TuneImage(
            i,
            paste(inst, mask_threshold),
            inst.scores,
            inst.classes,
            truth[i].masks,
            confidence=mask_confidence(inst, mask_threshold),
        )
        for i, inst in tqdm(instances.items(), desc="paste", unit="img", disable=not progress)
    ]
    return images, used
