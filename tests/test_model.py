"""Fold-model loading and batched multi-view inference (torch, CPU; CUDA parts skip)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from kernel_lib.config import EnsembleConfig, InferenceConfig

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from kernel_lib.demo_models import make_demo_models  # noqa: E402
from kernel_lib.model import (  # noqa: E402
    EnsemblePredictor,
    ImageDataset,
    load_fold_model,
    load_models,
    predict,
    read_manifest,
)
from kernel_lib.tta import View  # noqa: E402

MIN_SIZE, MAX_SIZE, DETECTIONS = 160, 220, 30
CPU = InferenceConfig(device="cpu", batch_size=2, num_workers=0, cpu_bf16=False)  # float32: compared with detectron2


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three tiny folds of different architectures: R50-style, Cascade, X101-style (grouped)."""
    out = tmp_path_factory.mktemp("mixed")
    make_demo_models(
        out,
        n_folds=3,
        archs=["R50", "cascade", "X101"],
        seed=5,
        min_size_test=MIN_SIZE,
        max_size_test=MAX_SIZE,
        tiny=True,
    )
    return out


def _ensemble(method: str = "roi", tta: tuple[str, ...] = ("identity", "hflip")) -> EnsembleConfig:
    return EnsembleConfig(method=method, tta=tta, detections_per_image=DETECTIONS)


def _test_images(data_dir: Path, n: int) -> list[Path]:
    return sorted((data_dir / "test").glob("*.png"))[:n]


# ------------------------------------------------------------------ loading


def test_load_mixed_architectures(mixed_dir: Path) -> None:
    models = load_models(mixed_dir, _ensemble(), CPU)
    assert [m.name for m in models] == ["fold0", "fold1", "fold2"]
    assert [m.fold for m in models] == [0, 1, 2]
    heads = [m.cfg.MODEL.ROI_HEADS.NAME for m in models]
    assert heads == ["StandardROIHeads", "CascadeROIHeads", "StandardROIHeads"]
    assert models[2].cfg.MODEL.RESNETS.NUM_GROUPS > 1
    for m in models:
        assert not m.model.training
        assert m.min_size == MIN_SIZE and m.max_size == MAX_SIZE
        # the ensemble config replaces the checkpoint's own test thresholds
        assert m.cfg.TEST.DETECTIONS_PER_IMAGE == DETECTIONS
        assert _ensemble().candidate_score == m.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST


def test_loaded_weights_are_the_saved_ones(mixed_dir: Path) -> None:
    saved = torch.load(mixed_dir / "fold1" / "model_final.pth", weights_only=True)["model"]
    loaded = load_models(mixed_dir, _ensemble(), CPU)[1].model.state_dict()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_manifest_weights_and_names(mixed_dir: Path, tmp_path: Path) -> None:
    for name in ("fold0", "fold2"):
        shutil.copytree(mixed_dir / name, tmp_path / f"m_{name}")
    (tmp_path / "m_fold0" / "meta.json").unlink()  # fold from the name then
    (tmp_path / "models.json").write_text(
        json.dumps({"models": [{"name": "m_fold2", "weight": 2.0}, {"name": "m_fold0"}]})
    )
    assert read_manifest(tmp_path) == [("m_fold2", 2.0), ("m_fold0", 1.0)]
    models = load_models(tmp_path, _ensemble(), CPU)
    assert [(m.name, m.fold, m.weight) for m in models] == [("m_fold2", 2, 2.0), ("m_fold0", 0, 1.0)]


