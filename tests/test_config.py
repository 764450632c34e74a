"""The typed config: defaults, ranges, JSON round-trip, clear errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from kernel_lib.config import CELL_TYPES, IOU_THRESHOLDS, Config, PostprocessConfig, load_config


def test_defaults_are_the_public_baseline() -> None:
    pp = PostprocessConfig()
    assert CELL_TYPES == ("shsy5y", "astro", "cort")
    assert pp.score_threshold == (0.15, 0.35, 0.55)
    assert pp.min_area == (75, 150, 75)


def test_iou_thresholds() -> None:
    assert len(IOU_THRESHOLDS) == 10
    assert IOU_THRESHOLDS[0] == 0.5 and IOU_THRESHOLDS[-1] == 0.95
    assert all(abs(b - a - 0.05) < 1e-9 for a, b in itertools.pairwise(IOU_THRESHOLDS))


def test_json_round_trip(tmp_path: Path) -> None:
    cfg = Config().replace(
        postprocess=PostprocessConfig(score_threshold=(0.2, 0.4, 0.6), min_kept_fraction=(0.5, 0, 0))
    )
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert load_config(path) == cfg


def test_partial_file_fills_defaults(tmp_path: Path) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"ensemble": {"method": "wmf"}}))
    cfg = load_config(path)
    assert cfg.ensemble.method == "wmf"
    assert cfg.postprocess == PostprocessConfig()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"postprocess": {"score_threshold": [0.1, 0.2]}}, "expected 3 values"),
        ({"postprocess": {"score_threshold": [0.1, 0.2, 1.5]}}, r"score_threshold\[cort\]"),
        ({"ensemble": {"method": "average"}}, "expected one of roi, wmf, mask_nms, vote, nmw"),
        ({"ensemble": {"tta": ["rot45"]}}, "tta"),
        ({"postprocess": {"colour": 1}}, "unknown key"),
        ({"extras": {}}, "unknown section"),
    ],
)
def test_bad_values_name_the_file_and_key(tmp_path: Path, data: dict, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(broken)
    assert load_config(None) == Config()
