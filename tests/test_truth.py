"""One truth policy: train.csv's broken and duplicated rows are left out (and said) by
training, evaluation and scoring alike, so their scores agree."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kernel_lib.__main__ import main
from kernel_lib.config import CELL_TYPES, IMAGE_SHAPE, Config, PostprocessConfig
from kernel_lib.evaluate import score_instances
from kernel_lib.metric import score_submission
from kernel_lib.rle import rle_problems, rle_to_indices
from kernel_lib.soft import SoftInstances
from kernel_lib.truth import AnnotationProblem, _as_int, check_image_rows, read_truth, truth_images, truth_notes

H, W = 4, 6  # a tiny frame: pixel (y, x) has 1-indexed row-major start y * 6 + x + 1


def test_policy_on_hand_built_rows() -> None:
    df = pd.DataFrame(
        {
            "id": ["a", "a", "a", "a", "a", "b"],
            "annotation": ["8 3", "8 3", "", "3 x", "13 2", np.nan],  # NaN: a blank cell read by pd.read_csv
            "cell_type": ["astro", "astro", "astro", "astro", "astro", "cort"],
        }
    )
    truth = truth_images(df, shape=(H, W))
    assert list(truth) == ["a", "b"]
    a = truth["a"]
    assert a.rows == (0, 4) and a.cell_type == "astro"  # row 1 repeats row 0's pixels: the earlier row stays
    assert [p.tolist() for p in a.pixels] == [[7, 8, 9], [12, 13]]
    assert [(p.row, p.what.split(" (")[0]) for p in a.dropped] == [
        (1, "duplicate of row 0"),
        (2, "empty annotation"),
        (3, "malformed RLE: non-integer token(s) 'x': expected space-separated whole numbers"),
    ]
    np.testing.assert_array_equal(a.masks().to_stack()[0], np.isin(np.arange(H * W).reshape(H, W), [7, 8, 9]))
    b = truth["b"]  # only an empty row: an image without truth instance
    assert b.rows == () and len(b.masks()) == 0 and b.cell_type == "cort"
    assert [p.row for p in b.dropped] == [5]


def _pack(root: Path) -> Path:
    """One annotated image of the competition's frame: cells A and B, and A again (a duplicated row)."""
    (root / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "train" / "a.png"), np.full(IMAGE_SHAPE, 100, np.uint8))
    height, width = IMAGE_SHAPE
    rows = [
        ("a", "706 3", width, height, "astro"),  # A: row 1, columns 1..3
        ("a", "1409 2 2113 2", width, height, "astro"),  # B: rows 2..3, columns 0..1
        ("a", "706 3", width, height, "astro"),  # A again
    ]
    pd.DataFrame(rows, columns=["id", "annotation", "width", "height", "cell_type"]).to_csv(
        root / "train.csv", index=False
    )
    return root


def _predicted() -> SoftInstances:
    """A and B exactly, and a false positive at pixel (0, 0); all certain, class astro."""
    boxes = np.array([[1, 1, 4, 2], [0, 2, 2, 4], [0, 0, 1, 1]], np.float32)  # x0, y0, x1, y1
    masks = np.ones((3, 28, 28), np.float32)
    return SoftInstances(boxes, np.full(3, 0.9, np.float32), np.ones(3, np.int64), masks, IMAGE_SHAPE)


def test_read_truth_drops_the_duplicated_row_and_says_so(tmp_path: Path) -> None:
    csv = _pack(tmp_path / "pack") / "train.csv"
    truth = read_truth(csv)
    assert len(truth["a"].masks) == 2  # A and B; A's second row left out
    assert [(p.row, p.what) for p in truth["a"].dropped] == [(2, "duplicate of row 0 (same pixels)")]
    why = "a row 2 (line 4): duplicate of row 0 (same pixels)"
    assert truth_notes(truth, csv) == [f"{csv}: 1 truth row(s) left out (kernel_lib.truth's policy): {why}"]


