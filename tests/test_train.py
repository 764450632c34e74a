"""kernel_lib.training and ``python -m kernel_lib train``: augmentation, mapper, a tiny CPU run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from detectron2.data import transforms as T  # noqa: E402

from kernel_lib.__main__ import main  # noqa: E402
from kernel_lib.config import CELL_TYPES, Config, EnsembleConfig  # noqa: E402
from kernel_lib.folds import fold_split, make_folds, write_folds  # noqa: E402
from kernel_lib.training.augment import Rot90Transform, build_augmentations  # noqa: E402
from kernel_lib.training.datasets import load_dataset_dicts, record_masks  # noqa: E402
from kernel_lib.training.mappers import CropFirstMapper, SartoriusMapper, build_mapper  # noqa: E402
from kernel_lib.training.options import AugmentSettings, TrainOptions  # noqa: E402
from kernel_lib.training.recipe import build_config  # noqa: E402

TINY = {"min_sizes": (96,), "max_size": 160, "test_size": 96}
"""Input sizes of the CPU runs here: a 520x704 image becomes 96x130."""


# ------------------------------------------------------------------------- rotations


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_moves_boxes_with_the_pixels(k: int) -> None:
    h, w = 3, 5
    mask = np.zeros((h, w), np.uint8)
    mask[0, 3:5] = 1  # box x 3..5, y 0..1 (last pixel + 1)
    t = Rot90Transform(h, w, k)
    rotated = t.apply_segmentation(mask)
    assert rotated.shape == ((w, h) if k % 2 else (h, w))
    assert np.array_equal(rotated, np.rot90(mask, k))
    ys, xs = np.nonzero(rotated)
    box = t.apply_box(np.array([[3.0, 0.0, 5.0, 1.0]]))[0]
    assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    # one quarter turn by hand: (x, y) -> (y, w - x); corners (3,0),(5,1) -> (0,2),(1,0)
    if k == 1:
        assert box.tolist() == [0.0, 0.0, 1.0, 2.0]
    back = t.inverse()
    assert np.array_equal(back.apply_segmentation(rotated), mask)
    assert back.apply_box(box[None])[0].tolist() == [3.0, 0.0, 5.0, 1.0]


def test_rot90_rotates_colour_images_as_a_whole() -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    out = Rot90Transform(2, 3, 1).apply_image(image)
    assert out.shape == (3, 2, 3)
    assert np.array_equal(out[..., 1], np.rot90(image[..., 1]))


# ---------------------------------------------------------------------------- mapper


def _options(tmp_path: Path, folds_csv: Path | str = "folds.csv", **kw: object) -> TrainOptions:
    data = str(tmp_path / "data")  # options name folders; nothing reads them here
    return TrainOptions(data_dir=data, folds_csv=str(folds_csv), fold=0, out_dir=str(tmp_path / "models"), **kw)


def test_mapper_without_augmentation_gives_the_annotated_masks(data_dir: Path, tmp_path: Path) -> None:
    data = load_dataset_dicts(data_dir, ["ea362f1a9844"])
    (record,) = data.dicts
    cfg = build_config(_options(tmp_path, min_sizes=(520,), max_size=704), "cpu")
    none = AugmentSettings(hflip=False, vflip=False, rot90=False, brightness=(1, 1), contrast=(1, 1))
    augs = build_augmentations(cfg, none)
    assert len(augs) == 1  # the resize only, to 520: the identity here
    out = SartoriusMapper(augs)(record)
    assert tuple(out["image"].shape) == (3, 520, 704) and out["image"].dtype == torch.uint8
    from kernel_lib.images import read_image

    assert np.array_equal(out["image"][0].numpy(), read_image(record["file_name"]))
    inst = out["instances"]
    masks = record_masks(record).to_stack()
    assert np.array_equal(inst.gt_masks.tensor.numpy(), masks)
    assert inst.gt_classes.tolist() == [CELL_TYPES.index("cort")] * len(masks)
    assert np.array_equal(inst.gt_boxes.tensor.numpy(), np.array([a["bbox"] for a in record["annotations"]]))
    assert "annotations" in record  # the dataset's own dict is not consumed


def test_mappers_normalise_the_whole_image_as_inference_does(data_dir: Path, tmp_path: Path) -> None:
    from kernel_lib.images import normalize_image, read_image

    (record,) = load_dataset_dicts(data_dir, ["ea362f1a9844"]).dicts
    expected = normalize_image(read_image(record["file_name"]), "per_image")
    cfg = build_config(_options(tmp_path, min_sizes=(520,), max_size=704), "cpu")
    none = AugmentSettings(hflip=False, vflip=False, rot90=False, brightness=(1, 1), contrast=(1, 1))
    out = SartoriusMapper(build_augmentations(cfg, none), normalization="per_image")(record)
    assert np.array_equal(out["image"][0].numpy(), expected)
    crop_first = CropFirstMapper((520,), 704, dataclasses.replace(none, crop=256), normalization="per_image")
    grey, _, _ = crop_first._load(record)  # the statistics are the whole image's, not a crop's
    assert np.array_equal(grey, expected)
    with pytest.raises(ValueError, match="normalization: expected one of none, per_image, got 'zscore'"):
        _options(tmp_path, normalization="zscore")


def test_crop_first_mapper_uses_detectron2s_brightness_and_contrast(data_dir: Path) -> None:

    (record,) = load_dataset_dicts(data_dir, ["ea362f1a9844"]).dicts
    plain = AugmentSettings(crop=128, hflip=False, vflip=False, rot90=False, brightness=(1, 1), contrast=(1, 1))
    images = {}
    for name, settings in {
        "plain": plain,
        "half": dataclasses.replace(plain, brightness=(0.5, 0.5)),
        "flat": dataclasses.replace(plain, contrast=(0.0, 0.0)),
    }.items():
        np.random.seed(3)  # the same window: the photometric draws come after it
        images[name] = CropFirstMapper((520,), 704, settings)(record)["image"][0].numpy()
    base = images["plain"].astype(np.float32)
    # RandomBrightness(0.5, 0.5): 0.5 x each pixel; RandomContrast(0, 0): every pixel the mean
    np.testing.assert_array_equal(images["half"], (0.5 * base).astype(np.uint8))
    np.testing.assert_array_equal(images["flat"], np.full(base.shape, base.mean(), np.float32).astype(np.uint8))


def test_crop_first_mapper_pastes_cells_of_the_same_type(data_dir: Path, tmp_path: Path) -> None:
    records = load_dataset_dicts(data_dir).dicts
    astro = [r for r in records if r["cell_type"] == "astro"][:2]
    settings = AugmentSettings(crop=128, hflip=False, vflip=False, rot90=False, brightness=(1, 1), contrast=(1, 1))
    plain = CropFirstMapper((520,), 704, settings)
    pasting = CropFirstMapper((520,), 704, dataclasses.replace(settings, copy_paste=1.0, copy_paste_max=6))
    for mapper in (plain, pasting):
        mapper._load(astro[1])  # a donor read before
    counts = {"plain": 0, "pasting": 0}
    for seed in range(6):
        for name, mapper in (("plain", plain), ("pasting", pasting)):
            np.random.seed(seed)  # the same window for both
            out = mapper(astro[0])
            inst = out["instances"]
            masks = inst.gt_masks.tensor.numpy()
            assert masks.shape[1:] == (128, 128) and masks.any(axis=(1, 2)).all()
            assert inst.gt_classes.tolist() == [CELL_TYPES.index("astro")] * len(inst)
            # every box is its mask's tight box
            for mask, box in zip(masks, inst.gt_boxes.tensor.numpy()):
                ys, xs = np.nonzero(mask)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            counts[name] += len(inst)
    assert counts["pasting"] > counts["plain"]  # 1 to 6 cells more per crop, less those covered
    assert {k: len(v) for k, v in pasting._donors.items()} == {"astro": 2}
    # pasting needs the crop-first mapper
    cfg = build_config(_options(tmp_path, min_sizes=(400, 520)), "cpu")
    cfg.defrost()
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    with pytest.raises(ValueError, match="copy_paste: pasting runs in the crop-first mapper"):
        build_mapper(cfg, dataclasses.replace(settings, copy_paste=0.5))
    with pytest.raises(ValueError, match="copy_paste: pasting works on training crops"):
        AugmentSettings(copy_paste=0.5)


def test_crop_first_mapper_resizes_each_cell_type_by_its_factor(data_dir: Path) -> None:
    records = {r["cell_type"]: r for r in load_dataset_dicts(data_dir).dicts}
    settings = AugmentSettings(crop=512, hflip=False, vflip=False, rot90=False, brightness=(1, 1), contrast=(1, 1))
    plain = CropFirstMapper((260,), 352, settings)
    scaled = CropFirstMapper((260,), 352, dataclasses.replace(settings, type_scale=(2.0, 0.5, 1.0)))
    for cell_type, factor in (("shsy5y", 2.0), ("astro", 0.5), ("cort", 1.0)):
        record = records[cell_type]
        np.random.seed(0)
        base = plain(record)["instances"].gt_masks.tensor.numpy().sum(axis=(1, 2)).astype(float)
        np.random.seed(0)
        out = scaled(record)
        # 520 x 704 -> short edge 260 x factor: shsy5y 520 (a 512 crop of it), astro 130, cort 260
        side = min(512, round(260 * factor))
        assert out["image"].shape[1:] == (side, side)
        if factor == 1.0:
            assert np.array_equal(out["instances"].gt_masks.tensor.numpy().sum(axis=(1, 2)), base)
        else:  # a cell's area goes with factor squared (median over the cells seen)
            areas = out["instances"].gt_masks.tensor.numpy().sum(axis=(1, 2))
            assert np.median(areas) / np.median(base) == pytest.approx(factor**2, rel=0.35)
    with pytest.raises(ValueError, match=r"type_scale: expected 3 factors in \[0.25, 4\]"):
        AugmentSettings(crop=256, type_scale=(5.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="type_scale: per-type resizing works on training crops"):
        AugmentSettings(type_scale=(1.5, 1.0, 1.0))


def test_mapper_with_augmentation_keeps_boxes_on_their_masks(data_dir: Path, tmp_path: Path) -> None:
    data = load_dataset_dicts(data_dir, ["e9edcd9483e4"])
    cfg = build_config(_options(tmp_path, min_sizes=(400, 520)), "cpu")
    augs = build_augmentations(cfg, AugmentSettings(crop=256))
    names = [type(a).__name__ for a in augs]
    assert names == [
        "ResizeShortestEdge",
        "RandomCrop",
        "RandomFlip",
        "RandomFlip",
        "RandomRot90",
        "RandomBrightness",
        "RandomContrast",
    ]
    mapper = SartoriusMapper(augs)
    np.random.seed(0)
    for _ in range(4):
        out = mapper(data.dicts[0])
        assert tuple(out["image"].shape[1:]) == (256, 256)
        inst = out["instances"]
        assert len(inst) > 0
        boxes = inst.gt_masks.get_bounding_boxes().tensor
        assert torch.equal(boxes, inst.gt_boxes.tensor)


def test_transforms_are_detectron2_ones() -> None:
    cfg = build_config(TrainOptions(data_dir="D", folds_csv="F.csv", fold=0, out_dir="out"), "cpu")
    augs = build_augmentations(cfg, AugmentSettings())
    assert isinstance(augs[0], T.ResizeShortestEdge)
    assert sum(isinstance(a, T.RandomFlip) for a in augs) == 2


# ---------------------------------------------------------------------------- config


def test_config_from_scratch_and_from_local_weights(tmp_path: Path) -> None:
    cfg = build_config(_options(tmp_path, iters=100, batch=4), "cpu")
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.NORM == "GN"
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 1000 and cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    base_lr = cfg.SOLVER.BASE_LR
    assert base_lr == pytest.approx(0.02 * 4 / 16)
    assert cfg.SOLVER.STEPS == (70, 90) and cfg.SOLVER.MAX_ITER == 100
    assert not cfg.SOLVER.AMP.ENABLED  # the CPU: no mixed precision
    one = build_config(_options(tmp_path, iters=1), "cpu").SOLVER
    assert one.STEPS == () and one.WARMUP_ITERS == 0  # 70% and 90% of one iteration: no step
    weights = tmp_path / "init.pth"
    weights.write_bytes(b"")
    cfg = build_config(_options(tmp_path, init_weights=str(weights)), "cuda")
    start = cfg.MODEL.WEIGHTS
    assert start == str(weights.resolve()) and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert cfg.SOLVER.AMP.ENABLED
    with pytest.raises(ValueError, match="local"):
        build_config(_options(tmp_path, init_weights="https://example.com/model.pkl"), "cpu")
    with pytest.raises(ValueError, match="model-zoo"):
        build_config(_options(tmp_path, base_config="no/such.yaml"), "cpu")
    cfg = build_config(_options(tmp_path, overrides=("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64")), "cpu")
    assert cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE == 64
    with pytest.raises(ValueError, match=r"--set MODEL\.NO_SUCH_KEY"):
        build_config(_options(tmp_path, overrides=("MODEL.NO_SUCH_KEY", "1")), "cpu")
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        _options(tmp_path, overrides=("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",))
    cfg = build_config(_options(tmp_path, base_config="Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"), "cpu")
    assert cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads" and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3


def test_bad_options_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of num_gpus"):
        _options(tmp_path, batch=3, num_gpus=2)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            _options(tmp_path, device="cuda").resolved_device()
    with pytest.raises(ValueError, match="need --device cuda"):
        _options(tmp_path, device="cpu", num_gpus=2, batch=2).resolved_device()
    folds = tmp_path / "folds.csv"
    pd.DataFrame({"id": ["a", "b"], "cell_type": ["cort", "cort"], "fold": [0, 1]}).to_csv(folds, index=False)
    assert fold_split(folds, 1).train_ids == ("a",)
    with pytest.raises(ValueError, match="fold 2 is not in"):
        fold_split(folds, 2)


# ------------------------------------------------------------------------ the command


def _parse(*argv: str) -> argparse.Namespace:
    from kernel_lib.commands import train as command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(["--data", "D", "--folds", "F.csv", "--fold", "2", "--out", "M", *argv])


def test_the_command_takes_its_defaults_from_the_dataclasses() -> None:
    """Nothing given: exactly TrainOptions' own defaults; every field has an option."""
    from kernel_lib.commands.train import OPTIONS, options_from

    assert options_from(_parse(), 2) == TrainOptions(data_dir="D", folds_csv="F.csv", fold=2, out_dir="M")
    fields = {f for opt in OPTIONS for f in opt.fields}
    wanted = {f.name for f in dataclasses.fields(TrainOptions)} - {"augment"}
    wanted |= {f"augment.{f.name}" for f in dataclasses.fields(AugmentSettings)}
    assert fields == wanted


