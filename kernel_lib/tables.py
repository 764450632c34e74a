"""Reading the project's CSV inputs (train.csv, submissions, folds files) with clear errors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kernel_lib.outputs import file_kind


def read_csv(path: str | Path, fix: str, what: str = "", usecols: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a CSV as strings (empty cells stay ``""``).

    Args:
        path: the file.
        fix: what the user should do, appended to every message.
        what: how messages name the file, e.g. "folds file" ("" names the path alone).
        usecols: read only these columns when present (the others are skipped unread).

    Raises:
        ValueError: the file is missing, not a regular file (a folder, a FIFO, a device
            or a broken link is named for what it is, and never opened: a FIFO would
            block the read, ``/dev/zero`` never end), cannot be read, or is not a
            readable CSV; the message names the file and ``fix``.
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    kind = file_kind(path)
    if kind == "missing":
        raise ValueError(f"{name} does not exist (no such file); {fix}")
    if kind is not None:
        raise ValueError(f"{name} is {kind}, not a CSV file; {fix}")
    wanted = None if usecols is None else set(usecols)
    try:
        return pd.read_csv(
            path, dtype=str, keep_default_na=False, usecols=None if wanted is None else lambda c: c in wanted
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{name}: not a readable CSV ({reason}); {fix}") from None
    except OSError as err:
        raise ValueError(f"{name}: cannot read it ({err.strerror or err}); {fix}") from None


def read_csv_columns(path: str | Path, columns: Sequence[str], fix: str) -> pd.DataFrame:
    """:func:`read_csv`, then check the file has ``columns``.

    Raises:
        ValueError: the file is missing, not a CSV, or lacks a column; the message names
            the file and ``fix``.
    """
    df = read_csv(path, fix)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{Path(path)}: missing column(s) {missing}, found {list(df.columns)}; {fix}")
    return df