def test_training_heldout_and_evaluate_agree_on_an_image_with_a_duplicated_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kernel_lib.pipeline
    from kernel_lib.training.datasets import load_dataset_dicts
    from kernel_lib.training.scoring import score_models

    root = _pack(tmp_path / "pack")
    config = Config(postprocess=PostprocessConfig(min_area=(0, 0, 0)))  # keep the tiny cells
    instances = {"a": _predicted()}

    # training's held-out path (train.score_models) on these instances instead of a model's
    def predict(
        paths: list[Path], models: list, config: Config, mask_min_score: float | None = None
    ) -> Iterator[tuple[str, np.ndarray, SoftInstances]]:
        for path in paths:
            yield path.stem, np.zeros(IMAGE_SHAPE, np.uint8), instances[path.stem]

    monkeypatch.setattr(kernel_lib.pipeline, "load_models", lambda models_dir, config: [])
    monkeypatch.setattr(kernel_lib.pipeline, "predict_instances", predict)
    heldout = score_models(tmp_path, load_dataset_dicts(root), config)

    # evaluate's scoring (what evaluate and evaluate_cache run on cached instances)
    report, scores, _ = score_instances(instances, read_truth(root / "train.csv"), config.postprocess)

    # TP 2 (A, B), FP 1 (the stray pixel), FN 0 at every threshold: 2 / 3. Keeping A's
    # duplicated row (as evaluate did) counts A twice: TP 3, FP 1, 3 / 4 for evaluate alone.
    assert heldout.score == pytest.approx(2 / 3)
    assert report.score == pytest.approx(2 / 3)
    assert scores["a"].tp.tolist() == [2] * 10 and scores["a"].fn.tolist() == [0] * 10
    assert heldout.per_image["n_truth"].tolist() == report.per_image["n_truth"].tolist() == [2]


