"""kernel_lib.training.coco: COCO (LIVECell) annotations -> dataset dicts, bad annotations reported."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from kernel_lib.config import CELL_TYPES
from kernel_lib.testing import mask_iou_matrix, write_livecell_standin
from kernel_lib.training.coco import CocoSource, cell_line, coco_segmentation, load_coco_dicts, read_coco
from kernel_lib.training.datasets import TrainingData, load_dataset_dicts, record_masks
from kernel_lib.truth import IMAGE_ROW

H, W = 4, 6  # a tiny frame; COCO's RLE runs are column-major: pixel (y, x) is run index x * 4 + y

# pixels (1, 2), (2, 2), (1, 3), (2, 3): column-major 9, 10, 13, 14 -> runs 9 off, 2 on, 2 off, 2 on, 9 off
BLOCK = {"size": [H, W], "counts": [9, 2, 2, 2, 9]}
BLOCK_BOX = [2.0, 1.0, 4.0, 3.0]  # x 2..3, y 1..2 -> (x0, y0, last + 1)


def _block() -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[1:3, 2:4] = True
    return mask


def _tiny_coco(tmp_path: Path) -> CocoSource:
    """Three images listed (one under a sub-folder, one of a line that is no Sartorius type,
    one missing), annotations keyed by id as LIVECell writes them."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    cv2.imwrite(str(images / "sub" / "SHSY5Y_Phase_a_1.tif"), np.full((H, W), 90, np.uint8))
    cv2.imwrite(str(images / "A172_Phase_b_1.tif"), np.full((H, W), 90, np.uint8))
    other = np.zeros((H, W), bool)
    other[0, 0] = other[3, 5] = True
    compressed = mask_util.encode(np.asfortranarray(other.astype(np.uint8)))
    anns = [
        (1, 1, BLOCK),  # kept
        (2, 1, BLOCK),  # the same pixels again: left out
        (3, 1, [[100.0, 100.0, 101.0, 100.0, 101.0, 101.0]]),  # wholly outside the frame: empty
        (4, 1, [[1.0, 1.0, 2.0, 2.0]]),  # two points: not a polygon
        (5, 1, {"size": [H, W], "counts": compressed["counts"].decode()}),  # compressed RLE: kept
        (6, 1, {"size": [W, H], "counts": [24]}),  # another frame
        (7, 9, BLOCK),  # an image the file does not list
        (8, 2, BLOCK),  # on the A172 image
    ]
    coco = {
        "images": [
            {"id": 1, "file_name": "SHSY5Y_Phase_a_1.tif", "width": W, "height": H},
            {"id": 2, "file_name": "A172_Phase_b_1.tif", "width": W, "height": H},
            {"id": 3, "file_name": "SHSY5Y_Phase_missing_1.tif", "width": W, "height": H},
        ],
        "annotations": {
            str(i): {"id": i, "image_id": image, "category_id": 1, "segmentation": seg} for i, image, seg in anns
        },
        "categories": [{"id": 1, "name": "cell"}],
    }
    path = tmp_path / "livecell_coco_train.json"
    path.write_text(json.dumps(coco))
    return CocoSource.of(path, images)


def test_livecell_quirks_are_read_and_bad_annotations_reported(tmp_path: Path) -> None:
    data = load_coco_dicts(_tiny_coco(tmp_path), "sartorius")
    (record,) = data.dicts  # A172 is no Sartorius type; the third image has no file
    assert record["image_id"] == "SHSY5Y_Phase_a_1" and record["cell_type"] == "shsy5y"
    assert Path(record["file_name"]).parent.name == "sub"  # found by its base name
    assert (record["height"], record["width"]) == (H, W)
    first, second = record["annotations"]
    assert first["bbox"] == BLOCK_BOX and first["category_id"] == CELL_TYPES.index("shsy5y")
    assert [first["row"], second["row"]] == [0, 4]  # positions in the file's annotations
    masks = record_masks(record).to_stack()
    expected_other = np.zeros((H, W), bool)
    expected_other[0, 0] = expected_other[3, 5] = True
    assert np.array_equal(masks[0], _block()) and np.array_equal(masks[1], expected_other)
    problems = {(p.id, p.row): p.what for p in data.problems}
    assert "same pixels" in problems[("SHSY5Y_Phase_a_1", 1)]
    assert "empty" in problems[("SHSY5Y_Phase_a_1", 2)]
    assert "polygon of 4 values" in problems[("SHSY5Y_Phase_a_1", 3)]
    assert "RLE of size [6, 4]" in problems[("SHSY5Y_Phase_a_1", 5)]
    assert "not in the file's images" in problems[("9", 6)]
    assert "cell line A172" in problems[("A172_Phase_b_1", IMAGE_ROW)]
    assert "no image file SHSY5Y_Phase_missing_1.tif" in problems[("SHSY5Y_Phase_missing_1", IMAGE_ROW)]
    assert len(data.problems) == 7 and len(data.rows) == 0


