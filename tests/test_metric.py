"""Competition metric: golden values worked by hand, sparse vs dense IoU, real truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernel_lib.config import IOU_THRESHOLDS
from kernel_lib.masks import CropMasks
from kernel_lib.metric import image_score, instance_pixels, score_submission, sparse_iou
from kernel_lib.rle import rle_encode_stack

SHAPE = (30, 40)


def box(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def stack(*masks: np.ndarray) -> np.ndarray:
    return np.stack(masks) if masks else np.zeros((0, *SHAPE), bool)


A = box(0, 10, 0, 10)  # 100 px
B = box(15, 25, 20, 30)  # 100 px, disjoint from A
C = box(0, 5, 30, 40)  # 50 px, disjoint from both


def test_perfect() -> None:
    s = image_score(stack(A, B), stack(B, A))
    assert s.tp.tolist() == [2] * 10 and s.fp.sum() == 0 and s.fn.sum() == 0
    assert s.score == 1.0


def test_all_missed() -> None:
    s = image_score(stack(A, B), stack(C))
    # TP 0, FP 1, FN 2 at every threshold
    assert s.tp.sum() == 0 and s.fp.tolist() == [1] * 10 and s.fn.tolist() == [2] * 10
    assert s.score == 0.0


def test_half_matched() -> None:
    # A found exactly, B missed: TP 1, FN 1 -> 1 / (1 + 0 + 1)
    assert image_score(stack(A, B), stack(A)).score == pytest.approx(1 / 2)
    # plus a spurious C: TP 1, FP 1, FN 1 -> 1 / 3
    assert image_score(stack(A, B), stack(A, C)).score == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("columns_px", "iou", "n_matched_thresholds"),
    [
        (59, 0.59, 2),  # just below 0.60: matches at 0.50, 0.55
        (60, 0.60, 2),  # exactly 0.60 is not > 0.60
        (61, 0.61, 3),  # just above 0.60: 0.50, 0.55, 0.60
        (96, 0.96, 10),  # above 0.95: every threshold
        (95, 0.95, 9),  # exactly 0.95 is not > 0.95
    ],
)
def test_iou_just_above_and_below_a_threshold(columns_px: int, iou: float, n_matched_thresholds: int) -> None:
    truth = A  # 100 px
    pred = np.zeros(SHAPE, bool)
    pred.ravel()[np.flatnonzero(A.ravel())[:columns_px]] = True  # the first k pixels of A
    _, _, ious = sparse_iou(instance_pixels(stack(truth)), instance_pixels(stack(pred)), SHAPE[0] * SHAPE[1])
    assert ious.tolist() == pytest.approx([iou])
    s = image_score(stack(truth), stack(pred))
    # matched thresholds: precision 1; the others: TP 0, FP 1, FN 1 -> 0
    assert s.precision.tolist() == [1.0] * n_matched_thresholds + [0.0] * (10 - n_matched_thresholds)
    assert s.score == pytest.approx(n_matched_thresholds / 10)


def test_prediction_larger_than_truth() -> None:
    # truth 100 px inside a 10x12 prediction: IoU 100 / 120 = 0.833 -> 0.50 .. 0.80 match (7 of 10)
    s = image_score(stack(A), stack(box(0, 10, 0, 12)))
    assert s.score == pytest.approx(7 / 10)


def test_truth_without_prediction_scores_zero() -> None:
    s = image_score(stack(A, B), stack())
    assert s.fn.tolist() == [2] * 10 and s.score == 0.0


def test_prediction_without_truth_scores_zero() -> None:
    s = image_score(stack(), stack(A))
    assert s.fp.tolist() == [1] * 10 and s.score == 0.0


def test_no_truth_no_prediction_scores_one() -> None:
    # the documented convention: TP + FP + FN = 0 -> precision 1 (nothing to find, nothing wrong)
    s = image_score(stack(), stack())
    assert s.tp.sum() == s.fp.sum() == s.fn.sum() == 0
    assert s.score == 1.0


def test_overlapping_truths_scored_against_themselves() -> None:
    # A and A shifted by 2 columns share 80 px: IoU 80 / 120 = 0.667. At t < 0.667 each
    # truth matches both predictions (neither TP nor FN) and each prediction matches a
    # truth (no FP): 0 / 0, taken as 1; above, each truth has its one match: TP 2.
    truth = stack(A, box(0, 10, 2, 12))
    s = image_score(truth, truth)
    assert s.tp.tolist() == [0, 0, 0, 0] + [2] * 6
    assert s.fp.sum() == 0 and s.fn.sum() == 0
    assert s.score == 1.0


def test_one_prediction_can_match_two_overlapping_truths() -> None:
    # truths A (100 px) and A shifted by 2 (100 px), one prediction = their union (120 px):
    # IoU 100/120 = 0.833 with each -> each truth has exactly one match (TP 2) for t < 0.833
    truth = stack(A, box(0, 10, 2, 12))
    s = image_score(truth, stack(box(0, 10, 0, 12)))
    assert s.tp.tolist() == [2] * 7 + [0] * 3
    assert s.fn.tolist() == [0] * 7 + [2] * 3
    assert s.fp.tolist() == [0] * 7 + [1] * 3
    assert s.score == pytest.approx(7 / 10)


def test_input_forms_agree() -> None:
    truth = stack(A, B)
    pred = stack(box(0, 10, 0, 9), C)
    expected = image_score(truth, pred).precision
    labels = np.zeros(SHAPE, np.int32)
    labels[pred[0]] = 3  # labels need not be consecutive: 3 and 7 are two instances
    labels[pred[1]] = 7
    forms = [CropMasks.from_stack(pred), labels, rle_encode_stack(pred)]
    for form in forms:
        np.testing.assert_array_equal(image_score(CropMasks.from_stack(truth), form, shape=SHAPE).precision, expected)


def dense_reference(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The public notebooks' way: full-frame IoU matrix, then the counting rule."""
    t = truth.reshape(len(truth), -1).astype(np.int64)
    p = pred.reshape(len(pred), -1).astype(np.int64)
    inter = t @ p.T
    union = t.sum(1)[:, None] + p.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    out = []
    for th in IOU_THRESHOLDS:
        m = iou > th
        tp = np.sum(m.sum(1) == 1)
        fn = np.sum(m.sum(1) == 0)
        fp = np.sum(m.sum(0) == 0)
        out.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
    return np.array(out)


