"""Test-time augmentation views as exact (transform, inverse) pairs.

A view is a flip (none, horizontal, vertical or both) after an optional rescale. Each
view knows how to transform an image into the model's input frame and how to map the
model's outputs back to the original frame:

- images: resize to the view's input shape (the model's ``MIN_SIZE_TEST`` times the
  view's scale), then flip;
- boxes (N, 4) xyxy: continuous pixel coordinates, where pixel ``j`` covers ``[j, j+1)``
  and its centre is ``j + 0.5`` (detectron2's convention, the one ``ROIAlignV2`` with
  ``aligned=True`` samples in). A flip maps ``x -> W - x`` (so ``x0' = W - x1``), a
  resize maps ``x -> x * w'/W``. Both are exact: no half-pixel shift;
- soft RoI masks (N, M, M): a mask is relative to its box, so only the flip applies:
  column ``k`` of a horizontally flipped view's mask is column ``M - 1 - k`` of the
  original's.

Box and mask functions use only arithmetic, indexing and ``flip``, so they take numpy
arrays (the tested contract) or torch tensors alike; ``kernel_lib.model`` applies them
to tensors on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from kernel_lib.config import TTA_NAMES

FLIPS: dict[str, tuple[bool, bool]] = {
    "identity": (False, False),
    "hflip": (True, False),
    "vflip": (False, True),
    "hvflip": (True, True),
}
"""TTA name -> (horizontal flip, vertical flip)."""


@dataclass(frozen=True)
class View:
    """One test-time view of an image of shape ``in_shape``.

    Attributes:
        name: a TTA name from :data:`kernel_lib.config.TTA_NAMES`.
        scale: extra rescale factor on top of the model's own resize (1.0 = none).
        in_shape: (H, W) of the original frame.
        out_shape: (h, w) of the model input this view produces (before flipping,
            flips keep the shape).
    """

    name: str
    scale: float
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]

    def __post_init__(self) -> None:
        if self.name not in FLIPS:
            raise ValueError(f"View: expected a name from {TTA_NAMES}, got {self.name!r}")
        for label, shape in (("in_shape", self.in_shape), ("out_shape", self.out_shape)):
            if len(shape) != 2 or min(shape) < 1:
                raise ValueError(f"View: {label} must be a positive (H, W), got {shape!r}")

    @property
    def hflip(self) -> bool:
        return FLIPS[self.name][0]

    @property
    def vflip(self) -> bool:
        return FLIPS[self.name][1]

    @property
    def resized(self) -> bool:
        return tuple(self.out_shape) != tuple(self.in_shape)

    @property
    def key(self) -> str:
        """A readable unique label, e.g. ``hflip`` or ``vflip@1.25``."""
        return self.name if self.scale == 1.0 else f"{self.name}@{self.scale:g}"

    # images -------------------------------------------------------------------------
    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, C) image of the original frame -> the view's (h, w[, C]) input.

        Resizes with bilinear interpolation (half-pixel centres, as the box maths
        assumes; uint8 images through PIL exactly as detectron2's ``ResizeShortestEdge``
        does in training), then flips. Returns a C-contiguous array of the same dtype.
        """
        if tuple(image.shape[:2]) != tuple(self.in_shape):
            raise ValueError(f"View {self.key}: expected an image of shape {self.in_shape}, got {image.shape[:2]}")
        out = _resize(image, self.out_shape) if self.resized else image
        return np.ascontiguousarray(_flip_image(out, self.hflip, self.vflip))

    def invert_image(self, image: np.ndarray) -> np.ndarray:
        """The view's (h, w[, C]) image -> the original frame (flip back, resize back).

        Exact for flips; a rescale round trip is exact only up to interpolation.
        """
        if tuple(image.shape[:2]) != tuple(self.out_shape):
            raise ValueError(f"View {self.key}: expected an image of shape {self.out_shape}, got {image.shape[:2]}")
        out = _flip_image(image, self.hflip, self.vflip)
        if self.resized:
            out = _resize(np.ascontiguousarray(out), self.in_shape)
        return np.ascontiguousarray(out)

    # boxes --------------------------------------------------------------------------
    def apply_boxes(self, boxes: Any) -> Any:
        """(N, 4) xyxy boxes of the original frame -> the view's input frame.

        Works on numpy arrays and torch tensors (float).
        """
        sy = self.out_shape[0] / self.in_shape[0]
        sx = self.out_shape[1] / self.in_shape[1]
        out = boxes * _scale_vector(boxes, sx, sy) if self.resized else boxes
        return _flip_boxes(out, self.out_shape, self.hflip, self.vflip)

    def invert_boxes(self, boxes: Any) -> Any:
        """(N, 4) xyxy boxes of the view's input frame -> the original frame."""
        out = _flip_boxes(boxes, self.out_shape, self.hflip, self.vflip)
        if self.resized:
            sy = self.in_shape[0] / self.out_shape[0]
            sx = self.in_shape[1] / self.out_shape[1]
            out = out * _scale_vector(out, sx, sy)
        return out

    # soft RoI masks -----------------------------------------------------------------
    def invert_roi_masks(self, masks: Any) -> Any:
        """(N, M, M) soft masks predicted for the view's (flipped) boxes -> masks of the
        same boxes in the original frame. Flipping is its own inverse, so this is also
        the forward map. A rescale does not change box-relative masks."""
        out = masks
        if self.hflip:
            out = _flip(out, -1)
        if self.vflip:
            out = _flip(out, -2)
        return out

    apply_roi_masks = invert_roi_masks