def test_clear_errors_name_the_model(mixed_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no model sub-folder"):
        read_manifest(tmp_path)
    ens = _ensemble()
    device = torch.device("cpu")
    # missing weights
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(mixed_dir / "fold0" / "config.yaml", broken / "config.yaml")
    with pytest.raises(ValueError, match=r"model broken: .*model_final\.pth is missing"):
        load_fold_model(broken, 1.0, device, ens)
    # weights of another architecture (cascade) under an R50 config
    shutil.copy(mixed_dir / "fold1" / "model_final.pth", broken / "model_final.pth")
    with pytest.raises(ValueError, match=r"model broken: .* does not match its config\.yaml \(.*unexpected"):
        load_fold_model(broken, 1.0, device, ens)
    # a checkpoint that is not one
    (broken / "model_final.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"model broken: .*could not be read"):
        load_fold_model(broken, 1.0, device, ens)
    # a config with another number of classes
    text = (mixed_dir / "fold0" / "config.yaml").read_text().replace("NUM_CLASSES: 3", "NUM_CLASSES: 5")
    (broken / "config.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"model broken: .*NUM_CLASSES=5, expected 3"):
        load_fold_model(broken, 1.0, device, ens)
    # a manifest naming a model that is not there
    (tmp_path / "models.json").write_text(json.dumps({"models": [{"name": "fold9"}]}))
    with pytest.raises(ValueError, match="model fold9"):
        load_models(tmp_path, ens, CPU)
    (tmp_path / "models.json").write_text(json.dumps({"models": [{"name": "broken", "weight": 0}]}))
    with pytest.raises(ValueError, match="weight must be a finite number from 1e-06 to 1e"):
        read_manifest(tmp_path)


class _RunsCode:
    """What a crafted model_final.pth holds: unpickling it would create ``self.path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (f"touch {self.path}",)


def _fold_copy(mixed_dir: Path, tmp_path: Path, name: str = "fold0") -> Path:
    folder = tmp_path / "models" / name
    shutil.copytree(mixed_dir / name, folder)
    return folder


@pytest.mark.parametrize("wrap", ["torch.save", "pickle"])
def test_a_checkpoint_with_pickled_objects_is_refused_unread(mixed_dir: Path, tmp_path: Path, wrap: str) -> None:
    """Model datasets come from strangers: a model_final.pth that is not plain weights is
    never unpickled (it used to fall back to weights_only=False and ran the payload)."""
    import pickle

    folder = _fold_copy(mixed_dir, tmp_path)
    pwned = tmp_path / "PWNED"
    weights = folder / "model_final.pth"
    payload = {"model": torch.load(weights, weights_only=True)["model"], "scheduler": _RunsCode(pwned)}
    if wrap == "torch.save":
        torch.save(payload, weights)
    else:
        weights.write_bytes(pickle.dumps(payload))
    assert not pwned.exists()
    with pytest.raises(ValueError) as err:
        load_models(folder.parent, _ensemble(), CPU)
    assert not pwned.exists()
    message = str(err.value)
    assert message.startswith(f"model fold0: {weights} ")
    if wrap == "torch.save":
        import os

        assert f"is not a plain weights file: it holds pickled Python objects (it names {os.name}.system)" in message
    else:  # a bare pickle (protocol 4): refused at its first opcode torch does not read
        assert "could not be read as a torch checkpoint of plain weights" in message
    assert "torch.save({'model': state_dict}, 'model_final.pth')" in message
    assert "weights_only=False" not in message  # torch's own advice is not passed on


def test_no_torch_load_without_weights_only_true_in_the_library() -> None:
    """Every torch.load in kernel_lib/ and bench/ passes weights_only=True, and nothing there
    calls pickle.load(s) or np.load with allow_pickle=True."""
    root = Path(__file__).resolve().parents[1]
    calls, unpickling = [], []
    for path in [*sorted((root / "kernel_lib").rglob("*.py")), *sorted((root / "bench").rglob("*.py"))]:
        text = path.read_text()
        unpickling += [f"{path.name}: {m.group(0)}" for m in re.finditer(r"pickle\.loads?\(|allow_pickle=True", text)]
        for match in re.finditer(r"torch\.load\(", text):
            depth, end = 0, match.end() - 1
            for end in range(match.end() - 1, len(text)):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            calls.append((path.name, text[match.start() : end + 1]))
    assert calls  # the reader itself
    assert not [(name, call) for name, call in calls if "weights_only=True" not in call]
    assert not unpickling


def test_a_fold_with_nan_or_inf_weights_is_refused_by_name(mixed_dir: Path, tmp_path: Path) -> None:
    """A diverged run's weights loaded and gave 0 instances; now loading stops, naming it."""
    folder = _fold_copy(mixed_dir, tmp_path, "fold2")
    state = torch.load(folder / "model_final.pth", weights_only=True)["model"]
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    state[key] = state[key].clone()
    state[key].view(-1)[3] = float("nan")
    torch.save({"model": {k: v.half() for k, v in state.items()}}, folder / "model_final.pth")  # as train writes
    with pytest.raises(ValueError, match=rf"model fold2: .*model_final\.pth holds NaN or inf weights \({key}\)"):
        load_models(folder.parent, _ensemble(), CPU)
    state[key].view(-1)[3] = float("inf")
    torch.save({"model": state}, folder / "model_final.pth")
    with pytest.raises(ValueError, match=r"leave fold2 out of models\.json"):
        load_models(folder.parent, _ensemble(), CPU)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "NAME: build_resnet_fpn_backbone",
            "NAME: build_nope_backbone",
            r"does not build a model \(No object named 'build_nope_backbone' found in 'BACKBONE' registry",
        ),
        ("NAME: StandardROIHeads", "NAME: NopeROIHeads", "No object named 'NopeROIHeads'"),
        (f"MAX_SIZE_TEST: {MAX_SIZE}", "MAX_SIZE_TEST: 0", "has INPUT.MAX_SIZE_TEST: 0; expected a positive integer"),
        (f"MIN_SIZE_TEST: {MIN_SIZE}", "MIN_SIZE_TEST: -5", "has INPUT.MIN_SIZE_TEST: -5; expected a positive integer"),
    ],
)
def test_a_config_that_builds_no_model_is_one_clear_error(
    mixed_dir: Path, tmp_path: Path, old: str, new: str, message: str
) -> None:
    """An unknown backbone or head gave a KeyError from detectron2's registry, MAX_SIZE_TEST 0 a
    ValueError at the first image; both now stop loading, naming the model and the file."""
    folder = _fold_copy(mixed_dir, tmp_path)
    config = folder / "config.yaml"
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    with pytest.raises(ValueError, match=rf"^model fold0: {re.escape(str(config))} .*{message}"):
        load_models(folder.parent, _ensemble(), CPU)


