"""train.csv's annotations, checked row by row under one policy (numpy + pandas only).

Training (:func:`kernel_lib.data.load_dataset_dicts`), evaluation
(:func:`kernel_lib.evaluate.read_truth`) and scoring
(:func:`kernel_lib.metric.score_submission`) all read the truth through
:func:`check_image_rows`, so that the same rows are the truth everywhere: training's
held-out score and ``evaluate``'s score agree on the same instances.

The policy. A row is left out, and reported as an :class:`AnnotationProblem` (never
silently), when it is:

- an empty annotation (no run, or blank);
- a malformed RLE (non-integer tokens, odd count, start < 1, length < 1, unsorted or
  overlapping runs) or runs leaving the frame (:func:`kernel_lib.rle.rle_problems`);
- of another ``width``/``height`` than the image's frame (when the columns are there);
- of a ``cell_type`` not in :data:`~kernel_lib.config.CELL_TYPES`, or not the image's
  majority type (when the column is there);
- a duplicated row: the same pixels as an earlier row of the same image (the earlier
  row is kept).

An image whose rows are all left out has no truth instance (scoring counts its
predictions as false positives); training leaves such an image out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kernel_lib.config import CELL_TYPES, IMAGE_SHAPE
from kernel_lib.masks import CropMasks
from kernel_lib.rle import crops_from_indices, rle_problems, rle_to_indices

IMAGE_ROW = -1
"""``AnnotationProblem.row`` of a problem about a whole image rather than one row."""

TRUTH_COLUMNS: tuple[str, ...] = ("id", "annotation", "width", "height", "cell_type")
"""Columns of train.csv the truth uses (``width``, ``height`` and ``cell_type`` optional)."""


@dataclass(frozen=True)
class AnnotationProblem:
    """One annotation (or image) left out, and why.

    Attributes:
        id: the image id.
        row: 0-based data row of train.csv (file line ``row + 2``), or
            :data:`IMAGE_ROW` (-1) for a problem about the whole image.
        what: what is wrong, in words.
    """

    id: str
    row: int
    what: str

    def __str__(self) -> str:
        where = "image" if self.row == IMAGE_ROW else f"row {self.row} (line {self.row + 2})"
        return f"{self.id} {where}: {self.what}"


def _as_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else None


def check_image_rows(
    image_id: str, rows: pd.DataFrame, shape: tuple[int, int]
) -> tuple[list[tuple[int, np.ndarray]], list[AnnotationProblem]]:
    """Check the train.csv rows of one image against its frame, under the module's policy.

    Args:
        image_id: the image id (every row's ``id``).
        rows: its rows as strings (index = 0-based data row): ``annotation``, and
            ``width``, ``height``, ``cell_type`` when present (absent: not checked).
        shape: (H, W) of the image.

    Returns:
        ``(valid, problems)``: ``valid`` = [(row, (K,) int64 flat row-major indices)] in
        row order; ``problems`` = one :class:`AnnotationProblem` per row left out.
    """
    height, width = shape
    problems: list[AnnotationProblem] = []
    valid: list[tuple[int, np.ndarray]] = []
    n = len(rows)
    cell_types = rows["cell_type"].tolist() if "cell_type" in rows.columns else [None] * n
    sized = "width" in rows.columns and "height" in rows.columns
    widths = rows["width"].tolist() if sized else [None] * n
    heights = rows["height"].tolist() if sized else [None] * n
    types = [t for t in cell_types if t in CELL_TYPES]
    image_type = max(set(types), key=types.count) if types else None
    seen: dict[bytes, int] = {}
    for row, ann, w_text, h_text, cell_type in zip(rows.index, rows["annotation"], widths, heights, cell_types):
        row = int(row)

        def report(what: str, row: int = row) -> None:
            problems.append(AnnotationProblem(image_id, row, what))

        if cell_type is not None:
            if cell_type not in CELL_TYPES:
                report(f"unknown cell_type {cell_type!r}; expected one of {list(CELL_TYPES)}")
                continue
            if cell_type != image_type:
                report(f"cell_type {cell_type!r} differs from the image's {image_type!r}")
                continue
        if sized and (_as_int(h_text), _as_int(w_text)) != (height, width):
            report(f"width x height {w_text} x {h_text} in train.csv, but the image is {width} x {height}")
            continue
        if not ann.strip():
            report("empty annotation (no run)")
            continue
        found = rle_problems(ann, shape)
        if found:
            report(f"malformed RLE: {'; '.join(found)}")
            continue
        indices = rle_to_indices(ann, shape)
        if indices.size == 0:
            report("empty annotation (no pixel)")
            continue
        key = hashlib.sha1(indices.tobytes()).digest()
        if key in seen:
            report(f"duplicate of row {seen[key]} (same pixels)")
            continue
        seen[key] = row
        valid.append((row, indices))
    return valid, problems


@dataclass(frozen=True, eq=False)
class TruthImage:
    """One image's truth after the policy.

    Attributes:
        id: image id.
        shape: (H, W) frame.
        cell_type: the image's cell type ("" when the truth has no ``cell_type``).
        rows: the 0-based data rows kept, in row order.
        pixels: per kept row, its (K,) int64 flat row-major pixel indices (ascending).
        dropped: the rows left out, and why.
    """

    id: str
    shape: tuple[int, int]
    cell_type: str
    rows: tuple[int, ...]
    pixels: tuple[np.ndarray, ...]
    dropped: tuple[AnnotationProblem, ...] = field(default=())

    def instance_pixels(self) -> tuple[np.ndarray, np.ndarray, int]:
        """``(inst, pix, n)`` as :func:`kernel_lib.metric.instance_pixels` gives them."""
        n = len(self.pixels)
        if n == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
        sizes = [p.size for p in self.pixels]
        return np.repeat(np.arange(n, dtype=np.int64), sizes), np.concatenate(self.pixels).astype(np.int64), n

    def masks(self) -> CropMasks:
        """The kept instances as :class:`CropMasks`, in row order."""
        inst, pix, n = self.instance_pixels()
        return crops_from_indices(inst, pix, n, self.shape) if n else CropMasks.empty(self.shape)


def _strings(df: pd.DataFrame, column: str) -> pd.Series:
    """A column as stripped str with NaN -> "" (frames read with or without keep_default_na)."""
    return df[column].fillna("").astype(str).str.strip()


def truth_images(
    df: pd.DataFrame, ids: Iterable[str] | None = None, shape: tuple[int, int] | None = IMAGE_SHAPE
) -> dict[str, TruthImage]:
    """Every image's truth from a train.csv-style frame, under the module's policy.

    Args:
        df: columns ``id``, ``annotation``, and optionally ``width``, ``height``,
            ``cell_type``; an integer index is the data row (``pd.read_csv``'s), any
            other index is replaced by positions.
        ids: only these images (None: all).
        shape: the frame of every image; None: each image's first row's
            ``height`` x ``width`` (the competition's frame when absent).

    Returns:
        id -> :class:`TruthImage`, in file order of first appearance.

    Raises:
        ValueError: ``id`` or ``annotation`` is missing.
    """
    missing = [c for c in ("id", "annotation") if c not in df.columns]
    if missing:
        raise ValueError(f"truth: expected columns id, annotation; missing {missing}, found {list(df.columns)}")
    index = df.index if pd.api.types.is_integer_dtype(df.index) else pd.RangeIndex(len(df))
    frame = pd.DataFrame({c: _strings(df, c).to_numpy() for c in TRUTH_COLUMNS if c in df.columns}, index=index)
    if ids is not None:
        frame = frame[frame["id"].isin({str(i) for i in ids})]
    out: dict[str, TruthImage] = {}
    for image_id, rows in frame.groupby("id", sort=False):
        image_id = str(image_id)
        frame_shape = shape if shape is not None else _row_shape(rows)
        valid, problems = check_image_rows(image_id, rows, frame_shape)
        if valid:
            cell_type = str(rows.loc[valid[0][0], "cell_type"]) if "cell_type" in rows.columns else ""
        else:
            cell_type = str(rows["cell_type"].iloc[0]) if "cell_type" in rows.columns else ""
        out[image_id] = TruthImage(
            image_id,
            frame_shape,
            cell_type,
            tuple(r for r, _ in valid),
            tuple(p for _, p in valid),
            tuple(problems),
        )
    return out


def _row_shape(rows: pd.DataFrame) -> tuple[int, int]:
    if "height" in rows.columns and "width" in rows.columns:
        h, w = _as_int(rows["height"].iloc[0]), _as_int(rows["width"].iloc[0])
        if h and w:
            return h, w
    return IMAGE_SHAPE


def describe_dropped(problems: Iterable[AnnotationProblem], source: str, shown: int = 3) -> str:
    """One line saying how many truth rows of ``source`` were left out and why (the
    first ``shown`` in row order); "" when none."""
    problems = sorted(problems, key=lambda p: (p.row, p.id))
    if not problems:
        return ""
    first = "; ".join(str(p) for p in problems[:shown])
    more = f"; ... ({len(problems) - shown} more)" if len(problems) > shown else ""
    return f"{source}: {len(problems)} truth row(s) left out (kernel_lib.truth's policy): {first}{more}"
