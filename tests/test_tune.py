"""The tuning engine equals postprocess + metric, and tuning never loses to the defaults."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernel_lib.config import CELL_TYPES, Config, PostprocessConfig, load_config
from kernel_lib.masks import CropMasks
from kernel_lib.metric import image_score
from kernel_lib.postprocess import postprocess
from kernel_lib.rle import rle_decode_crops
from kernel_lib.testing import simulate_instances
from kernel_lib.tune import (
    InstanceTable,
    Setting,
    TuneImage,
    candidate_settings,
    run_setting,
    score_config,
    setting_of,
    tune_postprocess,
    tune_rescoring,
    with_setting,
)


def _sample_images(data_dir: Path, seed: int = 0) -> list[TuneImage]:
    df = pd.read_csv(data_dir / "train.csv")
    images = []
    for k, (image_id, rows) in enumerate(df.groupby("id", sort=True)):
        truth = rle_decode_crops(rows["annotation"].tolist())
        masks, scores, classes = simulate_instances(truth, CELL_TYPES.index(rows["cell_type"].iloc[0]), seed=seed + k)
        images.append(TuneImage(str(image_id), masks, scores, classes, truth))
    return images


@pytest.fixture(scope="module")
def sample(data_dir: Path) -> tuple[list[TuneImage], InstanceTable]:
    images = _sample_images(data_dir)
    return images, InstanceTable.build(images)


def _reference(images: list[TuneImage], pp: PostprocessConfig) -> tuple[list[np.ndarray], np.ndarray]:
    """postprocess + metric.image_score, image by image: (kept indices, (n, 10) precision)."""
    keeps, precision = [], []
    for img in images:
        out = postprocess(img.masks, img.scores, img.classes, pp)
        keeps.append(np.sort(out.keep))
        precision.append(image_score(img.truth, out.masks).precision)
    return keeps, np.array(precision)


def _kept_indices(table: InstanceTable, images: list[TuneImage], kept: np.ndarray) -> list[np.ndarray]:
    """Kept instances per image as indices into each image's own input order."""
    out = []
    for n, img in enumerate(images):
        order = np.argsort(-img.scores, kind="stable")  # the table's instance order
        out.append(np.sort(order[kept[table.inst_image == n]]))
    return out


def test_hand_built_overlaps_and_scores() -> None:
    # 1 x 10 frame. Truth: A = x 0..3 (4 px), B = x 5..9 (5 px).
    truth = np.zeros((2, 1, 10), bool)
    truth[0, 0, 0:4] = True
    truth[1, 0, 5:10] = True
    # Predictions by score: p0 (0.9) x 0..3; p1 (0.8) x 2..9 (8 px, loses 2 to p0 -> 6 px);
    # p2 (0.7) x 4 (1 px, free).
    pred = np.zeros((3, 1, 10), bool)
    pred[0, 0, 0:4] = True
    pred[1, 0, 2:10] = True
    pred[2, 0, 4] = True
    img = TuneImage("x", CropMasks.from_stack(pred), [0.9, 0.8, 0.7], [0, 0, 0], CropMasks.from_stack(truth))
    table = InstanceTable.build([img])

    out = run_setting(table, 0.0, 0, 0.0)
    # p1 loses x2..3 to p0 and keeps x4..9; p2's one pixel x4 is then taken: dropped
    assert out.kept.tolist() == [True, True, False]
    assert out.remainder.tolist() == [4, 8 - 2, 1 - 1]
    # IoU(p0, A) = 4/4; IoU(p1, B) = 5/6 = 0.833: a match at t = 0.50..0.80 (7 thresholds),
    # at 0.85..0.95 p1 is a FP and B a FN: precision 1 / (1 + 1 + 1)
    np.testing.assert_allclose(out.precision[0], [1.0] * 7 + [1 / 3] * 3)
    assert out.image_scores[0] == pytest.approx((7 * 1.0 + 3 * (1 / 3)) / 10)

    # min_kept_fraction 0.8: p1 keeps 6/8 = 0.75 < 0.8, dropped; so p2 keeps x4 (a FP)
    out = run_setting(table, 0.0, 0, 0.8)
    assert out.kept.tolist() == [True, False, True]
    assert out.remainder.tolist() == [4, 8 - 2, 1]
    np.testing.assert_allclose(out.precision[0], [1 / (1 + 1 + 1)] * 10)
    # score threshold 0.75 keeps p0 and p1 only; min_area 5 then drops p0 (4 px)
    out = run_setting(table, 0.75, 5, 0.0)
    assert out.kept.tolist() == [False, True, False]
    assert out.remainder.tolist() == [4, 8, 1]


