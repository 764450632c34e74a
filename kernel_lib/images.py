"""Image loading and normalisation, shared by inference and training.

Competition images are 704x520 8-bit grey PNGs. A 16-bit image is read at its bit
depth, exactly: each value ``v`` becomes ``(v + 128) // 257``, the nearest 8-bit level,
so the 16-bit copy of an 8-bit image (every value times 257) reads back identical; an
image of signed or floating-point pixels is refused (:func:`to_uint8`). A colour image
becomes grey (OpenCV's BGR -> grey weights) after that scaling. Models see images as
(H, W, 3) uint8 BGR (detectron2's default ``INPUT.FORMAT``), the grey channel repeated;
the model's own PIXEL_MEAN/PIXEL_STD does the rest. A fold trained with per-image
normalisation (:func:`normalize_image`, recorded in its meta.json) sees every image, in
training and at inference, shifted and scaled to one mean and spread first. Training
reads images through the same functions so that both sides see identical pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from kernel_lib.config import IMAGE_SHAPE, NORMALIZATIONS
from kernel_lib.outputs import file_kind

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
    missing. A header Pillow cannot read is decoded in full by :func:`read_image`
    (OpenCV reads some files Pillow does not), which raises when it cannot either.

    Raises:
        ValueError: the file cannot be read or decoded (see :func:`read_image`).
    """
    try:
        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception:  # any unreadable header: read_image decides, and says why
        return read_image(path, shape=None).shape[:2]
    return int(height), int(width)


def _image_names(folder: Path) -> list[Path]:
    """Every entry of ``folder`` named like an image (by suffix, not hidden), whatever it is.

    Raises:
        ValueError: the folder cannot be listed (permission).
    """
    try:
        entries = sorted(folder.iterdir())
    except OSError as err:
        raise ValueError(
            f"image folder {folder}: cannot list it ({err.strerror or err}); make it readable or pass another folder"
        ) from None
    return [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]


def list_images(folder: str | Path, shape: tuple[int, int] | None = IMAGE_SHAPE) -> list[Path]:
    """Image files of ``folder`` (not recursive, hidden files skipped), sorted by name;
    the id is the stem.

    Every entry named like an image (``*.png``, ...) must be a readable image file: a
    folder named ``x.png``, a dangling or looping link, a FIFO or a device under such a
    name is an error naming it (skipping it would leave its id out without a word).

    Args:
        folder: the image folder.
        shape: the (H, W) frame every image must have, checked from the file headers
            before any model runs (a file whose header cannot be read is decoded, and one
            that cannot be decoded is an error); None: not checked.

    Raises:
        ValueError: the folder does not exist, is not a folder, cannot be listed or
            holds no image; an image name is not an image file; two files share an id
            (``x.png`` and ``x.jpg``); an image cannot be read or decoded, or is not of
            ``shape``; the message names the files.
    """
    folder = Path(folder)
    kind = file_kind(folder)
    if kind != "a folder":
        what = {None: "is a file, not a folder", "missing": "does not exist"}.get(kind, f"is {kind}, not a folder")
        raise ValueError(f"image folder {folder} {what}; pass the folder that holds the <id>.png files")
    paths = _image_names(folder)
    broken = [f"{p.name} ({k})" for p, k in ((p, file_kind(p)) for p in paths) if k is not None]
    if broken:
        raise ValueError(
            f"image folder {folder}: {len(broken)} image name(s) that are not readable image files: "
            f"{', '.join(broken[:3])}; their ids would be left out: fix or remove them"
        )
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


def to_uint8(image: np.ndarray, path: str | Path = "image") -> np.ndarray:
    """Pixels of any channel count as uint8, scaled by their bit depth, exactly.

    uint8 is returned as it is; uint16 ``v`` becomes ``(v + 128) // 257``, the nearest
    8-bit level (``257 * x`` gives back ``x``; 65535 gives 255). No per-image stretch:
    an image reads the same whatever else is in it.

    Raises:
        ValueError: signed or floating-point pixels (their range is not known from the
            type), naming ``path``.
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise ValueError(
        f"image {path} holds {image.dtype} pixels; only 8-bit and 16-bit unsigned images are read "
        "(no scale is known for other types): save it as an 8-bit grey PNG"
    )


def read_image(path: str | Path, shape: tuple[int, int] | None = IMAGE_SHAPE) -> np.ndarray:
    """Read one image as (H, W) uint8 grey: 8-bit as it is, 16-bit scaled exactly by
    its bit depth (:func:`to_uint8`), colour made grey after that.

    Args:
        path: the image file.
        shape: the (H, W) frame it must have (the competition's by default); None: any.

    Raises:
        ValueError: the file is missing or not a regular file, cannot be read (e.g.
            permission), is empty, cannot be decoded as an image, holds signed or
            floating-point pixels, or is not of ``shape`` (naming the file, its shape and
            the expected one).
    """
    path = Path(path)
    kind = file_kind(path)
    if kind is not None:
        raise ValueError(f"image {path} {'does not exist' if kind == 'missing' else f'is {kind}, not an image file'}")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ValueError(f"image {path}: cannot read it ({err.strerror or err}); make it readable") from None
    if not data:
        raise ValueError(f"image {path} is empty (0 bytes); replace it with the image or leave it out")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:  # OpenCV refusing the buffer outright: the same answer as an undecodable one
        image = None
    if image is None:
        suffix = path.suffix or "(no suffix)"
        raise ValueError(
            f"image {path} could not be decoded as an image (a {suffix} file of {len(data)} bytes: damaged, "
            f"truncated or not really {suffix}); replace it or leave it out"
        )
    if shape is not None:
        problem = shape_problem(path, image.shape, shape)
        if problem:
            raise ValueError(problem)
    image = to_uint8(image, path)
    if image.ndim == 3:
        if image.shape[2] >= 3:
            image = cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_BGR2GRAY)
        else:  # grey (+ alpha)
            image = np.ascontiguousarray(image[..., 0])
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
