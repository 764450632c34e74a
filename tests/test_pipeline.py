"""End to end on the CPU: demo fold models -> run_inference / the predict command -> a valid submission."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kernel_lib.config import Config, EnsembleConfig, InferenceConfig, PostprocessConfig
from kernel_lib.soft import SoftInstances
from kernel_lib.submission import validate_submission

pytest.importorskip("detectron2")

ROOT = Path(__file__).resolve().parents[1]
# tiny models on small inputs keep the CPU tests fast: shrunk R50 configs (ResNet-18,
# 64 channels), 192-pixel short side, at most 40 detections
MIN_SIZE, MAX_SIZE, DETECTIONS = 192, 260, 40


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kernel_lib.demo_models import make_demo_models

    out = tmp_path_factory.mktemp("models")
    make_demo_models(out, n_folds=2, arch="R50", seed=0, min_size_test=MIN_SIZE, max_size_test=MAX_SIZE, tiny=True)
    return out


def _config(method: str = "roi", tta: tuple[str, ...] = ("identity", "hflip")) -> Config:
    return Config(
        ensemble=EnsembleConfig(method=method, tta=tta, detections_per_image=DETECTIONS),
        inference=InferenceConfig(device="cpu", batch_size=2, num_workers=0),
    )


def _sample_ids(data_dir: Path) -> list[str]:
    return pd.read_csv(data_dir / "sample_submission.csv", dtype=str)["id"].tolist()


def test_demo_models_layout(demo_dir: Path) -> None:
    folders = sorted(p for p in demo_dir.iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["fold0", "fold1"]
    for k, folder in enumerate(folders):
        assert {p.name for p in folder.iterdir()} == {"config.yaml", "model_final.pth", "meta.json"}
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["fold"] == k
        assert meta["weights"] == "random"
        assert "NOT TRAINED" in meta["note"]
        assert f"MIN_SIZE_TEST: {MIN_SIZE}" in (folder / "config.yaml").read_text()
    manifest = json.loads((demo_dir / "models.json").read_text())
    assert [m["name"] for m in manifest["models"]] == ["fold0", "fold1"]


@pytest.mark.parametrize("method", ["roi", "wmf", "mask_nms"])
def test_run_inference_writes_valid_submission(demo_dir: Path, data_dir: Path, tmp_path: Path, method: str) -> None:
    from kernel_lib.pipeline import run_inference

    out = tmp_path / "submission.csv"
    result = run_inference(
        data_dir / "test",
        demo_dir,
        out,
        _config(method),
        sample_csv=data_dir / "sample_submission.csv",
        progress=False,
    )
    assert result.submission == out
    assert validate_submission(out, data_dir / "sample_submission.csv") == []
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    ids = _sample_ids(data_dir)
    assert set(df["id"]) == set(ids)
    assert result.n_images == len(ids) == 3
    assert sorted(result.predictions) == sorted(ids)
    written = sum(len(m) for m in result.predictions.values())
    assert result.n_instances == written == (df["predicted"] != "").sum()
    for key in ("load_models", "inference", "postprocess", "write", "total"):
        assert result.timings[key] >= 0
    # no time budget: every image ran the configured ensemble, and nothing says otherwise
    assert [(r.id, r.step, r.models) for r in result.runs] == [(i, 0, ("fold0", "fold1")) for i in ids]
    assert "time_budget" not in result.timings


def test_predict_instances_and_finalize_contract(demo_dir: Path, data_dir: Path) -> None:
    from kernel_lib.pipeline import finalize, load_models, predict_instances

    config = _config("roi", tta=("identity", "vflip"))
    models = load_models(demo_dir, config)
    assert [m.name for m in models] == ["fold0", "fold1"]
    assert [m.fold for m in models] == [0, 1]
    paths = sorted((data_dir / "test").glob("*.png"))[:2]
    outputs = list(predict_instances(paths, models, config, progress=False))
    assert [o[0] for o in outputs] == [p.stem for p in paths]
    for _, grey, inst in outputs:
        assert grey.shape == (520, 704) and grey.dtype == np.uint8
        assert isinstance(inst, SoftInstances)
        assert inst.shape == (520, 704)
        assert 0 < len(inst) <= DETECTIONS
        assert inst.masks.shape == (len(inst), 28, 28) and inst.masks.dtype == np.float32
        assert ((inst.masks >= 0) & (inst.masks <= 1)).all()
        assert (inst.boxes[:, 2] >= inst.boxes[:, 0]).all() and (inst.boxes[:, 3] >= inst.boxes[:, 1]).all()
        assert (inst.boxes >= 0).all() and (inst.boxes[:, 2] <= 704).all() and (inst.boxes[:, 3] <= 520).all()
        assert (np.diff(inst.scores) <= 0).all()  # merged by NMS: descending score
        # keep every instance: zero score thresholds, zero minimum areas
        pp = PostprocessConfig(score_threshold=(0.0, 0.0, 0.0), min_area=(0, 0, 0))
        done = finalize(inst, grey.shape, pp)
        stack = done.masks.to_stack()
        assert stack.sum(axis=0).max() <= 1  # disjoint
        assert (done.masks.areas() > 0).all()
    with pytest.raises(ValueError, match="frame"):
        finalize(outputs[0][2], (100, 100), PostprocessConfig())


def test_mask_min_score_skips_masks_but_keeps_votes(demo_dir: Path, data_dir: Path) -> None:
    from kernel_lib.pipeline import load_models, predict_instances

    config = _config("roi", tta=("identity",))
    models = load_models(demo_dir, config)
    path = [sorted((data_dir / "test").glob("*.png"))[0]]
    ((_, _, full),) = predict_instances(path, models, config, progress=False)
    cut = float(np.median(full.scores))
    ((_, _, part),) = predict_instances(path, models, config, mask_min_score=cut, progress=False)
    np.testing.assert_array_equal(part.boxes, full.boxes)
    np.testing.assert_array_equal(part.classes, full.classes)
    low = full.scores < cut
    assert (part.masks[low] == 0).all()
    np.testing.assert_allclose(part.masks[~low], full.masks[~low], atol=1e-5)


def test_predict_command_writes_valid_submission(demo_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "submission.csv"
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ensemble": {"detections_per_image": DETECTIONS}, "inference": {"num_workers": 1}}))
    cmd = [
        sys.executable, "-m", "kernel_lib", "predict",
        "--test-dir", str(data_dir / "test"),
        "--models", str(demo_dir),
        "--out", str(out),
        "--config", str(config),
        "--device", "cpu",
        "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    assert validate_submission(out, data_dir / "sample_submission.csv") == []
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert set(df["id"]) == set(_sample_ids(data_dir))


def test_predict_command_names_a_broken_model(demo_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models"
    (broken / "fold0").mkdir(parents=True)
    (broken / "fold0" / "config.yaml").write_text((demo_dir / "fold0" / "config.yaml").read_text())
    cmd = [
        sys.executable, "-m", "kernel_lib", "predict",
        "--test-dir", str(data_dir / "test"), "--models", str(broken), "--out", str(tmp_path / "s.csv"),
        "--device", "cpu",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "error: model fold0" in proc.stderr and "model_final.pth is missing" in proc.stderr


@pytest.mark.parametrize("method", ["roi", "wmf"])
def test_no_detection_writes_an_empty_row_per_image(
    demo_dir: Path, data_dir: Path, tmp_path: Path, method: str
) -> None:
    from kernel_lib.pipeline import run_inference

    # candidate score 1.0: detectron2 keeps scores > 1.0, i.e. nothing
    config = _config(method, tta=("identity",))
    config = config.replace(ensemble=EnsembleConfig(method=method, tta=("identity",), candidate_score=1.0))
    out = tmp_path / "submission.csv"
    result = run_inference(data_dir / "test", demo_dir, out, config, progress=False)
    assert result.n_instances == 0
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert sorted(df["id"]) == sorted(_sample_ids(data_dir)) and (df["predicted"] == "").all()
    assert validate_submission(out, data_dir / "sample_submission.csv") == []


def test_tiny_time_budget_degrades_the_remaining_images_and_stays_valid(
    demo_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import kernel_lib.pipeline as pipeline

    # fold1 weighs less than fold0: the guard drops it last, after the extra scale and the flip
    models = tmp_path / "models"
    models.mkdir()
    for name in ("fold0", "fold1"):
        (models / name).symlink_to(demo_dir / name, target_is_directory=True)
    (models / "models.json").write_text(
        json.dumps({"models": [{"name": "fold0", "weight": 1.0}, {"name": "fold1", "weight": 0.5}]})
    )
    calls: list[tuple[int, tuple[str, ...], tuple[str, ...], tuple[float, ...]]] = []
    real = pipeline._model_outputs

    def spy(paths, chosen, config, mask_min_score, progress):  # type: ignore[no-untyped-def]
        calls.append((len(paths), tuple(m.name for m in chosen), config.ensemble.tta, config.ensemble.scales))
        return real(paths, chosen, config, mask_min_score, progress)

    monkeypatch.setattr(pipeline, "_model_outputs", spy)
    config = _config("roi").replace(
        ensemble=EnsembleConfig(
            method="roi", tta=("identity", "hflip"), scales=(1.0, 1.25), detections_per_image=DETECTIONS
        ),
        inference=InferenceConfig(device="cpu", batch_size=2, num_workers=0, time_budget_s=0.001),
    )
    out = tmp_path / "submission.csv"
    sample = data_dir / "sample_submission.csv"
    with caplog.at_level(logging.WARNING, logger="kernel_lib.budget"):
        result = pipeline.run_inference(data_dir / "test", models, out, config, sample_csv=sample, progress=False)

    ids = _sample_ids(data_dir)
    # the first image runs alone (the probe, though batches hold 2) with the whole ensemble;
    # after it, the lightest: one model, one view, one scale
    assert calls == [
        (1, ("fold0", "fold1"), ("identity", "hflip"), (1.0, 1.25)),
        (2, ("fold0",), ("identity",), (1.0,)),
    ]
    assert [r.id for r in result.runs] == ids
    assert [r.step for r in result.runs] == [0, 3, 3]
    assert result.runs[1].models == ("fold0",) and result.runs[1].tta == ("identity",)
    assert result.n_degraded == 2
    table = result.per_image_table()
    assert table["id"].tolist() == ids and table["label"].tolist()[1:] == ["drop model fold1"] * 2
    messages = " | ".join(r.getMessage() for r in caplog.records)
    for label in ("step 1: drop scale 1.25", "step 2: drop view hflip", "step 3: drop model fold1"):
        assert label in messages
    assert result.timings["time_budget"] == 0.001
    assert {"inference step 0 (full ensemble)", "inference step 3 (drop model fold1)"} <= set(result.timings)
    # every image still has predictions and the file is valid
    assert sorted(result.predictions) == sorted(ids)
    assert validate_submission(out, sample) == []
    assert set(pd.read_csv(out, dtype=str, keep_default_na=False)["id"]) == set(ids)


def test_two_devices_and_an_out_of_memory_split_write_the_same_submission(
    demo_dir: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA-only branches on the CPU, through the notebook's one call: two devices
    faked as [cpu, cpu] (a replica per model, batches dealt in turn), and an injected
    out-of-memory error on every batch of 2 (split, run again): the same submission."""
    import torch

    import kernel_lib.model as model_module
    from kernel_lib.pipeline import run_inference

    config = _config("roi")
    sample = data_dir / "sample_submission.csv"
    plain = run_inference(data_dir / "test", demo_dir, tmp_path / "plain.csv", config, sample, progress=False)
    assert plain.n_instances > 0

    monkeypatch.setattr(model_module, "_devices", lambda models, inference: [torch.device("cpu")] * 2)
    sizes: list[int] = []
    original = model_module.EnsemblePredictor._predict_batch

    def flaky(self: model_module.EnsemblePredictor, items: list) -> list:
        sizes.append(len(items))
        if len(items) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (injected)")
        return original(self, items)

    monkeypatch.setattr(model_module.EnsemblePredictor, "_predict_batch", flaky)
    split = run_inference(data_dir / "test", demo_dir, tmp_path / "split.csv", config, sample, progress=False)
    assert sorted(sizes) == [1, 1, 1, 2]  # 3 images at batch 2: the first batch split, the second one image
    assert (tmp_path / "split.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    assert split.n_instances == plain.n_instances


def test_type_scale_runs_an_image_again_at_its_types_scales(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The orchestration alone, on a stand-in for the models: image a's instances vote
    shsy5y (class 0), b's cort (class 2); only a runs again, at 1.5 x each scale."""
    import kernel_lib.model
    from kernel_lib.pipeline import predict_instances
    from kernel_lib.soft import ViewOutputs

    votes = {"a": 0, "b": 2}
    calls: list[tuple[list[str], tuple[float, ...], int]] = []

    def fake_predict(paths, models, ensemble, inference, mask_min_score=0.0, progress=True):  # type: ignore[no-untyped-def]
        calls.append(([Path(p).stem for p in paths], ensemble.scales, inference.num_workers))
        for p in paths:
            image_id = Path(p).stem
            cls = votes[image_id] if ensemble.scales[0] == 1.0 else 1  # the second pass says astro
            inst = SoftInstances([[1, 1, 5, 5]], [0.9], [cls], np.ones((1, 28, 28), np.float32), (8, 8))
            yield image_id, np.zeros((8, 8), np.uint8), ViewOutputs(inst, [], [], [])

    monkeypatch.setattr(kernel_lib.model, "predict", fake_predict)
    config = Config(
        ensemble=EnsembleConfig(scales=(1.0, 1.25), type_scale=(1.5, 1.0, 1.0)),
        inference=InferenceConfig(device="cpu", num_workers=2),
    )
    out = {i: inst for i, _, inst in predict_instances(["x/a.png", "x/b.png"], [], config, progress=False)}
    # one pass over both at (1, 1.25), then a alone at (1.5, 1.875) in this process
    assert calls == [(["a", "b"], (1.0, 1.25), 2), (["a"], (1.5, 1.875), 0)]
    assert out["a"].classes.tolist() == [1] and out["b"].classes.tolist() == [2]  # a's second pass replaced its first
    # factors of 1 run one pass
    calls.clear()
    plain = config.replace(ensemble=EnsembleConfig(scales=(1.0, 1.25)))
    assert len(list(predict_instances(["x/a.png", "x/b.png"], [], plain, progress=False))) == 2
    assert calls == [(["a", "b"], (1.0, 1.25), 2)]
    with pytest.raises(ValueError, match=r"type_scale\[shsy5y\]: 3.0 x scales \[1.0, 1.25\] gives \[3.0, 3.75\]"):
        EnsembleConfig(scales=(1.0, 1.25), type_scale=(3.0, 1.0, 1.0))
