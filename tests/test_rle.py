"""Run-length codec: hand-worked strings, round-trips, the empty mask, validation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernel_lib.masks import CropMasks
from kernel_lib.rle import (
    _parse_runs_one_by_one,
    _run_problems,
    parse_runs,
    rle_decode,
    rle_decode_crops,
    rle_encode,
    rle_encode_crops,
    rle_encode_labels,
    rle_encode_stack,
    rle_problems,
    rle_to_indices,
    scan_runs,
)
from kernel_lib.testing import reference_rle_encode


def test_hand_worked_3x4() -> None:
    # row-major flat positions (1-based): row 0 -> 1..4, row 1 -> 5..8, row 2 -> 9..12
    mask = np.array(
        [
            [0, 1, 1, 0],  # pixels 2, 3
            [0, 0, 0, 1],  # pixel 8, which continues onto row 2's pixel 9
            [1, 0, 0, 1],  # pixels 9, 12
        ],
        bool,
    )
    assert rle_encode(mask) == "2 2 8 2 12 1"
    assert rle_to_indices("2 2 8 2 12 1", (3, 4)).tolist() == [1, 2, 7, 8, 11]
    np.testing.assert_array_equal(rle_decode("2 2 8 2 12 1", (3, 4)), mask)


def test_empty_mask_and_empty_stack() -> None:
    assert rle_encode(np.zeros((5, 6), bool)) == ""
    assert rle_decode("", (5, 6)).sum() == 0
    assert rle_decode("", (5, 6)).shape == (5, 6)
    assert rle_to_indices("", (5, 6)).size == 0
    assert rle_encode_stack(np.zeros((0, 5, 6), bool)) == []
    assert rle_encode_crops(CropMasks.empty((5, 6))) == []
    assert rle_encode_labels(np.zeros((5, 6), np.int32), 0) == []
    assert rle_encode_labels(np.zeros((5, 6), np.int32), 2) == ["", ""]
    assert len(rle_decode_crops([], (5, 6))) == 0


def test_number_widths_at_powers_of_ten() -> None:
    mask = np.zeros((1, 1100), bool)
    mask[0, [8, 10, 98, 100, 998, 1000]] = True  # 1-based starts 9, 11, 99, 101, 999, 1001
    mask[0, 20:30] = True  # start 21, length 10
    mask[0, 200:300] = True  # start 201, length 100
    expected = "9 1 11 1 21 10 99 1 101 1 201 100 999 1 1001 1"
    assert rle_encode(mask) == expected
    assert rle_encode_crops(CropMasks.from_stack(mask[None])) == [expected]


def test_full_frame_is_one_run() -> None:
    assert rle_encode(np.ones((3, 4), bool)) == "1 12"


def test_large_numbers_format() -> None:
    # many digits: starts near the end of a 520x704 frame
    mask = np.zeros((520, 704), bool)
    mask[519, 700:] = True  # flat 519*704+700 = 366076 -> start 366077, length 4
    mask[0, 0] = True
    assert rle_encode(mask) == "1 1 366077 4"


@pytest.mark.parametrize("seed", range(5))
def test_all_encoders_agree_and_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 15)), int(rng.integers(1, 15))
    stack = rng.random((6, h, w)) < rng.uniform(0.1, 0.9)
    stack[2] = False  # one empty mask
    expected = [reference_rle_encode(m) for m in stack]  # the public notebooks' encoder
    assert rle_encode_stack(stack) == expected
    assert [rle_encode(m) for m in stack] == expected
    assert rle_encode_crops(CropMasks.from_stack(stack)) == expected
    decoded = rle_decode_crops(expected, (h, w))
    np.testing.assert_array_equal(decoded.to_stack(), stack)
    assert decoded.crops[2].shape == (0, 0)
    for rle, mask in zip(expected, stack):
        np.testing.assert_array_equal(rle_decode(rle, (h, w)), mask)


def test_crops_touching_frame_edges_merge_across_rows() -> None:
    # a full-width crop: runs continue from the end of one row to the start of the next
    crop = np.array([[0, 0, 1], [1, 1, 1], [1, 0, 0]], bool)
    masks = CropMasks((crop, np.ones((1, 1), bool)), np.array([[1, 0], [0, 2]]), (4, 3))
    # frame rows 1..3 hold the crop: flat 1-based pixels 6, 7, 8, 9, 10 -> one run "6 5"
    assert rle_encode_crops(masks) == ["6 5", "3 1"]


def test_labels_match_stack() -> None:
    labels = np.array([[1, 1, 0, 2], [2, 2, 0, 0], [0, 3, 3, 3]], np.int32)
    # label 1: pixels 1,2; label 2: pixels 4,5,6 (row wrap); label 3: 10,11,12
    assert rle_encode_labels(labels, 3) == ["1 2", "4 3", "10 3"]
    assert rle_encode_labels(labels, 4) == ["1 2", "4 3", "10 3", ""]
    stack = np.stack([labels == k for k in (1, 2, 3)])
    assert rle_encode_stack(stack) == rle_encode_labels(labels, 3)


def test_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"labels in 0\.\.2"):
        rle_encode_labels(np.array([[0, 3]]), 2)
    with pytest.raises(ValueError, match="integer label image"):
        rle_encode_labels(np.array([[0.5]]), 1)


@pytest.mark.parametrize(
    ("rle", "fragment"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "non-integer"),
        ("1.5 2", "non-integer"),
        ("0 3", "1-indexed"),
        ("-1 3", "non-integer"),  # '-' is not a digit: negative starts are refused as tokens
        ("4 0", "length 0 < 1"),
        ("11 3", "beyond the 3x4 frame"),  # pixels 11, 12, 13 of 12
        ("5 1 2 1", "unsorted"),
        ("2 3 4 1", "duplicated pixels"),
        ("+5 1", "non-integer"),
        ("1 99999999999999999999999", "too large"),
    ],
)
def test_problems(rle: str, fragment: str) -> None:
    problems = rle_problems(rle, (3, 4))
    assert problems and fragment in " ".join(problems)
    with pytest.raises(ValueError, match="RLE"):
        rle_decode(rle, (3, 4))
    with pytest.raises(ValueError, match="RLE"):
        rle_decode_crops(["1 1", rle], (3, 4))


def test_valid_strings_have_no_problems() -> None:
    assert rle_problems("", (3, 4)) == []
    assert rle_problems("1 2 3 1 12 1", (3, 4)) == []  # touching runs are allowed
    assert rle_problems(" 1  2 ", (3, 4)) == []


def test_parse_runs_groups_by_string() -> None:
    inst, starts, lengths = parse_runs(["1 2 5 1", "", "3 1"], (3, 4))
    assert inst.tolist() == [0, 0, 2]
    assert starts.tolist() == [0, 4, 2]  # 0-based
    assert lengths.tolist() == [2, 1, 1]


def test_real_annotations_round_trip(data_dir) -> None:
    df = pd.read_csv(data_dir / "train.csv")
    one = df[df["id"] == df["id"].iloc[0]]
    rles = one["annotation"].tolist()
    masks = rle_decode_crops(rles, (520, 704))
    assert rle_encode_crops(masks) == rles
    stack = masks.to_stack()
    assert rle_encode_stack(stack) == rles
    assert masks.areas().tolist() == [int(rle_decode(r).sum()) for r in rles]


# ------------------------------------------------------------- scan_runs: all strings at once

# every problem rle_problems names, and the valid forms a byte-level parser could get wrong
SCAN_CASES = [
    "",
    "   ",
    "1 2 5 1",
    "1 2 3 1 12 1",  # touching runs
    " 1  2 ",
    "\t3\n1\r",
    "12 1",  # the last pixel
    "1 12",  # the whole frame
    "1 2 3",  # odd
    "1 x",
    "1.5 2",
    "-1 3",
    "+5 1",
    "0 3",
    "4 0",
    "11 3",  # out of frame
    "5 1 2 1",  # unsorted
    "2 3 4 1",  # overlapping
    "2 1 2 1",  # the same start twice
    "1 99999999999999999999999",  # too large
    "1 999999999999999999",  # 18 digits: converted here, out of frame
    "000000000000000000005 1",  # 21 digits with leading zeros: valid, left to rle_problems
    "1\u00a02",  # non-ASCII whitespace: valid, left to rle_problems
    "1\u0663 2",  # a non-ASCII digit
    "3\x1c1",  # an ASCII separator str.split splits on: valid
    "1\x002",  # NUL: not whitespace
]
RARE_VALID = {"000000000000000000005 1", "1\u00a02"}


def test_scan_runs_agrees_with_the_per_string_check() -> None:
    shape = (3, 4)
    ok, inst, starts, lengths = scan_runs(SCAN_CASES, shape)
    assert ok.shape == (len(SCAN_CASES),) and ok.dtype == bool
    assert inst.dtype == starts.dtype == lengths.dtype == np.int64
    for k, rle in enumerate(SCAN_CASES):
        valid = rle_problems(rle, shape) == []
        assert ok[k] == (valid and rle not in RARE_VALID), rle
    accepted = [k for k in range(len(SCAN_CASES)) if ok[k]]
    ref_inst, ref_starts, ref_lengths = _parse_runs_one_by_one([SCAN_CASES[k] for k in accepted], shape)
    np.testing.assert_array_equal(inst, np.array(accepted)[ref_inst])
    np.testing.assert_array_equal(starts, ref_starts)
    np.testing.assert_array_equal(lengths, ref_lengths)


def test_scan_runs_empty_inputs() -> None:
    ok, inst, starts, lengths = scan_runs([], (3, 4))
    assert ok.shape == inst.shape == starts.shape == lengths.shape == (0,)
    ok, inst, starts, lengths = scan_runs(["", " \t"], (3, 4))
    assert ok.tolist() == [True, True] and inst.size == starts.size == lengths.size == 0
    ok, *_ = scan_runs([None, 3], (3, 4))  # type: ignore[list-item]  # not strings: left to rle_problems
    assert ok.tolist() == [False, False]


def test_scan_runs_agrees_on_random_strings() -> None:
    rng = np.random.default_rng(3)
    pieces = ["1", "2", "3", "4", "5", "12", "13", "0", "007", " ", "  ", "\t", "x", "-", "\u00a0"]
    shape = (3, 4)
    for _ in range(300):
        rles = ["".join(rng.choice(pieces, int(rng.integers(0, 9)))) for _ in range(int(rng.integers(0, 6)))]
        ok, inst, starts, lengths = scan_runs(rles, shape)
        for k, rle in enumerate(rles):
            assert not ok[k] or rle_problems(rle, shape) == [], rle
            assert ok[k] or rle_problems(rle, shape) or not rle.isascii(), rle
        accepted = [k for k in range(len(rles)) if ok[k]]
        ref = _parse_runs_one_by_one([rles[k] for k in accepted], shape)
        np.testing.assert_array_equal(inst, np.array(accepted, np.int64)[ref[0]])
        np.testing.assert_array_equal(starts, ref[1])
        np.testing.assert_array_equal(lengths, ref[2])


@pytest.mark.parametrize(
    "rles",
    [
        ["1 2", "1 x", "1 2 3"],  # two bad strings: the token path's first error is said
        ["1 2 3", "1 x"],
        ["1 1", "0 1", "5 1 2 1"],
        ["1 99999999999999999999999"],
        ["000000000000000000005 1", "1\u00a02"],  # valid, parsed by the token path
        ["1 2", "3 1 12 1"],
    ],
)
def test_parse_runs_answers_as_the_token_path(rles: list[str]) -> None:
    def answer(parse: Callable[..., tuple[np.ndarray, ...]]) -> object:
        try:
            return [a.tolist() for a in parse(rles, (3, 4))]
        except ValueError as err:
            return str(err)

    assert answer(parse_runs) == answer(_parse_runs_one_by_one)


def test_scan_runs_on_the_real_pack(mini_dir: Path) -> None:
    rles = pd.read_csv(mini_dir / "train.csv", dtype=str, keep_default_na=False)["annotation"].tolist()
    ok, inst, starts, lengths = scan_runs(rles)
    assert ok.all()
    for got, want in zip((inst, starts, lengths), _parse_runs_one_by_one(rles, (520, 704))):
        np.testing.assert_array_equal(got, want)


def test_runs_past_int64_are_refused_not_wrapped_around() -> None:
    """start + length past 2**63 wrapped to a negative end, so the run passed the frame
    check and scoring indexed far outside the image."""
    huge = "9223372036854775000 9000"  # 19 digits: the token path, where the sum wrapped
    assert rle_problems(huge, (520, 704)) == ["number 9223372036854775000... too large for a 520x704 frame"]
    with pytest.raises(ValueError, match=r"RLE 1: run 1: 9223372036854775000 9000 ends at pixel 9223372036854783999 "):
        parse_runs(["1 2", huge], (520, 704))
    # the run check itself, on values that fit int64 but whose end does not
    starts, lengths = np.array([2**62, 1]), np.array([2**62 + 1, 1])
    assert "beyond the 520x704 frame" in _run_problems(starts, lengths, (520, 704))[0]
