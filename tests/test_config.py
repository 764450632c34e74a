"""The typed config: defaults, ranges, JSON round-trip, clear errors."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import pytest

from kernel_lib.config import (
    CELL_TYPES,
    CONFIG_ENV,
    IOU_THRESHOLDS,
    TUNED_CONFIG,
    Config,
    PostprocessConfig,
    config_for_models,
    load_config,
)


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


# ------------------------------------------------------- which config goes with the models


def _write(path: Path, method: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"ensemble": {"method": method}}))
    return path


def test_config_for_models_explicit_path_then_env_then_tuned_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = tmp_path / "models"
    explicit = _write(tmp_path / "explicit.json", "wmf")
    named = _write(tmp_path / "named.json", "mask_nms")
    tuned = _write(models / TUNED_CONFIG, "vote")
    monkeypatch.setenv(CONFIG_ENV, str(named))

    config, used = config_for_models(models, explicit)  # explicit path wins over everything
    assert (config.ensemble.method, used) == ("wmf", explicit)
    assert config_for_models(models, str(explicit))[1] == explicit  # a str path too

    config, used = config_for_models(models)  # then KERNEL_LIB_CONFIG
    assert (config.ensemble.method, used) == ("mask_nms", named)

    monkeypatch.setenv(CONFIG_ENV, "")  # set but empty: as unset
    config, used = config_for_models(str(models))  # then best_config.json beside the models
    assert (config.ensemble.method, used) == ("vote", tuned)
    monkeypatch.delenv(CONFIG_ENV)
    assert config_for_models(models)[1] == tuned

    tuned.unlink()  # then the defaults
    assert config_for_models(models) == (Config(), None)
    (models / TUNED_CONFIG).mkdir()  # a folder of that name is no config
    assert config_for_models(models) == (Config(), None)
    assert config_for_models(tmp_path / "no-such-folder") == (Config(), None)


def test_config_for_models_missing_files_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    _write(models / TUNED_CONFIG, "vote")
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ValueError, match=r"config file .*nope\.json does not exist; pass a JSON file written by"):
        config_for_models(models, tmp_path / "nope.json")  # never falls back to best_config.json
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "gone.json"))
    with pytest.raises(ValueError, match=r"gone\.json \(named by KERNEL_LIB_CONFIG\) does not exist.*unset it"):
        config_for_models(models)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        config_for_models(models, tmp_path / "broken.json")


def test_predict_without_config_takes_the_models_config(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``predict`` chooses as the notebook does (config_for_models); all checked before any model runs."""
    from kernel_lib.__main__ import main

    models = tmp_path / "models"
    tuned = _write(models / TUNED_CONFIG, "wmf")
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    args = ["predict", "--test-dir", str(data_dir / "test"), "--models", str(models)]
    assert main([*args, "--out", str(tuned)]) == 2  # the config read is an input: --out may not be it
    err = capsys.readouterr().err
    assert f"note: config {tuned} (beside the models; --config overrides it)" in err
    assert f"--out {tuned} is the config input" in err

    named = _write(tmp_path / "named.json", "vote")
    monkeypatch.setenv(CONFIG_ENV, str(named))
    assert main([*args, "--out", str(named)]) == 2
    err = capsys.readouterr().err
    assert f"note: config {named} (named by KERNEL_LIB_CONFIG" in err and "is the config input" in err

    tuned.write_text("{")  # --config wins: neither the environment variable nor best_config.json is read
    explicit = _write(tmp_path / "explicit.json", "mask_nms")
    assert main([*args, "--config", str(explicit), "--out", str(explicit)]) == 2
    err = capsys.readouterr().err
    assert "the --config input" in err and "note: config" not in err

    monkeypatch.delenv(CONFIG_ENV)
    assert main([*args, "--out", str(tmp_path / "s.csv")]) == 2
    assert f"config file {tuned} is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def test_with_inference_names_the_option_not_the_field() -> None:
    """Issue 21.11: `predict --batch-size 0` was reported as `batch_size`."""
    cfg = Config().with_inference(batch_size=2, num_workers=0)
    assert (cfg.inference.batch_size, cfg.inference.num_workers, cfg.ensemble) == (2, 0, Config().ensemble)
    assert Config().with_inference() == Config()
    for field, flag, value in (("batch_size", "--batch-size", 0), ("num_workers", "--workers", 33)):
        with pytest.raises(ValueError, match=rf"^{flag}: expected a value in \[\d+, \d+\], got {value}$"):
            Config().with_inference(**{field: value})
    with pytest.raises(ValueError, match=r"^--device: expected one of auto, cpu, cuda, got .gpu."):
        Config().with_inference(device="gpu")
    with pytest.raises(ValueError, match=r"^inference\.time_budget_s: expected a positive number"):
        Config().with_inference(time_budget_s=-1)


def test_ensemble_views_and_scales_are_each_listed_once() -> None:
    """Issue 21.9: `"scales": []` was an IndexError after the models loaded; a view or
    scale listed twice an error naming no file (a "bug" traceback with workers)."""
    from kernel_lib.config import EnsembleConfig

    with pytest.raises(ValueError, match=r"scales: expected at least one scale"):
        EnsembleConfig(scales=())
    with pytest.raises(ValueError, match=r"tta: 'hflip' is listed more than once in \['hflip', 'vflip', 'hflip'\]"):
        EnsembleConfig(tta=("hflip", "vflip", "hflip"))
    with pytest.raises(ValueError, match=r"scales: 1\.0 is listed more than once"):
        EnsembleConfig(scales=(1.0, 1.0))
    assert EnsembleConfig(tta=("identity", "hflip", "vflip"), scales=(1.0, 0.75, 1.25)).scales == (1.0, 0.75, 1.25)


def test_read_json_is_strict_and_names_the_file(tmp_path: Path) -> None:
    """The one JSON reader (configs, models.json/meta.json, kaggle-push's files): a key
    given twice at any depth, non-UTF-8 text, deep nesting and NaN (unless allowed) are
    errors naming the file, never a silent last-wins or a traceback."""
    from kernel_lib.config import read_json, read_json_object

    path = tmp_path / "x.json"
    cases = {
        b'{"a": {"b": 1, "b": 2}}': "x.json is not valid JSON (key 'b' appears twice); fix",
        b'{"a": "\xff"}': "x.json is not UTF-8 text (byte 7); fix",
        b"[" * 50_000: "x.json: JSON nested too deeply; fix",
        b'{"a": NaN}': "x.json is not valid JSON (NaN is not JSON); fix",
    }
    for data, says in cases.items():
        path.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(says)):
            read_json(path, "fix")
    path.write_bytes(b'{"a": NaN, "b": [1, 2]}')
    assert read_json(path, allow_nan=True)["b"] == [1, 2]
    assert read_json_object(path, "meta.json of fold0")["b"] == [1, 2]  # what this library writes may hold NaN
    path.write_bytes(b'{"a": 1, "a": 1}')
    with pytest.raises(ValueError, match=r"^meta\.json of fold0 is not valid JSON \(key 'a' appears twice\)$"):
        read_json_object(path, "meta.json of fold0")
