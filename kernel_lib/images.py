"""Image loading and normalisation, shared by inference and training.

Competition images are 704x520 8-bit grey PNGs. Models see them as (H, W, 3) uint8
BGR (detectron2's default ``INPUT.FORMAT``), the grey channel repeated; the model's
own PIXEL_MEAN/PIXEL_STD does the rest. A fold trained with per-image normalisation
(:func:`normalize_image`, recorded in its meta.json) sees every image, in training and
at inference, shifted and scaled to one mean and spread first. Training reads images
through the same functions so that both sides see identical pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kernel_lib.config import IMAGE_SHAPE, NORMALIZATIONS

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")

NORMALIZED_MEAN = 128.0
NORMALIZED_STD = 32.0
"""Target of ``per_image``: the pack's images have means of 126-136 and standard
deviations of 9-17 grey levels, so this evens out their brightness and stretches their
contrast about 2-3x (values beyond 0..255, 4 standard deviations out, are clipped)."""


def is_image_file(path: Path) -> bool:
    """An image file by its suffix, not hidden (macOS ``._x.png`` and other dot files
    are not images)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]} (height x width)"


def shape_problem(path: str | Path, shape: tuple[int, ...], expected: tuple[int, int]) -> str | None:
    """Why an image of ``shape`` (H, W[, C]) read from ``path`` is not of the ``expected``
    (H, W) frame, in words naming the file; None when it is."""
    if tuple(shape[:2]) == tuple(expected):
        return None
    hint = "resize it to that frame or leave it out"
    if tuple(shape[:2]) == tuple(expected[::-1]):
        hint = "it looks turned by 90 degrees; turn it back or leave it out"
    return f"image {path} is {_shape_text(tuple(shape))}, expected {_shape_text(tuple(expected))}: {hint}"


def _header_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) from the file's header without decoding the pixels; None when Pillow is
    missing or cannot tell (then :func:`read_image` decides)."""
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # any unreadable header: read_image reports it when decoding
        return None
    return int(height), int(width)


def list_images(folder: str | Path, shape: tuple[int, int] | None = IMAGE_SHAPE) -> list[Path]:
    """Image files of ``folder`` (not recursive, hidden files skipped), sorted by name;
    the id is the stem.

    Args:
        folder: the image folder.
        shape: the (H, W) frame every image must have, checked from the file headers
            before any model runs; None: not checked.

    Raises:
        ValueError: the folder does not exist or holds no image, two files share an id
            (``x.png`` and ``x.jpg``), or an image is not of ``shape``; the message names
            the files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"image folder {folder} {what}; pass the folder that holds the <id>.png files")
    paths = sorted(p for p in folder.iterdir() if is_image_file(p))
    if not paths:
        raise ValueError(f"image folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} file")
    by_id: dict[str, list[Path]] = {}
    for p in paths:
        by_id.setdefault(p.stem, []).append(p)
    twice = {i: ps for i, ps in by_id.items() if len(ps) > 1}
    if twice:
        shown = "; ".join(" and ".join(p.name for p in ps) for ps in list(twice.values())[:3])
        raise ValueError(
            f"image folder {folder}: {len(twice)} id(s) have more than one file ({shown}); an image's id is its "
            "file name without the extension, so keep one file per id"
        )
    if shape is not None:
        bad = []
        for p in paths:
            found = _header_shape(p)
            if found is not None and found != tuple(shape):
                bad.append(shape_problem(p, found, shape))
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ValueError(f"{bad[0]}{more}")
    return paths


def read_image(path: str | Path, shape: tuple[int, int] | None = IMAGE_SHAPE) -> np.ndarray:
    """Read one image as (H, W) uint8 grey.

    Args:
        path: the image file.
        shape: the (H, W) frame it must have (the competition's by default); None: any.

    Raises:
        ValueError: the file is missing, not a readable image, or not of ``shape``
            (naming the file, its shape and the expected one).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image {path} does not exist")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"image {path} could not be decoded; is it a valid PNG?")
    if shape is not None:
        problem = shape_problem(path, image.shape, shape)
        if problem:
            raise ValueError(problem)
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


def normalize_image(grey: np.ndarray, method: str = "none") -> np.ndarray:
    """(H, W) uint8 grey -> (H, W) uint8 grey under one of :data:`kernel_lib.config.NORMALIZATIONS`.

    ``per_image``: ``(grey - mean) / std * NORMALIZED_STD + NORMALIZED_MEAN`` with the
    image's own mean and standard deviation, rounded and clipped to 0..255; a flat
    image (std 0) becomes ``NORMALIZED_MEAN`` everywhere. ``none`` returns ``grey``.

    Raises:
        ValueError: an unknown method or an image that is not (H, W).
    """
    if method not in NORMALIZATIONS:
        raise ValueError(f"input normalization: expected one of {', '.join(NORMALIZATIONS)}, got {method!r}")
    if grey.ndim != 2:
        raise ValueError(f"expected a (H, W) grey image, got shape {grey.shape}")
    if method == "none":
        return grey
    values = grey.astype(np.float32)
    std = float(values.std())
    scale = NORMALIZED_STD / std if std > 0 else 0.0
    out = (values - float(values.mean())) * scale + NORMALIZED_MEAN
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