def test_the_command_maps_values_and_switches_onto_the_fields() -> None:
    from kernel_lib.commands.train import options_from

    args = _parse(
        "--iters", "7", "--no-flip", "--no-bf16", "--keep-checkpoints", "--brightness", "0.5,1.5",
        "--min-sizes", "480,520", "--normalization", "per_image", "--set", "A.B", "1", "C", "2",
    )  # fmt: skip
    opts = options_from(args, 2)
    assert (opts.iters, opts.bf16, opts.keep_checkpoints, opts.amp) == (7, False, True, True)
    assert opts.augment == AugmentSettings(hflip=False, vflip=False, brightness=(0.5, 1.5))
    assert opts.min_sizes == (480, 520) and opts.normalization == "per_image"
    assert opts.overrides == ("A.B", "1", "C", "2")
    with pytest.raises(SystemExit):
        _parse("--normalization", "zscore")


# ------------------------------------------------------------------------ a tiny run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """Two iterations on two images of the shipped sample (per-image normalisation), held-out = one image."""
    root = tmp_path_factory.mktemp("train")
    folds = make_folds(data_dir / "train.csv", n_folds=2, seed=0)
    keep = ["ea362f1a9844", "b50a98297c83", "caa06f9a4057"]  # two cort to train on, one astro held out
    folds = folds[folds["id"].isin(keep)].copy()
    folds["fold"] = (folds["id"] == "caa06f9a4057").astype(int)
    write_folds(folds, root / "folds.csv")
    config = Config(ensemble=EnsembleConfig(tta=("identity",), detections_per_image=50))
    config.to_json(root / "eval.json")
    code = main(
        [
            "train", "--data", str(data_dir), "--folds", str(root / "folds.csv"), "--fold", "1",
            "--out", str(root / "models"), "--iters", "2", "--batch", "2", "--device", "cpu",
            "--min-sizes", "96", "--max-size", "160", "--test-size", "96", "--workers", "0",
            "--eval-config", str(root / "eval.json"), "--eval-period", "1", "--normalization", "per_image",
            "--crop", "80", "--copy-paste", "1", "--mend-masks",
            "--set", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
        ]
    )  # fmt: skip
    assert code == 0
    return root


