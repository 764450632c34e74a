"""Soft instances, pasting, weighted mask fusion and mask NMS on hand-built instances."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_lib.config import EnsembleConfig
from kernel_lib.ensemble import (
    FusionInput,
    fuse_views,
    mask_nms,
    non_maximum_weighted,
    vote_screen,
    weighted_mask_fusion,
)
from kernel_lib.soft import SoftInstances, mask_confidence, paste, paste_soft, resample_to_boxes
from kernel_lib.testing import mask_iou_matrix

FRAME = (20, 30)


def _inst(boxes, scores, masks, classes=None, shape=FRAME) -> SoftInstances:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    classes = np.zeros(len(boxes), np.int64) if classes is None else classes
    return SoftInstances(boxes, scores, classes, masks, shape)


def _ones(n: int, m: int = 4) -> np.ndarray:
    return np.ones((n, m, m), np.float32)


# ------------------------------------------------------------------ SoftInstances


def test_soft_instances_checks_and_empty() -> None:
    empty = SoftInstances.empty(FRAME)
    assert len(empty) == 0 and empty.masks.shape == (0, 28, 28)
    with pytest.raises(ValueError, match="one score, class and mask per box"):
        SoftInstances(np.zeros((2, 4)), np.zeros(1), np.zeros(2), np.zeros((2, 4, 4)), FRAME)
    with pytest.raises(ValueError, match=r"\(N, M, M\)"):
        SoftInstances(np.zeros((1, 4)), np.zeros(1), np.zeros(1), np.zeros((1, 4, 5)), FRAME)
    # an empty part may have any mask size
    both = SoftInstances.concatenate([_inst([0, 0, 4, 4], [0.5], _ones(1)), empty.subset([])])
    assert len(both) == 1 and both.mask_size == 4
    with pytest.raises(ValueError, match="parts differ"):
        SoftInstances.concatenate([_inst([0, 0, 4, 4], [0.5], _ones(1)), _inst([0, 0, 4, 4], [0.5], _ones(1, 28))])
    with pytest.raises(ValueError, match="parts differ"):
        SoftInstances.concatenate([empty, SoftInstances.empty((5, 5))])


# ------------------------------------------------------------------ paste


def test_paste_by_hand() -> None:
    # box [0, 4) x [0, 4) with a 2 x 2 all-ones mask: cells are 2 px wide, centred at 1 and 3.
    # pixel centres 0.5, 1.5, 2.5, 3.5, 4.5 sit at mask index c / 2 - 0.5 = -0.25, 0.25,
    # 0.75, 1.25, 1.75; bilinear with zeros outside gives 0.75, 1, 1, 0.75, 0.25
    inst = _inst([0, 0, 4, 4], [1.0], _ones(1, 2))
    (crop,), origins = paste_soft(inst)
    profile = np.array([0.75, 1, 1, 0.75, 0.25], np.float32)
    np.testing.assert_array_equal(origins, [[0, 0]])
    np.testing.assert_allclose(crop, np.outer(profile, profile), atol=1e-6)
    hard = paste(inst, 0.5)
    np.testing.assert_array_equal(hard.to_stack()[0, :5, :5], np.outer(profile, profile) >= 0.5)
    assert hard.areas().tolist() == [4 * 4]
    # threshold 0.8: only the 2 x 2 centre (values 1) passes, stored as a tight crop at (1, 1)
    centre = paste(inst, 0.8)
    assert centre.origins.tolist() == [[1, 1]] and centre.crops[0].shape == (2, 2)


def test_paste_matches_detectron2() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("detectron2")
    from detectron2.layers.mask_ops import paste_masks_in_image
    from detectron2.structures import Boxes

    rng = np.random.default_rng(0)
    boxes = np.array([[2.3, 1.7, 17.9, 12.2], [10.0, 5.0, 29.5, 19.5], [0.0, 0.0, 3.2, 2.9]], np.float32)
    masks = rng.uniform(0, 1, size=(3, 28, 28)).astype(np.float32)
    ours = paste(_inst(boxes, np.ones(3), masks), 0.5).to_stack()
    theirs = paste_masks_in_image(torch.from_numpy(masks), Boxes(torch.from_numpy(boxes)), FRAME, threshold=0.5)
    np.testing.assert_array_equal(ours, theirs.numpy())


def test_mask_confidence_by_hand() -> None:
    masks = np.array(
        [
            [[0.9, 0.7], [0.3, 0.0]],  # cells >= 0.5: 0.9, 0.7 -> mean 0.8
            [[0.2, 0.1], [0.4, 0.0]],  # none >= 0.5 -> 0
            [[0.5, 0.5], [1.0, 0.6]],  # all four: (0.5 + 0.5 + 1.0 + 0.6) / 4 = 0.65
        ],
        np.float32,
    )
    inst = SoftInstances(np.tile([[0, 0, 4, 4]], (3, 1)), [0.9, 0.8, 0.7], [0, 0, 0], masks, (8, 8))
    np.testing.assert_allclose(mask_confidence(inst, 0.5), [0.8, 0.0, 0.65], rtol=1e-6)
    # threshold 0.8 keeps only 0.9 in the first and 1.0 in the third
    np.testing.assert_allclose(mask_confidence(inst, 0.8), [0.9, 0.0, 1.0], rtol=1e-6)
    assert mask_confidence(SoftInstances.empty((8, 8)), 0.5).shape == (0,)
    with pytest.raises(ValueError, match=r"threshold in \(0, 1\)"):
        mask_confidence(inst, 1.0)


def test_paste_empty_and_threshold_check() -> None:
    assert len(paste(SoftInstances.empty(FRAME), 0.5)) == 0
    zero = paste(_inst([1, 1, 5, 5], [0.9], np.zeros((1, 4, 4), np.float32)), 0.5)
    assert zero.crops[0].shape == (0, 0) and zero.areas().tolist() == [0]
    with pytest.raises(ValueError, match="threshold"):
        paste(SoftInstances.empty(FRAME), 1.0)


def test_resample_to_the_same_box_is_identity_and_to_a_larger_box_keeps_the_pixels() -> None:
    rng = np.random.default_rng(1)
    masks = rng.uniform(0, 1, size=(1, 8, 8)).astype(np.float32)
    inst = _inst([4, 2, 12, 10], [1.0], masks)
    np.testing.assert_allclose(resample_to_boxes(inst, inst.boxes), masks, atol=1e-5)
    # a mask that is 1 on the box, resampled onto a box twice as large (same centre
    # region), is 1 on the inner half: pasted at 0.5 it covers the same 8 x 8 pixels
    inner = _inst([8, 4, 16, 12], [1.0], _ones(1, 8))
    big = np.array([[4, 0, 20, 16]], np.float32)
    moved = _inst(big, [1.0], resample_to_boxes(inner, big))
    np.testing.assert_array_equal(paste(moved, 0.5).to_stack(), paste(inner, 0.5).to_stack())


def test_mask_iou_matrix_by_hand() -> None:
    # two 4 x 4 squares shifted by 2 columns: intersection 4 x 2 = 8, union 16 + 16 - 8 = 24
    a = paste(_inst([0, 0, 4, 4], [1.0], _ones(1, 28)), 0.5)
    b = paste(_inst([[2, 0, 6, 4], [20, 10, 24, 14]], [1.0, 1.0], _ones(2, 28)), 0.5)
    np.testing.assert_allclose(mask_iou_matrix(a, b), [[8 / 24, 0.0]])


# ------------------------------------------------------------------ mask NMS


def test_mask_nms_agreeing_disagreeing_and_empty() -> None:
    inst = _inst(
        [[0, 0, 8, 8], [0, 0, 8, 8], [1, 0, 9, 8], [20, 10, 28, 18]],
        [0.6, 0.9, 0.7, 0.5],
        _ones(4, 28),
    )
    # 0 and 1 are the same square (IoU 1): only the higher-scored 1 stays; 2 is shifted by
    # one column, IoU 56 / 72 = 0.78 > 0.5, so it goes; 3 is elsewhere and stays
    assert mask_nms(inst, 0.5, 0.5, 100).tolist() == [1, 3]
    # with IoU threshold 0.8, the shifted square (0.78) survives next to 1
    assert mask_nms(inst, 0.8, 0.5, 100).tolist() == [1, 2, 3]
    assert mask_nms(inst, 0.5, 0.5, 1).tolist() == [1]
    assert mask_nms(SoftInstances.empty(FRAME), 0.5, 0.5, 10).tolist() == []


# ------------------------------------------------------------------ weighted mask fusion


def _ens(cluster_iou: float, min_votes: float, most: int) -> EnsembleConfig:
    return EnsembleConfig(cluster_iou=cluster_iou, min_votes=min_votes, detections_per_image=most)


def test_wmf_two_views_agreeing() -> None:
    rng = np.random.default_rng(3)
    m1 = rng.uniform(0.6, 1.0, size=(1, 6, 6)).astype(np.float32)
    m2 = rng.uniform(0.6, 1.0, size=(1, 6, 6)).astype(np.float32)
    a = _inst([2, 2, 10, 10], [0.8], m1, classes=np.array([1]))
    b = _inst([2, 2, 10, 10], [0.6], m2, classes=np.array([2]))
    fused = weighted_mask_fusion(FusionInput([a, b], None), _ens(0.5, 0.5, 100), 0.5)
    assert len(fused) == 1
    # score: (0.8 + 0.6) / 2 views; agreement 2 / 2 = 1
    np.testing.assert_allclose(fused.scores, [(0.8 + 0.6) / 2])
    np.testing.assert_allclose(fused.masks[0], (0.8 * m1[0] + 0.6 * m2[0]) / (0.8 + 0.6), atol=1e-5)
    np.testing.assert_array_equal(fused.boxes, [[2, 2, 10, 10]])
    assert fused.classes.tolist() == [1]  # class 1 carries the larger score
    # weights 1 and 3 for the two views: score (1 * 0.8 + 3 * 0.6) / 4, class 2 now wins
    weighted = weighted_mask_fusion(FusionInput([a, b], [1.0, 3.0]), _ens(0.5, 0.5, 100), 0.5)
    np.testing.assert_allclose(weighted.scores, [(1 * 0.8 + 3 * 0.6) / 4])
    assert weighted.classes.tolist() == [2]


def test_wmf_two_views_disagreeing() -> None:
    a = _inst([0, 0, 8, 8], [0.8], _ones(1))
    b = _inst([20, 10, 28, 18], [0.6], _ones(1))
    # each instance is seen by one view of two: agreement 1 / 2, score x 0.5
    kept = weighted_mask_fusion(FusionInput([a, b], None), _ens(0.5, 0.5, 100), 0.5)
    np.testing.assert_allclose(kept.scores, [0.8 * 0.5, 0.6 * 0.5])
    np.testing.assert_array_equal(kept.boxes, [[0, 0, 8, 8], [20, 10, 28, 18]])
    # needing 3 of 4 views (0.75) drops both
    assert len(weighted_mask_fusion(FusionInput([a, b], None), _ens(0.5, 0.75, 100), 0.5)) == 0


def test_wmf_one_instance_per_view_per_cluster_and_union_box() -> None:
    # view 0 has two overlapping instances: they must not fuse with each other
    v0 = _inst([[0, 0, 8, 8], [1, 0, 9, 8]], [0.9, 0.8], _ones(2, 28))
    v1 = _inst([[0, 0, 9, 8]], [0.7], _ones(1, 28))
    fused = weighted_mask_fusion(FusionInput([v0, v1], None), _ens(0.5, 0.0, 100), 0.5)
    assert len(fused) == 2
    # the first cluster (0.9 with view 1's 0.7) covers the union box of its members
    np.testing.assert_array_equal(fused.boxes[0], [0, 0, 9, 8])
    np.testing.assert_allclose(fused.scores, [(0.9 + 0.7) / 2, 0.8 / 2])


def test_wmf_empty_views_and_errors() -> None:
    empty = SoftInstances.empty(FRAME, 4)
    assert len(weighted_mask_fusion(FusionInput([empty, empty], None), _ens(0.5, 0.5, 10), 0.5)) == 0
    with pytest.raises(ValueError, match="positive weights"):
        weighted_mask_fusion(FusionInput([empty, empty], [1.0]), _ens(0.5, 0.5, 10), 0.5)
    with pytest.raises(ValueError, match="at least one view"):
        weighted_mask_fusion(FusionInput([], None), _ens(0.5, 0.5, 10), 0.5)


def test_fuse_views_dispatch() -> None:
    a = _inst([0, 0, 8, 8], [0.8], _ones(1))
    b = _inst([0, 0, 8, 8], [0.6], _ones(1))
    wmf = fuse_views([a, b], None, EnsembleConfig(method="wmf"), 0.5)
    np.testing.assert_allclose(wmf.scores, [0.7])
    nms = fuse_views([a, b], None, EnsembleConfig(method="mask_nms"), 0.5)
    np.testing.assert_allclose(nms.scores, [0.8])
    with pytest.raises(ValueError, match="roi"):
        fuse_views([a, b], None, EnsembleConfig(method="roi"), 0.5)


# ------------------------------------------------------------------ vote screen, NMW


def test_vote_screen_counts_models_not_views() -> None:
    # model 0 has two views (identity, hflip) that both see cell A; model 1 sees A too;
    # cell B (far away) is seen by both views of model 0 only.
    a_box, b_box = [0, 0, 8, 8], [20, 10, 28, 18]
    m0_v0 = _inst([a_box, b_box], [0.9, 0.8], _ones(2))
    m0_v1 = _inst([a_box, b_box], [0.85, 0.7], _ones(2))
    m1_v0 = _inst([a_box], [0.6], _ones(1))
    views, model_of = [m0_v0, m0_v1, m1_v0], [0, 0, 1]
    # 2 of 2 models needed: only A survives, as its best member (score 0.9, model 0 view 0)
    both = vote_screen(FusionInput(views, None, model_of), _ens(0.5, 1.0, 100), 0.5)
    np.testing.assert_allclose(both.scores, [0.9])
    np.testing.assert_allclose(both.boxes, [a_box])
    # 1 of 2 models: B (0.8) survives too; its other view (0.7) is in its cluster, not kept
    one = vote_screen(FusionInput(views, None, model_of), _ens(0.5, 0.5, 100), 0.5)
    np.testing.assert_allclose(one.scores, [0.9, 0.8])
    # counted by views (each view its own model) B has 2 of 3 = 0.67 >= 0.6 and survives
    by_view = fuse_views(views, None, EnsembleConfig(method="vote", min_votes=0.6), 0.5)
    np.testing.assert_allclose(by_view.scores, [0.9, 0.8])
    # model weights: model 1 weighs 3, model 0 weighs 1: B holds 1 / 4 < 0.5 of the weight
    weighted = vote_screen(FusionInput(views, [1.0, 1.0, 3.0], model_of), _ens(0.5, 0.5, 100), 0.5)
    np.testing.assert_allclose(weighted.scores, [0.9])
    assert len(vote_screen(FusionInput([SoftInstances.empty(FRAME)], None, [0]), _ens(0.5, 0.5, 10), 0.5)) == 0
    with pytest.raises(ValueError, match="one model index per view"):
        vote_screen(FusionInput(views, None, [0, 1]), _ens(0.5, 0.5, 100), 0.5)


def test_nmw_by_hand() -> None:
    # two boxes of one cell: [0, 0, 10, 10] score 0.8 and [2, 0, 12, 10] score 0.4;
    # IoU = 8*10 / (100 + 100 - 80) = 2/3 > 0.5. Weights: 0.8 * 1 and 0.4 * 2/3 = 0.2667;
    # fused x0 = (0.8 * 0 + 0.2667 * 2) / 1.0667 = 0.5, x1 = (0.8 * 10 + 0.2667 * 12) / 1.0667 = 10.5
    a = _inst([[0, 0, 10, 10]], [0.8], _ones(1), classes=np.array([1]))
    b = _inst([[2, 0, 12, 10], [20, 0, 26, 6]], [0.4, 0.3], _ones(2), classes=np.array([2, 0]))
    fused = non_maximum_weighted([a, b], None, 0.5, 100)
    np.testing.assert_allclose(fused.boxes, [[0.5, 0, 10.5, 10], [20, 0, 26, 6]], atol=1e-5)
    np.testing.assert_allclose(fused.scores, [0.8, 0.3], atol=1e-6)
    np.testing.assert_array_equal(fused.classes, [1, 0])  # the best box's class
    # view weights scale scores by weight / max weight: a's view at 1 of 4 -> 0.8 / 4 = 0.2,
    # so b's box (0.4) leads: weights 0.4 * 1 and 0.2 * 2/3 = 0.1333, x0 = 0.4 * 2 / 0.5333 = 1.5,
    # x1 = (0.4 * 12 + 0.1333 * 10) / 0.5333 = 11.5; score and class are b's
    weighted = non_maximum_weighted([a, b], [1.0, 4.0], 0.5, 100)
    np.testing.assert_allclose(weighted.boxes[0], [1.5, 0, 11.5, 10], atol=1e-5)
    np.testing.assert_allclose(weighted.scores, [0.4, 0.3], atol=1e-6)
    np.testing.assert_array_equal(weighted.classes, [2, 0])
    assert len(non_maximum_weighted([a, b], None, 0.5, 1)) == 1
    assert len(fuse_views([SoftInstances.empty(FRAME)], None, EnsembleConfig(method="nmw"), 0.5)) == 0
