"""Stratified K-fold splits of train.csv by cell type (numpy + pandas).

A folds file is ``id,cell_type,fold``, one row per image. ``train`` trains fold model K
on the images whose fold is not K; ``evaluate`` runs fold model K only on the images
whose fold is K (out-of-fold); :func:`fold_split` gives one fold's two sets of ids. The
split is stratified: within each cell type the images are spread over the folds as
evenly as possible (counts differ by at most one), and the fold sizes overall differ by
at most one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kernel_lib.config import CELL_TYPES
from kernel_lib.outputs import atomic_output
from kernel_lib.tables import read_csv

FOLDS_COLUMNS: tuple[str, str, str] = ("id", "cell_type", "fold")
"""Columns of a folds file, in order."""


def image_cell_types(train: str | Path | pd.DataFrame) -> pd.DataFrame:
    """One row per image of a train.csv: DataFrame[id, cell_type], sorted by id.

    Args:
        train: path to train.csv, or its DataFrame (columns ``id`` and ``cell_type``;
            one row per instance, so an id may repeat).

    Raises:
        ValueError: the file is missing, lacks ``id``/``cell_type``, names an unknown
            cell type, or gives one image two cell types.
    """
    source = "train table"
    if isinstance(train, (str, Path)):
        source = str(train)
        df = read_csv(
            train, "pass the competition's train.csv (id,annotation,...)", "train csv", usecols=("id", "cell_type")
        )
    else:
        df = train
    missing = {"id", "cell_type"} - set(df.columns)
    if missing:
        raise ValueError(f"{source}: expected columns id and cell_type, missing {sorted(missing)}")
    per_image = df[["id", "cell_type"]].drop_duplicates()
    unknown = sorted(set(per_image["cell_type"]) - set(CELL_TYPES))
    if unknown:
        raise ValueError(f"{source}: unknown cell type(s) {unknown}; expected some of {list(CELL_TYPES)}")
    twice = per_image["id"][per_image["id"].duplicated()]
    if len(twice):
        raise ValueError(f"{source}: image(s) {sorted(set(twice))[:5]} have more than one cell_type; expected one")
    return per_image.sort_values("id").reset_index(drop=True)


def make_folds(train: str | Path | pd.DataFrame, n_folds: int = 5, seed: int = 0) -> pd.DataFrame:
    """Split the images of train.csv into ``n_folds`` folds, stratified by cell type.

    Within each cell type the images are shuffled (by ``seed``) and dealt to the folds
    in turn, the dealing continuing from one cell type to the next, so each fold holds
    within one of ``n / n_folds`` images of every type and within one of the mean overall.

    Args:
        train: path to train.csv or its DataFrame (see :func:`image_cell_types`).
        n_folds: number of folds, >= 2 and at most the number of images.
        seed: random seed; the same train table and seed always give the same split.

    Returns:
        DataFrame[id, cell_type, fold] (fold int64 in [0, n_folds)), one row per image,
        sorted by id.

    Raises:
        ValueError: bad train table (see :func:`image_cell_types`), or ``n_folds`` < 2
            or larger than the number of images.
    """
    images = image_cell_types(train)
    if n_folds < 2:
        raise ValueError(f"n_folds: expected at least 2, got {n_folds}")
    if n_folds > len(images):
        raise ValueError(f"n_folds: expected at most the number of images ({len(images)}), got {n_folds}")
    rng = np.random.default_rng(seed)
    folds = np.empty(len(images), np.int64)
    position = 0
    for cell_type in CELL_TYPES:
        members = np.flatnonzero(images["cell_type"].to_numpy() == cell_type)
        members = members[rng.permutation(len(members))]
        folds[members] = (position + np.arange(len(members))) % n_folds
        position += len(members)
    images["fold"] = folds
    return images


def write_folds(folds: pd.DataFrame, path: str | Path) -> Path:
    """Write a folds table as ``id,cell_type,fold`` CSV (replaced only when complete); returns the path."""
    missing = set(FOLDS_COLUMNS) - set(folds.columns)
    if missing:
        raise ValueError(f"folds table: expected columns {list(FOLDS_COLUMNS)}, missing {sorted(missing)}")
    path = Path(path)
    with atomic_output(path) as tmp:
        folds[list(FOLDS_COLUMNS)].to_csv(tmp, index=False)
    return path


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a folds file written by :func:`write_folds` (``python -m kernel_lib folds``).

    Returns:
        DataFrame[id, cell_type, fold] with fold int64 >= 0, one row per id.

    Raises:
        ValueError: the file is missing, lacks a column, has an id twice, a fold that is
            not a non-negative integer, or an unknown cell type.
    """
    path = Path(path)
    fix = "write one with `python -m kernel_lib folds --truth train.csv --out folds.csv`"
    df = read_csv(path, fix, what="folds file")
    missing = set(FOLDS_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"folds file {path}: expected columns {list(FOLDS_COLUMNS)}, missing {sorted(missing)}; {fix}")
    fold = pd.to_numeric(df["fold"], errors="coerce")
    bad = df["fold"][fold.isna() | (fold < 0) | (fold != fold.round())]
    if len(bad):
        raise ValueError(f"folds file {path}: fold must be an integer >= 0, got {bad.iloc[0]!r}")
    twice = df["id"][df["id"].duplicated()]
    if len(twice):
        raise ValueError(f"folds file {path}: id {twice.iloc[0]!r} appears more than once; expected one row per image")
    unknown = sorted(set(df["cell_type"]) - set(CELL_TYPES))
    if unknown:
        raise ValueError(f"folds file {path}: unknown cell type(s) {unknown}; expected some of {list(CELL_TYPES)}")
    df = df[list(FOLDS_COLUMNS)].copy()
    df["fold"] = fold.astype(np.int64)
    return df.reset_index(drop=True)


@dataclass(frozen=True)
class FoldSplit:
    """The images of one fold: training ids and held-out ids (both sorted)."""

    fold: int
    train_ids: tuple[str, ...]
    heldout_ids: tuple[str, ...]


def fold_split(folds_csv: str | Path, fold: int) -> FoldSplit:
    """Training and held-out ids of fold ``fold`` of a folds file.

    Raises:
        ValueError: the folds file is bad (see :func:`read_folds`), or ``fold`` is not
            one of its folds, or it leaves no training image.
    """
    folds = read_folds(folds_csv)
    present = sorted(set(folds["fold"].tolist()))
    if fold not in present:
        raise ValueError(f"fold {fold} is not in {folds_csv}; its folds are {present}")
    heldout = folds["fold"] == fold
    train_ids = tuple(sorted(folds.loc[~heldout, "id"]))
    if not train_ids:
        raise ValueError(f"{folds_csv}: fold {fold} holds every image; nothing left to train on")
    return FoldSplit(fold, train_ids, tuple(sorted(folds.loc[heldout, "id"])))
