"""CropMasks: the crop-of-bounding-box mask container."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_lib.masks import CropMasks


def test_stack_round_trip_and_areas() -> None:
    stack = np.zeros((3, 4, 5), bool)
    stack[0, 1:3, 1:4] = True  # 2 x 3 = 6 pixels
    stack[1, 3, 4] = True  # 1 pixel in the corner
    # stack[2] stays empty
    masks = CropMasks.from_stack(stack)
    assert len(masks) == 3
    assert masks.crops[0].shape == (2, 3)
    assert masks.origins.tolist() == [[1, 1], [3, 4], [0, 0]]
    assert masks.areas().tolist() == [6, 1, 0]
    np.testing.assert_array_equal(masks.to_stack(), stack)


def test_flat_indices_are_row_major() -> None:
    stack = np.zeros((1, 4, 5), bool)
    stack[0, 1, 2] = stack[0, 2, 0] = True
    masks = CropMasks.from_stack(stack)
    assert masks.flat_indices(0).tolist() == [1 * 5 + 2, 2 * 5 + 0]


def test_empty_and_subset() -> None:
    empty = CropMasks.from_stack(np.zeros((0, 4, 5), bool))
    assert len(empty) == 0 and empty.shape == (4, 5)
    assert empty.to_stack().shape == (0, 4, 5)
    assert len(empty.subset([])) == 0
    stack = np.zeros((3, 4, 5), bool)
    stack[:, 0, 0] = True
    stack[2, 3, 4] = True
    sub = CropMasks.from_stack(stack).subset([2, 0])
    assert sub.areas().tolist() == [2, 1]


def test_invalid_crops_are_refused() -> None:
    with pytest.raises(ValueError, match="leaves the 4x5 frame"):
        CropMasks((np.ones((2, 2), bool),), np.array([[3, 0]]), (4, 5))
    with pytest.raises(ValueError, match="2-D bool"):
        CropMasks((np.ones((2, 2), np.uint8),), np.array([[0, 0]]), (4, 5))
    with pytest.raises(ValueError, match="one origin per crop"):
        CropMasks((np.ones((2, 2), bool),), np.zeros((0, 2)), (4, 5))