def test_equals_reference_on_sample(sample: tuple[list[TuneImage], InstanceTable]) -> None:
    images, table = sample
    configs = [
        PostprocessConfig(),
        PostprocessConfig(score_threshold=(0.05, 0.05, 0.05), min_area=(0, 0, 0), min_kept_fraction=(0.5, 0.9, 0.3)),
        PostprocessConfig(score_threshold=(0.5, 0.2, 0.3), min_area=(200, 30, 10), min_kept_fraction=(0.7, 0.0, 0.1)),
    ]
    for pp in configs:
        out = score_config(table, pp)
        ref_keep, ref_precision = _reference(images, pp)
        for mine, ref in zip(_kept_indices(table, images, out.kept), ref_keep):
            np.testing.assert_array_equal(mine, ref)
        np.testing.assert_array_equal(out.precision, ref_precision)


def test_equals_reference_on_random_small_frames() -> None:
    rng = np.random.default_rng(5)
    images = []
    for n in range(25):
        height, width = 20, 24
        n_truth = int(rng.integers(0, 7))
        truth = np.zeros((n_truth, height, width), bool)
        for j in range(n_truth):
            y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
            truth[j, y : y + rng.integers(2, 8), x : x + rng.integers(2, 8)] = True
        n_pred = int(rng.integers(0, 14))
        pred = np.zeros((n_pred, height, width), bool)
        for j in range(n_pred):
            if n_truth and rng.random() < 0.7:
                pred[j] = np.roll(truth[rng.integers(n_truth)], tuple(rng.integers(-2, 3, 2)), (0, 1))
            else:
                y, x = rng.integers(0, height - 4), rng.integers(0, width - 4)
                pred[j, y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = True
        scores = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], n_pred)  # ties on purpose
        classes = rng.integers(0, 3, n_pred)
        images.append(TuneImage(str(n), CropMasks.from_stack(pred), scores, classes, CropMasks.from_stack(truth)))
    table = InstanceTable.build(images)
    for s, a, k in [(0.0, 0, 0.0), (0.3, 3, 0.5), (0.5, 10, 0.8), (0.1, 0, 0.95)]:
        pp = PostprocessConfig(score_threshold=(s, s, s), min_area=(a, a, a), min_kept_fraction=(k, k, k))
        out = run_setting(table, s, a, k)
        ref_keep, ref_precision = _reference(images, pp)
        for mine, ref in zip(_kept_indices(table, images, out.kept), ref_keep):
            np.testing.assert_array_equal(mine, ref)
        np.testing.assert_array_equal(out.precision, ref_precision)


def test_subset_equals_separate_build(sample: tuple[list[TuneImage], InstanceTable]) -> None:
    images, table = sample
    pick = np.array([1, 4, 6])
    a = run_setting(table.subset(pick), 0.3, 50, 0.4)
    b = run_setting(InstanceTable.build([images[i] for i in pick]), 0.3, 50, 0.4)
    np.testing.assert_array_equal(a.precision, b.precision)
    np.testing.assert_array_equal(a.kept, b.kept)


def test_tuning_never_loses_to_defaults(sample: tuple[list[TuneImage], InstanceTable]) -> None:
    images, table = sample
    base = PostprocessConfig()
    result = tune_postprocess(table, base, trials=40, seed=1)
    assert result.best_score >= result.default_score
    # the figures are what the reference pipeline gives with each config
    _, ref_default = _reference(images, base)
    _, ref_best = _reference(images, result.config)
    assert result.default_score == pytest.approx(ref_default.mean(axis=1).mean())
    assert result.best_score == pytest.approx(ref_best.mean(axis=1).mean())
    for t, per_type in enumerate(result.per_type):
        assert per_type.cell_type == CELL_TYPES[t]
        if per_type.n_images:
            assert per_type.best_score >= per_type.default_score
            assert setting_of(result.config, t) == per_type.best
    assert len(result.history) == sum(r.trials for r in result.per_type)
    assert result.config.mask_threshold == base.mask_threshold


