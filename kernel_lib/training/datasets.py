"""train.csv -> detectron2 dataset dicts, with broken annotations reported (no torch).

Each annotated image becomes one detectron2 dataset dict::

    {"file_name": ".../train/<id>.png", "image_id": "<id>", "height": 520, "width": 704,
     "cell_type": "astro",
     "annotations": [{"bbox": [x0, y0, x1, y1], "bbox_mode": 0 (XYXY_ABS),
                      "category_id": CELL_TYPES.index(cell_type),
                      "segmentation": {"size": [520, 704], "counts": b"..."},  # COCO RLE
                      "row": 17}, ...]}

``segmentation`` is a pycocotools compressed RLE (column-major, as COCO stores it),
which detectron2's ``transform_instance_annotations`` / ``annotations_to_instances``
decode into bitmasks (``INPUT.MASK_FORMAT = "bitmask"``). ``bbox`` is the tight box of
the mask in detectron2's continuous coordinates (last pixel + 1). ``row`` is the
instance's 0-based data row in train.csv (file line ``row + 2``).

Every row is checked before it is used, under the one truth policy that evaluation
and scoring apply too (:func:`kernel_lib.truth.check_image_rows`: empty, malformed,
out of frame, of another size or cell type, or a duplicate of an earlier row of the
image); a row that fails a check is left out and reported as an
:class:`~kernel_lib.truth.AnnotationProblem`, never trained on.

With ``mend=True`` every kept row's mask is mended before training (:func:`mend_mask`:
holes filled, fragments apart from its largest piece dropped, as the top solutions
rebuilt astro masks from their outer contour); each row changed is listed in
:attr:`TrainingData.mended` with what changed. Scoring truth is never mended.

Images whose file is missing, unreadable, not of the competition's 520x704 frame,
or given twice (``x.png`` and ``x.jpg``), or with no valid row left, are reported
(``row = -1``) and left out. Hidden files (``._x.png``) are never read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pycocotools.mask as mask_util

from kernel_lib.config import CELL_TYPES, IMAGE_SHAPE
from kernel_lib.images import IMAGE_SUFFIXES, read_image, shape_problem
from kernel_lib.masks import CropMasks
from kernel_lib.rle import crops_from_indices
from kernel_lib.tables import read_csv
from kernel_lib.truth import IMAGE_ROW, AnnotationProblem, check_image_rows

XYXY_ABS = 0
"""``detectron2.structures.BoxMode.XYXY_ABS`` (an IntEnum; kept as an int to stay torch-free)."""

TRAIN_COLUMNS: tuple[str, ...] = ("id", "annotation", "width", "height", "cell_type")
"""Columns of the competition's train.csv that training reads."""


@dataclass(frozen=True)
class TrainingData:
    """What :func:`load_dataset_dicts` returns.

    Attributes:
        dicts: detectron2 dataset dicts, one per usable image, in ``ids`` order.
        problems: every row or image left out, in file order.
        rows: the train.csv rows that were used (the DataFrame's index is the 0-based
            data row), columns ``id, annotation, width, height, cell_type``.
        mended: each row whose mask :func:`mend_mask` changed (``mend=True``), with
            what changed; the rows themselves stay as the file has them.
    """

    dicts: list[dict[str, Any]]
    problems: list[AnnotationProblem]
    rows: pd.DataFrame
    mended: list[AnnotationProblem] = dataclasses.field(default_factory=list)

    @classmethod
    def merge(cls, parts: Sequence[TrainingData]) -> TrainingData:
        """One dataset of several (train.csv and COCO files), in order. An image id that
        an earlier part already has is left out and reported: the same image twice would
        be trained on twice as often.

        Raises:
            ValueError: no part.
        """
        if not parts:
            raise ValueError("TrainingData.merge: expected at least one dataset, got none")
        dicts: list[dict[str, Any]] = []
        problems: list[AnnotationProblem] = []
        seen: dict[str, str] = {}
        for part in parts:
            problems.extend(part.problems)
            for record in part.dicts:
                image_id, source = str(record["image_id"]), str(record.get("source", "train.csv"))
                if image_id in seen:
                    what = f"also in {seen[image_id]}; the copy in {source} left out"
                    problems.append(AnnotationProblem(image_id, IMAGE_ROW, what))
                    continue
                seen[image_id] = source
                dicts.append(record)
        rows = [part.rows for part in parts if len(part.rows)]
        mended = [m for part in parts for m in part.mended]
        return cls(dicts, problems, pd.concat(rows) if rows else parts[0].rows, mended)

    def problems_frame(self) -> pd.DataFrame:
        """``problems`` as DataFrame[id, row, what]."""
        return pd.DataFrame([(p.id, p.row, p.what) for p in self.problems], columns=["id", "row", "what"]).astype(
            {"row": np.int64}
        )