def test_tiny_run_leaves_the_layout_predict_reads(tiny_run: Path, data_dir: Path) -> None:
    fold = tiny_run / "models" / "fold1"
    assert {p.name for p in fold.iterdir()} >= {"config.yaml", "model_final.pth", "meta.json", "metrics.json"}
    assert not list(fold.glob("model_0*.pth")) and not (fold / "last_checkpoint").exists()
    meta = json.loads((fold / "meta.json").read_text())
    assert meta["fold"] == 1 and meta["iters"] == 2 and meta["from_scratch"] is True
    assert meta["train_images"] == 2 and meta["heldout_ids"] == ["caa06f9a4057"]
    assert 0.0 <= meta["heldout_score"] <= 1.0 and set(meta["heldout_per_cell_type"]) == {"astro"}
    assert meta["heldout_eval"]["tta"] == ["identity"]
    assert meta["input_normalization"] == "per_image"  # what inference reads back
    assert meta["mapper"] == "CropFirstMapper" and meta["augment"]["copy_paste"] == 1.0
    # --mend-masks: the list is written; the two cort images trained on have no holed mask (the
    # held-out astro image has 9, but scoring truth is never mended: test_data's mending tests)
    mended = pd.read_csv(fold / "mended_masks.csv")
    assert list(mended.columns) == ["id", "row", "what"] and meta["mended_masks"] == len(mended) == 0
    log = [json.loads(line) for line in (fold / "metrics.json").read_text().splitlines()]
    last = max((line for line in log if "total_loss" in line), key=lambda line: line["iteration"])
    assert last["iteration"] == 1 and np.isfinite(last["total_loss"])
    # --eval-period 1: the held-out images were also scored after iteration 0 (in memory)
    periodic = [line["heldout_score"] for line in log if "heldout_score" in line]
    assert len(periodic) == 1 and 0.0 <= periodic[0] <= 1.0
    scores = pd.read_csv(fold / "heldout_scores.csv")
    assert scores["id"].tolist() == ["caa06f9a4057"]
    assert scores["score"].iloc[0] == pytest.approx(meta["heldout_score"])
    state = torch.load(fold / "model_final.pth", map_location="cpu", weights_only=True)
    assert set(state) == {"model"}


