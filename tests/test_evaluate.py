"""Out-of-fold evaluation: model assignment, cache keys, and cached == fresh."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kernel_lib.__main__ import main
from kernel_lib.config import Config, EnsembleConfig, InferenceConfig, PostprocessConfig
from kernel_lib.evaluate import (
    CacheEntry,
    assign_models,
    cache_key,
    compact,
    evaluate,
    evaluate_cache,
    load_instances,
    read_cache_manifest,
    save_instances,
    write_cache_manifest,
)
from kernel_lib.folds import make_folds, write_folds
from kernel_lib.model_folder import ModelInfo, model_infos
from kernel_lib.soft import SoftInstances
from kernel_lib.truth import read_truth

# one image per cell type: shsy5y, astro, cort
IDS = ("5d066f4c3eef", "caa06f9a4057", "ea362f1a9844")
FAST = Config(
    postprocess=PostprocessConfig(score_threshold=(0.05, 0.05, 0.05), min_area=(10, 10, 10)),
    ensemble=EnsembleConfig(tta=("identity",), detections_per_image=40),
    inference=InferenceConfig(device="cpu", half=False, batch_size=2, num_workers=0, cpu_bf16=False),
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Path]:
    """Three annotated images, 2 random-weight fold models (tiny input size), a folds file."""
    from kernel_lib.demo_models import make_demo_models

    tmp = tmp_path_factory.mktemp("oof")
    images = tmp / "images"
    images.mkdir()
    for i in IDS:
        shutil.copy(data_dir / "train" / f"{i}.png", images / f"{i}.png")
    make_demo_models(tmp / "models", n_folds=2, min_size_test=160, max_size_test=220)
    folds = make_folds(data_dir / "train.csv", n_folds=2, seed=0)
    write_folds(folds, tmp / "folds.csv")
    return {"tmp": tmp, "images": images, "models": tmp / "models", "folds": tmp / "folds.csv"}


def _same_instances(a: SoftInstances, b: SoftInstances) -> None:
    for name in ("boxes", "scores", "classes", "masks"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.shape == b.shape


def test_cached_evaluation_equals_fresh(
    setup: dict[str, Path], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = data_dir / "train.csv"
    cache = setup["tmp"] / "cache"
    args = (truth, setup["images"], setup["models"])
    first = evaluate(*args, folds_csv=setup["folds"], config=FAST, cache_dir=cache, progress=False)
    assert (first.predicted, first.cached) == (3, 0)
    assert sorted(p.name for p in cache.glob("*.npz")) == sorted(f"{i}.npz" for i in IDS)
    assert first.report.per_image["n_pred"].sum() > 0  # something survives post-processing to compare

    again = evaluate(*args, folds_csv=setup["folds"], config=FAST, cache_dir=cache, progress=False)
    assert (again.predicted, again.cached) == (0, 3)
    assert again.report.to_dict() == first.report.to_dict()
    for i in IDS:
        _same_instances(again.instances[i], first.instances[i])
        np.testing.assert_array_equal(again.scores[i].precision, first.scores[i].precision)

    # other post-processing: scored from the cache, no model runs
    pp = PostprocessConfig(score_threshold=(0.3, 0.3, 0.3))
    other = evaluate(
        *args, folds_csv=setup["folds"], config=FAST.replace(postprocess=pp), cache_dir=cache, progress=False
    )
    assert (other.predicted, other.cached) == (0, 3)
    rescored, predictions = evaluate_cache(truth, cache, FAST.replace(postprocess=pp), progress=False)
    assert rescored.report.to_dict() == other.report.to_dict()
    assert set(predictions) == set(IDS)

    # the manifest: out-of-fold models per image
    entries, used = read_cache_manifest(cache)
    assert used.ensemble == FAST.ensemble
    folds = dict(zip(*np.loadtxt(setup["folds"], delimiter=",", skiprows=1, usecols=(0, 2), dtype=str).T))
    for e in entries:
        assert e.models == (f"fold{folds[e.id]}",) and e.fold == int(folds[e.id])

    # the command reads the cache too, and says how many images it predicted
    command = ["evaluate", "--truth", str(truth), "--images", str(setup["images"]), "--models", str(setup["models"])]
    command += ["--folds", str(setup["folds"]), "--cache", str(cache), "--json", "--config", str(_config_file(setup))]
    capsys.readouterr()
    assert main(command) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["cached"], printed["predicted"]) == (3, 0)
    assert printed["score"] == first.report.score and printed["n_images"] == 3


def _config_file(setup: dict[str, Path]) -> Path:
    path = setup["tmp"] / "fast.json"
    FAST.to_json(path)
    return path


def test_cache_key_tracks_models_ensemble_and_image(setup: dict[str, Path]) -> None:
    infos = model_infos(setup["models"])
    assert [(m.name, m.fold) for m in infos] == [("fold0", 0), ("fold1", 1)]
    key = cache_key(infos[:1], FAST, "img")
    assert key == cache_key(infos[:1], FAST, "img")
    assert key != cache_key(infos[1:], FAST, "img")
    assert key != cache_key(infos[:1], FAST, "other image")
    assert key != cache_key(infos[:1], FAST.replace(ensemble=EnsembleConfig(tta=("identity", "hflip"))), "img")
    # a per-type scale runs a second pass: another key; rescoring is post-processing: the same
    scaled = dataclasses.replace(FAST.ensemble, type_scale=(1.5, 1.0, 1.0))
    assert key != cache_key(infos[:1], FAST.replace(ensemble=scaled), "img")
    assert key == cache_key(infos[:1], FAST.replace(postprocess=PostprocessConfig(rescore=(1.0, 1.0, 1.0))), "img")
    # post-processing does not change the fused instances ("roi" does not use mask_threshold)
    assert key == cache_key(infos[:1], FAST.replace(postprocess=PostprocessConfig(mask_threshold=0.4)), "img")
    wmf = FAST.replace(ensemble=EnsembleConfig(method="wmf"))
    assert cache_key(infos[:1], wmf, "img") != cache_key(
        infos[:1], wmf.replace(postprocess=PostprocessConfig(mask_threshold=0.4)), "img"
    )
    # a changed weights file changes the model's digest
    copy = setup["tmp"] / "models_copy"
    shutil.copytree(setup["models"], copy)
    with (copy / "fold0" / "model_final.pth").open("ab") as f:
        f.write(b"\0")
    changed = model_infos(copy)
    assert changed[0].digest != infos[0].digest and changed[1].digest == infos[1].digest


def _info(name: str, fold: int | None) -> ModelInfo:
    return ModelInfo(name, Path(name), fold, 1.0, name)


def test_assign_models_out_of_fold() -> None:
    models = [_info("fold0", 0), _info("fold1", 1), _info("b_fold1", 1)]
    folds = {"a": 0, "b": 1, "c": 2}
    assigned, skipped, notes = assign_models(["a", "b", "c", "d"], models, folds)
    assert [m.name for m in assigned["a"]] == ["fold0"]
    assert [m.name for m in assigned["b"]] == ["fold1", "b_fold1"]
    assert skipped == {"c": "no model of its fold 2", "d": "not in the folds file"}
    assert any("out-of-fold" in n for n in notes) and any("skipped" in n for n in notes)

    everything, skipped, notes = assign_models(["a", "d"], models, None)
    assert all(len(v) == 3 for v in everything.values()) and not skipped
    assert "in-fold" in notes[0]

    with pytest.raises(ValueError, match="have no fold"):
        assign_models(["a"], [*models, _info("extra", None)], folds)


def test_instances_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    inst = SoftInstances(
        rng.uniform(0, 50, (5, 4)).astype(np.float32),
        rng.uniform(0, 1, 5),
        rng.integers(0, 3, 5),
        rng.uniform(0, 1, (5, 28, 28)),
        (60, 70),
    )
    path = tmp_path / "x.npz"
    save_instances(path, inst, "k1")
    back = load_instances(path, "k1")
    assert back is not None
    _same_instances(back, compact(inst))
    assert np.abs(back.masks - inst.masks).max() < 1e-3  # float16 rounding only
    assert load_instances(path, "k2") is None  # stale
    assert load_instances(tmp_path / "absent.npz") is None
    empty = SoftInstances.empty((60, 70))
    save_instances(path, empty, "e")
    assert len(load_instances(path, "e")) == 0  # type: ignore[arg-type]
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="unreadable"):
        load_instances(path)


def test_manifest_and_truth_errors(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ValueError, match="fill the cache first"):
        read_cache_manifest(tmp_path)
    write_cache_manifest(tmp_path, [CacheEntry("a", tmp_path / "a.npz", "k", ("fold0",), 0)], Config())
    entries, config = read_cache_manifest(tmp_path)
    assert entries[0].file == tmp_path / "a.npz" and config == Config()
    with pytest.raises(ValueError, match="missing or stale"):
        evaluate_cache(data_dir / "train.csv", tmp_path)

    truth = read_truth(data_dir / "train.csv", ids=IDS)
    assert set(truth) == set(IDS)
    assert {t.cell_type for t in truth.values()} == {"shsy5y", "astro", "cort"}
    assert all(t.masks.shape == (520, 704) and len(t.masks) > 0 for t in truth.values())
    with pytest.raises(ValueError, match="does not exist"):
        read_truth(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,annotation\na,1 2\n")
    with pytest.raises(ValueError, match="cell_type"):
        read_truth(bad)
    bad.write_text("id,annotation,cell_type\na,5 2 1 2,astro\na,1 2,astro\n")
    broken = read_truth(bad)["a"]  # a malformed row is left out and said, as training does
    assert len(broken.masks) == 1
    why = "malformed RLE: run 2: start 1 not after the previous start 5 (unsorted)"
    assert [(p.row, p.what) for p in broken.dropped] == [(0, why)]


def test_evaluate_bad_inputs(setup: dict[str, Path], data_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "imgs"
    empty.mkdir()
    shutil.copy(data_dir / "test" / "7ae19de7bc2a.png", empty)  # a test image: no annotation
    with pytest.raises(ValueError, match="no image of"):
        evaluate(data_dir / "train.csv", empty, setup["models"], config=FAST, progress=False)
    folds = tmp_path / "folds.csv"
    folds.write_text("id,cell_type,fold\n" + "".join(f"{i},astro,5\n" for i in IDS))
    with pytest.raises(ValueError, match="no image left"):
        evaluate(data_dir / "train.csv", setup["images"], setup["models"], folds_csv=folds, config=FAST, progress=False)
    code = main(["evaluate", "--truth", str(data_dir / "train.csv"), "--images", str(empty), "--models", str(tmp_path)])
    assert code == 2