def read_train_csv(path: str | Path) -> pd.DataFrame:
    """Read train.csv as strings (``annotation`` "" when blank), checking its columns.

    Returns:
        DataFrame with at least ``id, annotation, width, height, cell_type``, index =
        0-based data row.

    Raises:
        ValueError: the file is missing, unreadable or lacks a column.
    """
    path = Path(path)
    df = read_csv(path, "pass the competition folder that holds train.csv and train/", what="train csv")
    missing = [c for c in TRAIN_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"train csv {path}: expected columns {list(TRAIN_COLUMNS)}, missing {missing}")
    return df.reset_index(drop=True)


def coco_rle(indices: np.ndarray, shape: tuple[int, int]) -> dict[str, Any]:
    """pycocotools compressed RLE of the pixels at row-major flat ``indices``.

    Args:
        indices: (K,) int flat 0-based row-major indices (any order, no repeats).
        shape: (H, W) of the frame.

    Returns:
        ``{"size": [H, W], "counts": bytes}`` (COCO runs are column-major).
    """
    height, width = shape
    ys, xs = np.divmod(np.asarray(indices, np.int64), width)
    col_major = np.sort(xs * height + ys)
    if col_major.size:
        breaks = np.flatnonzero(np.diff(col_major) != 1) + 1
        starts = col_major[np.concatenate(([0], breaks))]
        ends = col_major[np.concatenate((breaks - 1, [col_major.size - 1]))] + 1
        gaps = starts - np.concatenate(([0], ends[:-1]))
        counts = np.empty(2 * starts.size + 1, np.int64)
        counts[0:-1:2] = gaps
        counts[1::2] = ends - starts
        counts[-1] = height * width - ends[-1]
    else:
        counts = np.array([height * width], np.int64)
    return mask_util.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)


