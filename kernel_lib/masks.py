"""Compact binary instance masks: each mask stored as the crop of its bounding box.

A 520x704 frame holds up to ~1,000 cells of a few hundred pixels each; a full-frame
(N,H,W) stack of them is 366 MB of bool and slow to touch. :class:`CropMasks` keeps
each mask as its box-sized crop plus the crop's origin, so every stage after the
model (thresholding, overlap removal, encoding, the metric) touches only the pixels
near each instance. Convert with :meth:`CropMasks.from_stack` / :meth:`to_stack`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropMasks:
    """N binary masks of a (H, W) frame, each as a crop of its bounding box.

    Attributes:
        crops: N bool arrays; crop i has shape (h_i, w_i) with h_i, w_i >= 0.
        origins: (N, 2) int64 array of (y0, x0), the frame position of crop i's
            top-left pixel. Crop i covers rows y0..y0+h_i-1, columns x0..x0+w_i-1,
            always inside the frame.
        shape: (H, W) of the frame.
    """

    crops: tuple[np.ndarray, ...]
    origins: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        origins = np.asarray(self.origins, dtype=np.int64).reshape(-1, 2)
        object.__setattr__(self, "origins", origins)
        object.__setattr__(self, "crops", tuple(self.crops))
        if len(self.crops) != len(origins):
            raise ValueError(
                f"CropMasks: expected one origin per crop, got {len(self.crops)} crops and {len(origins)} origins"
            )
        height, width = self.shape
        for i, (crop, (y0, x0)) in enumerate(zip(self.crops, origins)):
            if crop.ndim != 2 or crop.dtype != np.bool_:
                raise ValueError(
                    f"CropMasks: crop {i} must be a 2-D bool array, got {crop.dtype} of shape {crop.shape}"
                )
            if y0 < 0 or x0 < 0 or y0 + crop.shape[0] > height or x0 + crop.shape[1] > width:
                raise ValueError(
                    f"CropMasks: crop {i} of shape {crop.shape} at (y0={y0}, x0={x0}) leaves the {height}x{width} frame"
                )

    def __len__(self) -> int:
        return len(self.crops)

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> CropMasks:
        return cls((), np.zeros((0, 2), np.int64), shape)

    @classmethod
    def from_stack(cls, masks: np.ndarray) -> CropMasks:
        """From a (N, H, W) bool stack; each crop is its mask's tight bounding box
        (an empty mask becomes a (0, 0) crop at (0, 0))."""
        if masks.ndim != 3:
            raise ValueError(f"expected a (N, H, W) mask stack, got shape {masks.shape}")
        masks = masks.astype(bool, copy=False)
        crops: list[np.ndarray] = []
        origins = np.zeros((len(masks), 2), np.int64)
        for i, mask in enumerate(masks):
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size == 0:
                crops.append(np.zeros((0, 0), bool))
                continue
            cols = np.flatnonzero(mask.any(axis=0))
            y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
            crops.append(mask[y0:y1, x0:x1].copy())
            origins[i] = (y0, x0)
        return cls(tuple(crops), origins, (masks.shape[1], masks.shape[2]))

    def to_stack(self) -> np.ndarray:
        """(N, H, W) bool stack. Costs N*H*W bytes: for tests and small N only."""
        out = np.zeros((len(self), *self.shape), bool)
        for i, (crop, (y0, x0)) in enumerate(zip(self.crops, self.origins)):
            out[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def areas(self) -> np.ndarray:
        """(N,) int64 pixel count of each mask."""
        return np.array([int(c.sum()) for c in self.crops], dtype=np.int64)

    def flat_indices(self, i: int) -> np.ndarray:
        """Row-major flat indices (0-based, int64, ascending) of mask i's pixels."""
        crop = self.crops[i]
        ys, xs = np.nonzero(crop)
        y0, x0 = self.origins[i]
        return (ys + y0).astype(np.int64) * self.shape[1] + (xs + x0)

    def subset(self, index: Sequence[int] | np.ndarray) -> CropMasks:
        """The masks at ``index`` (ints or a bool mask), in that order."""
        idx = np.arange(len(self))[np.asarray(index)] if len(self) else np.zeros(0, np.int64)
        return CropMasks(tuple(self.crops[i] for i in idx), self.origins[idx], self.shape)
