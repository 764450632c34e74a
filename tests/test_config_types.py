"""Strict config types (issue 12): every field of every section is checked against its
annotation (bool is bool, int is int, finite floats, strings, ``X | None`` allows None);
the message names the field, the value and the expected type."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

import numpy as np
import pytest

from kernel_lib.config import Config, EnsembleConfig, InferenceConfig, PostprocessConfig, load_config


def _sections() -> list[type]:
    return [PostprocessConfig, EnsembleConfig, InferenceConfig]


def _wrong_values(hint: object) -> list[object]:
    """Values of the wrong type for a field annotated ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        # every option must refuse it: a string for non-string unions, a list otherwise
        return [] if str in args else ["yes"]
    if hint is bool:
        return ["no", 0, 1.0, None]
    if hint is int:
        return [True, 2.0, "3", None]
    if hint is float:
        return [True, "0.5", float("inf"), float("nan"), None]
    if origin is tuple:
        return ["identity", 5, [None]]
    if origin is typing.Literal:
        return [1, None, True]
    return []


@pytest.mark.parametrize("section", _sections(), ids=lambda c: c.__name__)
def test_every_field_refuses_values_of_the_wrong_type(section: type, tmp_path: Path) -> None:
    hints = typing.get_type_hints(section)
    name = {PostprocessConfig: "postprocess", EnsembleConfig: "ensemble", InferenceConfig: "inference"}[section]
    checked = 0
    for f in dataclasses.fields(section):
        for value in _wrong_values(hints[f.name]):
            path = tmp_path / "cfg.json"
            path.write_text(json.dumps({name: {f.name: value}}))
            with pytest.raises(ValueError) as info:
                load_config(path)
            message = str(info.value)
            assert f"{name}.{f.name}" in message and "expected" in message, message
            checked += 1
    assert checked >= len(dataclasses.fields(section))


def test_type_messages_name_field_value_and_type(tmp_path: Path) -> None:
    cases = {
        '{"inference": {"cpu_bf16": "no"}}': r"inference.cpu_bf16: expected true or false .* got 'no' \(str\)",
        '{"inference": {"num_workers": 2.0}}': "inference.num_workers: expected a whole number",
        '{"ensemble": {"detections_per_image": 1000.0}}': r"got 1000\.0 \(float\)",
        '{"postprocess": {"mask_threshold": Infinity}}': "mask_threshold: expected a finite number, got inf",
        '{"postprocess": {"score_threshold": [0.1, "0.2", 0.3]}}': r"score_threshold\[1\]: .* got '0.2' \(str\)",
        '{"inference": {"batch_size": true}}': r"batch_size: .* got True \(bool\)",
    }
    for text, message in cases.items():
        path = tmp_path / "cfg.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_config(path)


def test_optional_fields_take_none_and_types_round_trip(tmp_path: Path) -> None:
    """A field annotated ``X | None`` accepts null; numpy scalars and lists are stored as
    Python numbers and tuples, so a config still round-trips through JSON."""
    for section in _sections():
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            if type(None) in typing.get_args(hints[f.name]):
                assert getattr(section(**{f.name: None}), f.name) is None
    pp = PostprocessConfig(score_threshold=[np.float64(0.2), 0.4, 0.6], min_area=(np.int64(10), 20, 30))
    assert pp.score_threshold == (0.2, 0.4, 0.6) and type(pp.min_area[0]) is int
    cfg = Config(postprocess=pp)
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert load_config(path) == cfg
    with pytest.raises(ValueError, match="postprocess: expected PostprocessConfig"):
        Config(postprocess={"mask_threshold": 0.5})  # type: ignore[arg-type]
