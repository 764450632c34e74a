"""TTA views: exact inverses for images, boxes and soft RoI masks."""

from __future__ import annotations

import numpy as np
import pytest

from kernel_lib.soft import SoftInstances, paste_soft
from kernel_lib.tta import View, make_views, output_shape

SHAPE = (4, 6)


def _view(name: str, out_shape: tuple[int, int] = SHAPE, scale: float = 1.0) -> View:
    return View(name, scale, SHAPE, out_shape)


def test_flips_of_a_tiny_image() -> None:
    image = np.arange(24, dtype=np.uint8).reshape(4, 6)
    np.testing.assert_array_equal(_view("identity").apply_image(image), image)
    np.testing.assert_array_equal(_view("hflip").apply_image(image)[0], [5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(_view("vflip").apply_image(image)[:, 0], [18, 12, 6, 0])
    np.testing.assert_array_equal(_view("hvflip").apply_image(image)[0, 0], 23)


@pytest.mark.parametrize("name", ["identity", "hflip", "vflip", "hvflip"])
def test_image_flip_round_trip_is_exact(name: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(4, 6, 3), dtype=np.uint8)
    view = _view(name)
    back = view.invert_image(view.apply_image(image))
    np.testing.assert_array_equal(back, image)


def test_box_flips_by_hand() -> None:
    # frame 4 x 6; a box over pixel columns 1..2 (x in [1, 3)) and rows 0..1 (y in [0, 2))
    box = np.array([[1.0, 0.0, 3.0, 2.0]], np.float32)
    # hflip: x -> 6 - x, so [1, 3) -> [6 - 3, 6 - 1) = [3, 5): columns 3..4 = mirrors of 2..1
    np.testing.assert_array_equal(_view("hflip").apply_boxes(box), [[6 - 3, 0, 6 - 1, 2]])
    # vflip: y -> 4 - y, so [0, 2) -> [2, 4)
    np.testing.assert_array_equal(_view("vflip").apply_boxes(box), [[1, 4 - 2, 3, 4 - 0]])
    np.testing.assert_array_equal(_view("hvflip").apply_boxes(box), [[3, 2, 5, 4]])


@pytest.mark.parametrize("name", ["identity", "hflip", "vflip", "hvflip"])
def test_box_round_trip_with_rescale(name: str) -> None:
    rng = np.random.default_rng(1)
    xy0 = rng.uniform(0, 3, size=(5, 2))
    boxes = np.concatenate([xy0, xy0 + rng.uniform(0.5, 2, size=(5, 2))], axis=1).astype(np.float32)
    view = _view(name, out_shape=(8, 12), scale=2.0)
    moved = view.apply_boxes(boxes)
    # a 2x resize doubles every coordinate before the flip in the 8 x 12 frame
    if name == "identity":
        np.testing.assert_allclose(moved, boxes * 2)
    np.testing.assert_allclose(view.invert_boxes(moved), boxes, atol=1e-6)


def test_box_flip_matches_the_flipped_pixels() -> None:
    """A box drawn on an image covers, after the flip, exactly the flipped box's pixels."""
    image = np.zeros(SHAPE, bool)
    image[0:2, 1:3] = True  # the box [1, 0, 3, 2]
    for name in ("hflip", "vflip", "hvflip"):
        view = _view(name)
        x0, y0, x1, y1 = view.apply_boxes(np.array([[1.0, 0.0, 3.0, 2.0]]))[0].astype(int)
        expected = np.zeros(SHAPE, bool)
        expected[y0:y1, x0:x1] = True
        np.testing.assert_array_equal(view.apply_image(image), expected)


@pytest.mark.parametrize("name", ["hflip", "vflip", "hvflip"])
def test_roi_masks_map_back_exactly(name: str) -> None:
    """Pasting a flipped view's (box, mask) and flipping the frame back gives the same
    pixels as pasting the un-flipped (box, mask): no half-pixel shift."""
    rng = np.random.default_rng(2)
    frame = (40, 56)
    boxes = np.array([[3.2, 5.7, 20.9, 17.1], [30.0, 2.0, 55.5, 39.0], [0.0, 0.0, 7.3, 4.4]], np.float32)
    masks = rng.uniform(0, 1, size=(3, 28, 28)).astype(np.float32)
    view = View(name, 1.0, frame, frame)
    original = SoftInstances(boxes, np.ones(3), np.zeros(3), masks, frame)
    flipped = SoftInstances(view.apply_boxes(boxes), np.ones(3), np.zeros(3), view.apply_roi_masks(masks), frame)
    # the model sees the flipped view: paste there, then flip the pasted frame back
    for (crop_o, org_o), (crop_f, org_f) in zip(zip(*paste_soft(original)), zip(*paste_soft(flipped))):
        full_o = np.zeros(frame, np.float32)
        full_f = np.zeros(frame, np.float32)
        full_o[org_o[0] : org_o[0] + crop_o.shape[0], org_o[1] : org_o[1] + crop_o.shape[1]] = crop_o
        full_f[org_f[0] : org_f[0] + crop_f.shape[0], org_f[1] : org_f[1] + crop_f.shape[1]] = crop_f
        np.testing.assert_allclose(view.invert_image(full_f), full_o, atol=1e-5)
    # and the inverse of the mask flip is the identity
    np.testing.assert_array_equal(view.invert_roi_masks(view.apply_roi_masks(masks)), masks)


def test_output_shape_follows_resize_shortest_edge() -> None:
    # 520 x 704 with MIN_SIZE_TEST 800: 800 / 520 = 1.538..., 704 * 1.538... = 1083.08 -> 1083
    assert output_shape((520, 704), 800, 1333) == (800, 1083)
    # the long side capped: 520 x 704 -> short 1000 would give long 1353.8 > 1333
    assert output_shape((520, 704), 1000, 1333) == (int(520 * 1333 / 704 + 0.5), 1333)
    assert output_shape((520, 704), 0, 1333) == (520, 704)
    assert output_shape((520, 704), 800, 1333, scale=0.5) == (400, int(704 * 400 / 520 + 0.5))


def test_make_views_order_and_errors() -> None:
    views = make_views(("identity", "hflip"), (1.0, 1.5), (520, 704), 520, 1333)
    assert [v.key for v in views] == ["identity", "hflip", "identity@1.5", "hflip@1.5"]
    assert views[0].out_shape == (520, 704) and not views[0].resized
    assert views[2].out_shape == (780, 1056)
    with pytest.raises(ValueError, match="rot90"):
        make_views(("rot90",), (1.0,), (520, 704), 520, 1333)
    with pytest.raises(ValueError, match="duplicated"):
        make_views(("hflip", "hflip"), (1.0,), (520, 704), 520, 1333)
    with pytest.raises(ValueError, match="expected an image of shape"):
        views[0].apply_image(np.zeros((10, 10), np.uint8))


def test_box_functions_accept_torch_tensors() -> None:
    torch = pytest.importorskip("torch")
    boxes = np.array([[1.0, 0.5, 3.0, 2.0]], np.float32)
    view = View("hvflip", 1.0, SHAPE, (8, 12))
    np.testing.assert_allclose(view.apply_boxes(torch.from_numpy(boxes)).numpy(), view.apply_boxes(boxes))
    masks = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    np.testing.assert_array_equal(view.invert_roi_masks(torch.from_numpy(masks)).numpy(), masks[:, ::-1, ::-1])