# ------------------------------------------------------------------ flips at the RoI level


def test_mask_pooler_maps_flipped_boxes_back_exactly(mixed_dir: Path) -> None:
    """The model's own RoIAlign (aligned, ROIAlignV2) on flipped features with boxes
    flipped by View equals the flipped pooling of the original: no half-pixel shift.
    The naive pixel-index flip (x -> W - 1 - x) is off, which this test would catch."""
    from detectron2.structures import Boxes

    fm = load_models(mixed_dir, _ensemble(), CPU)[0]
    pooler = fm.model.roi_heads.mask_pooler
    height, width = 128, 256  # multiples of the largest stride, so each level is exact
    strides = [round(1 / p.spatial_scale) for p in pooler.level_poolers]
    gen = torch.Generator().manual_seed(0)
    feats = [torch.randn(1, 4, height // s, width // s, generator=gen) for s in strides]
    boxes = torch.tensor([[10.3, 7.1, 40.8, 30.2], [100.0, 20.5, 220.7, 120.0], [3.0, 60.0, 18.5, 71.0]])
    view = View("hvflip", 1.0, (height, width), (height, width))
    plain = pooler(feats, [Boxes(boxes)])
    flipped = pooler([f.flip(-1).flip(-2) for f in feats], [Boxes(view.apply_boxes(boxes))])
    torch.testing.assert_close(view.invert_roi_masks(flipped), plain, atol=1e-5, rtol=1e-5)
    naive = boxes.clone()
    naive[:, [0, 2]] = width - 1 - boxes[:, [2, 0]]
    naive[:, [1, 3]] = height - 1 - boxes[:, [3, 1]]
    wrong = pooler([f.flip(-1).flip(-2) for f in feats], [Boxes(naive)])
    assert (view.invert_roi_masks(wrong) - plain).abs().max() > 1e-2


def test_float32_roi_align_keeps_box_coordinates_past_512_under_bfloat16() -> None:
    """detectron2's ROIAlign casts the boxes to the features' dtype: under bfloat16
    autocast x = 515.3 becomes 516 (4-pixel steps past 512) and the pooled values move;
    Float32ROIAlign pools bfloat16 features with float32 boxes exactly as float32 does."""
    from detectron2.layers import ROIAlign
    from torchvision.ops import roi_align

    from kernel_lib.model import Float32ROIAlign

    assert torch.tensor(515.3).bfloat16().item() == 516.0  # the rounding itself
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1, 4, 20, 200, generator=gen).bfloat16()  # stride 4: an 800-pixel-wide level
    rois = torch.tensor([[0.0, 515.3, 10.6, 603.7, 60.2], [0.0, 601.1, 3.3, 790.9, 41.7]])
    reference = roi_align(feats.float(), rois, (14, 14), 0.25, 0, True)  # float32 boxes and features
    settings = ((14, 14), 0.25, 0, True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        old = ROIAlign(*settings)(feats, rois)
        new = Float32ROIAlign(*settings)(feats, rois)
    assert old.dtype == new.dtype == torch.bfloat16  # the output keeps the features' dtype
    assert torch.equal(new, reference.bfloat16())
    assert (old.float() - reference).abs().max() > 0.05  # the old path pooled other places
    with pytest.raises(ValueError, match=r"expected \(K, 5\) boxes.*got \(2, 4\)"):
        Float32ROIAlign(*settings)(feats, rois[:, 1:])


def test_loaded_models_pool_with_float32_roi_align(mixed_dir: Path) -> None:
    """Every pooler level of every loaded model (box and mask heads, cascade stages) is a
    Float32ROIAlign with the settings of the ROIAlign it replaced."""
    from detectron2.layers import ROIAlign
    from detectron2.modeling import build_model

    from kernel_lib.model import Float32ROIAlign

    for fm in load_models(mixed_dir, _ensemble(), CPU):
        levels = [m for p in fm.model.modules() if hasattr(p, "level_poolers") for m in p.level_poolers]
        assert levels and all(type(m) is Float32ROIAlign for m in levels), fm.name
        assert not any(type(m) is ROIAlign for m in fm.model.modules())
        built = build_model(fm.cfg)  # what detectron2 builds from the same config
        before = [m for p in built.modules() if hasattr(p, "level_poolers") for m in p.level_poolers]
        assert [(m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned) for m in before] == [
            (m.output_size, m.spatial_scale, m.sampling_ratio, m.aligned) for m in levels
        ]


def _assert_same_outputs(a: list, b: list) -> None:
    assert [i for i, _, _ in a] == [i for i, _, _ in b]
    for (_, _, x), (_, _, y) in zip(a, b):
        xs = [x.fused] if x.fused is not None else x.views
        ys = [y.fused] if y.fused is not None else y.views
        assert x.names == y.names and len(xs) == len(ys)
        for u, v in zip(xs, ys):
            assert len(u) == len(v)
            np.testing.assert_allclose(u.boxes, v.boxes, atol=1e-4)
            np.testing.assert_allclose(u.scores, v.scores, atol=1e-5)
            np.testing.assert_array_equal(u.classes, v.classes)
            np.testing.assert_allclose(u.masks, v.masks, atol=1e-5)


@pytest.mark.parametrize("method", ["wmf", "roi"])
def test_mask_head_runs_in_chunks_with_the_same_results(
    mixed_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Both paths send at most MASK_ROI_CHUNK RoIs through one mask-head call (an image
    with more is split, small images share a call) and give what one call gives."""
    import kernel_lib.model as model_module

    models = load_models(mixed_dir, _ensemble(), CPU)[:1]
    ens = _ensemble(method)
    paths = _test_images(data_dir, 2)
    head = models[0].model.roi_heads
    sizes: list[list[int]] = []
    original = type(head)._forward_mask

    def spy(self: object, features: dict, instances: list) -> object:
        sizes.append([len(i) for i in instances])
        return original(self, features, instances)

    monkeypatch.setattr(type(head), "_forward_mask", spy)
    whole = list(predict(paths, models, ens, CPU, progress=False))
    assert all(len(s) == 4 for s in sizes)  # the batch's 2 images x 2 views in one call
    sizes.clear()
    monkeypatch.setattr(model_module, "MASK_ROI_CHUNK", 7)
    chunked = list(predict(paths, models, ens, CPU, progress=False))
    _assert_same_outputs(whole, chunked)
    assert max(sum(s) for s in sizes) <= 7
    assert len(sizes) > 2 * 2 * 2  # each image's RoIs of each view took several calls


@pytest.mark.parametrize("error", ["torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError"])
def test_an_out_of_memory_batch_is_split_and_retried(
    mixed_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    """An OutOfMemoryError on a batch of several images: the batch is split in halves and
    run again (and later batches start split), with the same instances as unsplit."""
    models = load_models(mixed_dir, _ensemble(), CPU)[:1]
    ens = _ensemble("wmf", tta=("identity",))
    paths = sorted((data_dir / "test").glob("*.png")) + sorted((data_dir / "train").glob("*.png"))[:2]
    config = InferenceConfig(device="cpu", batch_size=4, num_workers=0, cpu_bf16=False)
    expected = list(predict(paths, models, ens, config, progress=False))
    oom = torch.OutOfMemoryError if error == "torch.OutOfMemoryError" else torch.cuda.OutOfMemoryError
    calls: list[int] = []
    original = EnsemblePredictor._predict_batch

    def flaky(self: EnsemblePredictor, items: list) -> list:
        calls.append(len(items))
        if len(items) > 2:
            raise oom("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        return original(self, items)

    monkeypatch.setattr(EnsemblePredictor, "_predict_batch", flaky)
    got = list(predict(paths, models, ens, config, progress=False))
    _assert_same_outputs(expected, got)
    assert calls == [4, 2, 2, 1]  # 5 images at batch 4: split once, the last batch of 1 as is


def test_out_of_memory_on_one_image_halves_the_mask_chunk_then_stops_with_one_error(
    mixed_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernel_lib.model import MASK_ROI_CHUNK, MIN_MASK_ROI_CHUNK

    models = load_models(mixed_dir, _ensemble(), CPU)[:1]
    ens = _ensemble("wmf", tta=("identity",))
    item = ImageDataset(_test_images(data_dir, 1), [(MIN_SIZE, MAX_SIZE, "none")], ens)[0]
    predictor = EnsemblePredictor(models, ens, CPU)
    chunks: list[int] = []

    def always(self: EnsemblePredictor, items: list) -> list:
        chunks.append(self.mask_roi_chunk)
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    monkeypatch.setattr(EnsemblePredictor, "_predict_batch", always)
    with pytest.raises(ValueError, match=r"out of memory on one image \(7ae19de7bc2a\).*expected the ensemble"):
        predictor.predict_batch([item])
    halvings = (MASK_ROI_CHUNK // MIN_MASK_ROI_CHUNK).bit_length()
    assert chunks == [MASK_ROI_CHUNK >> k for k in range(halvings)] and chunks[-1] == MIN_MASK_ROI_CHUNK


# ------------------------------------------------------------------ inference


def test_dataset_prepares_every_view_per_geometry(mixed_dir: Path, data_dir: Path) -> None:
    ens = _ensemble(tta=("identity", "hflip", "vflip"))
    plain, small = (MIN_SIZE, MAX_SIZE, "none"), (96, 200, "none")
    dataset = ImageDataset(_test_images(data_dir, 1), [plain, plain, small], ens)
    item = dataset[0]
    assert item["grey"].shape == (520, 704)
    assert sorted(item["inputs"]) == [small, plain]
    views = item["inputs"][plain]
    assert len(views) == 3 and views[0].shape == (3, MIN_SIZE, 217) and views[0].dtype == torch.uint8
    torch.testing.assert_close(views[1], views[0].flip(-1))
    torch.testing.assert_close(views[2], views[0].flip(-2))


def test_dataset_normalises_the_inputs_of_a_per_image_model_only(data_dir: Path) -> None:
    """Models of one size but another normalisation get their own inputs; ``grey`` stays
    the image as read."""
    from kernel_lib.images import normalize_image, read_image

    path = _test_images(data_dir, 1)[0]
    ens = _ensemble(tta=("identity",))
    item = ImageDataset([path], [(520, 1000, "none"), (520, 1000, "per_image")], ens)[0]
    grey = read_image(path)
    np.testing.assert_array_equal(item["grey"], grey)
    np.testing.assert_array_equal(item["inputs"][(520, 1000, "none")][0][0].numpy(), grey)
    normed = item["inputs"][(520, 1000, "per_image")][0]
    np.testing.assert_array_equal(normed[0].numpy(), normalize_image(grey, "per_image"))
    assert abs(float(normed.float().mean()) - 128) < 2


def test_a_models_normalisation_comes_from_its_meta_json(mixed_dir: Path, tmp_path: Path) -> None:
    import shutil

    from kernel_lib.model import _input_key
    from kernel_lib.model_folder import read_manifest, read_meta, write_meta

    name = read_manifest(mixed_dir)[0][0]
    folder = tmp_path / "models" / name
    shutil.copytree(mixed_dir / name, folder)
    (model,) = load_models(tmp_path / "models", _ensemble(), CPU)
    assert model.normalization == "none" and _input_key(model)[2] == "none"
    write_meta(folder, {**read_meta(folder), "input_normalization": "per_image"})
    (model,) = load_models(tmp_path / "models", _ensemble(), CPU)
    assert model.normalization == "per_image" and _input_key(model) == (model.min_size, model.max_size, "per_image")
    write_meta(folder, {**read_meta(folder), "input_normalization": "zscore"})
    must = rf"model {name}: meta.json 'input_normalization' must be one of none, per_image"
    with pytest.raises(ValueError, match=must):
        load_models(tmp_path / "models", _ensemble(), CPU)


def test_roi_ensemble_of_mixed_models(mixed_dir: Path, data_dir: Path) -> None:
    models = load_models(mixed_dir, _ensemble(), CPU)
    paths = _test_images(data_dir, 2)
    outs = list(predict(paths, models, _ensemble(), CPU, progress=False))
    assert [o[0] for o in outs] == [p.stem for p in paths]
    for _, grey, out in outs:
        inst = out.fused
        assert inst is not None and out.views == []
        assert inst.shape == grey.shape == (520, 704)
        assert 0 < len(inst) <= DETECTIONS
        assert inst.masks.shape == (len(inst), 28, 28)
        assert inst.masks.max() <= 1 and inst.masks.min() >= 0 and inst.masks.max() > 0
        assert set(inst.classes.tolist()) <= {0, 1, 2}


def test_instance_level_methods_return_every_view(mixed_dir: Path, data_dir: Path) -> None:
    models = load_models(mixed_dir, _ensemble(), CPU)[:2]
    ens = _ensemble("wmf", tta=("identity", "vflip"))
    ((_, _, out),) = list(predict(_test_images(data_dir, 1), models, ens, CPU, progress=False))
    assert out.fused is None
    assert out.names == ["fold0/identity", "fold0/vflip", "fold1/identity", "fold1/vflip"]
    assert out.weights == [1.0] * 4
    for inst in out.views:
        assert inst.shape == (520, 704) and len(inst) <= DETECTIONS
        assert (inst.boxes[:, 2] <= 704).all() and (inst.boxes[:, 3] <= 520).all()


def test_each_view_matches_detectron2_default_predictor(mixed_dir: Path, data_dir: Path) -> None:
    """Our batched calls into the model parts give what DefaultPredictor gives for the
    same checkpoint (identity view): same boxes, scores, classes and pasted masks.
    Our model is stored channels-last and fed a uint8 batch; detectron2's is not."""
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor

    from kernel_lib.images import read_image, to_model_input
    from kernel_lib.soft import paste

    models = load_models(mixed_dir, _ensemble(), CPU)[:2]
    assert models[0].channels_last
    path = _test_images(data_dir, 1)[0]
    ((_, _, out),) = list(predict([path], models, _ensemble("wmf", tta=("identity",)), CPU, progress=False))
    for fm, ours in zip(models, out.views):
        cfg = get_cfg()
        cfg.set_new_allowed(True)
        cfg.merge_from_file(str(mixed_dir / fm.name / "config.yaml"))
        cfg.MODEL.WEIGHTS = str(mixed_dir / fm.name / "model_final.pth")
        cfg.MODEL.DEVICE = "cpu"
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = _ensemble().candidate_score
        cfg.TEST.DETECTIONS_PER_IMAGE = DETECTIONS
        theirs = DefaultPredictor(cfg)(to_model_input(read_image(path)))["instances"]
        assert len(ours) == len(theirs) > 0, fm.name
        np.testing.assert_allclose(ours.boxes, theirs.pred_boxes.tensor.numpy(), atol=1e-2)
        np.testing.assert_allclose(ours.scores, theirs.scores.numpy(), atol=1e-4)
        np.testing.assert_array_equal(ours.classes, theirs.pred_classes.numpy())
        disagree = (paste(ours, 0.5).to_stack() != theirs.pred_masks.numpy()).sum()
        assert disagree <= 1e-3 * theirs.pred_masks.numpy().sum(), fm.name


def test_cpu_bfloat16_is_close_to_float32(mixed_dir: Path, data_dir: Path) -> None:
    ens = _ensemble(tta=("identity",))
    models = load_models(mixed_dir, ens, CPU)[:1]
    path = _test_images(data_dir, 1)
    bf16 = InferenceConfig(device="cpu", batch_size=1, num_workers=0, cpu_bf16=True)
    ((_, _, a),) = list(predict(path, models, ens, CPU, progress=False))
    ((_, _, b),) = list(predict(path, models, ens, bf16, progress=False))
    assert abs(len(a.fused) - len(b.fused)) <= 0.2 * len(a.fused)
    # the best-scored boxes of float32 are found again in bfloat16 within a pixel or two
    for box in a.fused.boxes[:5]:
        assert np.abs(b.fused.boxes - box).max(axis=1).min() < 3.0


def test_cpu_bf16_default_follows_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import kernel_lib.model as model_module

    cpu = torch.device("cpu")
    auto = InferenceConfig(device="cpu")
    assert auto.cpu_bf16 is None
    for native in (True, False):
        monkeypatch.setattr(model_module, "fast_cpu_bf16", lambda native=native: native)
        with model_module._autocast(cpu, auto):
            assert torch.is_autocast_enabled("cpu") is native
        with model_module._autocast(cpu, InferenceConfig(device="cpu", cpu_bf16=not native)):
            assert torch.is_autocast_enabled("cpu") is (not native)


def test_rescale_views_map_back_to_the_frame(mixed_dir: Path, data_dir: Path) -> None:
    models = load_models(mixed_dir, _ensemble(), CPU)[:1]
    ens = EnsembleConfig(
        method="mask_nms", tta=("identity", "hflip"), scales=(1.0, 1.25), detections_per_image=DETECTIONS
    )
    ((_, _, out),) = list(predict(_test_images(data_dir, 1), models, ens, CPU, progress=False))
    assert out.names == ["fold0/identity", "fold0/hflip", "fold0/identity@1.25", "fold0/hflip@1.25"]
    for inst in out.views:
        assert inst.shape == (520, 704)
        assert (inst.boxes >= 0).all() and (inst.boxes[:, 2] <= 704).all() and (inst.boxes[:, 3] <= 520).all()
    # RoI fusion over the same four views runs the backbone once per scale (two input shapes)
    roi = EnsembleConfig(method="roi", tta=("identity", "hflip"), scales=(1.0, 1.25), detections_per_image=DETECTIONS)
    ((_, _, fused),) = list(predict(_test_images(data_dir, 1), models, roi, CPU, progress=False))
    assert 0 < len(fused.fused) <= DETECTIONS


def test_batching_and_workers_do_not_change_results(mixed_dir: Path, data_dir: Path) -> None:
    models = load_models(mixed_dir, _ensemble(), CPU)[:1]
    ens = _ensemble(tta=("identity",))
    paths = _test_images(data_dir, 2)
    one = list(
        predict(
            paths,
            models,
            ens,
            InferenceConfig(device="cpu", batch_size=1, num_workers=0, cpu_bf16=False),
            progress=False,
        )
    )
    two = list(
        predict(
            paths,
            models,
            ens,
            InferenceConfig(device="cpu", batch_size=2, num_workers=1, cpu_bf16=False),
            progress=False,
        )
    )
    for (id_a, _, a), (id_b, _, b) in zip(one, two):
        assert id_a == id_b
        assert len(a.fused) == len(b.fused)
        np.testing.assert_allclose(a.fused.boxes, b.fused.boxes, atol=1e-2)
        np.testing.assert_allclose(a.fused.masks, b.fused.masks, atol=1e-3)


def test_a_view_that_is_the_identity_twice_equals_one_view(mixed_dir: Path, data_dir: Path) -> None:
    """RoI fusion of one model over views that map back exactly gives the single view's
    masks: here the same model listed twice (weights 1 and 3) averages to itself."""
    models = load_models(mixed_dir, _ensemble(), CPU)[:1]
    twin = models[0].to(torch.device("cpu"))
    twin.weight = 3.0
    ens = _ensemble(tta=("identity",))
    item = ImageDataset(_test_images(data_dir, 1), [(MIN_SIZE, MAX_SIZE, "none")], ens)[0]
    (single,) = EnsemblePredictor(models, ens, CPU).predict_batch([item])
    (double,) = EnsemblePredictor([models[0], twin], ens, CPU).predict_batch([item])
    np.testing.assert_allclose(double.fused.boxes, single.fused.boxes, atol=1e-4)
    np.testing.assert_allclose(double.fused.masks, single.fused.masks, atol=1e-5)


def test_full_size_r50_checkpoint_runs(data_dir: Path, tmp_path: Path) -> None:
    """The real (not shrunk) R50-FPN Mask R-CNN config: save, load strictly, predict."""
    make_demo_models(tmp_path, n_folds=1, arch="R50", min_size_test=128, max_size_test=180)
    models = load_models(tmp_path, _ensemble(), CPU)
    assert models[0].cfg.MODEL.RESNETS.DEPTH == 50 and models[0].cfg.MODEL.FPN.OUT_CHANNELS == 256
    ((_, _, out),) = list(predict(_test_images(data_dir, 1), models, _ensemble(tta=("identity",)), CPU, progress=False))
    assert out.fused.masks.shape[1:] == (28, 28)


def test_an_unreadable_image_in_a_loader_worker_stops_with_one_clear_error(
    data_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from torch.utils.data import DataLoader

    from kernel_lib.model import ImageDataset, _checked, _collate

    good = sorted((data_dir / "test").glob("*.png"))[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(good.read_bytes()[:2000])  # a PNG header, then cut off: decoding fails
    dataset = ImageDataset([good, bad], [(520, 1000, "none")], EnsembleConfig(tta=("identity",)))
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=_collate)
    seen = []
    with pytest.raises(ValueError, match=r"broken\.png could not be decoded"):
        for batch in _checked(iter(loader)):
            seen.extend(item["id"] for item in batch)
    assert seen == [good.stem]
    assert "Traceback" not in capfd.readouterr().err


def test_batches_dealt_to_replicas_come_back_in_input_order() -> None:
    """The multi-GPU path on the CPU: two predictors in their own threads, the first one
    slower, so that batches finish out of order; outputs still come back in input order,
    each from the predictor it was dealt to (batch k to replica k % 2)."""
    import threading
    import time

    from kernel_lib.model import _on_replicas

    class Replica:
        def __init__(self, name: str, delay: float) -> None:
            self.name, self.delay = name, delay
            self.threads: set[str] = set()

        def predict_batch(self, batch: list[dict[str, object]]) -> list[str]:
            self.threads.add(threading.current_thread().name)
            time.sleep(self.delay)
            return [f"{self.name}:{item['id']}" for item in batch]

    slow, fast = Replica("gpu0", 0.05), Replica("gpu1", 0.0)
    batches = [[{"id": f"i{2 * k}"}, {"id": f"i{2 * k + 1}"}] for k in range(5)]
    got = list(_on_replicas([slow, fast], batches))  # type: ignore[list-item, arg-type]
    assert [b for b, _ in got] == batches
    assert [outs for _, outs in got] == [
        [f"{'gpu0' if k % 2 == 0 else 'gpu1'}:i{2 * k + j}" for j in range(2)] for k in range(5)
    ]
    assert len(slow.threads) == len(fast.threads) == 1 and slow.threads != fast.threads


# ------------------------------------------------------------------ compact weights (kernel_lib.weights)


def test_quantize_per_channel_on_a_hand_built_tensor() -> None:
    from kernel_lib.weights import dequantize_per_channel, quantize_per_channel

    w = torch.tensor(
        [
            [1.0, -0.5, 0.25, 0.0],  # scale 1/127: -63.5 and 31.75 steps round to -64 (half to even) and 32
            [0.0, 0.0, 0.0, 0.0],  # an all-zero channel: scale 0, values 0
            [127.0, -127.0, 63.5, 1.0],  # scale 1: 63.5 rounds half to even, to 64
        ]
    )
    q, scale = quantize_per_channel(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert q.tolist() == [[127, -64, 32, 0], [0, 0, 0, 0], [127, -127, 64, 1]]
    assert scale.tolist() == pytest.approx([1 / 127, 0.0, 1.0])
    back = dequantize_per_channel(q, scale)
    assert back[1].tolist() == [0.0] * 4 and back[2].tolist() == [127.0, -127.0, 64.0, 1.0]
    assert ((back - w).abs() <= scale[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("shape", [(8, 3, 3, 3), (16, 40), (4, 2, 1, 1), (1, 1000)])
def test_quantize_round_trip_is_within_half_a_step_per_channel(shape: tuple[int, ...]) -> None:
    from kernel_lib.weights import dequantize_per_channel, quantize_per_channel

    gen = torch.Generator().manual_seed(len(shape))
    w = torch.randn(shape, generator=gen) * torch.logspace(-4, 2, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    q, scale = quantize_per_channel(w)
    assert q.shape == w.shape and scale.shape == (shape[0],)
    assert int(q.abs().max()) == 127  # each channel's largest value takes the whole range
    err = (dequantize_per_channel(q, scale) - w).abs().reshape(shape[0], -1).amax(dim=1)
    assert (err <= scale / 2 * (1 + 1e-5)).all(), (err / scale).max()
    with pytest.raises(ValueError, match="NaN or inf"):
        quantize_per_channel(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="one scale per channel"):
        dequantize_per_channel(q, scale[:-1])


def test_compact_state_dict_layout_and_round_trip(tmp_path: Path) -> None:
    from kernel_lib.weights import (
        FORMAT,
        compact_state_dict,
        expand_state_dict,
        is_compact,
        read_state_dict,
        save_compact,
    )

    state = {
        "conv.weight": torch.randn(32, 8, 3, 3),  # 2,304 elements: int8
        "conv.bias": torch.randn(32),  # 1-D: float16
        "head.weight": torch.randn(3, 100).half(),  # 2-D, 300 elements: too small, float16
        "fc.weight": torch.randn(64, 256),  # int8
        "steps": torch.tensor(7),  # not floating: kept
    }
    compact = compact_state_dict(state)
    assert set(compact) == {
        "conv.weight::int8",
        "conv.weight::scale",
        "conv.bias",
        "head.weight",
        "fc.weight::int8",
        "fc.weight::scale",
        "steps",
    }
    assert compact["conv.bias"].dtype == torch.float16 and compact["steps"].dtype == torch.int64
    assert is_compact(compact) and not is_compact(state)
    back = expand_state_dict(compact)
    assert list(back) == list(state)  # the order of the original
    assert all(v.dtype == torch.float32 for k, v in back.items() if k != "steps") and torch.equal(
        back["steps"], state["steps"]
    )
    for key in ("conv.weight", "fc.weight"):
        step = state[key].abs().reshape(len(state[key]), -1).amax(dim=1) / 127
        err = (back[key] - state[key]).abs().reshape(len(state[key]), -1).amax(dim=1)
        assert (err <= step / 2 * (1 + 1e-5)).all()
    assert torch.equal(back["conv.bias"], state["conv.bias"].half().float())
    # on disk: a plain tensor dict with its format marker, read with weights_only=True
    path = save_compact(state, tmp_path / "model_final.pth")
    raw = torch.load(path, weights_only=True)
    assert raw["weights_format"] == FORMAT and raw["model"].keys() == compact.keys()
    assert all(torch.equal(read_state_dict(path)[k], v) for k, v in back.items())
    # broken or unknown compact files are refused, naming the file
    torch.save({"model": {k: v for k, v in compact.items() if k != "fc.weight::scale"}}, path)
    with pytest.raises(ValueError, match=r"model_final\.pth: broken compact weights \(fc\.weight::int8 has no ::scale"):
        read_state_dict(path)
    torch.save({"model": compact, "weights_format": "kernel_lib/int4/9"}, path)
    with pytest.raises(ValueError, match=r"weights_format 'kernel_lib/int4/9' is not one this kernel_lib reads"):
        read_state_dict(path)
    with pytest.raises(ValueError, match="already compact"):
        compact_state_dict(compact)
    with pytest.raises(ValueError, match=r"fc\.weight holds NaN or inf"):
        compact_state_dict({**state, "fc.weight": torch.full((64, 256), float("inf"))})


def test_a_compact_fold_loads_as_its_dequantised_weights_and_predicts_alike(
    mixed_dir: Path, data_dir: Path, tmp_path: Path
) -> None:
    """A fold rewritten in the compact format (scripts/compact_weights.py) loads to float32
    weights within half a step of the original, and finds the same cells."""
    from kernel_lib.weights import compact_state_dict, expand_state_dict, save_compact

    folder = _fold_copy(mixed_dir, tmp_path)
    original = torch.load(folder / "model_final.pth", weights_only=True)["model"]
    save_compact(original, folder / "model_final.pth")
    models = load_models(folder.parent, _ensemble(), CPU)
    loaded = models[0].model.state_dict()
    expected = expand_state_dict(compact_state_dict(original))
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    plain = load_models(mixed_dir, _ensemble(), CPU)[:1]
    images, ens = _test_images(data_dir, 1), _ensemble(tta=("identity",))
    ((_, _, a),) = list(predict(images, plain, ens, CPU, progress=False))
    ((_, _, b),) = list(predict(images, models, ens, CPU, progress=False))
    a, b = a.fused, b.fused
    assert a is not None and b is not None and len(a) > 0
    assert abs(len(a) - len(b)) <= max(2, len(a) // 10)
    top = min(len(a), len(b), 5)
    np.testing.assert_allclose(a.scores[:top], b.scores[:top], atol=0.02)
    np.testing.assert_allclose(a.boxes[:3], b.boxes[:3], atol=2.0)  # past these, near-ties may swap