def test_rescoring_search_equals_reference(sample: tuple[list[TuneImage], InstanceTable]) -> None:
    images, _ = sample
    rng = np.random.default_rng(5)
    images = [TuneImage(i.id, i.masks, i.scores, i.classes, i.truth, confidence=rng.uniform(0.5, 1.0, len(i.scores)))
              for i in images]  # fmt: skip
    base = PostprocessConfig()
    result = tune_rescoring(images, base, exponents=(0.0, 1.0, 2.0), trials=20, seed=1, refine=False)
    assert result.best_score >= result.default_score
    assert set(result.history["rescore"]) == {0.0, 1.0, 2.0}
    assert all(r.rescore in (0.0, 1.0, 2.0) for r in result.per_type)
    assert result.config.rescore == tuple(r.rescore if r.n_images else 0.0 for r in result.per_type)

    def reference(pp: PostprocessConfig) -> float:  # postprocess with the confidences, then the metric
        return float(np.mean([
            image_score(img.truth, postprocess(img.masks, img.scores, img.classes, pp, img.confidence).masks).score
            for img in images
        ]))  # fmt: skip

    assert result.default_score == pytest.approx(reference(base))
    assert result.best_score == pytest.approx(reference(result.config))
    # with one exponent, 0, it is tune_postprocess itself
    plain = tune_rescoring(images, base, exponents=(0.0,), trials=20, seed=1, refine=False)
    same = tune_postprocess(InstanceTable.build(images), base, trials=20, seed=1, refine=False)
    assert plain.config == same.config and plain.best_score == pytest.approx(same.best_score)
    with pytest.raises(ValueError, match="needs mask confidences"):
        tune_rescoring(sample[0], base, exponents=(1.0,), trials=2)


def test_defaults_kept_when_nothing_is_better() -> None:
    # one image, one perfect prediction: every setting that keeps it scores 1.0
    truth = np.zeros((1, 8, 8), bool)
    truth[0, 2:6, 2:6] = True
    img = TuneImage("p", CropMasks.from_stack(truth), [0.9], [1], CropMasks.from_stack(truth))
    base = PostprocessConfig()
    result = tune_postprocess(InstanceTable.build([img]), base, trials=30)
    assert result.default_score == 0.0  # 16 px < astro's default min_area 150
    assert result.best_score == 1.0
    assert result.config.min_area[1] <= 16
    perfect = PostprocessConfig(min_area=(75, 10, 75))
    again = tune_postprocess(InstanceTable.build([img]), perfect, trials=30)
    assert again.config == perfect and again.gain == 0.0


def test_config_round_trip(tmp_path: Path, sample: tuple[list[TuneImage], InstanceTable]) -> None:
    _, table = sample
    result = tune_postprocess(table, PostprocessConfig(), trials=5, refine=False)
    path = tmp_path / "best.json"
    Config().replace(postprocess=result.config).to_json(path)
    assert load_config(path).postprocess == result.config
    assert json.loads(path.read_text())["postprocess"]["min_area"] == list(result.config.min_area)


def test_candidate_settings() -> None:
    default = Setting(0.15, 75, 0.0)
    settings = candidate_settings(default, trials=50, seed=3)
    assert settings[0] == default and len(settings) == 50 and len(set(settings)) == 50
    assert settings == candidate_settings(default, trials=50, seed=3)
    assert settings != candidate_settings(default, trials=50, seed=4)
    full = candidate_settings(default, trials=10**6)
    assert len(full) == 19 * 13 * 10  # the whole grid; the default is one of its points, listed first once
    assert len(candidate_settings(Setting(0.17, 80, 0.05), trials=10**6)) == 19 * 13 * 10 + 1  # off the grid
    with pytest.raises(ValueError, match="at least 1"):
        candidate_settings(default, trials=0)
    pp = with_setting(PostprocessConfig(), 2, Setting(0.4, 20, 0.5))
    assert pp.score_threshold == (0.15, 0.35, 0.4) and pp.min_area == (75, 150, 20)
    assert pp.min_kept_fraction == (0.0, 0.0, 0.5)


