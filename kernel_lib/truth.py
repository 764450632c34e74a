"""train.csv's annotations, checked row by row under one policy (numpy + pandas only).

Training (:func:`kernel_lib.training.datasets.load_dataset_dicts`), evaluation
(:func:`read_truth` -> :class:`Truth` per image) and scoring
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

The rows of an image are checked together: all annotations parsed and checked at once
(:func:`kernel_lib.rle.scan_runs`), pixels expanded in one array; only a row the batch
check refuses goes through the per-row :func:`kernel_lib.rle.rle_problems` to word its
problem. The result is the per-row check's, row for row.

An image whose rows are all left out has no truth instance (scoring counts its
predictions as false positives); training leaves such an image out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kernel_lib.config import CELL_TYPES, IMAGE_SHAPE
from kernel_lib.masks import CropMasks
from kernel_lib.rle import crops_from_indices, rle_problems, rle_to_indices, runs_to_indices, scan_runs
from kernel_lib.tables import read_csv

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

    All annotations are parsed and checked at once; a row the batch check refuses is
    checked alone (see the module's docstring). Checks per row, first failing one
    reported: cell type, size, empty, malformed RLE, no pixel, duplicate.

    Args:
        image_id: the image id (every row's ``id``).
        rows: its rows as strings (index = 0-based data row): ``annotation``, and
            ``width``, ``height``, ``cell_type`` when present (absent: not checked).
        shape: (H, W) of the image.

    Returns:
        ``(valid, problems)``: ``valid`` = [(row, (K,) int64 flat row-major indices,
        ascending)] in row order; ``problems`` = one :class:`AnnotationProblem` per row
        left out, in row order.
    """
    n = len(rows)
    row_ids = [int(r) for r in rows.index]
    annotations = rows["annotation"].tolist()
    before = _row_problems(rows, shape)  # cell type and size: None where the row passes
    ok, run_of, starts, lengths = scan_runs(annotations, shape)
    # the pixels of every row the scan accepted, in one array: row k's are pixels[offsets[k]:offsets[k + 1]]
    pixels = runs_to_indices(starts, lengths)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(run_of, lengths, minlength=n).astype(np.int64), out=offsets[1:])
    bounds = offsets.tolist()
    runs = np.bincount(run_of, minlength=n).tolist()
    no_pixel = np.zeros(0, np.int64)
    problems: list[AnnotationProblem] = []
    valid: list[tuple[int, np.ndarray]] = []
    seen: dict[bytes, int] = {}
    for k, (row, ann, what, accepted) in enumerate(zip(row_ids, annotations, before, ok.tolist())):
        indices = no_pixel
        if what is None and accepted:
            if runs[k] == 0:
                what = "empty annotation (no run)"  # blank: only whitespace
            indices = pixels[bounds[k] : bounds[k + 1]]
        elif what is None:  # refused by the scan (or of a rare form it leaves alone): checked alone
            what, indices = _checked_alone(ann, shape)
        if what is None and indices.size == 0:
            what = "empty annotation (no pixel)"
        if what is None:
            key = indices.tobytes()  # the pixels themselves: equal keys are equal pixel sets
            if key not in seen:
                seen[key] = row
                valid.append((row, indices))
                continue
            what = f"duplicate of row {seen[key]} (same pixels)"
        problems.append(AnnotationProblem(image_id, row, what))
    return valid, problems


def _row_problems(rows: pd.DataFrame, shape: tuple[int, int]) -> list[str | None]:
    """Per row, what its ``cell_type`` or ``width`` / ``height`` columns say is wrong
    (None: nothing, or the columns are absent), in the policy's order of checks."""
    height, width = shape
    n = len(rows)
    out: list[str | None] = [None] * n
    if "cell_type" in rows.columns:
        cell_types = rows["cell_type"].tolist()
        types = [t for t in cell_types if t in CELL_TYPES]
        image_type = max(set(types), key=types.count) if types else None
        for k, cell_type in enumerate(cell_types):
            if cell_type not in CELL_TYPES:
                out[k] = f"unknown cell_type {cell_type!r}; expected one of {list(CELL_TYPES)}"
            elif cell_type != image_type:
                out[k] = f"cell_type {cell_type!r} differs from the image's {image_type!r}"
    if "width" in rows.columns and "height" in rows.columns:
        fits: dict[tuple[str, str], bool] = {}  # an image's rows repeat one or two sizes
        for k, (w_text, h_text) in enumerate(zip(rows["width"].tolist(), rows["height"].tolist())):
            if out[k] is not None:
                continue
            key = (w_text, h_text)
            if key not in fits:
                fits[key] = (_as_int(h_text), _as_int(w_text)) == (height, width)
            if not fits[key]:
                out[k] = f"width x height {w_text} x {h_text} in train.csv, but the image is {width} x {height}"
    return out


def _checked_alone(ann: str, shape: tuple[int, int]) -> tuple[str | None, np.ndarray]:
    """One annotation the batch scan refused: ``(problem or None, (K,) int64 pixels)``."""
    no_pixel = np.zeros(0, np.int64)
    if not ann.strip():
        return "empty annotation (no run)", no_pixel
    found = rle_problems(ann, shape)
    if found:
        return f"malformed RLE: {'; '.join(found)}", no_pixel
    return None, rle_to_indices(ann, shape)


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
        cell_type = ""
        if "cell_type" in rows.columns:  # the first kept row's, else the first row's
            types = rows["cell_type"].tolist()
            cell_type = str(types[rows.index.tolist().index(valid[0][0])] if valid else types[0])
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


@dataclass(frozen=True, eq=False)
class Truth:
    """One annotated image: its instances (may overlap), cell type name, and the rows of
    the image that the truth policy left out (:mod:`kernel_lib.truth`)."""

    masks: CropMasks
    cell_type: str
    dropped: tuple[AnnotationProblem, ...] = ()


def read_truth(path: str | Path, ids: Iterable[str] | None = None) -> dict[str, Truth]:
    """Annotations of train.csv (``id,annotation,...,cell_type``), per image, under the
    truth policy training and scoring apply too (:mod:`kernel_lib.truth`): empty,
    malformed, out-of-frame rows, rows of another size or cell type and duplicated rows
    (the same pixels as an earlier row of the image) are left out, each reported in its
    image's ``Truth.dropped`` (:func:`truth_notes` says them in a line).

    Args:
        path: the competition's train.csv (row-major RLE).
        ids: only these images (None: all).

    Returns:
        id -> :class:`Truth`, in file order of first appearance; an image whose rows are
        all left out has no instance.

    Raises:
        ValueError: missing file or columns.
    """
    path = Path(path)
    df = read_csv(path, "pass the competition's train.csv", what="truth file")
    missing = {"id", "annotation", "cell_type"} - set(df.columns)
    if missing:
        raise ValueError(
            f"truth file {path}: missing column(s) {sorted(missing)}; expected train.csv's id,annotation,cell_type"
        )
    images = truth_images(df, ids=ids, shape=None)
    return {i: Truth(t.masks(), t.cell_type, t.dropped) for i, t in images.items()}


def truth_notes(truth: Mapping[str, Truth], source: str | Path) -> list[str]:
    """A note naming the truth rows left out (none: no note)."""
    line = describe_dropped((p for t in truth.values() for p in t.dropped), str(source))
    return [line] if line else []
