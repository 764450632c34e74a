"""kernel_lib.pseudo and ``python -m kernel_lib pseudo``; ``train --extra-truth`` on its rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("torch")
pytest.importorskip("detectron2")

from kernel_lib.__main__ import main
from kernel_lib.config import CELL_TYPES, Config, EnsembleConfig
from kernel_lib.folds import make_folds, write_folds
from kernel_lib.pseudo import PSEUDO_COLUMNS, pseudo_label
from kernel_lib.rle import rle_decode
from kernel_lib.training.datasets import load_dataset_dicts

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "r50-narrow"
FAST = Config(ensemble=EnsembleConfig(tta=("identity",)))


@pytest.fixture(scope="module")
def one_fold(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first shipped fold alone, as a models folder (its best_config.json beside it)."""
    if not (SHIPPED / "fold0").is_dir():
        pytest.skip("the shipped folds are not in this checkout")
    out = tmp_path_factory.mktemp("one") / "models"
    shutil.copytree(SHIPPED / "fold0", out / "fold0")
    shutil.copy(SHIPPED / "best_config.json", out / "best_config.json")
    return out


def test_pseudo_labels_are_confident_disjoint_train_csv_rows(one_fold: Path, data_dir: Path) -> None:
    images = sorted((data_dir / "test").glob("*.png"))[:2]
    frame, report = pseudo_label(images, one_fold, FAST, min_score=0.5, progress=False)
    assert list(frame.columns) == list(PSEUDO_COLUMNS)
    assert [r.id for r in report] == [p.stem for p in images]
    assert len(frame) == sum(r.n_kept for r in report if r.kept) > 20  # real cells from a real fold
    assert (frame["score"] >= 0.5).all() and set(frame["cell_type"]) <= set(CELL_TYPES)
    for image_id, rows in frame.groupby("id"):
        masks = np.stack([rle_decode(a, (520, 704)) for a in rows["annotation"]])
        assert masks.any(axis=(1, 2)).all() and masks.sum(axis=0).max() == 1  # non-empty, disjoint
        (image_score,) = set(rows["image_score"])
        assert image_score == pytest.approx(rows["score"].mean(), abs=1e-3)
        (entry,) = [r for r in report if r.id == image_id]
        assert entry.n_kept <= entry.n_final and entry.kept
    # a stricter image threshold keeps fewer images, never other labels
    strict, _ = pseudo_label(images, one_fold, FAST, min_score=0.5, min_image_score=0.99, progress=False)
    assert len(strict) == 0
    with pytest.raises(ValueError, match=r"min_score: expected a score in \[0, 1\]"):
        pseudo_label(images, one_fold, FAST, min_score=1.5)


def test_pseudo_command_then_train_on_its_rows(
    one_fold: Path, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unlabelled = tmp_path / "semi"
    unlabelled.mkdir()
    shutil.copy(data_dir / "test" / sorted(p.name for p in (data_dir / "test").glob("*.png"))[0], unlabelled)
    held = "caa06f9a4057"  # an annotated image this fold holds out: its pseudo-labels must not be trained on
    shutil.copy(data_dir / "train" / f"{held}.png", unlabelled)
    out = tmp_path / "pseudo.csv"
    FAST.to_json(tmp_path / "fast.json")
    assert main(["pseudo", "--images", str(unlabelled), "--models", str(one_fold), "--out", str(out),
                 "--config", str(tmp_path / "fast.json"), "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "images kept" in printed
    rows = pd.read_csv(out)
    assert set(rows["id"]) == {p.stem for p in unlabelled.glob("*.png")}
    # read back as train.csv is read: every row passes the truth policy
    extra = load_dataset_dicts(tmp_path, None, train_csv=out, image_dir=unlabelled)
    assert sum(len(r["annotations"]) for r in extra.dicts) == len(rows) and not extra.problems

    folds = make_folds(data_dir / "train.csv", n_folds=2, seed=0)
    folds = folds[folds["id"].isin(["ea362f1a9844", "b50a98297c83", held])].copy()
    folds["fold"] = (folds["id"] == held).astype(int)
    write_folds(folds, tmp_path / "folds.csv")
    args = ["train", "--data", str(data_dir), "--folds", str(tmp_path / "folds.csv"), "--fold", "1", "--no-heldout"]
    args += ["--extra-truth", str(out), "--extra-images", str(unlabelled), "--extra-weight", "0.5"]
    args += ["--out", str(tmp_path / "models"), "--iters", "1", "--batch", "2", "--device", "cpu"]
    args += ["--min-sizes", "96", "--max-size", "160", "--test-size", "96", "--workers", "0"]
    assert main([*args, "--set", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32"]) == 0
    fold = tmp_path / "models" / "fold1"
    meta = json.loads((fold / "meta.json").read_text())
    assert meta["extra_truth"] == [{"file": str(out), "images_dir": str(unlabelled), "weight": 0.5}]
    assert meta["train_images"] == 2 + 1  # two labelled, the test image's pseudo-labels; not the held-out one
    problems = pd.read_csv(fold / "annotation_problems.csv")
    leak = problems[problems["id"] == held]
    assert len(leak) == 1 and "held out by this fold" in leak["what"].iloc[0]
    # pseudo-labels need the labelled data beside them
    assert main(["train", "--extra-truth", str(out), "--extra-images", str(unlabelled), "--out", str(tmp_path)]) == 2
    assert "pass --data too" in capsys.readouterr().err
