"""COCO instance annotations -> detectron2 dataset dicts, under the policy train.csv has (no torch).

Reads the COCO files training is offered beside train.csv, LIVECell's first
(``LIVECell_dataset_2021/annotations/LIVECell/livecell_coco_train.json`` and the per-line
files under ``LIVECell_single_cells/<line>/``), whose quirks break naive readers:

- ``annotations`` may be a list (COCO) or a dict keyed by annotation id (LIVECell);
- ``segmentation`` may be polygons (a list of ``[x0, y0, x1, y1, ...]``), an
  uncompressed RLE (``counts`` a list) or a compressed one (``counts`` a string), all
  turned into one pycocotools compressed RLE (``INPUT.MASK_FORMAT = "bitmask"``);
- images are TIFFs (or PNGs) named by ``file_name``, found under the images folder at
  that relative path or, failing that, by base name anywhere below it (LIVECell's
  ``livecell_train_val_images/`` and ``livecell_test_images/<line>/``).

Classes (:data:`kernel_lib.config.COCO_CLASSES`):

- ``"sartorius"``: the competition's three classes. An annotation whose category is
  named like a Sartorius type (``shsy5y``, ``astro``, ``cort``) has that type; else the
  image's cell line, the prefix of its file name (``SHSY5Y_Phase_A10_1_...tif``), maps
  through :data:`LIVECELL_LINES` (LIVECell's SH-SY5Y is ``shsy5y``). Images of other
  lines are left out and reported.
- ``"cell"``: class-agnostic; every instance is one class, ``cell`` (pretraining on every
  cell line; the fine-tuning run re-initialises the class layers).

Every annotation is checked before it is used, and one that fails is left out and
reported as an :class:`~kernel_lib.truth.AnnotationProblem` (``row``: its position in the
file's annotations, its id in the text), never trained on: an unknown image or
category, a malformed segmentation, one of another frame size, an empty one (also a
polygon wholly outside the frame), the same pixels as an earlier annotation of the
image. Images whose file is missing, unreadable, of another frame than the JSON says or
than ``image_shape``, or left with no annotation, are reported (``row = -1``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pycocotools.mask as mask_util

from kernel_lib.config import CELL_CLASS, CELL_TYPES, COCO_CLASSES
from kernel_lib.images import IMAGE_SUFFIXES, read_image, shape_problem
from kernel_lib.training.datasets import TRAIN_COLUMNS, XYXY_ABS, TrainingData
from kernel_lib.truth import IMAGE_ROW, AnnotationProblem

LIVECELL_LINES: dict[str, str] = {"SHSY5Y": "shsy5y"}
"""LIVECell cell line (upper-case file-name prefix) -> the Sartorius cell type it is."""


@dataclass(frozen=True)
class CocoSource:
    """One COCO annotation file and the folder its images are under."""

    annotations: Path
    images: Path

    @classmethod
    def of(cls, annotations: str | Path, images: str | Path) -> CocoSource:
        """Checked paths.

        Raises:
            ValueError: the JSON file or the image folder does not exist.
        """
        annotations, images = Path(annotations), Path(images)
        if not annotations.is_file():
            raise ValueError(f"--coco {annotations}: no such file; pass a COCO instances JSON")
        if not images.is_dir():
            raise ValueError(f"--coco-images {images}: no such folder; pass the folder its file_name paths are under")
        return cls(annotations, images)


def cell_line(file_name: str) -> str:
    """The cell line of a LIVECell image, the upper-case prefix of its base name
    (``"images/SHSY5Y_Phase_A10_1_00d04h00m_1.tif"`` -> ``"SHSY5Y"``)."""
    return Path(file_name).name.split("_", 1)[0].upper()


def read_coco(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[int, str]]:
    """Parse a COCO instances file: its images, its annotations (a list, or LIVECell's dict
    keyed by id, in file order) and its categories (id -> lower-case name).

    Raises:
        ValueError: not JSON, not an object, or ``images`` / ``annotations`` /
            ``categories`` of the wrong kind; the message names the file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"COCO file {path}: not readable as JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"COCO file {path}: expected a JSON object with images and annotations, got {type(data).__name__}"
        )
    images, annotations, categories = data.get("images"), data.get("annotations", []), data.get("categories", [])
    if isinstance(annotations, dict):
        annotations = list(annotations.values())
    for name, value in (("images", images), ("annotations", annotations), ("categories", categories)):
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ValueError(f"COCO file {path}: expected {name} as a list of objects, got {type(value).__name__}")
    names = {}
    for category in categories:
        if isinstance(category.get("id"), int) and isinstance(category.get("name"), str):
            names[int(category["id"])] = category["name"].strip().lower()
    return images, annotations, names


