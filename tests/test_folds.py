"""Stratified K-fold splits: disjoint, stratified, every image once, deterministic."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kernel_lib.__main__ import main
from kernel_lib.folds import make_folds, read_folds, write_folds


def _table(counts: dict[str, int]) -> pd.DataFrame:
    """A train-like table: ``counts[t]`` images of type t, each with 3 instance rows."""
    rows = [
        {"id": f"{cell_type}{i:03d}", "annotation": "1 1", "cell_type": cell_type}
        for cell_type, n in counts.items()
        for i in range(n)
        for _ in range(3)
    ]
    return pd.DataFrame(rows)


def _check_split(folds: pd.DataFrame, train: pd.DataFrame, n_folds: int) -> None:
    ids = set(train["id"])
    # every image exactly once
    assert len(folds) == len(ids)
    assert set(folds["id"]) == ids
    # disjoint folds whose union is everything
    groups = [set(folds["id"][folds["fold"] == k]) for k in range(n_folds)]
    for a in range(n_folds):
        for b in range(a + 1, n_folds):
            assert not groups[a] & groups[b]
    assert set().union(*groups) == ids
    # stratified: per cell type the fold counts differ by at most one; overall too
    table = (
        folds.groupby(["cell_type", "fold"]).size().unstack(fill_value=0).reindex(columns=range(n_folds), fill_value=0)
    )
    assert ((table.max(axis=1) - table.min(axis=1)) <= 1).all(), table
    sizes = folds["fold"].value_counts().reindex(range(n_folds), fill_value=0)
    assert sizes.max() - sizes.min() <= 1
    # cell types carried over from the table
    truth_types = train.drop_duplicates("id").set_index("id")["cell_type"]
    assert (folds.set_index("id")["cell_type"] == truth_types.loc[folds["id"]]).all()


def test_synthetic_split_is_stratified() -> None:
    train = _table({"shsy5y": 12, "astro": 7, "cort": 23})
    folds = make_folds(train, n_folds=5, seed=3)
    _check_split(folds, train, 5)
    # 12 shsy5y over 5 folds: 3,3,2,2,2 -> counts 2 or 3 each
    shsy = folds[folds["cell_type"] == "shsy5y"]["fold"].value_counts()
    assert sorted(shsy.tolist()) == [2, 2, 2, 3, 3]
    assert folds["fold"].dtype == "int64"


def test_deterministic_by_seed() -> None:
    train = _table({"shsy5y": 10, "astro": 10, "cort": 10})
    a = make_folds(train, n_folds=3, seed=7)
    b = make_folds(train.sample(frac=1.0, random_state=1), n_folds=3, seed=7)  # row order does not matter
    pd.testing.assert_frame_equal(a, b)
    c = make_folds(train, n_folds=3, seed=8)
    assert not a["fold"].equals(c["fold"])


def test_shipped_sample(data_dir: Path) -> None:
    train = pd.read_csv(data_dir / "train.csv")
    folds = make_folds(data_dir / "train.csv", n_folds=2, seed=0)
    _check_split(folds, train, 2)


def test_mini_pack(mini_dir: Path) -> None:
    train = pd.read_csv(mini_dir / "train.csv", usecols=["id", "cell_type"])
    folds = make_folds(train, n_folds=5, seed=0)
    _check_split(folds, train, 5)


def test_round_trip_and_cli(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sub" / "folds.csv"
    assert (
        main(["folds", "--truth", str(data_dir / "train.csv"), "--out", str(out), "--n-folds", "3", "--seed", "1"]) == 0
    )
    assert "7 images in 3 folds" in capsys.readouterr().out
    read = read_folds(out)
    pd.testing.assert_frame_equal(read, make_folds(data_dir / "train.csv", n_folds=3, seed=1))
    assert list(read.columns) == ["id", "cell_type", "fold"]
    again = tmp_path / "again.csv"
    write_folds(read, again)
    assert again.read_text() == out.read_text()


def test_bad_inputs(tmp_path: Path) -> None:
    train = _table({"shsy5y": 2, "astro": 1})
    with pytest.raises(ValueError, match="at least 2"):
        make_folds(train, n_folds=1)
    with pytest.raises(ValueError, match="at most the number of images"):
        make_folds(train, n_folds=4)
    with pytest.raises(ValueError, match="does not exist"):
        make_folds(tmp_path / "nope.csv")
    mixed = pd.DataFrame({"id": ["a", "a"], "cell_type": ["astro", "cort"]})
    with pytest.raises(ValueError, match="more than one cell_type"):
        make_folds(mixed, n_folds=2)
    with pytest.raises(ValueError, match="unknown cell type"):
        make_folds(pd.DataFrame({"id": ["a", "b"], "cell_type": ["astro", "neuron"]}), n_folds=2)

    with pytest.raises(ValueError, match="does not exist"):
        read_folds(tmp_path / "missing.csv")
    path = tmp_path / "f.csv"
    path.write_text("id,fold\na,0\n")
    with pytest.raises(ValueError, match="missing \\['cell_type'\\]"):
        read_folds(path)
    path.write_text("id,cell_type,fold\na,astro,x\n")
    with pytest.raises(ValueError, match="integer >= 0"):
        read_folds(path)
    path.write_text("id,cell_type,fold\na,astro,-1\n")
    with pytest.raises(ValueError, match="integer >= 0"):
        read_folds(path)
    path.write_text("id,cell_type,fold\na,astro,0\na,astro,1\n")
    with pytest.raises(ValueError, match="more than once"):
        read_folds(path)
    assert main(["folds", "--truth", str(tmp_path / "nope.csv"), "--out", str(path)]) == 2