def test_tiny_run_loads_in_the_pipeline_and_predicts(tiny_run: Path, data_dir: Path, tmp_path: Path) -> None:
    pipeline = pytest.importorskip("kernel_lib.pipeline")
    from kernel_lib.submission import validate_submission

    config = Config(ensemble=EnsembleConfig(tta=("identity",), detections_per_image=50))
    models = pipeline.load_models(tiny_run / "models", config)
    assert len(models) == 1 and models[0].normalization == "per_image"
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    shutil.copy(data_dir / "test" / "7ae19de7bc2a.png", test_dir)
    result = pipeline.run_inference(test_dir, tiny_run / "models", tmp_path / "submission.csv", config)
    assert result.n_images == 1
    assert validate_submission(result.submission) == []


def test_score_only_rescores_the_fold_in_place(tiny_run: Path, data_dir: Path) -> None:
    fold = tiny_run / "models" / "fold1"
    before = json.loads((fold / "meta.json").read_text())
    (fold / "heldout_scores.csv").unlink()
    args = ["train", "--data", str(data_dir), "--folds", str(tiny_run / "folds.csv"), "--fold", "1"]
    args += ["--out", str(tiny_run / "models"), "--device", "cpu", "--score-only"]
    config = tiny_run / "eval_hflip.json"  # another config than the run's: hflip TTA too
    Config(ensemble=EnsembleConfig(tta=("identity", "hflip"), detections_per_image=50)).to_json(config)
    code = main([*args, "--eval-config", str(config)])
    assert code == 0
    after = json.loads((fold / "meta.json").read_text())
    assert after["heldout_eval"]["config"] == str(config) and after["heldout_eval"]["tta"] == ["identity", "hflip"]
    assert {k: v for k, v in after.items() if not k.startswith("heldout")} == {
        k: v for k, v in before.items() if not k.startswith("heldout")
    }
    assert (fold / "heldout_scores.csv").is_file()


