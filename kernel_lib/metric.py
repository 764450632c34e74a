"""The competition metric: mean over images of the precision averaged over IoU thresholds.

For one image and a threshold t in 0.50, 0.55, ..., 0.95 (:data:`IOU_THRESHOLDS`), a
prediction matches a truth when their IoU is > t (strictly). Then

- TP = truths with exactly one matching prediction,
- FP = predictions matching no truth,
- FN = truths matching no prediction,
- precision(t) = TP / (TP + FP + FN); the image's score is the mean over thresholds,

and the submission's score is the mean of the image scores. (A truth with two or more
matches counts as neither TP nor FN; with disjoint predictions and t >= 0.5 it cannot
happen.) Conventions at the edges, chosen here and tested:

- an image with truth and no prediction: TP = 0, FN = #truth -> 0;
- an image with predictions and no truth: FP = #pred -> 0;
- an image with neither: TP + FP + FN = 0; its precision is taken as 1 at every
  threshold (nothing to find, nothing wrongly found: the perfect answer). The public
  notebooks' scorers give 0 (they skip images without predictions) or NaN (0/0); the
  competition's images all have cells, so no leaderboard score depends on this choice.

IoUs are computed sparsely from pixel lists (flat indices), never as N x M full-frame
products: truth pixels go into a label image; only pixels covered by two or more truths
(annotations may overlap) are joined through a sorted list. Predictions may overlap too
(a truth set scored against itself gives 1.0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kernel_lib.config import CELL_TYPES, IMAGE_SHAPE, IOU_THRESHOLDS
from kernel_lib.masks import CropMasks
from kernel_lib.rle import crop_runs, parse_runs, runs_to_indices
from kernel_lib.truth import AnnotationProblem, truth_images

__all__ = [
    "ImageScore",
    "ScoreReport",
    "image_score",
    "instance_pixels",
    "match_counts",
    "report_from_scores",
    "score_submission",
    "sparse_iou",
]

Instances = CropMasks | np.ndarray | Sequence[str]
"""One image's instances: a CropMasks, a (N, H, W) bool stack, a (H, W) integer label
image (0 is background; each label present is one instance, in increasing label order),
or N RLE strings."""


# --------------------------------------------------------------------------- pixels


def instance_pixels(instances: Instances, shape: tuple[int, int] = IMAGE_SHAPE) -> tuple[np.ndarray, np.ndarray, int]:
    """Pixel lists of one image's instances.

    Args:
        instances: see :data:`Instances`. A CropMasks or an array gives its own shape;
            ``shape`` is used for RLE strings.

    Returns:
        ``(inst, pix, n)``: (P,) int64 instance ids (grouped, ascending) and (P,) int64
        flat row-major pixel indices, and the number of instances n (empty ones count).
    """
    if isinstance(instances, CropMasks):
        inst_runs, starts, lengths = crop_runs(instances)
        return np.repeat(inst_runs, lengths), runs_to_indices(starts, lengths), len(instances)
    if isinstance(instances, np.ndarray):
        if instances.ndim == 3:
            n = instances.shape[0]
            inst, pix = np.nonzero(instances.reshape(n, instances.shape[1] * instances.shape[2]))
            return inst.astype(np.int64), pix.astype(np.int64), n
        if instances.ndim == 2 and np.issubdtype(instances.dtype, np.integer):
            flat = instances.ravel()
            if flat.size and flat.min() < 0:
                raise ValueError(f"label image: expected labels >= 0, got {int(flat.min())}")
            pix = np.flatnonzero(flat > 0)
            labels = flat[pix].astype(np.int64)
            present = np.flatnonzero(np.bincount(labels)) if labels.size else np.zeros(0, np.int64)
            remap = np.zeros(int(present[-1]) + 1 if present.size else 1, np.int64)
            remap[present] = np.arange(present.size)
            labels = remap[labels]  # the present labels, in increasing order, become 0..n-1
            n = present.size
            order = np.argsort(labels, kind="stable")
            return labels[order], pix[order].astype(np.int64), n
        raise ValueError(
            f"expected a (N, H, W) bool stack or a (H, W) integer label image, got {instances.dtype} {instances.shape}"
        )
    rles = list(instances)
    inst_runs, starts, lengths = parse_runs(rles, shape)
    return np.repeat(inst_runs, lengths), runs_to_indices(starts, lengths), len(rles)


def _shape_of(instances: Instances, shape: tuple[int, int]) -> tuple[int, int]:
    if isinstance(instances, CropMasks):
        return tuple(instances.shape)  # type: ignore[return-value]
    if isinstance(instances, np.ndarray):
        return tuple(instances.shape[-2:])  # type: ignore[return-value]
    return shape


# ------------------------------------------------------------------------------ IoU


def sparse_iou(
    truth: tuple[np.ndarray, np.ndarray, int],
    pred: tuple[np.ndarray, np.ndarray, int],
    n_pixels: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every (truth, prediction) pair that shares at least one pixel.

    Args:
        truth: ``(inst, pix, n)`` from :func:`instance_pixels`; truths may overlap.
        pred: the same for the predictions; they may overlap too.
        n_pixels: H * W.

    Returns:
        ``(t, p, iou)``: (K,) int64 truth ids, (K,) int64 prediction ids and (K,)
        float64 IoUs, one entry per overlapping pair (pairs with no common pixel have
        IoU 0 and are left out).
    """
    t_inst, t_pix, n_t = truth
    p_inst, p_pix, n_p = pred
    empty = np.zeros(0, np.int64)
    if n_t == 0 or n_p == 0 or t_pix.size == 0 or p_pix.size == 0:
        return empty, empty, np.zeros(0)
    cover = np.bincount(t_pix, minlength=n_pixels)
    single = cover[t_pix] == 1
    label = np.full(n_pixels, -1, np.int64)
    label[t_pix[single]] = t_inst[single]
    t_of_p = label[p_pix]
    hit = t_of_p >= 0
    pair_t = [t_of_p[hit]]
    pair_p = [p_inst[hit]]
    if not single.all():
        # pixels under 2+ truths: join the predictions' pixels with a sorted list of them
        m_pix, m_inst = t_pix[~single], t_inst[~single]
        order = np.argsort(m_pix, kind="stable")
        m_pix, m_inst = m_pix[order], m_inst[order]
        multi = cover[p_pix] > 1
        q_pix, q_inst = p_pix[multi], p_inst[multi]
        if q_pix.size:
            first = np.searchsorted(m_pix, q_pix)
            count = cover[q_pix]
            owner = np.repeat(np.arange(q_pix.size), count)
            offset = np.arange(owner.size) - np.repeat(np.cumsum(count) - count, count)
            pair_t.append(m_inst[first[owner] + offset])
            pair_p.append(q_inst[owner])
    t_all = np.concatenate(pair_t)
    p_all = np.concatenate(pair_p)
    if t_all.size == 0:
        return empty, empty, np.zeros(0)
    key = t_all * n_p + p_all
    if n_t * n_p <= 1 << 23:
        counts = np.bincount(key, minlength=n_t * n_p)
        key = np.flatnonzero(counts)
        inter = counts[key]
    else:
        key, inter = np.unique(key, return_counts=True)
    t, p = np.divmod(key, n_p)
    t_area = np.bincount(t_inst, minlength=n_t)
    p_area = np.bincount(p_inst, minlength=n_p)
    iou = inter / (t_area[t] + p_area[p] - inter)
    return t.astype(np.int64), p.astype(np.int64), iou