def mend_mask(crop: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """One instance mask mended: its largest 8-connected piece, holes filled (the piece's
    outer contour drawn filled, as 4th place rebuilt astro masks).

    Args:
        crop: (h, w) bool mask (a tight crop or a whole frame).

    Returns:
        (mended (h, w) bool, hole pixels filled, pieces dropped, their pixels). An empty
        mask comes back as it is.
    """
    crop = np.asarray(crop, bool)
    if not crop.any():
        return crop.copy(), 0, 0, 0
    padded = np.pad(crop, 1).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(padded, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = 1 + int(np.argmax(areas))
    piece = labels == largest
    contours, _ = cv2.findContours(piece.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    filled = np.zeros_like(padded)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    mended = (filled[1:-1, 1:-1] > 0) | piece[1:-1, 1:-1]
    holes = int(np.count_nonzero(mended & ~crop))
    return mended, holes, count - 2, int(areas.sum() - areas[largest - 1])


def _mended_rows(
    image_id: str, valid: list[tuple[int, np.ndarray]], shape: tuple[int, int]
) -> tuple[list[tuple[int, np.ndarray]], list[AnnotationProblem]]:
    """Each row's flat indices mended (:func:`mend_mask` on the row's tight crop)."""
    inst = np.repeat(np.arange(len(valid)), [indices.size for _, indices in valid])
    pixels = np.concatenate([indices for _, indices in valid]).astype(np.int64)
    masks = crops_from_indices(inst, pixels, len(valid), shape)
    out, notes = [], []
    for k, (row, indices) in enumerate(valid):
        mended, holes, pieces, dropped = mend_mask(masks.crops[k])
        if holes or pieces:
            indices = CropMasks((mended,), masks.origins[k : k + 1], shape).flat_indices(0)
            what = []
            if holes:
                what.append(f"{holes} hole pixel(s) filled")
            if pieces:
                what.append(f"{pieces} fragment(s) of {dropped} pixel(s) dropped")
            notes.append(AnnotationProblem(image_id, row, "mended: " + ", ".join(what)))
        out.append((row, indices))
    return out, notes


def segmentation_mask(segmentation: dict[str, Any]) -> np.ndarray:
    """(H, W) bool mask of a dataset dict's ``segmentation`` (COCO RLE)."""
    return mask_util.decode(segmentation).astype(bool)


def _image_paths(image_dir: Path, image_id: str) -> list[Path]:
    """The image files of ``image_id`` (``<id>.png``, ``<id>.jpg``, ...; hidden files never)."""
    if image_id.startswith("."):
        return []
    return [
        image_dir / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES if (image_dir / f"{image_id}{suffix}").is_file()
    ]


def _record(
    image_id: str, path: Path, shape: tuple[int, int], cell_type: str, valid: Sequence[tuple[int, np.ndarray]]
) -> dict[str, Any]:
    height, width = shape
    category = CELL_TYPES.index(cell_type)
    annotations = []
    for row, indices in valid:
        ys, xs = np.divmod(indices, width)
        annotations.append(
            {
                "bbox": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
                "bbox_mode": XYXY_ABS,
                "category_id": category,
                "segmentation": coco_rle(indices, shape),
                "row": row,
            }
        )
    return {
        "file_name": str(path),
        "image_id": image_id,
        "height": height,
        "width": width,
        "cell_type": cell_type,
        "annotations": annotations,
    }


def load_dataset_dicts(
    data_dir: str | Path,
    ids: Iterable[str] | None = None,
    *,
    train_csv: str | Path | None = None,
    image_dir: str | Path | None = None,
    image_shape: tuple[int, int] | None = IMAGE_SHAPE,
    mend: bool = False,
) -> TrainingData:
    """detectron2 dataset dicts for the annotated images of a competition folder.

    Args:
        data_dir: folder holding ``train.csv`` and ``train/<id>.png``.
        ids: images to load (e.g. one fold's training ids), in this order; ``None``
            loads every image of train.csv, sorted by id. An id without rows or
            without an image file is reported, not an error.
        train_csv: train.csv to read instead of ``data_dir/train.csv``.
        image_dir: image folder instead of ``data_dir/train``.
        image_shape: the (H, W) frame every image must have (the competition's); an
            image of another is reported and left out. None: any frame.
        mend: mend every kept row's mask (:func:`mend_mask`), each change listed in
            ``mended``.

    Returns:
        :class:`TrainingData` (dicts, problems, rows used).

    Raises:
        ValueError: train.csv is missing or lacks a column, or not one image is usable
            (the message names the first problems).
    """
    data_dir = Path(data_dir)
    csv_path = Path(train_csv) if train_csv is not None else data_dir / "train.csv"
    image_dir = Path(image_dir) if image_dir is not None else data_dir / "train"
    if not image_dir.is_dir():
        raise ValueError(f"image folder {image_dir} does not exist; pass the competition folder (train.csv, train/)")
    df = read_train_csv(csv_path)
    groups = dict(tuple(df.groupby("id", sort=True)))
    wanted = sorted(groups) if ids is None else list(dict.fromkeys(ids))

    dicts: list[dict[str, Any]] = []
    problems: list[AnnotationProblem] = []
    mended: list[AnnotationProblem] = []
    used: list[int] = []
    for image_id in wanted:
        rows = groups.get(image_id)
        if rows is None:
            problems.append(AnnotationProblem(image_id, IMAGE_ROW, f"no row in {csv_path}; image left out"))
            continue
        found_paths = _image_paths(image_dir, image_id)
        if not found_paths:
            problems.append(
                AnnotationProblem(image_id, IMAGE_ROW, f"no image file {image_dir / image_id}.png; left out")
            )
            continue
        if len(found_paths) > 1:
            names = " and ".join(p.name for p in found_paths)
            problems.append(
                AnnotationProblem(image_id, IMAGE_ROW, f"two image files for one id in {image_dir}: {names}; left out")
            )
            continue
        path = found_paths[0]
        try:
            shape = read_image(path, shape=None).shape
        except ValueError as err:
            problems.append(AnnotationProblem(image_id, IMAGE_ROW, f"{err}; left out"))
            continue
        wrong = shape_problem(path, shape, image_shape) if image_shape is not None else None
        if wrong:
            problems.append(AnnotationProblem(image_id, IMAGE_ROW, f"{wrong}; left out"))
            continue
        valid, found = check_image_rows(image_id, rows, (int(shape[0]), int(shape[1])))
        problems.extend(found)
        if not valid:
            problems.append(AnnotationProblem(image_id, IMAGE_ROW, "no valid annotation left; image left out"))
            continue
        cell_type = str(rows.loc[valid[0][0], "cell_type"])
        if mend:
            valid, notes = _mended_rows(image_id, valid, (int(shape[0]), int(shape[1])))
            mended.extend(notes)
        dicts.append(_record(image_id, path, (int(shape[0]), int(shape[1])), cell_type, valid))
        used.extend(row for row, _ in valid)
    if not dicts:
        shown = "; ".join(str(p) for p in problems[:3]) or "no id given"
        raise ValueError(f"no usable annotated image in {data_dir} ({len(wanted)} asked for): {shown}")
    problems.sort(key=lambda p: (p.row if p.row != IMAGE_ROW else np.iinfo(np.int64).max, p.id))
    rows_used = df.loc[sorted(used), list(TRAIN_COLUMNS)]
    return TrainingData(dicts, problems, rows_used, mended)


def record_masks(record: dict[str, Any]) -> CropMasks:
    """The instance masks of one dataset dict, as :class:`CropMasks` in annotation order."""
    shape = (int(record["height"]), int(record["width"]))
    pieces = [np.flatnonzero(segmentation_mask(a["segmentation"]).ravel()) for a in record["annotations"]]
    if not pieces:
        return CropMasks.empty(shape)
    inst = np.repeat(np.arange(len(pieces)), [p.size for p in pieces])
    return crops_from_indices(inst, np.concatenate(pieces).astype(np.int64), len(pieces), shape)
