"""One truth policy: train.csv's broken and duplicated rows are left out (and said) by
training, evaluation and scoring alike, so their scores agree."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from kernel_lib.__main__ import main
from kernel_lib.config import IMAGE_SHAPE, Config, PostprocessConfig
from kernel_lib.evaluate import read_truth, score_instances, truth_notes
from kernel_lib.metric import score_submission
from kernel_lib.soft import SoftInstances
from kernel_lib.truth import truth_images

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