def output_shape(in_shape: tuple[int, int], min_size: int, max_size: int, scale: float = 1.0) -> tuple[int, int]:
    """(h, w) of an image of ``in_shape`` resized so its short side is ``min_size * scale``
    and its long side at most ``max_size * scale``: detectron2's ``ResizeShortestEdge``
    rule (``MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``), rounded the same way.

    ``min_size`` 0 means no resize (detectron2's convention), apart from ``scale``.
    """
    height, width = in_shape
    if min_size <= 0:
        target_short, target_long = min(height, width) * scale, float("inf")
    else:
        target_short, target_long = min_size * scale, max_size * scale
    factor = target_short / min(height, width)
    new_h, new_w = height * factor, width * factor
    if max(new_h, new_w) > target_long:
        shrink = target_long / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def make_views(
    names: Sequence[str],
    scales: Sequence[float],
    in_shape: tuple[int, int],
    min_size: int,
    max_size: int,
) -> list[View]:
    """Every (scale, name) combination as :class:`View` objects, scale-major.

    Args:
        names: TTA names from :data:`kernel_lib.config.TTA_NAMES` (e.g. ``("identity", "hflip")``).
        scales: rescale factors (1.0 = the model's own size).
        in_shape: (H, W) of the original images.
        min_size, max_size: the model config's ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``.

    Raises:
        ValueError: an unknown name, a non-positive scale, or an empty list.
    """
    if not names or not scales:
        raise ValueError(f"make_views: expected at least one name and one scale, got {names!r} and {scales!r}")
    views = []
    for scale in scales:
        if scale <= 0:
            raise ValueError(f"make_views: scales must be positive, got {scale!r}")
        shape = output_shape(in_shape, min_size, max_size, scale)
        views.extend(View(name, float(scale), tuple(in_shape), shape) for name in names)
    keys = [v.key for v in views]
    if len(set(keys)) != len(keys):
        raise ValueError(f"make_views: duplicated views {keys}")
    return views


def _resize(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (h, w): PIL for uint8 (detectron2's ``ResizeTransform``, which
    training uses), OpenCV otherwise. Both sample at half-pixel centres."""
    height, width = shape
    if image.dtype == np.uint8:
        from PIL import Image  # Pillow comes with torchvision / detectron2

        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def _flip_image(image: np.ndarray, hflip: bool, vflip: bool) -> np.ndarray:
    if hflip:
        image = image[:, ::-1]
    if vflip:
        image = image[::-1]
    return image


def _flip(array: Any, axis: int) -> Any:
    if isinstance(array, np.ndarray):
        return np.flip(array, axis)
    return array.flip(axis)


def _scale_vector(boxes: Any, sx: float, sy: float) -> Any:
    values = [sx, sy, sx, sy]
    if isinstance(boxes, np.ndarray):
        return np.asarray(values, dtype=boxes.dtype)
    return boxes.new_tensor(values)


def _flip_boxes(boxes: Any, shape: tuple[int, int], hflip: bool, vflip: bool) -> Any:
    if not (hflip or vflip):
        return boxes
    height, width = shape
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    if hflip:
        x0, x1 = width - x1, width - x0
    if vflip:
        y0, y1 = height - y1, height - y0
    if isinstance(boxes, np.ndarray):
        return np.stack([x0, y0, x1, y1], axis=1).astype(boxes.dtype, copy=False)
    import torch  # only reached with tensors, i.e. from kernel_lib.model

    return torch.stack([x0, y0, x1, y1], dim=1)
