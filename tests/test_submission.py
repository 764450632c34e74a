"""Submission writer and validator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernel_lib.rle import rle_decode
from kernel_lib.submission import Problem, validate_submission, write_submission

SHAPE = (3, 4)


def write(tmp_path: Path, text: str, name: str = "sub.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_write_one_row_per_instance_and_empty_rows(tmp_path: Path) -> None:
    path = write_submission({"b": ["1 2", "5 1"], "a": []}, tmp_path / "s.csv", ids=["a", "b", "c"])
    assert path.read_text() == "id,predicted\na,\nb,1 2\nb,5 1\nc,\n"
    assert validate_submission(path, shape=SHAPE) == []


def test_write_without_ids_keeps_prediction_order_and_skips_empty_strings(tmp_path: Path) -> None:
    path = write_submission({"z": ["", "3 1"], "y": [""]}, tmp_path / "s.csv")
    assert path.read_text() == "id,predicted\nz,3 1\ny,\n"


def test_write_refuses_unexpected_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not among the expected ids"):
        write_submission({"x": ["1 1"]}, tmp_path / "s.csv", ids=["a"])
    with pytest.raises(ValueError, match="without commas"):
        write_submission({"a,b": ["1 1"]}, tmp_path / "s.csv")


def test_validator_reports_overlap_with_rows_and_pixel(tmp_path: Path) -> None:
    # rows 2 and 3 share flat pixels 6 and 7 (1-based) -> 0-based 5 = (y=1, x=1)
    path = write(tmp_path, "id,predicted\na,1 2\na,5 3\na,6 2\nb,\n")
    problems = validate_submission(path, shape=SHAPE)
    assert problems == [Problem("a", "masks overlap on 2 pixel(s), first at (y=1, x=1)", "rows 2 and 3")]


def test_validator_reports_bad_rle_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "id,predicted\na,1 2 3\na,12 2\nb,3 1 1 1\n")
    problems = validate_submission(path, shape=SHAPE)
    assert [(p.id, p.where) for p in problems] == [("a", "row 1"), ("a", "row 2"), ("b", "row 3")]
    assert "odd number" in problems[0].what
    assert "beyond the 3x4 frame" in problems[1].what
    assert "unsorted" in problems[2].what


def test_validator_flags_empty_row_next_to_instances(tmp_path: Path) -> None:
    path = write(tmp_path, "id,predicted\na,1 2\na,\n")
    problems = validate_submission(path, shape=SHAPE)
    assert len(problems) == 1 and problems[0].where == "row 2" and "empty predicted row" in problems[0].what


def test_validator_checks_ids_against_sample(tmp_path: Path) -> None:
    sample = write(tmp_path, "id,predicted\na,\nb,\n", "sample.csv")
    path = write(tmp_path, "id,predicted\na,1 1\nc,\n")
    problems = validate_submission(path, sample=sample, shape=SHAPE)
    assert [(p.id, p.what) for p in problems] == [
        ("b", "id of the sample submission missing"),
        ("c", "id not in the sample submission"),
    ]
    assert problems[1].where == "row 2"


def test_validator_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing column\(s\) \['predicted'\]"):
        validate_submission(write(tmp_path, "id,annotation\na,1 1\n"))
    with pytest.raises(ValueError, match="no such file"):
        validate_submission(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="not a readable CSV"):
        validate_submission(write(tmp_path, "", "empty.csv"))


def test_shipped_sample_submission_is_valid(data_dir: Path) -> None:
    sample = data_dir / "sample_submission.csv"
    assert validate_submission(sample, sample=sample) == []


def test_real_annotations_overlaps_match_full_frame_check(data_dir: Path, tmp_path: Path) -> None:
    # train.csv annotations renamed to a submission: valid RLEs, but annotated cells may
    # overlap (allowed in truth, not in a submission); the pairs found must be exactly
    # those a full-frame pairwise check finds
    df = pd.read_csv(data_dir / "train.csv")
    one = df[df["id"] == "e9edcd9483e4"].rename(columns={"annotation": "predicted"})[["id", "predicted"]]
    one.to_csv(tmp_path / "s.csv", index=False)
    problems = validate_submission(tmp_path / "s.csv")
    stack = np.stack([rle_decode(r) for r in one["predicted"]]).reshape(len(one), -1).astype(np.int32)
    shared = stack @ stack.T
    expected = {(f"rows {i + 1} and {j + 1}", int(shared[i, j])) for i, j in zip(*np.nonzero(np.triu(shared, 1)))}
    found = {(p.where, int(p.what.split(" on ")[1].split()[0])) for p in problems}
    assert all("overlap" in p.what for p in problems)
    assert len(expected) == 4  # this astro image has 4 overlapping pairs among its 17 cells
    assert found == expected


def test_validator_refuses_a_submission_without_rows(tmp_path: Path) -> None:
    """A header alone is no submission (issue 21): it used to be "valid"."""
    problems = validate_submission(write(tmp_path, "id,predicted\n"), shape=SHAPE)
    assert [(p.id, p.where) for p in problems] == [("", "file")] and "no row" in problems[0].what
