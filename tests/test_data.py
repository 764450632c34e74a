"""kernel_lib.training.datasets: train.csv rows -> detectron2 dataset dicts, broken rows reported."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pycocotools.mask as mask_util
import pytest

from kernel_lib.config import CELL_TYPES
from kernel_lib.rle import rle_encode, rle_encode_crops
from kernel_lib.training.datasets import (
    IMAGE_ROW,
    XYXY_ABS,
    AnnotationProblem,
    coco_rle,
    load_dataset_dicts,
    mend_mask,
    record_masks,
    segmentation_mask,
)

H, W = 4, 6  # a tiny frame: pixel (y, x) has 1-indexed row-major start y * 6 + x + 1


def _write_pack(root: Path, rows: list[tuple[str, str, int, int, str]], images: dict[str, tuple[int, int]]) -> Path:
    (root / "train").mkdir(parents=True)
    for image_id, shape in images.items():
        cv2.imwrite(str(root / "train" / f"{image_id}.png"), np.full(shape, 100, np.uint8))
    pd.DataFrame(rows, columns=["id", "annotation", "width", "height", "cell_type"]).to_csv(
        root / "train.csv", index=False
    )
    return root


def test_coco_rle_matches_pycocotools_encode() -> None:
    mask = np.zeros((H, W), bool)
    mask[1, 1:4] = True  # row-major starts 8, 9, 10
    mask[2, 5] = True  # start 18
    mask[3, 0] = True  # start 19
    indices = np.flatnonzero(mask.ravel())
    ours = coco_rle(indices, (H, W))
    theirs = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert ours["counts"] == theirs["counts"]
    assert list(ours["size"]) == [H, W]
    assert np.array_equal(segmentation_mask(ours), mask)
    empty = coco_rle(np.zeros(0, np.int64), (H, W))
    assert not segmentation_mask(empty).any()


def test_hand_built_rows_and_every_kind_of_broken_row(tmp_path: Path) -> None:
    rows = [
        ("a", "8 3", W, H, "astro"),  # 0 valid: row 1, columns 1..3
        ("a", "", W, H, "astro"),  # 1 empty
        ("a", "20 10", W, H, "astro"),  # 2 out of bounds: pixels 20..29 > 24
        ("a", "3 x", W, H, "astro"),  # 3 malformed: not a number
        ("a", "3 2 4 1", W, H, "astro"),  # 4 malformed: runs overlap
        ("a", "8 3", W, H, "astro"),  # 5 duplicate of row 0
        ("a", "1 1", W + 1, H, "astro"),  # 6 wrong width
        ("a", "13 2 19 1", W, H, "astro"),  # 7 valid: (2,0),(2,1),(3,0)
        ("a", "24 1", W, H, "neuron"),  # 8 unknown cell type
        ("a", "5 2", W, H, "cort"),  # 9 not the image's type
        ("b", "", W, H, "cort"),  # 10 the only row of b is empty -> b left out
    ]
    root = _write_pack(tmp_path / "pack", rows, {"a": (H, W), "b": (H, W)})
    data = load_dataset_dicts(root, image_shape=(H, W))

    assert [(p.id, p.row) for p in data.problems] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("a", 4),
        ("a", 5),
        ("a", 6),
        ("a", 8),
        ("a", 9),
        ("b", 10),
        ("b", IMAGE_ROW),
    ]
    what = {p.row: p.what for p in data.problems}
    assert "empty" in what[1]
    assert "beyond" in what[2]
    assert "non-integer" in what[3]
    assert "duplicated pixels" in what[4]
    assert "duplicate of row 0" in what[5]
    assert "7 x 4" in what[6] and "6 x 4" in what[6]
    assert "neuron" in what[8]
    assert "cort" in what[9]
    assert str(AnnotationProblem("a", 5, "x")) == "a row 5 (line 7): x"

    (record,) = data.dicts
    assert record["image_id"] == "a" and (record["height"], record["width"]) == (H, W)
    assert record["file_name"].endswith("a.png")
    assert [a["row"] for a in record["annotations"]] == [0, 7]
    first, second = record["annotations"]
    # detectron2 boxes: first pixel to last pixel + 1
    assert first["bbox"] == [1.0, 1.0, 1.0 + 3, 1.0 + 1]
    assert second["bbox"] == [0.0, 2.0, 0.0 + 2, 2.0 + 2]
    assert first["bbox_mode"] == XYXY_ABS
    assert first["category_id"] == CELL_TYPES.index("astro") == 1
    expected = np.zeros((H, W), bool)
    expected[1, 1:4] = True
    assert np.array_equal(segmentation_mask(first["segmentation"]), expected)
    assert list(data.rows.index) == [0, 7]
    frame = data.problems_frame()
    assert list(frame.columns) == ["id", "row", "what"] and len(frame) == 10


def test_missing_image_unknown_id_and_nothing_usable(tmp_path: Path) -> None:
    rows = [("a", "1 2", W, H, "cort"), ("c", "1 2", W, H, "cort")]
    root = _write_pack(tmp_path / "pack", rows, {"a": (H, W)})
    data = load_dataset_dicts(root, ["a", "c", "zzz"], image_shape=(H, W))
    assert [d["image_id"] for d in data.dicts] == ["a"]
    assert {(p.id, p.row) for p in data.problems} == {("c", IMAGE_ROW), ("zzz", IMAGE_ROW)}
    assert "no image file" in next(p.what for p in data.problems if p.id == "c")
    with pytest.raises(ValueError, match="no usable annotated image"):
        load_dataset_dicts(root, ["c"], image_shape=(H, W))
    with pytest.raises(ValueError, match=r"train\.csv"):
        load_dataset_dicts(tmp_path / "nowhere")


def test_image_size_other_than_the_rows_say(tmp_path: Path) -> None:
    """Rows written for a 4x6 frame do not fit a 5x6 image file: reported, not reinterpreted."""
    root = _write_pack(tmp_path / "pack", [("a", "1 2", W, H, "cort")], {"a": (H + 1, W)})
    with pytest.raises(ValueError, match="6 x 5"):
        load_dataset_dicts(root, image_shape=None)


def test_shipped_sample_masks_reencode_to_the_original_rle(data_dir: Path) -> None:
    truth = pd.read_csv(data_dir / "train.csv")
    data = load_dataset_dicts(data_dir)
    assert data.problems == []
    assert sorted(d["image_id"] for d in data.dicts) == sorted(truth["id"].unique())
    assert sum(len(d["annotations"]) for d in data.dicts) == len(truth)
    for record in data.dicts:
        rows = [a["row"] for a in record["annotations"]]
        assert (truth.loc[rows, "id"] == record["image_id"]).all()
        # every instance's segmentation re-encodes to its train.csv string
        assert rle_encode_crops(record_masks(record)) == truth.loc[rows, "annotation"].tolist()
        types = truth.loc[rows, "cell_type"].map(CELL_TYPES.index).tolist()
        assert [a["category_id"] for a in record["annotations"]] == types
        annotation = record["annotations"][0]
        mask = segmentation_mask(annotation["segmentation"])
        ys, xs = np.nonzero(mask)
        assert annotation["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert rle_encode(mask) == truth.loc[rows[0], "annotation"]


def test_xyxy_abs_is_detectron2s() -> None:
    structures = pytest.importorskip("detectron2.structures")
    assert structures.BoxMode.XYXY_ABS == XYXY_ABS


def test_mini_pack_duplicated_rows_are_reported(mini_dir: Path) -> None:
    data = load_dataset_dicts(mini_dir)
    truth = pd.read_csv(mini_dir / "train.csv")
    assert len(data.dicts) == truth["id"].nunique()
    assert len(data.rows) + len(data.problems) == len(truth)
    for problem in data.problems:
        original = int(problem.what.split("row ")[1].split(" ")[0])
        assert truth.loc[problem.row, "annotation"] == truth.loc[original, "annotation"]


def test_images_of_another_frame_twice_or_hidden_are_left_out(tmp_path: Path) -> None:
    """The training reader checks every image against the expected frame (520x704 by
    default; a 4x6 one here), reports an id with two files, and never reads ``._x.png``."""
    rows = [
        ("a", "1 2", W, H, "cort"),  # fine
        ("t", "1 2", H, W, "cort"),  # a 6x4 (turned) image, rows written for it
        ("d", "1 2", W, H, "cort"),  # d.png and d.jpg
        ("._a", "1 2", W, H, "cort"),  # a macOS resource file's name as an id
    ]
    root = _write_pack(tmp_path / "pack", rows, {"a": (H, W), "t": (W, H), "d": (H, W), "._a": (H, W)})
    cv2.imwrite(str(root / "train" / "d.jpg"), np.full((H, W), 100, np.uint8))
    data = load_dataset_dicts(root, image_shape=(H, W))
    assert [d["image_id"] for d in data.dicts] == ["a"]
    what = {p.id: p.what for p in data.problems}
    assert set(what) == {"t", "d", "._a"}
    assert "t.png is 6x4 (height x width), expected 4x6" in what["t"] and "90 degrees" in what["t"]
    assert "d.png and d.jpg" in what["d"]
    assert "no image file" in what["._a"]
    # the competition frame by default: a 4x6 image is not 520x704
    with pytest.raises(ValueError, match=r"a\.png is 4x6 \(height x width\), expected 520x704"):
        load_dataset_dicts(root, ["a"])


def test_mend_mask_by_hand() -> None:
    m = np.zeros((7, 9), bool)
    m[1:6, 1:6] = True  # a 5 x 5 cell (25 px)
    m[3, 3] = False  # with a one-pixel hole
    m[2:4, 2] = False  # and a hole of 2 px touching nothing else
    m[0, 8] = True  # a 1-px fragment apart (not 8-connected to the cell)
    m[6, 7:9] = True  # and a 2-px one
    mended, holes, pieces, dropped = mend_mask(m)
    expected = np.zeros_like(m)
    expected[1:6, 1:6] = True
    np.testing.assert_array_equal(mended, expected)
    assert (holes, pieces, dropped) == (1 + 2, 2, 1 + 2)
    # a whole mask is left as it is; so is an empty one
    assert mend_mask(expected)[1:] == (0, 0, 0)
    np.testing.assert_array_equal(mend_mask(expected)[0], expected)
    assert not mend_mask(np.zeros((3, 3), bool))[0].any()
    # a ring: the hole inside it is filled, 8 px of ring + 1 of hole
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    assert mend_mask(ring)[0].all() and mend_mask(ring)[1] == 1
    # diagonal neighbours are one piece (8-connectivity)
    diagonal = np.eye(3, dtype=bool)
    np.testing.assert_array_equal(mend_mask(diagonal)[0], diagonal)


def test_mended_rows_are_listed_and_the_file_kept(tmp_path: Path) -> None:
    # 4 x 6 frame; row 0: a 3 x 3 ring at rows 0..2, cols 0..2 (hole at (1, 1)); row 1: whole
    ring = np.zeros((H, W), bool)
    ring[0:3, 0:3] = True
    ring[1, 1] = False
    rows = [("a", rle_encode(ring), W, H, "astro"), ("a", "5 2", W, H, "astro")]
    root = _write_pack(tmp_path / "pack", rows, {"a": (H, W)})
    plain = load_dataset_dicts(root, image_shape=(H, W))
    assert plain.mended == [] and record_masks(plain.dicts[0]).areas().tolist() == [8, 2]
    data = load_dataset_dicts(root, image_shape=(H, W), mend=True)
    assert [(m.id, m.row, m.what) for m in data.mended] == [("a", 0, "mended: 1 hole pixel(s) filled")]
    assert record_masks(data.dicts[0]).areas().tolist() == [9, 2]
    assert data.dicts[0]["annotations"][0]["bbox"] == [0.0, 0.0, 3.0, 3.0]
    assert data.rows["annotation"].tolist() == [r[1] for r in rows]  # the rows as the file has them
    assert pd.read_csv(root / "train.csv")["annotation"].tolist() == [r[1] for r in rows]
