"""Write and validate ``submission.csv`` (``id,predicted``).

One row per instance; an image with no instance gets one row with an empty
``predicted``; every test id appears. :func:`validate_submission` checks what the
competition's scorer checks: the columns, each RLE (pairs, positive, sorted, in the
frame, no duplicated pixels), that no two masks of one image overlap, and (given the
sample submission) that the ids are exactly the expected ones.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kernel_lib import tables
from kernel_lib.config import IMAGE_SHAPE
from kernel_lib.outputs import atomic_output, file_kind
from kernel_lib.rle import parse_runs, rle_problems, runs_to_indices

__all__ = [
    "SUBMISSION_COLUMNS",
    "Problem",
    "check_fields",
    "id_problems",
    "read_csv_columns",
    "validate_submission",
    "write_submission",
]

SUBMISSION_COLUMNS: tuple[str, str] = ("id", "predicted")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission.

    Attributes:
        id: the image id ("" when the problem is not about one image).
        what: what is wrong.
        where: where in the file (row numbers are 1-based data rows, the header is row 0).
    """

    id: str
    what: str
    where: str

    def __str__(self) -> str:
        return f"{self.id or '-'}: {self.what} ({self.where})"


def read_csv_columns(path: str | Path, columns: Sequence[str], fix: str) -> pd.DataFrame:
    """:func:`kernel_lib.tables.read_csv_columns`, after checking that ``path`` is a file:
    a folder, a FIFO, a device or a broken link is named as what it is (a FIFO would
    otherwise block the read), not called missing.

    Raises:
        ValueError: see :func:`kernel_lib.tables.read_csv_columns`.
    """
    kind = file_kind(path)
    if kind not in (None, "missing"):
        raise ValueError(f"{Path(path)} is {kind}, not a CSV file; {fix}")
    return tables.read_csv_columns(path, columns, fix)


_UNWRITABLE_ID = re.compile(r'[,"\n\r]')


def _field_count_problems(path: Path) -> tuple[list[str], list[Problem]] | None:
    """The header of ``path`` (a regular file) and its rows with another number of fields:
    pandas shifts such a row's cells (when the first data row has one more, its first
    cell becomes the index) or refuses the file (a later row with more), and checks on
    the columns would be checks on the wrong cells. None when the csv module cannot
    read the file (pandas' message then says why)."""
    problems: list[Problem] = []
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            for row_number, row in enumerate(reader, start=1):
                if len(row) != len(header) and row:
                    what = f"{len(row)} field(s), expected {len(header)} (the header's); a comma too many or too few"
                    problems.append(Problem(row[0].strip(), what, f"row {row_number}"))
    except (csv.Error, OSError):
        return None
    return header, problems


def check_fields(path: str | Path, fix: str) -> None:
    """Refuse a CSV with a row of another number of fields than its header (pandas would
    read its cells shifted, silently, when it is the first row).

    Raises:
        ValueError: naming the file, the first such row and ``fix``.
    """
    scanned = _field_count_problems(Path(path)) if file_kind(path) is None else None
    if scanned is not None and scanned[1]:
        first = scanned[1][0]
        more = f" (and {len(scanned[1]) - 1} more row(s))" if len(scanned[1]) > 1 else ""
        raise ValueError(f"{path}: data {first.where}: {first.what}{more}; {fix}")


def id_problems(ids: Sequence[str]) -> list[str]:
    """The ids that cannot be written as a submission row (empty, or with a comma, a
    quote, a newline or surrounding spaces), each as ``repr``; ``[]`` when all can."""
    return [repr(i) for i in ids if not i or i != i.strip() or any(ch in i for ch in ',"\n\r')]


