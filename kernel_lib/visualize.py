"""Overlay pictures of instance masks on an image (numpy + OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np

from kernel_lib.masks import CropMasks


def _colours(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hsv = np.stack([rng.integers(0, 180, n), np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0] if n else np.zeros((0, 3), np.uint8)


def overlay(grey: np.ndarray, masks: CropMasks, alpha: float = 0.45, outline: bool = True, seed: int = 0) -> np.ndarray:
    """Colour each mask over a grey image.

    Args:
        grey: (H, W) uint8 image.
        masks: the instances (any number, including none), frame shape (H, W).
        alpha: fill opacity in [0, 1].
        outline: draw each mask's contour at full opacity.

    Returns:
        (H, W, 3) uint8 BGR picture.
    """
    if grey.shape != masks.shape:
        raise ValueError(f"image shape {grey.shape} does not match the masks' frame {masks.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    out = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    colours = _colours(len(masks), seed).astype(np.float32)
    for crop, (y0, x0), colour in zip(masks.crops, masks.origins, colours):
        if crop.size == 0:
            continue
        region = out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        region[crop] = (1 - alpha) * region[crop] + alpha * colour
        if outline:
            contours, _ = cv2.findContours(crop.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(region, contours, -1, colour.tolist(), 1)
    return np.clip(out, 0, 255).astype(np.uint8)


def side_by_side(grey: np.ndarray, truth: CropMasks, pred: CropMasks) -> np.ndarray:
    """(H, 2W + 8, 3) uint8: truth overlay left, prediction overlay right."""
    gap = np.full((grey.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([overlay(grey, truth, seed=1), gap, overlay(grey, pred, seed=2)], axis=1)