def coco_segmentation(segmentation: Any, shape: tuple[int, int]) -> dict[str, Any]:
    """One pycocotools compressed RLE of a COCO segmentation (polygons, or RLE) on ``shape``.

    Raises:
        ValueError: not polygons of >= 3 finite points, nor an RLE of this frame.
    """
    height, width = shape
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list)]
        if not polygons or len(polygons) != len(segmentation):
            raise ValueError("segmentation: expected a list of polygons [x0, y0, x1, y1, ...]")
        for polygon in polygons:
            if len(polygon) < 6 or len(polygon) % 2 or not all(isinstance(v, (int, float)) for v in polygon):
                raise ValueError(f"polygon of {len(polygon)} values: expected >= 3 (x, y) number pairs")
            if not np.isfinite(np.asarray(polygon, np.float64)).all():
                raise ValueError("polygon with a NaN or infinite coordinate")
        return mask_util.merge(mask_util.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if list(size) != [height, width]:
            raise ValueError(f"RLE of size {size}: expected the image's [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                raise ValueError("uncompressed RLE: expected counts of whole numbers >= 0 summing to height x width")
            return mask_util.frPyObjects(segmentation, height, width)
        if isinstance(counts, str):
            rle = {"size": [height, width], "counts": counts.encode("ascii", "replace")}
            try:
                mask_util.area(rle)
            except Exception:  # pycocotools raises several kinds for undecodable counts
                raise ValueError("compressed RLE whose counts do not decode") from None
            return rle
    raise ValueError(f"segmentation: expected polygons or an RLE, got {type(segmentation).__name__}")


def _find_images(root: Path) -> dict[str, list[Path]]:
    """Base name -> image files below ``root`` (hidden files never)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file():
            found.setdefault(path.name, []).append(path)
    return found


class _ImageFiles:
    """``file_name`` -> the file: ``images/file_name``, else the one file of that base name
    anywhere below ``images`` (the folder is walked once, on the first miss)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_name: dict[str, list[Path]] | None = None

    def find(self, file_name: str) -> tuple[Path | None, str]:
        direct = self.root / file_name
        if direct.is_file() and not direct.name.startswith("."):
            return direct, ""
        if self._by_name is None:
            self._by_name = _find_images(self.root)
        paths = self._by_name.get(Path(file_name).name, [])
        if len(paths) == 1:
            return paths[0], ""
        if paths:
            return None, f"{len(paths)} files named {Path(file_name).name} under {self.root}; left out"
        return None, f"no image file {file_name} under {self.root}; left out"


def _category(
    classes: str, name: str, file_name: str, image_id: str, problems: list[AnnotationProblem]
) -> tuple[int, str] | None:
    """(class index, cell type) of an annotation, or None (left out; the reason added once per image)."""
    if classes == CELL_CLASS:
        return 0, CELL_CLASS
    if name in CELL_TYPES:
        return CELL_TYPES.index(name), name
    line = cell_line(file_name)
    if line in LIVECELL_LINES:
        cell_type = LIVECELL_LINES[line]
        return CELL_TYPES.index(cell_type), cell_type
    if not any(p.id == image_id and p.row == IMAGE_ROW for p in problems[-1:]):
        problems.append(
            AnnotationProblem(
                image_id,
                IMAGE_ROW,
                f"cell line {line} (category {name!r}) is not a Sartorius cell type; left out "
                "(--coco-classes cell pretrains on every line)",
            )
        )
    return None


def load_coco_dicts(
    source: CocoSource,
    classes: str = "sartorius",
    *,
    image_shape: tuple[int, int] | None = None,
    ids: Iterable[str] | None = None,
) -> TrainingData:
    """detectron2 dataset dicts of a COCO file (see the module docstring).

    Args:
        source: the JSON file and its image folder.
        classes: one of :data:`kernel_lib.config.COCO_CLASSES`.
        image_shape: the (H, W) every image must have; None: any (LIVECell's are 520x704).
        ids: only these images (``image_id`` = the base name of ``file_name`` without
            its suffix), in this order; None: every image of the file, in file order.

    Returns:
        :class:`~kernel_lib.training.datasets.TrainingData`: a dict per usable image
        (``cell_type``: its Sartorius type, or ``"cell"``; ``source``: the JSON file),
        every problem, and no train.csv rows.

    Raises:
        ValueError: an unknown ``classes``, an unreadable file, or no usable image (the
            message names the first problems).
    """
    if classes not in COCO_CLASSES:
        raise ValueError(f"COCO classes: expected one of {', '.join(COCO_CLASSES)}, got {classes!r}")
    images, annotations, categories = read_coco(source.annotations)
    by_image: dict[Any, list[tuple[int, dict[str, Any]]]] = {}
    problems: list[AnnotationProblem] = []
    for index, ann in enumerate(annotations):
        by_image.setdefault(ann.get("image_id"), []).append((index, ann))
    known = {img.get("id") for img in images}
    for key in by_image.keys() - known:
        for index, ann in by_image[key]:
            what = f"annotation id {ann.get('id')}: image_id {key!r} is not in the file's images; left out"
            problems.append(AnnotationProblem(str(key), index, what))
    wanted = None if ids is None else list(dict.fromkeys(ids))
    files = _ImageFiles(source.images)
    records: dict[str, dict[str, Any]] = {}
    for image in images:
        file_name = str(image.get("file_name", ""))
        image_id = Path(file_name).stem
        if wanted is not None and image_id not in wanted:
            continue
        if image_id in records:
            problems.append(AnnotationProblem(image_id, IMAGE_ROW, f"{file_name} appears twice in the file; left out"))
            continue
        record = _image_record(
            image, image_id, by_image.get(image.get("id"), []), files, classes, categories, image_shape, problems
        )
        if record is not None:
            record["source"] = str(source.annotations)
            records[image_id] = record
    order = wanted if wanted is not None else list(records)
    dicts = [records[i] for i in order if i in records]
    if not dicts:
        shown = "; ".join(str(p) for p in problems[:3]) or "it lists no image"
        raise ValueError(f"COCO file {source.annotations}: no usable annotated image ({shown})")
    return TrainingData(dicts, problems, pd.DataFrame(columns=list(TRAIN_COLUMNS)))


def _image_record(
    image: dict[str, Any],
    image_id: str,
    annotations: list[tuple[int, dict[str, Any]]],
    files: _ImageFiles,
    classes: str,
    categories: dict[int, str],
    image_shape: tuple[int, int] | None,
    problems: list[AnnotationProblem],
) -> dict[str, Any] | None:
    """One image's dataset dict, its annotations checked (None: the image is left out)."""
    file_name = str(image.get("file_name", ""))
    path, why = files.find(file_name)
    if path is None:
        problems.append(AnnotationProblem(image_id, IMAGE_ROW, why))
        return None
    try:
        shape = read_image(path, shape=None).shape
    except ValueError as err:
        problems.append(AnnotationProblem(image_id, IMAGE_ROW, f"{err}; left out"))
        return None
    declared = (image.get("height"), image.get("width"))
    if declared != (None, None) and declared != shape:
        problems.append(
            AnnotationProblem(
                image_id,
                IMAGE_ROW,
                f"{path} is {shape[1]}x{shape[0]}, the file says {declared[1]}x{declared[0]}; left out",
            )
        )
        return None
    wrong = shape_problem(path, shape, image_shape) if image_shape is not None else None
    if wrong:
        problems.append(AnnotationProblem(image_id, IMAGE_ROW, f"{wrong}; left out"))
        return None
    kept, cell_types = [], []
    seen: set[bytes] = set()
    for index, ann in annotations:
        category = _category(classes, categories.get(ann.get("category_id"), ""), file_name, image_id, problems)
        if category is None:
            continue
        problem, out = _annotation(ann, (int(shape[0]), int(shape[1])), category[0], index, seen)
        if problem:
            problems.append(AnnotationProblem(image_id, index, f"annotation id {ann.get('id')}: {problem}; left out"))
            continue
        kept.append(out)
        cell_types.append(category[1])
    if not kept:
        if not any(p.id == image_id and p.row == IMAGE_ROW for p in problems[-1:]):  # else said already
            what = "no valid annotation left" if annotations else "no annotation"
            problems.append(AnnotationProblem(image_id, IMAGE_ROW, f"{what}; image left out"))
        return None
    return {
        "file_name": str(path),
        "image_id": image_id,
        "height": int(shape[0]),
        "width": int(shape[1]),
        "cell_type": max(set(cell_types), key=cell_types.count),
        "annotations": kept,
    }


def _annotation(
    ann: dict[str, Any], shape: tuple[int, int], category: int, index: int, seen: set[bytes]
) -> tuple[str, dict[str, Any]]:
    """(problem, detectron2 annotation): problem "" when the annotation is usable."""
    try:
        rle = coco_segmentation(ann.get("segmentation"), shape)
    except ValueError as err:
        return str(err), {}
    if int(mask_util.area(rle)) == 0:
        return "empty segmentation (no pixel inside the frame)", {}
    counts = rle["counts"] if isinstance(rle["counts"], bytes) else str(rle["counts"]).encode()
    if counts in seen:
        return "the same pixels as an earlier annotation of the image", {}
    seen.add(counts)
    x, y, w, h = (float(v) for v in mask_util.toBbox(rle))
    return "", {
        "bbox": [x, y, x + w, y + h],
        "bbox_mode": XYXY_ABS,
        "category_id": category,
        "segmentation": rle,
        "row": index,
    }