def write_submission(
    predictions: Mapping[str, Sequence[str]],
    path: str | Path,
    ids: Sequence[str] | None = None,
    *,
    validate: bool = True,
    shape: tuple[int, int] = IMAGE_SHAPE,
) -> Path:
    """Write ``submission.csv``, validated, replacing ``path`` only when it is valid.

    The file is written beside ``path`` under a temporary name, checked with
    :func:`validate_submission`, and renamed into place only then; when anything fails
    (a problem found, a full disk, an interrupt) ``path`` keeps its previous content.

    Args:
        predictions: image id -> RLE strings of its instances (empty strings are skipped).
        path: output file.
        ids: every id that must appear, in this order (e.g. the test folder's or the
            sample submission's); an id without predictions gets one empty row.
            ``None``: the ids of ``predictions``, in its order.
        validate: check the written file before it replaces ``path``.
        shape: (H, W) of every image, for the check.

    Returns:
        The path written.

    Raises:
        ValueError: no id at all, ``predictions`` has an id that ``ids`` lacks, an id
            cannot be a CSV cell, or the written file has problems (listed; ``path`` is
            untouched).
    """
    order = list(predictions) if ids is None else [str(i) for i in ids]
    if ids is not None:
        extra = sorted(set(predictions) - set(order))
        if extra:
            raise ValueError(
                f"write_submission: predictions for {len(extra)} id(s) not among the expected ids, "
                f"e.g. {extra[:3]}; pass ids that include them or drop those predictions"
            )
    if not order:
        kept = "the previous file is untouched" if Path(path).exists() else "nothing was written"
        raise ValueError(
            f"{path}: not written ({kept}): no image id to write (an empty sample submission or test folder); "
            "a submission without rows scores nothing"
        )
    bad_ids = id_problems(order)
    if bad_ids:
        raise ValueError(
            "write_submission: ids must be non-empty, without commas, quotes, newlines or surrounding "
            f"spaces, got {', '.join(bad_ids[:3])}; rename those image files"
        )
    path = Path(path)
    lines = ["id,predicted\n"]
    for image_id in order:
        rles = [r for r in predictions.get(image_id, ()) if r]
        if rles:
            lines.extend(f"{image_id},{r}\n" for r in rles)
        else:
            lines.append(f"{image_id},\n")
    with atomic_output(path) as tmp:
        with tmp.open("w", newline="") as f:
            f.writelines(lines)
        if validate:
            problems = validate_submission(tmp, shape=shape)
            if problems:
                listed = "; ".join(str(p) for p in problems[:5])
                kept = "the previous file is untouched" if path.exists() else "nothing was written"
                raise ValueError(
                    f"{path}: not written ({kept}): the submission would have {len(problems)} problem(s): {listed}"
                )
    return path


def _overlap_problems(image_id: str, rows: np.ndarray, rles: Sequence[str], shape: tuple[int, int]) -> list[Problem]:
    """Pairs of masks of one image that share pixels (rles all valid, non-empty)."""
    inst_runs, starts, lengths = parse_runs(rles, shape)
    pix = runs_to_indices(starts, lengths)
    inst = np.repeat(inst_runs, lengths)
    order = np.argsort(pix, kind="stable")
    pix, inst = pix[order], inst[order]
    dup = np.flatnonzero(pix[1:] == pix[:-1])
    if dup.size == 0:
        return []
    a, b = inst[dup], inst[dup + 1]
    pairs, first, counts = np.unique(np.stack([a, b], 1), axis=0, return_index=True, return_counts=True)
    problems = []
    width = shape[1]
    for (i, j), f, c in zip(pairs.tolist(), first.tolist(), counts.tolist()):
        y, x = divmod(int(pix[dup[f]]), width)
        problems.append(
            Problem(
                image_id,
                f"masks overlap on {c} pixel(s), first at (y={y}, x={x})",
                f"rows {rows[i]} and {rows[j]}",
            )
        )
    return problems


def validate_submission(
    path: str | Path,
    sample: str | Path | None = None,
    shape: tuple[int, int] = IMAGE_SHAPE,
) -> list[Problem]:
    """Everything wrong with a submission file; ``[]`` when it is valid.

    Args:
        path: the submission CSV (``id,predicted``).
        sample: the sample submission; when given, its ids must be exactly the
            submission's ids.
        shape: (H, W) of every image.

    Returns:
        One :class:`Problem` per bad row, overlapping pair, or missing / extra id.

    Raises:
        ValueError: the file (or the sample) is missing, not a regular file, not a CSV,
            or lacks the ``id`` / ``predicted`` columns.
    """
    df, problems = _read_rows(path)
    if df is None:
        return problems
    ids = df["id"].str.strip().to_numpy()
    rles = df["predicted"].to_numpy()
    problems += _id_problems(df["id"].to_numpy(), ids)
    by_id: dict[str, list[int]] = {}
    for k, image_id in enumerate(ids.tolist()):
        if image_id:
            by_id.setdefault(image_id, []).append(k)
    for image_id, rows in by_id.items():
        problems += _image_problems(image_id, rows, rles, shape)
    if sample is not None:
        problems += _sample_problems(sample, by_id)
    return problems