def match_counts(
    n_truth: int,
    n_pred: int,
    t: np.ndarray,
    p: np.ndarray,
    iou: np.ndarray,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN at each threshold from the sparse IoUs of :func:`sparse_iou`.

    Returns:
        ``(tp, fp, fn)``, each (len(thresholds),) int64.
    """
    k = len(thresholds)
    tp, fp, fn = np.zeros(k, np.int64), np.zeros(k, np.int64), np.zeros(k, np.int64)
    for i, threshold in enumerate(thresholds):
        m = iou > threshold
        truth_matches = np.bincount(t[m], minlength=n_truth)
        pred_matches = np.bincount(p[m], minlength=n_pred)
        tp[i] = np.count_nonzero(truth_matches == 1)
        fn[i] = np.count_nonzero(truth_matches == 0)
        fp[i] = np.count_nonzero(pred_matches == 0)
    return tp, fp, fn


@dataclass(frozen=True)
class ImageScore:
    """The metric on one image.

    Attributes:
        tp, fp, fn: (T,) int64 counts per IoU threshold.
        precision: (T,) float64 TP / (TP + FP + FN) per threshold (1 where the
            denominator is 0: no truth and no prediction).
        n_truth, n_pred: instances in the image.
        thresholds: the T IoU thresholds.
    """

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    n_truth: int
    n_pred: int
    thresholds: tuple[float, ...] = IOU_THRESHOLDS
    precision: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        denom = self.tp + self.fp + self.fn
        precision = np.where(denom > 0, self.tp / np.maximum(denom, 1), 1.0)
        object.__setattr__(self, "precision", precision.astype(np.float64))

    @property
    def score(self) -> float:
        """Mean precision over the thresholds."""
        return float(self.precision.mean())


def image_score(
    truth: Instances,
    pred: Instances,
    shape: tuple[int, int] = IMAGE_SHAPE,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> ImageScore:
    """Score one image's predictions against its truth.

    Args:
        truth: the annotated instances (see :data:`Instances`); they may overlap.
        pred: the predicted instances; they may overlap (a submission's do not).
        shape: (H, W), used for RLE strings; arrays and CropMasks carry their own and
            must agree with each other.
        thresholds: IoU thresholds (default 0.50..0.95).

    Returns:
        :class:`ImageScore` (``.score`` is the image's metric).
    """
    t_shape, p_shape = _shape_of(truth, shape), _shape_of(pred, shape)
    if t_shape != p_shape:
        raise ValueError(f"image_score: truth is {t_shape[0]}x{t_shape[1]} but prediction is {p_shape[0]}x{p_shape[1]}")
    t_px = instance_pixels(truth, t_shape)
    p_px = instance_pixels(pred, p_shape)
    t, p, iou = sparse_iou(t_px, p_px, t_shape[0] * t_shape[1])
    tp, fp, fn = match_counts(t_px[2], p_px[2], t, p, iou, thresholds)
    return ImageScore(tp, fp, fn, t_px[2], p_px[2], tuple(thresholds))


# ---------------------------------------------------------------------- submissions


@dataclass(frozen=True)
class ScoreReport:
    """The metric over many images.

    Attributes:
        score: mean of the image scores (NaN with no image).
        per_image: DataFrame with columns id, cell_type, score, n_truth, n_pred, and
            one ``p@0.50`` ... ``p@0.95`` precision column per threshold.
        per_cell_type: cell type -> mean score of its images (CELL_TYPES order first).
        per_threshold: threshold -> mean precision over images.
        dropped: the truth rows of the scored images that the truth policy left out
            (:mod:`kernel_lib.truth`: empty, malformed, duplicated, ...), in row order.
    """

    score: float
    per_image: pd.DataFrame
    per_cell_type: dict[str, float]
    per_threshold: dict[float, float]
    dropped: tuple[AnnotationProblem, ...] = ()

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: score, n_images, per_cell_type (with counts), per_threshold, per_image.

        A mean over no image (NaN: nothing was scored) is ``None`` (JSON ``null``)."""
        counts = self.per_image["cell_type"].value_counts().to_dict()
        return {
            "score": _finite_or_none(self.score),
            "n_images": self.n_images,
            "per_cell_type": {k: _finite_or_none(v) for k, v in self.per_cell_type.items()},
            "n_images_per_cell_type": {k: int(counts.get(k, 0)) for k in self.per_cell_type},
            "per_threshold": {f"{t:.2f}": _finite_or_none(v) for t, v in self.per_threshold.items()},
            "per_image": [
                {
                    "id": r.id,
                    "cell_type": r.cell_type,
                    "score": float(r.score),
                    "n_truth": int(r.n_truth),
                    "n_pred": int(r.n_pred),
                }
                for r in self.per_image.itertuples(index=False)
            ],
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def report_from_scores(scores: Mapping[str, ImageScore], cell_types: Mapping[str, str] | None = None) -> ScoreReport:
    """Aggregate per-image scores (``id -> ImageScore``) into a :class:`ScoreReport`.

    ``cell_types`` maps id -> cell type name (missing ids get "")."""
    cell_types = cell_types or {}
    ids = list(scores)
    thresholds = next(iter(scores.values())).thresholds if scores else IOU_THRESHOLDS
    precision = np.array([scores[i].precision for i in ids], np.float64).reshape(len(ids), len(thresholds))
    per_image = pd.DataFrame(
        {
            "id": ids,
            "cell_type": [cell_types.get(i, "") for i in ids],
            "score": precision.mean(axis=1) if ids else np.zeros(0),
            "n_truth": [scores[i].n_truth for i in ids],
            "n_pred": [scores[i].n_pred for i in ids],
        }
    )
    for k, t in enumerate(thresholds):
        per_image[f"p@{t:.2f}"] = precision[:, k]
    present = list(dict.fromkeys(per_image["cell_type"]))
    ordered = [c for c in CELL_TYPES if c in present] + sorted(c for c in present if c not in CELL_TYPES)
    per_cell_type = {c: float(per_image.loc[per_image["cell_type"] == c, "score"].mean()) for c in ordered}
    per_threshold = {float(t): float(precision[:, k].mean()) if ids else float("nan") for k, t in enumerate(thresholds)}
    score = float(per_image["score"].mean()) if ids else float("nan")
    return ScoreReport(score, per_image, per_cell_type, per_threshold)


def _column_strings(df: pd.DataFrame, column: str) -> np.ndarray:
    """A column as str with NaN -> "" (frames read with or without keep_default_na)."""
    return df[column].fillna("").astype(str).str.strip().to_numpy()


def _groups(ids: np.ndarray) -> dict[str, np.ndarray]:
    """id -> row positions (in file order)."""
    if ids.size == 0:
        return {}
    codes, uniques = pd.factorize(ids)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    return {str(uniques[codes[g[0]]]): g for g in np.split(order, bounds)}


def score_submission(
    truth_df: pd.DataFrame,
    pred_df: pd.DataFrame,
    ids: Iterable[str] | None = None,
    shape: tuple[int, int] = IMAGE_SHAPE,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    truth_source: str = "truth",
    pred_source: str = "prediction",
    progress: bool = False,
) -> ScoreReport:
    """Score a submission against train.csv-style truth.

    The truth is read under the policy training and evaluation apply too
    (:func:`kernel_lib.truth.truth_images`): empty, malformed and duplicated rows (the
    same pixels as an earlier row of the image) and rows of another cell type than the
    image's are left out and listed in the report's ``dropped``.

    Args:
        truth_df: columns ``id``, ``annotation`` (RLE), optionally ``cell_type`` (the
            per-cell-type report) and ``width`` / ``height`` (checked against ``shape``).
        pred_df: columns ``id``, ``predicted`` (RLE; empty = no instance).
        ids: the images to score. ``None``: every id of the truth; an id without rows
            in the prediction scores as an image with no prediction (0).
        shape: (H, W) of every image.
        thresholds: IoU thresholds (default 0.50..0.95).
        truth_source, pred_source: names of the two inputs in error messages (file paths).
        progress: show a tqdm bar.

    Returns:
        :class:`ScoreReport`.

    Raises:
        ValueError: a missing column, a size other than ``shape``, a malformed predicted
            RLE (named by id and row), a prediction id the truth lacks, or an id in
            ``ids`` the truth lacks.
    """
    _check_columns(truth_df, pred_df, truth_source, pred_source)
    _check_frame_size(truth_df, shape, truth_source)
    height, width = shape
    # the size is checked above for the whole file: the policy checks the rest
    truth = truth_images(truth_df[[c for c in ("id", "annotation", "cell_type") if c in truth_df.columns]], shape=shape)
    p_ids, p_rles = _column_strings(pred_df, "id"), _column_strings(pred_df, "predicted")
    p_groups = _groups(p_ids)
    unknown = [i for i in p_groups if i not in truth]
    if unknown:
        raise ValueError(
            f"{pred_source}: {len(unknown)} id(s) not in {truth_source}, e.g. {unknown[:3]}; "
            "score against the truth file that holds these images"
        )
    wanted = _wanted_ids(ids, truth, truth_source)
    iterator: Iterable[str] = wanted
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(wanted, desc="scoring", unit="image")
    scores: dict[str, ImageScore] = {}
    cell_types: dict[str, str] = {}
    no_rows = np.zeros(0, np.int64)
    for image_id in iterator:
        t_px = truth[image_id].instance_pixels()  # an id with only empty rows: no truth
        p_rows = p_groups.get(image_id, no_rows)
        p_rows = p_rows[p_rles[p_rows] != ""]
        p_px = _pixels_or_error(p_rles, p_rows, shape, pred_source, image_id)
        t, p, iou = sparse_iou(t_px, p_px, height * width)
        tp, fp, fn = match_counts(t_px[2], p_px[2], t, p, iou, thresholds)
        scores[image_id] = ImageScore(tp, fp, fn, t_px[2], p_px[2], tuple(thresholds))
        cell_types[image_id] = truth[image_id].cell_type
    dropped = sorted((p for i in wanted for p in truth[i].dropped), key=lambda p: (p.row, p.id))
    return dataclasses.replace(report_from_scores(scores, cell_types), dropped=tuple(dropped))


def _check_columns(truth_df: pd.DataFrame, pred_df: pd.DataFrame, truth_source: str, pred_source: str) -> None:
    for df, cols, source in (
        (truth_df, ("id", "annotation"), truth_source),
        (pred_df, ("id", "predicted"), pred_source),
    ):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(
                f"{source}: missing column(s) {missing}, found {list(df.columns)}; expected "
                f"{', '.join(cols)} (train.csv for the truth, submission.csv for the prediction)"
            )


def _check_frame_size(truth_df: pd.DataFrame, shape: tuple[int, int], truth_source: str) -> None:
    """The truth's ``height`` / ``width`` columns, when present, must be ``shape``."""
    for column, expected in (("height", shape[0]), ("width", shape[1])):
        if column in truth_df.columns:
            values = pd.to_numeric(truth_df[column], errors="coerce")
            bad = truth_df.loc[values != expected, "id"]
            if len(bad):
                raise ValueError(
                    f"{truth_source}: {column} {truth_df.loc[bad.index[0], column]} for id {bad.iloc[0]}, expected "
                    f"{expected}; pass the image size with --height/--width (shape) or fix the file"
                )


def _wanted_ids(ids: Iterable[str] | None, truth: Mapping[str, object], truth_source: str) -> list[str]:
    """``ids`` as strings (every truth id when None); each must be in the truth."""
    wanted = list(truth) if ids is None else [str(i) for i in ids]
    absent = [i for i in wanted if i not in truth]
    if absent:
        raise ValueError(f"ids to score not in {truth_source}: {absent[:3]} ({len(absent)} in all)")
    return wanted


def _pixels_or_error(
    rles: np.ndarray, rows: np.ndarray, shape: tuple[int, int], source: str, image_id: str
) -> tuple[np.ndarray, np.ndarray, int]:
    try:
        return instance_pixels(list(rles[rows]), shape)
    except ValueError as err:
        text = str(err)
        if text.startswith("RLE "):
            k, _, rest = text[4:].partition(": ")
            if k.isdigit():
                text = f"data row {int(rows[int(k)]) + 1}: {rest}"
        raise ValueError(
            f"{source}: image {image_id}, {text}; expected row-major 'start length' pairs "
            f"(1-indexed, sorted, inside {shape[0]}x{shape[1]})"
        ) from None