def test_existing_fold_folder_is_not_overwritten(
    tiny_run: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--data", str(data_dir), "--folds", str(tiny_run / "folds.csv"), "--fold", "1"]
    code = main([*args, "--out", str(tiny_run / "models"), "--device", "cpu"])
    assert code == 2
    assert "already holds a trained model" in capsys.readouterr().err


def _continue_args(tiny_run: Path, data_dir: Path, fold: int, out: str, *extra: str) -> list[str]:
    return [
        "train", "--data", str(data_dir), "--folds", str(tiny_run / "folds.csv"), "--fold", str(fold),
        "--out", str(tiny_run / out), "--iters", "1", "--batch", "2", "--device", "cpu",
        "--min-sizes", "96", "--max-size", "160", "--test-size", "96", "--workers", "0", "--no-heldout",
        "--init-weights", str(tiny_run / "models" / "fold1"), *extra,
        "--set", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
    ]  # fmt: skip


def test_a_fold_folder_as_initial_weights_continues_that_fold(tiny_run: Path, data_dir: Path) -> None:
    """--init-weights FOLD_DIR: the fold's weights and GroupNorm layers, meta.json counting the chain."""
    source = tiny_run / "models" / "fold1"
    code = main(_continue_args(tiny_run, data_dir, 1, "continued", "--normalization", "per_image"))
    assert code == 0
    fold = tiny_run / "continued" / "fold1"
    meta = json.loads((fold / "meta.json").read_text())
    assert meta["from_scratch"] is True  # the chain started from scratch
    before = json.loads((source / "meta.json").read_text())
    assert meta["continues"] == {"folder": str(source), "iters": 2, "heldout_score": before["heldout_score"]}
    assert (meta["iters"], meta["total_iters"]) == (1, 2 + 1)
    cfg = (fold / "config.yaml").read_text()
    assert cfg.count("NORM: GN") >= 2 and "NORM: FrozenBN" not in cfg  # the source's layers, not COCO's
    # it started from the source's weights: one SGD step moves them by a few percent at most
    # (another random start would be about sqrt(2) = 141% away)
    start = torch.load(source / "model_final.pth", weights_only=True)["model"]
    end = torch.load(fold / "model_final.pth", weights_only=True)["model"]
    assert set(start) == set(end)
    for key in ("backbone.bottom_up.stem.conv1.weight", "backbone.fpn_output2.weight"):
        a, b = start[key].float(), end[key].float()
        assert torch.linalg.vector_norm(b - a) < 0.05 * torch.linalg.vector_norm(a), key
    # a weights file with meta.json beside it is the same source as its folder
    opts = _options(tmp_path=tiny_run, init_weights=str(source / "model_final.pth"), normalization="per_image")
    weights = build_config(opts, "cpu").MODEL.WEIGHTS
    assert weights == str((source / "model_final.pth").resolve())


def test_continuing_a_fold_refuses_what_would_change_its_meaning(
    tiny_run: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the source fold was trained with per-image normalisation
    assert main(_continue_args(tiny_run, data_dir, 1, "refused")) == 2
    assert "pass --normalization per_image" in capsys.readouterr().err
    # fold 0 holds out other images than the source fold 1: it would train on them
    assert main(_continue_args(tiny_run, data_dir, 0, "refused", "--normalization", "per_image")) == 2
    assert "held out other images" in capsys.readouterr().err
    assert main(_continue_args(tiny_run, data_dir, 1, "refused", "--normalization", "per_image", "--arch", "R101")) == 2
    assert "pass --arch R50" in capsys.readouterr().err
    assert not (tiny_run / "refused").exists()
    empty = tiny_run / "not-a-fold"
    empty.mkdir()
    with pytest.raises(ValueError, match="must be a fold folder"):
        build_config(_options(tiny_run, init_weights=str(empty)), "cpu")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--seed", "-1"], "seed: expected a whole number in [0, 2**32)"),
        (["--lr", "nan"], "lr: expected a finite number >= 0"),
        (["--lr", "inf"], "lr: expected a finite number >= 0"),
        (["--name", "../x"], "name: expected a plain folder name inside --out"),
        (["--name", ".hidden"], "name: expected a plain folder name inside --out"),
        (["--init-weights", "GARBAGE.pth"], "GARBAGE.pth could not be read as a torch checkpoint"),
        (["--init-weights", "GARBAGE.pkl"], "GARBAGE.pkl: not a pickle of weights arrays"),
        (["--out-file"], "is a file; pass the models folder"),
    ],
)
def test_train_refuses_bad_options_in_one_line_before_writing(
    extra: list[str], message: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_folds(make_folds(data_dir / "train.csv", n_folds=2, seed=0), tmp_path / "folds.csv")
    (tmp_path / "GARBAGE.pth").write_bytes(b"\x00garbage")
    (tmp_path / "GARBAGE.pkl").write_bytes(b"\x80\x04garbage")
    out = tmp_path / "models"
    if extra == ["--out-file"]:
        out.write_text("a file")
        extra = []
    extra = [str(tmp_path / e) if e.startswith("GARBAGE") else e for e in extra]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    args = ["train", "--data", str(data_dir), "--folds", str(tmp_path / "folds.csv"), "--fold", "0"]
    assert main([*args, "--out", str(out), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("error:") == 1
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "x").exists() and (not out.exists() or out.is_file())


# ------------------------------------------------------------ COCO data, pretrain -> fine-tune

TINY_ARGS = [
    "--batch", "2", "--device", "cpu", "--min-sizes", "96", "--max-size", "160", "--test-size", "96",
    "--workers", "0", "--set", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> tuple[Path, Path, Path]:
    """A class-agnostic COCO-only run (2 iterations) on a LIVECell-shaped copy of two images:
    (its folder, the COCO file, its images)."""
    from kernel_lib.testing import write_livecell_standin

    root = tmp_path_factory.mktemp("pretrain")
    coco, images = write_livecell_standin(data_dir, root / "livecell", ["0f08d640930b", "e9edcd9483e4"])
    args = ["train", "--coco", str(coco), "--coco-images", str(images), "--coco-classes", "cell"]
    assert main([*args, "--out", str(root / "models"), "--iters", "2", *TINY_ARGS]) == 0
    return root / "models" / "pretrain", coco, images


def test_a_coco_only_run_is_a_class_agnostic_pretraining_folder(pretrained: tuple[Path, Path, Path]) -> None:
    folder, coco, _ = pretrained
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["fold"] is None and meta["classes"] == ["cell"] and meta["heldout_ids"] == []
    assert meta["coco"][0]["annotations"] == str(coco) and meta["coco"][0]["images"] == 2
    assert meta["train_images"] == 2 and meta["coco"][0]["instances"] == meta["train_instances"] > 100
    assert "heldout_score" not in meta and meta["total_iters"] == 2
    assert "NUM_CLASSES: 1" in (folder / "config.yaml").read_text()


def test_fine_tuning_a_pretraining_folder_starts_the_class_layers_afresh(
    pretrained: tuple[Path, Path, Path], data_dir: Path, tmp_path: Path
) -> None:
    """--init-weights PRETRAIN_DIR with train.csv data (and the COCO file, as shsy5y): three
    classes; the class-specific layers re-initialised, the rest from the pretraining."""
    folder, coco, images = pretrained
    folds = make_folds(data_dir / "train.csv", n_folds=2, seed=0)
    folds = folds[folds["id"].isin(["ea362f1a9844", "b50a98297c83", "caa06f9a4057"])].copy()
    folds["fold"] = (folds["id"] == "caa06f9a4057").astype(int)
    write_folds(folds, tmp_path / "folds.csv")
    args = ["train", "--data", str(data_dir), "--folds", str(tmp_path / "folds.csv"), "--fold", "1", "--no-heldout"]
    args += ["--coco", str(coco), "--coco-images", str(images), "--init-weights", str(folder)]
    assert main([*args, "--out", str(tmp_path / "models"), "--iters", "1", *TINY_ARGS]) == 0
    tuned = tmp_path / "models" / "fold1"
    meta = json.loads((tuned / "meta.json").read_text())
    assert meta["continues"] is None and meta["classes"] == list(CELL_TYPES)
    start = meta["initialised_from"]
    assert start["folder"] == str(folder) and start["classes"] == ["cell"] and start["iters"] == 2
    class_layers = {
        "roi_heads.box_predictor.cls_score.weight",  # 1 + 1 -> 3 + 1 outputs
        "roi_heads.box_predictor.bbox_pred.weight",  # 4 x 1 -> 4 x 3
        "roi_heads.mask_head.predictor.weight",  # 1 -> 3 masks
    }
    assert class_layers <= set(start["reinitialised"]) and len(start["reinitialised"]) == 6  # and their biases
    assert meta["total_iters"] == 3 and meta["from_scratch"] is True
    assert meta["train_images"] == 2 + 1  # two train.csv images, the stand-in's SH-SY5Y image (A172 left out)
    assert "NUM_CLASSES: 3" in (tuned / "config.yaml").read_text()
    before = torch.load(folder / "model_final.pth", weights_only=True)["model"]
    after = torch.load(tuned / "model_final.pth", weights_only=True)["model"]
    a, b = before["backbone.bottom_up.stem.conv1.weight"].float(), after["backbone.bottom_up.stem.conv1.weight"].float()
    assert torch.linalg.vector_norm(b - a) < 0.05 * torch.linalg.vector_norm(a)  # one step from the pretraining


def test_coco_runs_refuse_what_is_a_mistake(
    pretrained: tuple[Path, Path, Path], tiny_run: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, coco, images = pretrained
    out = ["--out", str(tiny_run / "refused-coco"), "--iters", "1", *TINY_ARGS]
    # class-agnostic data cannot join train.csv's three classes
    args = ["train", "--data", str(data_dir), "--folds", str(tiny_run / "folds.csv"), "--fold", "1"]
    assert main([*args, "--coco", str(coco), "--coco-images", str(images), "--coco-classes", "cell", *out]) == 2
    assert "a class-agnostic run is COCO-only" in capsys.readouterr().err
    # a fold (trained on train.csv) is continued on its own data, not by a COCO-only run
    args = ["train", "--coco", str(coco), "--coco-images", str(images), "--normalization", "per_image"]
    assert main([*args, "--init-weights", str(tiny_run / "models" / "fold1"), *out]) == 2
    assert "held out other images than this COCO-only run" in capsys.readouterr().err
    assert main([*args, "--coco-classes", "cell", "--init-weights", str(tiny_run / "models" / "fold1"), *out]) == 2
    assert "that fold has the classes" in capsys.readouterr().err
    # neither data; a file without its folder; a fold without --data
    assert main(["train", *out]) == 2
    assert "got neither" in capsys.readouterr().err
    assert main(["train", "--coco", str(coco), *out]) == 2
    assert "one --coco-images folder per --coco file" in capsys.readouterr().err
    assert main(["train", "--coco", str(coco), "--coco-images", str(images), "--fold", "0", *out]) == 2
    assert "holds no fold out" in capsys.readouterr().err
    assert not (tiny_run / "refused-coco").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_mixed_precision_run(data_dir: Path, tmp_path: Path) -> None:
    folds = make_folds(data_dir / "train.csv", n_folds=2, seed=0)
    write_folds(folds, tmp_path / "folds.csv")
    code = main(
        [
            "train", "--data", str(data_dir), "--folds", str(tmp_path / "folds.csv"), "--fold", "0",
            "--out", str(tmp_path / "models"), "--iters", "2", "--device", "cuda", "--min-sizes", "256",
            "--test-size", "256", "--no-heldout", "--workers", "0",
        ]
    )  # fmt: skip
    assert code == 0
    meta = json.loads((tmp_path / "models" / "fold0" / "meta.json").read_text())
    assert meta["amp"] is True and meta["device"] == "cuda"


# -------------------------------------------------------------------------- notebook

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "sartorius-train.ipynb"
COMPETITION = "sartorius-cell-instance-segmentation"


def _code_cells(path: Path) -> list[str]:
    import nbformat

    return [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def test_training_notebook_is_generated_clean_and_thin() -> None:
    import subprocess
    import sys

    import nbformat

    script = NOTEBOOK.parents[1] / "scripts" / "make_notebooks.py"  # notebooks/sartorius-train.py
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(c.outputs == [] and c.execution_count is None for c in notebook.cells if c.cell_type == "code")
    cells = _code_cells(NOTEBOOK)
    inference = NOTEBOOK.parent / "sartorius-inference.ipynb"
    if inference.is_file():
        assert cells[0] == _code_cells(inference)[0]  # the same offline install cell
    assert 'os.environ.get("KAGGLE_INPUT", "/kaggle/input")' in cells[1]
    assert 'os.environ.get("KAGGLE_WORKING", "/kaggle/working")' in cells[1]
    text = "\n".join(cells)
    assert '"train", "--data"' in text and '"folds", "--truth"' in text


def _stage_bootstrap(kaggle_input: Path) -> None:
    """The bundle dataset's kernel_lib_bootstrap.py, as build_dataset.py stages it (here
    detectron2 and kernel_lib import already: the install cell finds it and it does nothing)."""
    bundle = kaggle_input / "sartorius-offline-bundle"
    bundle.mkdir(parents=True)
    shutil.copy(Path(__file__).resolve().parents[1] / "kernel_lib" / "bootstrap.py", bundle / "kernel_lib_bootstrap.py")


def _notebook_tree(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Path:
    """A Kaggle-like input (the competition's train/ and train.csv, the bundle's bootstrap)
    and the notebook's parameters for a tiny CPU run (fold 0, 2 iterations) plus ``env``;
    returns the working folder."""
    competition = tmp_path / "input" / COMPETITION
    competition.mkdir(parents=True)
    shutil.copytree(data_dir / "train", competition / "train")
    shutil.copy(data_dir / "train.csv", competition / "train.csv")
    _stage_bootstrap(tmp_path / "input")
    working = tmp_path / "working"
    working.mkdir()
    eval_config = tmp_path / "eval.json"
    Config(ensemble=EnsembleConfig(tta=("identity",), detections_per_image=50)).to_json(eval_config)
    tiny = "--min-sizes 96 --max-size 160 --test-size 96 --workers 0 --set MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 32"
    for name, value in {
        "KAGGLE_INPUT": str(tmp_path / "input"),
        "KAGGLE_WORKING": str(working),
        "TRAIN_FOLDS": "0",
        "TRAIN_ITERS": "2",
        "TRAIN_BATCH_PER_GPU": "2",
        "TRAIN_EXTRA_ARGS": f"{tiny} --eval-config {eval_config}",
        **env,
    }.items():
        monkeypatch.setenv(name, value)
    return working


@pytest.mark.slow
def test_training_notebook_runs_on_a_kaggle_like_tree(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells 1-5 on the shipped sample: folds written, fold 0 trained (2 iterations), a
    model folder the pipeline loads, models.json and dataset-metadata.json beside it."""
    from nbclient import NotebookClient

    pipeline = pytest.importorskip("kernel_lib.pipeline")
    import nbformat

    working = _notebook_tree(data_dir, tmp_path, monkeypatch)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(working)}}
    ).execute()

    folds = pd.read_csv(working / "folds.csv")
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    models = working / "models"
    assert [p.name for p in models.iterdir() if p.is_dir()] == ["fold0"]
    meta = json.loads((models / "fold0" / "meta.json").read_text())
    assert meta["fold"] == 0 and meta["iters"] == 2
    assert sorted(meta["heldout_ids"]) == sorted(folds.loc[folds["fold"] == 0, "id"])
    assert json.loads((models / "models.json").read_text()) == {"models": [{"name": "fold0", "weight": 1.0}]}
    assert json.loads((models / "dataset-metadata.json").read_text())["id"].endswith("/sartorius-fold-models")
    summary = pd.read_csv(working / "heldout_scores.csv")
    assert summary["held-out score"].iloc[0] == pytest.approx(meta["heldout_score"])
    (loaded,) = pipeline.load_models(models, Config(ensemble=EnsembleConfig(detections_per_image=50)))
    assert loaded.fold == 0


@pytest.mark.slow
def test_training_notebook_runs_every_stage_and_resumes(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pretraining on a LIVECell-shaped folder -> fold 0 fine-tuned from it -> pseudo-labels
    of an unlabelled folder -> fold 0 again on both, in MODELS_DIR; a second run keeps all."""
    import nbformat
    from nbclient import NotebookClient

    from kernel_lib.testing import write_livecell_standin

    working = _notebook_tree(
        data_dir,
        tmp_path,
        monkeypatch,
        TRAIN_PRETRAIN_ITERS="2",
        TRAIN_PSEUDO_ROUNDS="1",
        TRAIN_PSEUDO_MIN_SCORE="0.0",  # two iterations score little: keep whatever they find
    )
    competition = tmp_path / "input" / COMPETITION
    write_livecell_standin(data_dir, competition / "LIVECell_dataset_2021", ["0f08d640930b", "e9edcd9483e4"])
    (competition / "train_semi_supervised").mkdir()
    for image in sorted((data_dir / "test").glob("*.png"))[:2]:
        shutil.copy(image, competition / "train_semi_supervised")

    def run() -> None:
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(
            notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(working)}}
        ).execute()

    run()
    pretrained = working / "work" / "pretrain" / "pretrain"
    assert json.loads((pretrained / "meta.json").read_text())["classes"] == ["cell"]
    first = json.loads((working / "work" / "round0" / "fold0" / "meta.json").read_text())
    assert first["initialised_from"]["folder"] == str(pretrained) and first["extra_truth"] == []
    pseudo = working / "work" / "pseudo1.csv"
    assert list(pd.read_csv(pseudo).columns)[-2:] == ["score", "image_score"]
    final = working / "models" / "fold0" / "meta.json"
    meta = json.loads(final.read_text())
    assert meta["initialised_from"]["folder"] == str(pretrained)
    assert meta["extra_truth"][0]["file"] == str(pseudo) and meta["extra_truth"][0]["weight"] == 0.5
    assert json.loads((working / "models" / "models.json").read_text())["models"] == [{"name": "fold0", "weight": 1.0}]
    # resumable: a second run finds every stage done and changes nothing
    before = {p: p.read_bytes() for p in (pretrained / "meta.json", pseudo, final)}
    run()
    assert {p: p.read_bytes() for p in before} == before