def _read_rows(path: str | Path) -> tuple[pd.DataFrame | None, list[Problem]]:
    """The submission's rows and the problems of its header and field counts; no rows
    (None) when the cells are not where the header says (every other check would read
    the wrong ones).

    Raises:
        ValueError: as :func:`validate_submission`.
    """
    fix = "expected a CSV with header 'id,predicted' (see sample_submission.csv)"
    try:
        df = read_csv_columns(path, SUBMISSION_COLUMNS, fix)
    except ValueError:
        # pandas refuses a later row with more fields than the header: list every such row
        scanned = _field_count_problems(Path(path)) if file_kind(path) is None else None
        if scanned is not None and scanned[1] and set(SUBMISSION_COLUMNS) <= set(scanned[0]):
            return None, scanned[1]
        raise
    problems: list[Problem] = []
    extra_cols = [c for c in df.columns if c not in SUBMISSION_COLUMNS]
    if extra_cols:
        problems.append(Problem("", f"unexpected column(s) {extra_cols}", "header"))
    scanned = _field_count_problems(Path(path))
    fields = scanned[1] if scanned is not None else []
    if fields or not isinstance(df.index, pd.RangeIndex):
        return None, problems + (fields or [Problem("", "rows with more fields than the header", "file")])
    if df.empty:
        problems.append(Problem("", "no row: a submission has one row (at least) per test image", "file"))
    return df, problems


def _id_problems(raw_ids: np.ndarray, ids: np.ndarray) -> list[Problem]:
    """Empty ids, and ids no submission row can hold (a comma, a quote, a line break)."""
    problems = [Problem("", "empty id", f"row {k + 1}") for k in np.flatnonzero(ids == "").tolist()]
    for k in np.flatnonzero([bool(_UNWRITABLE_ID.search(i)) for i in raw_ids]).tolist():
        problems.append(
            Problem(repr(raw_ids[k]), "id with a comma, a quote or a line break (no image id has one)", f"row {k + 1}")
        )
    return problems


def _image_problems(image_id: str, rows: list[int], rles: np.ndarray, shape: tuple[int, int]) -> list[Problem]:
    """One image's rows (0-based ``rows`` into ``rles``): numbers past the frame, bad
    RLE, empty rows beside instances or repeated, overlapping instances."""
    problems: list[Problem] = []
    frame_digits = len(str(shape[0] * shape[1]))
    too_long = re.compile(rf"(?<!\d)0*[1-9]\d{{{frame_digits},}}")  # a number > H*W: past the frame whatever it is
    empties = [k for k in rows if not rles[k].strip()]
    good = []
    for k in rows:
        if not rles[k].strip():
            continue
        huge = too_long.search(rles[k])
        if huge:  # checked here: past int64, start + length would wrap around
            number = huge.group(0)
            shown = number if len(number) <= 24 else f"{number[:20]}..."
            frame = f"the {shape[0]}x{shape[1]} frame ({shape[0] * shape[1]} pixels)"
            problems.append(Problem(image_id, f"bad RLE: number {shown} beyond {frame}", f"row {k + 1}"))
        else:
            good.append(k)
    try:  # fast path: every string of the image at once
        parse_runs([rles[k] for k in good], shape)
    except ValueError:  # find each bad row
        checked: list[int] = []
        for k in good:
            bad = rle_problems(rles[k], shape)
            if bad:
                problems.extend(Problem(image_id, f"bad RLE: {b}", f"row {k + 1}") for b in bad)
            else:
                checked.append(k)
        good = checked
    numbers = np.asarray(empties, np.int64) + 1
    if empties and len(rows) > len(empties):
        problems.extend(
            Problem(image_id, f"empty predicted row next to {len(rows) - len(empties)} instance row(s)", f"row {r}")
            for r in numbers.tolist()
        )
    elif len(empties) > 1:
        problems.append(Problem(image_id, f"{len(empties)} empty rows (one is enough)", f"rows {numbers.tolist()}"))
    if len(good) > 1:
        problems.extend(_overlap_problems(image_id, np.asarray(good) + 1, [rles[k] for k in good], shape))
    return problems


def _sample_problems(sample: str | Path, by_id: dict[str, list[int]]) -> list[Problem]:
    """Ids of the sample submission missing from the submission, and ids it does not list."""
    sample_df = read_csv_columns(sample, ("id",), "pass the competition's sample_submission.csv as --sample")
    expected = sample_df["id"].str.strip().tolist()
    problems = [
        Problem(image_id, "id of the sample submission missing", f"sample {sample}")
        for image_id in expected
        if image_id not in by_id
    ]
    expected_set = set(expected)
    for image_id, rows in by_id.items():
        if image_id not in expected_set:
            problems.append(Problem(image_id, "id not in the sample submission", f"row {rows[0] + 1}"))
    return problems
