"""The shared CSV reader: strings in, clear errors naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_lib.folds import image_cell_types
from kernel_lib.tables import read_csv, read_csv_columns


def test_cells_stay_strings_and_empty_cells_stay_empty(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("id,predicted,extra\n007,,x\n")
    df = read_csv(path, "fix it")
    assert df.to_dict("records") == [{"id": "007", "predicted": "", "extra": "x"}]
    assert list(read_csv(path, "fix it", usecols=("id", "predicted", "absent")).columns) == ["id", "predicted"]


def test_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"folds file .*nope\.csv does not exist \(no such file\); do this"):
        read_csv(tmp_path / "nope.csv", "do this", what="folds file")
    broken = tmp_path / "broken.csv"
    broken.write_text('id,cell_type\n"a,astro\n')
    with pytest.raises(ValueError, match=r"broken\.csv: not a readable CSV \(.*\); do this"):
        read_csv(broken, "do this")
    with pytest.raises(ValueError, match=r"broken\.csv: not a readable CSV"):
        image_cell_types(broken)  # a broken train.csv for `folds` names its file too
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: not a readable CSV"):
        read_csv(empty, "do this")
    good = tmp_path / "good.csv"
    good.write_text("id\na\n")
    with pytest.raises(ValueError, match=r"good\.csv: missing column\(s\) \['predicted'\], found \['id'\]; do this"):
        read_csv_columns(good, ("id", "predicted"), "do this")
