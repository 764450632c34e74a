"""Post-processing: cell-type vote, per-type thresholds, greedy overlap removal."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_lib.config import PostprocessConfig
from kernel_lib.masks import CropMasks
from kernel_lib.postprocess import Postprocessed, image_cell_type, postprocess, remove_overlaps


def box(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def no_thresholds(min_kept_fraction: float = 0.0) -> PostprocessConfig:
    return PostprocessConfig(
        score_threshold=(0.0, 0.0, 0.0), min_area=(1, 1, 1), min_kept_fraction=(min_kept_fraction,) * 3
    )


def test_image_cell_type_majority_and_ties() -> None:
    assert image_cell_type(np.array([2, 1, 2, 0])) == 2
    assert image_cell_type(np.array([1, 2, 2, 1])) == 1  # tie -> lower class id
    assert image_cell_type(np.zeros(0, np.int64)) == 0
    with pytest.raises(ValueError, match=r"class ids in 0\.\.2"):
        image_cell_type(np.array([3]))


def test_overlap_goes_to_higher_score() -> None:
    shape = (6, 8)
    low = box(shape, 0, 4, 0, 4)  # 16 px
    high = box(shape, 2, 6, 2, 6)  # 16 px, shares rows 2-3 x cols 2-3 = 4 px with `low`
    out = postprocess(np.stack([low, high]), np.array([0.5, 0.9]), np.array([0, 0]), no_thresholds())
    assert out.keep.tolist() == [1, 0]  # descending score
    np.testing.assert_allclose(out.scores, [0.9, 0.5])
    assert out.masks.areas().tolist() == [16, 16 - 4]
    stack = out.masks.to_stack()
    assert not (stack[0] & stack[1]).any()
    np.testing.assert_array_equal(stack[1], low & ~high)


def test_min_kept_fraction_drops_mostly_covered_mask() -> None:
    shape = (6, 8)
    first = box(shape, 0, 4, 0, 4)  # 16 px
    second = box(shape, 0, 4, 1, 5)  # 16 px, 12 of them taken -> keeps 4/16 = 0.25
    masks = np.stack([first, second])
    kept = postprocess(masks, np.array([0.9, 0.8]), np.array([0, 0]), no_thresholds(0.25))
    assert kept.keep.tolist() == [0, 1]  # 0.25 is not below 0.25
    dropped = postprocess(masks, np.array([0.9, 0.8]), np.array([0, 0]), no_thresholds(0.26))
    assert dropped.keep.tolist() == [0]


def test_dropped_mask_claims_nothing() -> None:
    shape = (4, 10)
    a = box(shape, 0, 2, 0, 4)  # 8 px, score .9
    b = box(shape, 0, 2, 2, 8)  # 12 px, 4 of them shared with a
    c = box(shape, 0, 2, 6, 10)  # 8 px, 4 of them shared with b
    cfg = PostprocessConfig(score_threshold=(0, 0, 0), min_area=(8, 8, 8))
    out = postprocess(np.stack([a, b, c]), np.array([0.9, 0.8, 0.7]), np.zeros(3, np.int64), cfg)
    # a keeps 8; b keeps 12-4 = 8 -> kept and takes cols 4..7; c keeps 8-4 = 4 < 8 -> dropped
    assert out.keep.tolist() == [0, 1]
    cfg9 = PostprocessConfig(score_threshold=(0, 0, 0), min_area=(8, 8, 8), min_kept_fraction=(0.7, 0.7, 0.7))
    out = postprocess(np.stack([a, b, c]), np.array([0.9, 0.8, 0.7]), np.zeros(3, np.int64), cfg9)
    # b keeps 8/12 = 0.67 < 0.7 -> dropped, claims nothing; c keeps all 8 of its pixels
    assert out.keep.tolist() == [0, 2]
    assert out.masks.areas().tolist() == [8, 8]


def test_per_type_thresholds_follow_the_image_type() -> None:
    shape = (20, 20)
    masks = np.stack([box(shape, 0, 10, 0, 10), box(shape, 10, 20, 10, 20), box(shape, 0, 5, 15, 20)])
    scores = np.array([0.30, 0.50, 0.60])
    cfg = PostprocessConfig()  # defaults: scores (.15, .35, .55), min area (75, 150, 75)
    # majority astro (class 1): score >= .35 and area >= 150 -> none of 100, 100, 25 px survive
    assert len(postprocess(masks, scores, np.array([1, 1, 0]), cfg)) == 0
    # majority shsy5y: score >= .15 and area >= 75 -> masks 0 and 1 (100 px), not mask 2 (25 px)
    out = postprocess(masks, scores, np.array([0, 0, 1]), cfg)
    assert out.cell_type == 0
    assert out.keep.tolist() == [1, 0]
    # majority cort: score >= .55 -> only mask 2, which is too small (25 < 75)
    assert len(postprocess(masks, scores, np.array([2, 2, 0]), cfg)) == 0


def test_equal_scores_keep_input_order() -> None:
    shape = (4, 4)
    a, b = box(shape, 0, 2, 0, 2), box(shape, 0, 2, 1, 3)
    out = postprocess(np.stack([a, b]), np.array([0.5, 0.5]), np.zeros(2, np.int64), no_thresholds())
    assert out.keep.tolist() == [0, 1]
    assert out.masks.areas().tolist() == [4, 2]


def test_empty_input_and_empty_masks() -> None:
    out = postprocess(CropMasks.empty((5, 5)), np.zeros(0), np.zeros(0, np.int64), PostprocessConfig())
    assert isinstance(out, Postprocessed)
    assert len(out) == 0 and out.keep.dtype == np.int64 and out.masks.shape == (5, 5)
    stack = np.zeros((2, 5, 5), bool)
    stack[1, 0, 0] = True
    out = postprocess(stack, np.array([0.9, 0.8]), np.zeros(2, np.int64), no_thresholds())
    assert out.keep.tolist() == [1]  # the empty mask is never kept


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected 2 scores"):
        postprocess(np.zeros((2, 3, 3), bool), np.zeros(3), np.zeros(2, np.int64), PostprocessConfig())


def test_matches_full_frame_reference_on_random_masks() -> None:
    rng = np.random.default_rng(1)
    shape = (40, 50)
    n = 60
    stack = np.zeros((n, *shape), bool)
    for i in range(n):
        y, x = rng.integers(0, 35), rng.integers(0, 45)
        h, w = rng.integers(2, 8), rng.integers(2, 8)
        stack[i, y : y + h, x : x + w] = rng.random((min(h, 40 - y), min(w, 50 - x))) < 0.8
    scores = rng.random(n)
    cfg = PostprocessConfig(score_threshold=(0.2, 0.2, 0.2), min_area=(5, 5, 5), min_kept_fraction=(0.5, 0.5, 0.5))
    out = postprocess(stack, scores, np.zeros(n, np.int64), cfg)
    # reference: the public notebook's loop on full frames
    used = np.zeros(shape, bool)
    keep = []
    for i in np.argsort(-scores, kind="stable"):
        if scores[i] < 0.2:
            continue
        rest = stack[i] & ~used
        if rest.sum() >= 5 and rest.sum() >= 0.5 * stack[i].sum():
            used |= rest
            keep.append(i)
    assert out.keep.tolist() == keep
    assert out.masks.to_stack().sum(0).max() <= 1
    np.testing.assert_array_equal(out.masks.to_stack().any(0), used)


def test_remove_overlaps_directly() -> None:
    shape = (3, 3)
    masks = CropMasks.from_stack(np.stack([box(shape, 0, 3, 0, 3), box(shape, 0, 1, 0, 1)]))
    kept, idx = remove_overlaps(masks, np.array([1, 0]))
    assert idx.tolist() == [1, 0]
    assert kept.areas().tolist() == [1, 8]


def test_rescoring_by_mask_confidence_by_hand() -> None:
    shape = (6, 8)
    a = box(shape, 0, 4, 0, 4)  # 16 px
    b = box(shape, 2, 6, 2, 6)  # 16 px, 4 of them shared with `a`
    scores, confidence = np.array([0.9, 0.8]), np.array([0.6, 0.95])
    # exponent 0 (default): scores as given, a (0.9) claims first
    out = postprocess(np.stack([a, b]), scores, np.array([2, 2]), no_thresholds(), confidence)
    assert out.keep.tolist() == [0, 1]
    # cort's exponent 1: a 0.9 * 0.6 = 0.54, b 0.8 * 0.95 = 0.76: b claims first, a loses 4 px
    pp = PostprocessConfig(score_threshold=(0.0, 0.0, 0.0), min_area=(1, 1, 1), rescore=(0.0, 0.0, 1.0))
    out = postprocess(np.stack([a, b]), scores, np.array([2, 2]), pp, confidence)
    assert out.keep.tolist() == [1, 0]
    np.testing.assert_allclose(out.scores, [0.76, 0.54], rtol=1e-6)
    assert out.masks.areas().tolist() == [16, 16 - 4]
    # exponent 2 with cort's threshold 0.5: a 0.9 * 0.36 = 0.324 is dropped, b 0.8 * 0.9025 = 0.722 kept
    pp = PostprocessConfig(score_threshold=(0.0, 0.0, 0.5), min_area=(1, 1, 1), rescore=(0.0, 0.0, 2.0))
    out = postprocess(np.stack([a, b]), scores, np.array([2, 2]), pp, confidence)
    assert out.keep.tolist() == [1]
    np.testing.assert_allclose(out.scores, [0.722], rtol=1e-6)
    # the image is shsy5y (class 0): shsy5y's exponent 0 leaves the scores alone
    out = postprocess(np.stack([a, b]), scores, np.array([0, 0]), pp, confidence)
    assert out.keep.tolist() == [0, 1]
    # no confidences given: nothing to rescore by, both pass 0.5 as they are
    assert postprocess(np.stack([a, b]), scores, np.array([2, 2]), pp).keep.tolist() == [0, 1]
    with pytest.raises(ValueError, match="one confidence per score"):
        postprocess(np.stack([a, b]), scores, np.array([2, 2]), pp, np.array([0.5]))
    with pytest.raises(ValueError, match=r"rescore\[cort\]: expected a value in \[0.0, 4.0\]"):
        PostprocessConfig(rescore=(0.0, 0.0, -1.0))
