"""Copy-paste augmentation: donor cells pasted into a training crop, masks kept disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_lib.masks import CropMasks
from kernel_lib.training.copy_paste import Donor, paste_cells


class _Fixed(np.random.RandomState):
    """A RandomState whose randint returns the given values in order (for hand-worked cases)."""

    def __init__(self, values: list[int]) -> None:
        super().__init__(0)
        self.values = list(values)

    def randint(self, *args: object, **kwargs: object) -> int:  # type: ignore[override]
        return self.values.pop(0)


def _donor() -> Donor:
    grey = np.zeros((6, 6), np.uint8)
    grey[1:3, 1:4] = 200  # the cell's pixels: a 2 x 3 block of 200
    cell = np.zeros((6, 6), bool)
    cell[1:3, 1:4] = True
    return Donor(grey, CropMasks.from_stack(cell[None]), np.array([1]))


def test_one_paste_by_hand() -> None:
    image = np.full((5, 5), 10, np.uint8)
    stack = np.zeros((2, 5, 5), bool)
    stack[0, 0:2, 0:2] = True  # 4 px, top left
    stack[1, 3:5, 3:5] = True  # 4 px, bottom right
    # draws: donor 0, cell 0, no turn, no flip, top 1, left 1 -> the 2 x 3 cell at rows 1..2, cols 1..3
    out, masks, classes = paste_cells(image, stack, np.array([2, 2]), [_donor()], 1.0, 1, _Fixed([0, 0, 0, 0, 1, 1]))
    assert (out[1:3, 1:4] == 200).all() and np.count_nonzero(out == 200) == 6
    assert (image == 10).all() and stack.sum() == 8  # the inputs are left as they were
    # mask 0 loses (1, 1) of its 4 px: 3 >= 0.5 * 4 kept; mask 1 is untouched; the paste is the third
    assert masks.sum(axis=(1, 2)).tolist() == [3, 4, 6]
    assert classes.tolist() == [2, 2, 1]
    assert masks.sum(axis=0).max() == 1  # disjoint
    # a second paste over the first one's place (same draws) covers it whole: it is dropped,
    # and mask 0 keeps 3 px again
    _, masks, classes = paste_cells(image, stack, np.array([2, 2]), [_donor()], 1.0, 2, _Fixed([0, 0, 0, 0, 1, 1] * 2))
    assert masks.sum(axis=(1, 2)).tolist() == [3, 4, 6] and classes.tolist() == [2, 2, 1]


def test_scaled_turned_and_what_is_dropped() -> None:
    image = np.zeros((8, 8), np.uint8)
    stack = np.zeros((1, 8, 8), bool)
    stack[0, 2:6, 2:6] = True  # 16 px
    # scale 2: the 2 x 3 cell becomes 4 x 6, turned once: 6 x 4 (24 px), at top 1, left 2:
    # rows 1..6, cols 2..5 cover 4 rows x 4 cols = 16 of mask 0's 16 px: it is dropped
    out, masks, classes = paste_cells(image, stack, np.array([0]), [_donor()], 2.0, 1, _Fixed([0, 0, 1, 0, 1, 2]))
    assert masks.sum(axis=(1, 2)).tolist() == [24] and classes.tolist() == [1]
    assert np.count_nonzero(out == 200) == 24 and out[1:7, 2:6].min() == 200
    # too large for the crop (scale 3: 6 x 9 > 8): nothing pasted, nothing drawn beyond the cell
    out, masks, _ = paste_cells(image, stack, np.array([0]), [_donor()], 3.0, 1, _Fixed([0, 0, 0, 0]))
    assert (out == image).all() and masks.sum() == 16
    # no donor cell at all: the crop comes back as it was
    empty = Donor(np.zeros((6, 6), np.uint8), CropMasks.empty((6, 6)), np.zeros(0, np.int64))
    out, masks, _ = paste_cells(image, stack, np.array([0]), [empty], 1.0, 3, np.random.RandomState(0))
    assert (out == image).all() and (masks == stack).all()
    with pytest.raises(ValueError, match="K classes"):
        paste_cells(image, stack, np.array([0, 1]), [_donor()], 1.0, 1, np.random.RandomState(0))


def test_random_pastes_keep_masks_disjoint_and_whole() -> None:
    rng = np.random.RandomState(3)
    image = rng.randint(0, 255, (64, 64)).astype(np.uint8)
    stack = np.zeros((3, 64, 64), bool)
    stack[0, 0:10, 0:10] = stack[1, 20:40, 20:30] = stack[2, 50:60, 5:60] = True
    donor = _donor()
    for seed in range(20):
        _, masks, classes = paste_cells(image, stack, np.array([0, 0, 0]), [donor], 2.5, 6, np.random.RandomState(seed))
        assert masks.sum(axis=0).max() <= 1 and len(masks) == len(classes)
        assert masks.any(axis=(1, 2)).all()
        originals = stack.sum(axis=(1, 2))
        kept_originals = [m.sum() for m, c in zip(masks, classes) if c == 0]
        assert all(k >= 0.5 * min(originals) for k in kept_originals)
