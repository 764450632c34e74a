"""Training augmentations (detectron2 ``Transform`` / ``Augmentation``): exact 90-degree
turns, brightness and contrast, and the whole list a mapper applies after the
multi-scale resize (:func:`build_augmentations`). Imports detectron2."""

from __future__ import annotations

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import transforms as T

from kernel_lib.training.options import AugmentSettings


class Rot90Transform(T.Transform):
    """Rotate by ``k`` x 90 degrees counter-clockwise (``np.rot90``), exactly.

    Coordinates are detectron2's continuous ones (pixel (r, c) spans x in [c, c+1],
    y in [r, r+1]); one quarter turn of a (h, w) image maps (x, y) -> (y, w - x).
    """

    def __init__(self, h: int, w: int, k: int) -> None:
        super().__init__()
        self._set_attributes({"h": h, "w": w, "k": k % 4})

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(img, self.k, axes=(0, 1)))

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self.apply_image(segmentation)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64).copy()
        h, w = float(self.h), float(self.w)
        for _ in range(self.k):
            x = coords[:, 0].copy()
            coords[:, 0] = coords[:, 1]
            coords[:, 1] = w - x
            h, w = w, h
        return coords

    def inverse(self) -> T.Transform:
        h, w = (self.w, self.h) if self.k % 2 else (self.h, self.w)
        return Rot90Transform(h, w, (4 - self.k) % 4)


class RandomRot90(T.Augmentation):
    """Rotate by 0, 90, 180 or 270 degrees, uniformly at random."""

    def get_transform(self, image: np.ndarray) -> T.Transform:
        k = int(np.random.randint(4))
        if k == 0:
            return T.NoOpTransform()
        return Rot90Transform(image.shape[0], image.shape[1], k)


def photometric_augmentations(augment: AugmentSettings) -> list[T.Augmentation]:
    """detectron2's RandomBrightness then RandomContrast, for the ranges that are not (1, 1)."""
    augs: list[T.Augmentation] = []
    if augment.brightness != (1.0, 1.0):
        augs.append(T.RandomBrightness(*augment.brightness))
    if augment.contrast != (1.0, 1.0):
        augs.append(T.RandomContrast(*augment.contrast))
    return augs


def build_augmentations(cfg: CfgNode, augment: AugmentSettings) -> list[T.Augmentation]:
    """The training augmentation list: multi-scale resize from ``cfg.INPUT`` then ``augment``."""
    augs: list[T.Augmentation] = [
        T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)
    ]
    if augment.crop:
        augs.append(T.RandomCrop("absolute", (augment.crop, augment.crop)))
    if augment.hflip:
        augs.append(T.RandomFlip(prob=0.5, horizontal=True, vertical=False))
    if augment.vflip:
        augs.append(T.RandomFlip(prob=0.5, horizontal=False, vertical=True))
    if augment.rot90:
        augs.append(RandomRot90())
    return augs + photometric_augmentations(augment)
