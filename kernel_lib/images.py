"""Image loading and normalisation, shared by inference and training.

Competition images are 704x520 8-bit grey PNGs. Models see them as (H, W, 3) uint8
BGR (detectron2's default ``INPUT.FORMAT``), the grey channel repeated; the model's
own PIXEL_MEAN/PIXEL_STD does the rest. Training reads images through the same
functions so that both sides see identical pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (not recursive), sorted by name; the id is the stem.

    Raises:
        ValueError: the folder does not exist or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"image folder {folder} does not exist; pass the folder that holds the <id>.png files")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ValueError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} file")
    return paths


def read_image(path: str | Path) -> np.ndarray:
    """Read one image as (H, W) uint8 grey.

    Raises:
        ValueError: the file is missing or not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"image {path} could not be decoded; is it a valid PNG?")
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return image


def to_model_input(grey: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey -> (H, W, 3) uint8 BGR, the array detectron2 models take."""
    if grey.ndim != 2:
        raise ValueError(f"expected a (H, W) grey image, got shape {grey.shape}")
    return np.repeat(grey[:, :, None], 3, axis=2)
