"""Dataset dict -> model input: the two training mappers.

:class:`SartoriusMapper` applies detectron2's augmentation list to the whole image;
:class:`CropFirstMapper` computes the same random crop first and resamples only the
crop's pixels (the CPU recipe). :func:`build_mapper` picks one for a config. Images are
read exactly as inference reads them (:func:`kernel_lib.images.read_image`,
``normalize_image``, ``to_model_input``). Imports torch and detectron2.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import detection_utils as d2utils
from detectron2.data import transforms as T

from kernel_lib.config import CELL_TYPES
from kernel_lib.images import normalize_image, read_image, to_model_input
from kernel_lib.masks import CropMasks
from kernel_lib.training.augment import build_augmentations, photometric_augmentations
from kernel_lib.training.copy_paste import Donor, paste_cells
from kernel_lib.training.datasets import record_masks
from kernel_lib.training.options import AugmentSettings


class SartoriusMapper:
    """Dataset dict -> model input: image read like inference, augmented, bitmask instances.

    Boxes are recomputed from the transformed masks (tight boxes, as detectron2's own
    mapper does when it crops), and instances left empty by a crop are dropped.
    """

    def __init__(
        self, augmentations: list[T.Augmentation], image_format: str = "BGR", normalization: str = "none"
    ) -> None:
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT: expected BGR or RGB (grey images), got {image_format!r}")
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.normalization = normalization

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        record = copy.deepcopy(record)
        grey = normalize_image(read_image(record["file_name"]), self.normalization)
        image = to_model_input(grey)  # grey repeated: BGR == RGB
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        size = image.shape[:2]
        annotations = [d2utils.transform_instance_annotations(a, transforms, size) for a in record.pop("annotations")]
        instances = d2utils.annotations_to_instances(annotations, size, mask_format="bitmask")
        # boxes from the transformed masks: a cropped cell's box is the box of what is left of it
        instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        record["instances"] = d2utils.filter_empty_instances(instances)
        record["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return record


class CropFirstMapper:
    """Dataset dict -> model input for random-crop training, touching only the crop's pixels.

    Same augmentation as :class:`SartoriusMapper` with ``crop`` > 0 (resize to a random
    short edge of ``min_sizes``, at most ``max_size`` long; a random ``crop`` x ``crop``
    window; flips, 90-degree turns, brightness, contrast), computed in the other order:
    the window is mapped back onto the original image and only that region of the image
    and of the instances that reach it is resampled (bilinear for the image, nearest for
    the masks). Each image's masks are decoded once per worker and kept as
    :class:`~kernel_lib.masks.CropMasks`, so an iteration never builds a full-frame mask.
    The region's integer bounds make the scale exact to within one original pixel per
    window side. ``augment.type_scale`` scales the resize of each cell type's images. With
    ``augment.copy_paste`` > 0, cells of the images of the record's cell
    type that this worker has read so far (the record's own among them) are pasted into
    the window before the flips (:func:`kernel_lib.training.copy_paste.paste_cells`).
    """

    def __init__(
        self, min_sizes: tuple[int, ...], max_size: int, augment: AugmentSettings, normalization: str = "none"
    ) -> None:
        if augment.crop <= 0:
            raise ValueError(f"CropFirstMapper: expected a crop side > 0, got {augment.crop}")
        if not min_sizes:
            raise ValueError("CropFirstMapper: expected at least one short-edge size")
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.augment = augment
        self.normalization = normalization
        self._photometric = T.AugmentationList(photometric_augmentations(augment))
        self._cache: dict[str, tuple[np.ndarray, CropMasks, np.ndarray]] = {}
        self._donors: dict[str, list[Donor]] = {}

    def _load(self, record: dict[str, Any]) -> tuple[np.ndarray, CropMasks, np.ndarray]:
        key = str(record["file_name"])
        if key not in self._cache:
            classes = np.array([a["category_id"] for a in record["annotations"]], np.int64)
            grey = normalize_image(read_image(key), self.normalization)  # the whole image's mean and spread
            self._cache[key] = (grey, record_masks(record), classes)
            self._donors.setdefault(str(record.get("cell_type", "")), []).append(Donor(*self._cache[key]))
        return self._cache[key]

    def _window(self, height: int, width: int, factor: float = 1.0) -> tuple[int, int, int, int, int]:
        """Random (y0, y1, x0, x1) of the original image and the output side; ``factor``
        scales the drawn short edge and the longest edge (the image's type's factor)."""
        size = self.min_sizes[np.random.randint(len(self.min_sizes))] * factor
        scale = size / min(height, width)
        if self.max_size and max(height, width) * scale > self.max_size * factor:
            scale = self.max_size * factor / max(height, width)
        new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
        side = min(self.augment.crop, new_h, new_w)
        top = np.random.randint(new_h - side + 1) / scale
        left = np.random.randint(new_w - side + 1) / scale
        y0, x0 = int(np.floor(top)), int(np.floor(left))
        y1 = min(height, max(y0 + 1, int(np.ceil(top + side / scale))))
        x1 = min(width, max(x0 + 1, int(np.ceil(left + side / scale))))
        return y0, y1, x0, x1, side

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        from detectron2.structures import BitMasks, Boxes, Instances
        from PIL import Image

        grey, masks, classes = self._load(record)
        cell_type = str(record.get("cell_type", ""))
        factor = self.augment.type_scale[CELL_TYPES.index(cell_type)] if cell_type in CELL_TYPES else 1.0
        y0, y1, x0, x1, side = self._window(*grey.shape, factor)
        image = np.asarray(Image.fromarray(grey[y0:y1, x0:x1]).resize((side, side), Image.BILINEAR))
        stack, keep = _window_masks(masks, y0, y1, x0, x1, side)
        cls = classes[keep]
        if self.augment.copy_paste and np.random.rand() < self.augment.copy_paste:
            rng = np.random.RandomState(np.random.randint(2**31))
            count = 1 + rng.randint(self.augment.copy_paste_max)
            donors = self._donors[cell_type]
            image, stack, cls = paste_cells(image, stack, cls, donors, side / (y1 - y0), count, rng)
        image, stack = self._flip_and_turn(image, stack)
        photometric = T.AugInput(np.ascontiguousarray(image))
        self._photometric(photometric)
        image = photometric.image
        areas = stack.any(axis=(1, 2))
        stack, cls = stack[areas], cls[areas]
        instances = Instances((side, side))
        instances.gt_masks = BitMasks(torch.from_numpy(np.ascontiguousarray(stack)))
        instances.gt_boxes = Boxes(instances.gt_masks.get_bounding_boxes().tensor)
        instances.gt_classes = torch.from_numpy(cls)
        out = {k: v for k, v in record.items() if k != "annotations"}
        out["instances"] = instances
        out["image"] = torch.from_numpy(np.ascontiguousarray(to_model_input(image).transpose(2, 0, 1)))
        out["height"], out["width"] = side, side
        return out

    def _flip_and_turn(self, image: np.ndarray, stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.augment.hflip and np.random.rand() < 0.5:
            image, stack = image[:, ::-1], stack[:, :, ::-1]
        if self.augment.vflip and np.random.rand() < 0.5:
            image, stack = image[::-1], stack[:, ::-1]
        if self.augment.rot90:
            k = int(np.random.randint(4))
            image, stack = np.rot90(image, k, axes=(0, 1)), np.rot90(stack, k, axes=(1, 2))
        return image, stack


def _window_masks(masks: CropMasks, y0: int, y1: int, x0: int, x1: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The instances reaching the window [y0, y1) x [x0, x1), resized (nearest) to side x side.

    Returns:
        (K, side, side) bool stack and the (K,) int64 indices of those instances.
    """
    heights = np.array([c.shape[0] for c in masks.crops], np.int64).reshape(-1)
    widths = np.array([c.shape[1] for c in masks.crops], np.int64).reshape(-1)
    oy, ox = masks.origins[:, 0], masks.origins[:, 1]
    keep = np.flatnonzero((oy < y1) & (oy + heights > y0) & (ox < x1) & (ox + widths > x0))
    rows = y0 + ((np.arange(side) + 0.5) * (y1 - y0) / side).astype(np.int64)
    cols = x0 + ((np.arange(side) + 0.5) * (x1 - x0) / side).astype(np.int64)
    stack = np.zeros((len(keep), side, side), bool)
    for j, i in enumerate(keep):
        crop, (cy, cx) = masks.crops[i], masks.origins[i]
        r = rows - cy
        c = cols - cx
        r_in = np.flatnonzero((r >= 0) & (r < crop.shape[0]))
        c_in = np.flatnonzero((c >= 0) & (c < crop.shape[1]))
        if r_in.size and c_in.size:
            stack[j, r_in[0] : r_in[-1] + 1, c_in[0] : c_in[-1] + 1] = crop[np.ix_(r[r_in], c[c_in])]
    return stack, keep


def build_mapper(
    cfg: CfgNode, augment: AugmentSettings, normalization: str = "none"
) -> CropFirstMapper | SartoriusMapper:
    """:class:`CropFirstMapper` for crop training with a choice of short edges, else
    :class:`SartoriusMapper` (whole images, or a short edge drawn from a range)."""
    if augment.crop and cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and cfg.INPUT.FORMAT in ("BGR", "RGB"):
        return CropFirstMapper(tuple(cfg.INPUT.MIN_SIZE_TRAIN), cfg.INPUT.MAX_SIZE_TRAIN, augment, normalization)
    if augment.type_scale != (1.0, 1.0, 1.0):
        raise ValueError(
            "type_scale: per-type resizing runs in the crop-first mapper, which needs --crop with a choice of "
            "--min-sizes; pass --min-sizes A,B,C or drop --type-scale"
        )
    if augment.copy_paste:
        raise ValueError(
            "copy_paste: pasting runs in the crop-first mapper, which needs --crop with a choice of "
            f"--min-sizes (got INPUT.MIN_SIZE_TRAIN_SAMPLING {cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING!r}); "
            "pass --min-sizes A,B,C or drop --copy-paste"
        )
    return SartoriusMapper(build_augmentations(cfg, augment), cfg.INPUT.FORMAT, normalization)