def test_class_agnostic_keeps_every_line_as_one_class(tmp_path: Path) -> None:
    data = load_coco_dicts(_tiny_coco(tmp_path), "cell")
    assert [r["image_id"] for r in data.dicts] == ["SHSY5Y_Phase_a_1", "A172_Phase_b_1"]
    assert {r["cell_type"] for r in data.dicts} == {"cell"}
    assert {a["category_id"] for r in data.dicts for a in r["annotations"]} == {0}
    with pytest.raises(ValueError, match="expected one of sartorius, cell"):
        load_coco_dicts(_tiny_coco(tmp_path / "again"), "livecell")


def test_polygons_rasterise_as_pycocotools_does() -> None:
    square = [[1.0, 0.0, 4.0, 0.0, 4.0, 3.0, 1.0, 3.0]]
    rle = coco_segmentation(square, (H, W))
    expected = mask_util.merge(mask_util.frPyObjects(square, H, W))
    assert np.array_equal(mask_util.decode(rle), mask_util.decode(expected))
    with pytest.raises(ValueError, match="NaN"):
        coco_segmentation([[0.0, 0.0, float("nan"), 1.0, 2.0, 2.0]], (H, W))
    with pytest.raises(ValueError, match="summing to height x width"):
        coco_segmentation({"size": [H, W], "counts": [3, 2]}, (H, W))
    with pytest.raises(ValueError, match="expected polygons or an RLE"):
        coco_segmentation("0 1", (H, W))


def test_read_coco_takes_lists_and_dicts_and_refuses_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"images": [], "annotations": [{"id": 1}], "categories": [{"id": 1, "name": "Cell"}]}))
    assert read_coco(path) == ([], [{"id": 1}], {1: "cell"})
    path.write_text(json.dumps({"images": [], "annotations": {"7": {"id": 7}}}))
    assert read_coco(path)[1] == [{"id": 7}]
    for bad, match in (("[1, 2]", "expected a JSON object"), ('{"images": {}}', "images as a list"), ("{", "JSON")):
        path.write_text(bad)
        with pytest.raises(ValueError, match=match):
            read_coco(path)
    assert cell_line("x/SHSY5Y_Phase_A10_1_00d04h00m_1.tif") == "SHSY5Y" and cell_line("bv2_a.tif") == "BV2"


def test_a_livecell_shaped_copy_reads_back_as_the_truth(data_dir: Path, tmp_path: Path) -> None:
    ids = ["0f08d640930b", "e9edcd9483e4", "ea362f1a9844"]  # shsy5y, astro, cort
    truth = {r["image_id"]: record_masks(r) for r in load_dataset_dicts(data_dir, ids).dicts}
    # exact (RLE): the shsy5y image comes back whole; A172 and BV2 stand-ins are other lines
    json_path, images = write_livecell_standin(data_dir, tmp_path / "rle", ids, polygons=False)
    data = load_coco_dicts(CocoSource.of(json_path, images), "sartorius", image_shape=(520, 704))
    (record,) = data.dicts
    assert record["image_id"] == "SHSY5Y_Phase_0f08d640930b_1" and record["cell_type"] == "shsy5y"
    got, want = record_masks(record), truth["0f08d640930b"]
    assert len(got) == len(want) and np.array_equal(got.to_stack(), want.to_stack())
    assert sorted(p.id for p in data.problems) == ["A172_Phase_e9edcd9483e4_1", "BV2_Phase_ea362f1a9844_1"]
    # polygons (LIVECell's form), class-agnostic: every instance of every line, close to its truth
    json_path, images = write_livecell_standin(data_dir, tmp_path / "poly", ids)
    assert isinstance(json.loads(json_path.read_text())["annotations"], dict)
    data = load_coco_dicts(CocoSource.of(json_path, images), "cell")
    assert len(data.dicts) == 3 and not data.problems
    for record in data.dicts:
        want = truth[record["image_id"].split("_")[2]]
        got = record_masks(record)
        assert len(got) == len(want)
        iou = mask_iou_matrix(got, want).diagonal()
        assert iou.mean() > 0.8, record["image_id"]


def test_merging_leaves_out_an_image_two_sources_share(data_dir: Path, tmp_path: Path) -> None:
    csv = load_dataset_dicts(data_dir, ["ea362f1a9844", "b50a98297c83"])
    json_path, images = write_livecell_standin(data_dir, tmp_path, ["ea362f1a9844"])
    coco = load_coco_dicts(CocoSource.of(json_path, images), "cell")
    renamed = TrainingData([dict(coco.dicts[0], image_id="ea362f1a9844")], [], coco.rows)
    merged = TrainingData.merge([csv, renamed])
    assert [r["image_id"] for r in merged.dicts] == ["ea362f1a9844", "b50a98297c83"]
    assert len(merged.rows) == len(csv.rows) and "also in train.csv" in merged.problems[-1].what
    with pytest.raises(ValueError, match="at least one"):
        TrainingData.merge([])


def test_coco_source_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--coco .*no such file"):
        CocoSource.of(tmp_path / "no.json", tmp_path)
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(ValueError, match=r"--coco-images .*no such folder"):
        CocoSource.of(tmp_path / "a.json", tmp_path / "nope")