@pytest.mark.parametrize("seed", range(4))
def test_sparse_equals_dense_on_random_overlapping_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)

    def blobs(n: int) -> np.ndarray:
        out = np.zeros((n, *SHAPE), bool)
        for i in range(n):
            y, x = rng.integers(0, 25), rng.integers(0, 35)
            out[i, y : y + rng.integers(2, 9), x : x + rng.integers(2, 9)] = True
        return out

    truth = blobs(25)  # random boxes: many overlap each other
    pred = truth.copy()
    pred[::2] = np.roll(pred[::2], 1, axis=2)  # every other prediction shifted one column
    pred = np.concatenate([pred, blobs(5)])
    np.testing.assert_allclose(image_score(truth, pred).precision, dense_reference(truth, pred))
    # sparse IoUs equal the dense matrix's non-zero entries
    t, p, iou = sparse_iou(instance_pixels(truth), instance_pixels(pred), SHAPE[0] * SHAPE[1])
    ti, pi = truth.reshape(25, -1).astype(int), pred.reshape(30, -1).astype(int)
    inter = ti @ pi.T
    dense = inter / (ti.sum(1)[:, None] + pi.sum(1)[None] - inter)
    assert set(zip(t.tolist(), p.tolist())) == set(zip(*np.nonzero(inter)))
    np.testing.assert_allclose(iou, dense[t, p])