def test_score_submission_and_the_score_command_leave_duplicated_rows_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = _pack(tmp_path / "pack") / "train.csv"
    truth = pd.read_csv(csv)
    pred = truth.rename(columns={"annotation": "predicted"})[["id", "predicted"]]
    report = score_submission(truth, pred.iloc[:2])  # A and B once: perfect
    assert report.score == 1.0
    assert [(p.id, p.row) for p in report.dropped] == [("a", 2)]
    # the truth file as its own prediction: A's second copy matches A as well (the metric
    # counts a prediction false only when it matches no truth), so still perfect
    assert score_submission(truth, pred).score == 1.0

    submission = tmp_path / "pred.csv"
    pred.iloc[:2].to_csv(submission, index=False)
    assert main(["score", "--truth", str(csv), "--pred", str(submission)]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("score 1.0000 over 1 image(s)")
    assert "1 truth row(s) left out" in out.err and "a row 2 (line 4): duplicate of row 0" in out.err


# ------------------------------------------- the batch check against the per-row reference


def _reference_check(image_id: str, rows: pd.DataFrame, shape: tuple[int, int]) -> tuple[list, list]:
    """The policy row by row, as it was written first (each row checked and decoded alone):
    the reference :func:`kernel_lib.truth.check_image_rows` must agree with exactly."""
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
        what = None
        if cell_type is not None and cell_type not in CELL_TYPES:
            what = f"unknown cell_type {cell_type!r}; expected one of {list(CELL_TYPES)}"
        elif cell_type is not None and cell_type != image_type:
            what = f"cell_type {cell_type!r} differs from the image's {image_type!r}"
        elif sized and (_as_int(h_text), _as_int(w_text)) != (height, width):
            what = f"width x height {w_text} x {h_text} in train.csv, but the image is {width} x {height}"
        elif not ann.strip():
            what = "empty annotation (no run)"
        elif rle_problems(ann, shape):
            what = f"malformed RLE: {'; '.join(rle_problems(ann, shape))}"
        else:
            indices = rle_to_indices(ann, shape)
            key = hashlib.sha1(indices.tobytes()).digest()
            if indices.size == 0:
                what = "empty annotation (no pixel)"
            elif key in seen:
                what = f"duplicate of row {seen[key]} (same pixels)"
            else:
                seen[key] = row
                valid.append((row, indices))
        if what is not None:
            problems.append(AnnotationProblem(image_id, row, what))
    return valid, problems


def _assert_same_check(image_id: str, rows: pd.DataFrame, shape: tuple[int, int]) -> None:
    valid, problems = check_image_rows(image_id, rows, shape)
    ref_valid, ref_problems = _reference_check(image_id, rows, shape)
    assert problems == ref_problems
    assert [r for r, _ in valid] == [r for r, _ in ref_valid]
    for (_, got), (_, want) in zip(valid, ref_valid):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


# one row per problem kind (and the valid forms a batch parser could get wrong), on the 4x6 frame
EDGE_ROWS = [
    ("8 3", "astro", "6", "4"),  # valid: pixels 7, 8, 9
    ("8 3", "astro", "6", "4"),  # duplicate of the first
    ("8 1 9 2", "astro", "6", "4"),  # duplicate by pixels, written as touching runs
    ("8 3", "astro", "6", "4"),  # a third copy: a duplicate of the first as well
    ("", "astro", "6", "4"),  # empty
    ("   \t ", "astro", "6", "4"),  # blank
    ("3 x", "astro", "6", "4"),  # non-integer token
    ("1.5 2", "astro", "6", "4"),  # non-integer token
    ("-1 3", "astro", "6", "4"),  # '-' is not a digit
    ("+5 1", "astro", "6", "4"),  # '+' is not a digit
    ("1 2 3", "astro", "6", "4"),  # odd count
    ("0 3", "astro", "6", "4"),  # start < 1
    ("4 0", "astro", "6", "4"),  # length < 1
    ("23 3", "astro", "6", "4"),  # out of frame: pixels 23..25 of 24
    ("24 1", "astro", "6", "4"),  # the last pixel: valid
    ("5 1 2 1", "astro", "6", "4"),  # unsorted
    ("2 3 4 1", "astro", "6", "4"),  # overlapping
    ("2 1 2 1", "astro", "6", "4"),  # a repeated start
    ("1 99999999999999999999999", "astro", "6", "4"),  # too large
    ("1 999999999999999999", "astro", "6", "4"),  # 18 digits: out of frame, not too large
    ("0000000000000000000013 1", "astro", "6", "4"),  # 22 digits with leading zeros: valid
    ("14\u00a02", "astro", "6", "4"),  # non-ASCII whitespace: str.split splits on it, valid
    ("1\u0663 1", "astro", "6", "4"),  # a non-ASCII digit: not a digit here
    ("15\x1c1", "astro", "6", "4"),  # an ASCII separator str.split splits on: valid
    ("  16   1  ", "astro", "6", "4"),  # padded: valid
    ("17 1", "cort", "6", "4"),  # another cell type than the image's
    ("18 1", "glia", "6", "4"),  # an unknown cell type
    ("19 1", "astro", "7", "4"),  # another width
    ("20 1", "astro", "6", "x"),  # a height that is no number
    ("3 x", "glia", "7", "4"),  # several problems: the first in the policy's order is said
    ("21 1 23 1", "astro", " 6 ", "4"),  # a padded width: valid
]


@pytest.mark.parametrize("columns", ["all", "no cell_type", "no size", "id and annotation"])
def test_batch_check_agrees_with_the_per_row_reference_on_edge_rows(columns: str) -> None:
    frame = pd.DataFrame(EDGE_ROWS, columns=["annotation", "cell_type", "width", "height"])
    frame.index = pd.RangeIndex(10, 10 + len(frame))  # data rows need not start at 0
    keep = {
        "all": ["annotation", "cell_type", "width", "height"],
        "no cell_type": ["annotation", "width", "height"],
        "no size": ["annotation", "cell_type"],
        "id and annotation": ["annotation"],
    }[columns]
    _assert_same_check("img", frame[keep], (H, W))
    valid, problems = check_image_rows("img", frame[keep], (H, W))
    assert valid and problems  # the rows do exercise both outcomes
    if columns == "all":
        said = {p.row - 10: p.what for p in problems}
        assert said[1] == said[2] == said[3] == "duplicate of row 10 (same pixels)"
        assert said[4] == said[5] == "empty annotation (no run)"
        assert said[13].startswith("malformed RLE: run 1: 23 3 ends at pixel 25 beyond the 4x6 frame")
        assert said[29].startswith("unknown cell_type 'glia'")
        assert {r + 10 for r in (0, 14, 20, 21, 23, 24, 30)} == {r for r, _ in valid}


@pytest.mark.parametrize("n_rows", [0, 1])
def test_batch_check_on_an_empty_image_and_on_one_row(n_rows: int) -> None:
    frame = pd.DataFrame(EDGE_ROWS[:n_rows], columns=["annotation", "cell_type", "width", "height"])
    _assert_same_check("img", frame, (H, W))
    valid, problems = check_image_rows("img", frame, (H, W))
    assert (len(valid), problems) == (n_rows, [])
    _assert_same_check("img", pd.DataFrame({"annotation": ["3 x"]}), (H, W))


def test_batch_check_agrees_with_the_per_row_reference_on_random_rows() -> None:
    rng = np.random.default_rng(7)
    pieces = ["1", "2", "3", "5", "12", "13", "24", "25", "0", "007", " ", "  ", "\t", "x", "-"]
    for _ in range(200):
        n = int(rng.integers(0, 8))
        anns = [" ".join(rng.choice(pieces, int(rng.integers(0, 7)))) for _ in range(n)]
        rows = pd.DataFrame({"annotation": anns, "cell_type": rng.choice(["astro", "astro", "cort"], n)})
        _assert_same_check("img", rows, (H, W))


def test_batch_check_agrees_with_the_per_row_reference_on_the_real_pack(mini_dir: Path) -> None:
    df = pd.read_csv(mini_dir / "train.csv", dtype=str, keep_default_na=False)
    for image_id, rows in df.groupby("id", sort=False):
        _assert_same_check(str(image_id), rows, IMAGE_SHAPE)
    truth = truth_images(df)
    dropped = [p for t in truth.values() for p in t.dropped]
    assert len(dropped) == 12 and all(p.what.startswith("duplicate of row") for p in dropped)
    assert sum(len(t.rows) for t in truth.values()) == len(df) - 12