def test_empty_images() -> None:
    shape = (6, 6)
    truth = np.zeros((1, *shape), bool)
    truth[0, :2, :2] = True
    no_pred = TuneImage("a", CropMasks.empty(shape), [], [], CropMasks.from_stack(truth))
    no_truth = TuneImage("b", CropMasks.from_stack(truth), [0.9], [0], CropMasks.empty(shape))
    nothing = TuneImage("c", CropMasks.empty(shape), [], [], CropMasks.empty(shape))
    table = InstanceTable.build([no_pred, no_truth, nothing])
    out = run_setting(table, 0.1, 0, 0.0)
    # no prediction: FN -> 0; a prediction without truth: FP -> 0; neither: 1 (metric's convention)
    assert out.image_scores.tolist() == [0.0, 0.0, 1.0]
    assert InstanceTable.build([]).n_images == 0


def test_tune_command_on_a_cache(tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kernel_lib.__main__ import main
    from kernel_lib.evaluate import evaluate_cache
    from kernel_lib.testing import write_synthetic_cache

    truth, cache = data_dir / "train.csv", tmp_path / "cache"
    ids = write_synthetic_cache(truth, cache, seed=2)
    assert len(ids) == 7
    out = tmp_path / "best.json"
    history = tmp_path / "history.csv"
    args = ["tune", "--truth", str(truth), "--cache", str(cache), "--out", str(out), "--trials", "30"]
    assert main([*args, "--history", str(history)]) == 0
    printed = capsys.readouterr().out
    assert "overall:" in printed and f"wrote {out}" in printed
    best = load_config(out)
    assert len(pd.read_csv(history)) > 3 * 30 - 3  # every type: its trials, plus refinement
    # on the reference pipeline (finalize + metric), the written config never loses to the defaults
    default_eval, _ = evaluate_cache(truth, cache, Config(), progress=False)
    best_eval, _ = evaluate_cache(truth, cache, best, progress=False)
    assert best_eval.report.score >= default_eval.report.score
    assert f"{default_eval.report.score:.4f} -> {best_eval.report.score:.4f}" in printed
    assert best.ensemble == Config().ensemble  # the cache's ensemble is kept

    assert main(["tune", "--truth", str(truth), "--cache", str(tmp_path / "empty")]) == 2
    assert main([*args, "--trials", "0"]) == 2


def test_equals_reference_on_dense_pack_images(mini_dir: Path) -> None:
    # the two most crowded images of each cell type in the larger pack
    df = pd.read_csv(mini_dir / "train.csv")
    counts = df.groupby(["cell_type", "id"]).size().sort_values(ascending=False)
    ids = [i for t in CELL_TYPES for i in counts[t].index[:2]]
    images = []
    for k, image_id in enumerate(ids):
        rows = df[df["id"] == image_id]
        truth = rle_decode_crops(rows["annotation"].tolist())
        masks, scores, classes = simulate_instances(truth, CELL_TYPES.index(rows["cell_type"].iloc[0]), seed=k)
        images.append(TuneImage(image_id, masks, scores, classes, truth))
    assert max(len(img.masks) for img in images) > 700  # a dense shsy5y image is among them
    table = InstanceTable.build(images)
    for pp in (PostprocessConfig(), PostprocessConfig(min_kept_fraction=(0.6, 0.8, 0.4), min_area=(20, 60, 40))):
        out = score_config(table, pp)
        ref_keep, ref_precision = _reference(images, pp)
        for mine, ref in zip(_kept_indices(table, images, out.kept), ref_keep):
            np.testing.assert_array_equal(mine, ref)
        np.testing.assert_array_equal(out.precision, ref_precision)