def two_image_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    a, b = rle_encode_stack(stack(A, B))
    c = rle_encode_stack(stack(C))[0]
    truth = pd.DataFrame(
        {
            "id": ["img1", "img1", "img2"],
            "annotation": [a, b, c],
            "width": [40] * 3,
            "height": [30] * 3,
            "cell_type": ["astro", "astro", "cort"],
        }
    )
    pred = pd.DataFrame({"id": ["img1", "img1", "img2"], "predicted": [b, a, ""]})
    return truth, pred


def test_score_submission_aggregates() -> None:
    truth, pred = two_image_frames()
    report = score_submission(truth, pred, shape=SHAPE)
    # img1 perfect (1.0), img2 has truth and an empty prediction row (0.0)
    assert report.per_image["score"].tolist() == [1.0, 0.0]
    assert report.score == 0.5
    assert report.per_cell_type == {"astro": 1.0, "cort": 0.0}
    assert report.per_threshold == {t: 0.5 for t in IOU_THRESHOLDS}
    assert report.n_images == 2
    d = report.to_dict()
    assert d["score"] == 0.5 and d["n_images"] == 2 and d["per_threshold"]["0.50"] == 0.5


def test_score_submission_id_handling() -> None:
    truth, pred = two_image_frames()
    # img2 absent from the prediction: scored as no prediction (0)
    assert score_submission(truth, pred.iloc[:2], shape=SHAPE).score == 0.5
    # only the ids asked for
    assert score_submission(truth, pred, ids=["img1"], shape=SHAPE).score == 1.0
    extra = pd.concat([pred, pd.DataFrame({"id": ["other"], "predicted": [""]})])
    with pytest.raises(ValueError, match=r"1 id\(s\) not in truth"):
        score_submission(truth, extra, shape=SHAPE)


def test_score_submission_bad_inputs() -> None:
    truth, pred = two_image_frames()
    with pytest.raises(ValueError, match=r"missing column\(s\) \['predicted'\]"):
        score_submission(truth, pred.rename(columns={"predicted": "annotation"}), shape=SHAPE)
    with pytest.raises(ValueError, match="height 30 for id img1, expected 520"):
        score_submission(truth, pred)  # default 520x704 shape vs the 30x40 file
    bad = pred.copy()
    bad.loc[1, "predicted"] = "5 2 1 1"
    with pytest.raises(ValueError, match=r"prediction: image img1, data row 2: .*unsorted"):
        score_submission(truth, bad, shape=SHAPE)


def self_scores(train_csv: Path) -> pd.DataFrame:
    truth = pd.read_csv(train_csv)
    pred = truth.rename(columns={"annotation": "predicted"})[["id", "predicted"]]
    return truth, pred


def test_shipped_truth_against_itself_is_one(data_dir: Path) -> None:
    truth, pred = self_scores(data_dir / "train.csv")
    report = score_submission(truth, pred)
    assert report.n_images == 7
    assert report.score == 1.0
    assert report.per_cell_type == {"shsy5y": 1.0, "astro": 1.0, "cort": 1.0}


def test_shipped_truth_with_every_other_cell_dropped(data_dir: Path) -> None:
    # keep cells 0, 2, 4, ... of each image: TP = kept, FN = dropped, FP = 0 at every
    # threshold (annotations overlap little), so an image scores kept / total
    truth, pred = self_scores(data_dir / "train.csv")
    position = pred.groupby("id").cumcount()
    report = score_submission(truth, pred[position % 2 == 0])
    counts = truth["id"].value_counts()
    expected = {i: ((n + 1) // 2) / n for i, n in counts.items()}
    got = dict(zip(report.per_image["id"], report.per_image["score"]))
    assert got == pytest.approx(expected)


def test_mini_pack_truth_against_itself_is_one(mini_dir: Path) -> None:
    truth, pred = self_scores(mini_dir / "train.csv")
    report = score_submission(truth, pred)
    assert report.n_images == truth["id"].nunique() == 95
    assert report.score == 1.0
