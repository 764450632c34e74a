"""Copy-paste augmentation: cells of images of the same type pasted into a training crop
(numpy and OpenCV, no torch).

The 1% solution of the field (seed 002) pasted annotated cells into other images. Here a
paste takes one annotated cell of a *donor* image of the same cell type (the crop's own
image among them), scales it like the crop (so a cell keeps its size), turns it by a random
quarter turn and flip, and puts it at a random place fully inside the crop. The pasted
pixels replace the crop's (the donors are normalised as the crop is: the mapper reads
every image through :func:`kernel_lib.images.normalize_image`), and the cell's mask
replaces every mask it covers, so the crop's masks stay as disjoint as they were.
A cell that keeps less than ``min_kept_fraction`` of its pixels after the pastes is
dropped; what the model is taught is then what the metric's truth looks like: whole,
non-empty cells, at most partly covered by a neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from kernel_lib.masks import CropMasks

__all__ = ["Donor", "paste_cells"]


@dataclass(frozen=True)
class Donor:
    """An image whose annotated cells may be pasted.

    Attributes:
        grey: (H, W) uint8 image, normalised as the crops it is pasted into.
        masks: its N cells.
        classes: (N,) int64 class of each cell.
    """

    grey: np.ndarray
    masks: CropMasks
    classes: np.ndarray


def _cell(donor: Donor, index: int, scale: float, turn: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8, mask bool) of one donor cell at ``scale``, turned and flipped."""
    crop = donor.masks.crops[index]
    y, x = (int(v) for v in donor.masks.origins[index])
    pixels = donor.grey[y : y + crop.shape[0], x : x + crop.shape[1]]
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))  # (w, h) for OpenCV
    pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(crop.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
    if flip:
        pixels, mask = pixels[:, ::-1], mask[:, ::-1]
    return np.rot90(pixels, turn), np.rot90(mask, turn)


def paste_cells(
    image: np.ndarray,
    stack: np.ndarray,
    classes: np.ndarray,
    donors: Sequence[Donor],
    scale: float,
    count: int,
    rng: np.random.RandomState,
    min_kept_fraction: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paste ``count`` donor cells into one training crop.

    Args:
        image: (S, T) uint8 crop.
        stack: (K, S, T) bool masks of the crop's cells.
        classes: (K,) int64 their classes.
        donors: images to take cells from (those without cells are skipped).
        scale: crop pixels per donor pixel (the crop's resize factor).
        count: cells to paste (>= 0); a cell larger than the crop is not pasted.
        rng: random source (the mapper draws its seed from ``np.random``, which detectron2
            seeds per data-loader worker).
        min_kept_fraction: in [0, 1]; a cell keeping a smaller share of its pixels after
            the pastes is dropped (pasted cells too, when a later paste covers them).

    Returns:
        (image, stack (K', S, T), classes (K',)): new arrays; the inputs are left as they are.
    """
    if image.ndim != 2 or stack.ndim != 3 or stack.shape[1:] != image.shape or len(classes) != len(stack):
        raise ValueError(
            f"paste_cells: expected an (S, T) image, (K, S, T) masks and K classes, got {image.shape}, "
            f"{stack.shape}, {len(classes)}"
        )
    if not 0.0 <= min_kept_fraction <= 1.0 or scale <= 0 or count < 0:
        raise ValueError(
            f"paste_cells: expected scale > 0, count >= 0, min_kept_fraction in [0, 1], got {scale}, {count}, "
            f"{min_kept_fraction}"
        )
    image = image.copy()
    masks = [m.copy() for m in np.asarray(stack, bool)]
    classes = list(np.asarray(classes, np.int64).reshape(-1))
    areas = [int(np.count_nonzero(m)) for m in masks]
    donors = [d for d in donors if len(d.masks)]
    for _ in range(count if donors else 0):
        donor = donors[rng.randint(len(donors))]
        index = rng.randint(len(donor.masks))
        pixels, mask = _cell(donor, index, scale, rng.randint(4), bool(rng.randint(2)))
        h, w = mask.shape
        if h > image.shape[0] or w > image.shape[1] or not mask.any():
            continue
        top, left = rng.randint(image.shape[0] - h + 1), rng.randint(image.shape[1] - w + 1)
        region = image[top : top + h, left : left + w]
        region[mask] = pixels[mask]
        for m in masks:
            m[top : top + h, left : left + w] &= ~mask
        pasted = np.zeros(image.shape, bool)
        pasted[top : top + h, left : left + w] = mask
        masks.append(pasted)
        classes.append(int(donor.classes[index]))
        areas.append(int(np.count_nonzero(mask)))
    kept = [i for i, m in enumerate(masks) if np.count_nonzero(m) >= max(1.0, min_kept_fraction * areas[i])]
    out = np.stack([masks[i] for i in kept]) if kept else np.zeros((0, *image.shape), bool)
    return image, out, np.array([classes[i] for i in kept], np.int64)
