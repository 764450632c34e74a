"""CPU stand-ins for the CUDA branches of inference (no GPU has run them yet).

- Several GPUs: two devices faked as ``[cpu, cpu]`` give the instances one device gives,
  and the replicas are copied once per process, not on every ``predict`` call.
- Every inference path (``load_models``, and ``load_fold_model`` as ``evaluate`` loads)
  goes through the GPU-capability guard and stores the weights channels-last.
- float16 autocast as CUDA runs it (GroupNorm and softmax kept in float32, as CUDA's
  autocast lists them), here on the CPU on a shipped fold: the same cells as float32,
  matched by mask IoU (not by rank: float16 noise reorders instances of close scores).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kernel_lib.config import Config, EnsembleConfig, InferenceConfig, config_for_models

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

import kernel_lib.model as model_module  # noqa: E402
from kernel_lib.demo_models import make_demo_models  # noqa: E402
from kernel_lib.model import FoldModel, load_fold_model, load_models, predict  # noqa: E402
from kernel_lib.pipeline import finalize, predict_instances  # noqa: E402
from kernel_lib.testing import mask_iou_matrix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "r50-narrow"
CPU = InferenceConfig(device="cpu", batch_size=1, num_workers=0, cpu_bf16=False)
P100 = {"capability": (6, 0), "archs": ["sm_75", "sm_80", "sm_90", "compute_90"], "name": "Tesla P100-PCIE-16GB"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    make_demo_models(out, n_folds=2, archs=["R50", "cascade"], seed=3, min_size_test=160, max_size_test=220, tiny=True)
    return out


def _ensemble(method: str) -> EnsembleConfig:
    return EnsembleConfig(method=method, tta=("identity", "hflip"), detections_per_image=30)


def _fake_p100(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(P100["archs"]))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: P100["capability"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: P100["name"])


# ------------------------------------------------------------------ two devices


@pytest.mark.parametrize("method", ["wmf", "roi"])
def test_two_devices_faked_as_cpu_cpu_give_the_instances_of_one(
    tiny_dir: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """The multi-GPU path end to end on [cpu, cpu]: batches dealt to a replica in its own
    thread, results in input order, the same fused instances as one device; the replica
    is copied on the first call only (the one-image probe and every later call reuse it)."""
    ens = _ensemble(method)
    models = load_models(tiny_dir, ens, CPU)
    paths = sorted((data_dir / "test").glob("*.png"))
    one = list(predict(paths, models, ens, CPU, progress=False))

    monkeypatch.setattr(model_module, "_devices", lambda models, inference: [torch.device("cpu")] * 2)
    copies: list[str] = []
    original_to = FoldModel.to

    def counted_to(self: FoldModel, device: torch.device) -> FoldModel:
        copies.append(self.name)
        return original_to(self, device)

    monkeypatch.setattr(FoldModel, "to", counted_to)
    ran: list[str] = []
    probe = list(predict(paths[:1], models, ens, CPU, progress=False))  # the budget guard's one-image probe
    assert copies == [fm.name for fm in models]
    replicas = [fm.replicas[(1, "cpu")] for fm in models]
    assert all(r.model is not fm.model for r, fm in zip(replicas, models))
    for name, fm in [("primary", models[0]), ("replica", replicas[0])]:
        fm.model.backbone.register_forward_hook(lambda *args, name=name: ran.append(name))
    two = list(predict(paths, models, ens, CPU, progress=False))
    assert copies == [fm.name for fm in models]  # no copy on the second call
    assert "primary" in ran and "replica" in ran  # batches went to both
    assert [i for i, _, _ in two] == [i for i, _, _ in one] == [p.stem for p in paths]
    assert probe[0][0] == paths[0].stem
    for (_, _, a), (_, _, b) in [(one[0], probe[0]), *zip(one, two)]:
        xs, ys = ([a.fused], [b.fused]) if method == "roi" else (a.views, b.views)
        assert a.names == b.names and len(xs) == len(ys) and sum(len(x) for x in xs) > 0
        for x, y in zip(xs, ys):
            assert len(x) == len(y)
            np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-4)
            np.testing.assert_allclose(x.scores, y.scores, atol=1e-5)
            np.testing.assert_array_equal(x.classes, y.classes)
            np.testing.assert_allclose(x.masks, y.masks, atol=1e-5)


def test_a_replica_follows_its_models_weight(tiny_dir: Path) -> None:
    fm = load_models(tiny_dir, _ensemble("wmf"), CPU)[0]
    first = fm.replica(1, torch.device("cpu"))
    fm.weight = 2.5
    again = fm.replica(1, torch.device("cpu"))
    assert again is first and again.weight == 2.5
    assert fm.replica(2, torch.device("cpu")) is not first


# ------------------------------------------------------------------ one loading for every path


def test_evaluates_loader_gets_the_gpu_guard(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``evaluate`` loads with load_fold_model: on a GPU this torch cannot drive it now
    stops there too, naming the GPU, before building the model."""
    _fake_p100(monkeypatch)
    built: list[object] = []
    monkeypatch.setattr("detectron2.modeling.build_model", lambda cfg: built.append(cfg))
    with pytest.raises(ValueError, match=r"Tesla P100-PCIE-16GB \(cuda:0\) has CUDA compute capability 6\.0"):
        load_fold_model(tiny_dir / "fold0", 1.0, torch.device("cuda:0"), _ensemble("wmf"))
    assert built == []


def test_prepare_model_guards_any_cuda_model(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_p100(monkeypatch)
    stub = FoldModel("fold0", Path("fold0"), 0, 1.0, None, torch.nn.Identity(), torch.device("cuda:1"))
    with pytest.raises(ValueError, match=r"\(cuda:1\) has CUDA compute capability 6\.0"):
        model_module.prepare_model(stub, InferenceConfig(device="cuda"))


def test_evaluate_runs_channels_last_like_predict(tiny_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    """``evaluate`` (and ``tune``, which reads its cache) predicts with models stored
    channels-last on the CPU, as :func:`load_models` stores them, with the same results."""
    from kernel_lib.evaluate import evaluate

    seen: list[tuple[str, bool, bool]] = []
    original = model_module.prepare_model

    def spy(fm: FoldModel, inference: InferenceConfig) -> None:
        original(fm, inference)
        conv = fm.model.backbone.bottom_up.stem.conv1.weight
        seen.append((fm.name, fm.channels_last, conv.is_contiguous(memory_format=torch.channels_last)))

    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((data_dir / "train").glob("*.png"))[:2]:
        (images / path.name).symlink_to(path)
    config = Config(ensemble=EnsembleConfig(method="wmf", tta=("identity",), detections_per_image=30), inference=CPU)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_module, "prepare_model", spy)
        result = evaluate(data_dir / "train.csv", images, tiny_dir, config=config, progress=False)
    assert seen and all(flag and layout for _, flag, layout in seen)
    assert {name for name, _, _ in seen} == {"fold0", "fold1"}
    assert len(result.instances) == 2


# ------------------------------------------------------------------ float16 as CUDA runs it


@contextmanager
def cuda_like_float16() -> Iterator[None]:
    """``torch.autocast(float16)`` on the CPU with what CUDA's autocast runs in float32
    for these models: group_norm (GroupNorm after every convolution of the R50-narrow
    folds) and softmax (the box classifier). CPU autocast keeps neither in float32."""
    from torch.nn import functional

    group_norm, softmax = functional.group_norm, functional.softmax

    def fp32_group_norm(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            args = tuple(a.float() if isinstance(a, torch.Tensor) else a for a in args)
            kwargs = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            return group_norm(x.float(), *args, **kwargs)

    def fp32_softmax(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return softmax(x.float(), *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(functional, "group_norm", fp32_group_norm)
        patch.setattr(functional, "softmax", fp32_softmax)
        patch.setattr(model_module, "_autocast", lambda device, inference: torch.autocast("cpu", dtype=torch.float16))
        yield


def test_cuda_like_float16_keeps_group_norm_in_float32() -> None:
    gn, conv = torch.nn.GroupNorm(4, 8), torch.nn.Conv2d(8, 8, 3)
    x = torch.randn(1, 8, 12, 12)
    with cuda_like_float16(), model_module._autocast(torch.device("cpu"), CPU):
        y = conv(x)
        assert y.dtype == torch.float16 and gn(y).dtype == torch.float32 and conv(gn(y)).dtype == torch.float16


def _shipped_config(device: str, half: bool) -> Config:
    """The shipped pipeline (WMF, tuned post-processing) on the identity view."""
    shipped, _ = config_for_models(SHIPPED, SHIPPED / "best_config.json")
    return shipped.replace(
        ensemble=replace(shipped.ensemble, tta=("identity",)),
        inference=InferenceConfig(device=device, half=half, batch_size=1, num_workers=0, cpu_bf16=False),
    )


def _final_masks(models: list[FoldModel], config: Config, path: Path) -> Any:
    ((_, grey, inst),) = list(predict_instances([path], models, config, progress=False))
    return finalize(inst, grey.shape, config.postprocess).masks


def _assert_same_cells(data_dir: Path, image_id: str, full: Any, half: Any) -> None:
    """Final instances matched by mask IoU (greedy, best pair first), not by rank: at
    least 90% of float32's cells have a partner at IoU >= 0.8, the counts agree within
    10%, and the image's score moves by less than 0.02."""
    from kernel_lib.metric import image_score
    from kernel_lib.truth import read_truth

    assert len(full) >= 10 and abs(len(full) - len(half)) <= 0.1 * len(full), (len(full), len(half))
    iou = mask_iou_matrix(full, half)
    matched = 0
    while iou.size and iou.max() >= 0.8:
        i, j = np.unravel_index(iou.argmax(), iou.shape)
        matched += 1
        iou[i, :], iou[:, j] = 0, 0
    truth = read_truth(data_dir / "train.csv", ids=[image_id])[image_id]
    scores = [image_score(truth.masks, masks).score for masks in (full, half)]
    print(f"{image_id}: float32 {len(full)} cells, float16 {len(half)}, matched {matched}; scores {scores}")
    assert matched >= 0.9 * len(full)
    assert abs(scores[0] - scores[1]) < 0.02, scores


HOLDOUT_IMAGES = ["b50a98297c83", "2025512a5956"]
"""The two holdout images of tests/data: cort (20 cells), shsy5y (hundreds before post-processing)."""


@pytest.mark.slow
@pytest.mark.parametrize("image_id", HOLDOUT_IMAGES)
def test_float16_autocast_finds_the_cells_float32_finds_on_a_shipped_fold(data_dir: Path, image_id: str) -> None:
    """Shipped fold 0, the shipped pipeline, identity view, on a holdout image of
    tests/data: float16 as CUDA runs it (:func:`cuda_like_float16`) against float32,
    the same cells by mask IoU."""
    config = _shipped_config("cpu", half=False)
    models = load_models(SHIPPED, config.ensemble, config.inference)[:1]
    dtypes: list[torch.dtype] = []
    stem = models[0].model.backbone.bottom_up.stem.conv1  # detectron2's Conv2d: convolution, then its GroupNorm
    stem.norm.register_forward_pre_hook(lambda module, args: dtypes.append(args[0].dtype))  # the convolution's output
    path = data_dir / "train" / f"{image_id}.png"
    full = _final_masks(models, config, path)
    with cuda_like_float16():
        half = _final_masks(models, config, path)
    assert dtypes == [torch.float32, torch.float16]  # the second run was float16
    _assert_same_cells(data_dir, image_id, full, half)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("image_id", HOLDOUT_IMAGES)
def test_cuda_float16_finds_the_cells_cpu_float32_finds_on_a_shipped_fold(data_dir: Path, image_id: str) -> None:
    """The same on a GPU (the check's cuda_tests step): shipped fold 0 in float16 on
    CUDA against float32 on the CPU, matched by mask IoU (the test it replaces compared
    the top-5 boxes of random folds by rank, which float16 noise reorders)."""
    path = data_dir / "train" / f"{image_id}.png"
    cpu = _shipped_config("cpu", half=False)
    full = _final_masks(load_models(SHIPPED, cpu.ensemble, cpu.inference)[:1], cpu, path)
    gpu = _shipped_config("cuda", half=True)
    half = _final_masks(load_models(SHIPPED, gpu.ensemble, gpu.inference)[:1], gpu, path)
    _assert_same_cells(data_dir, image_id, full, half)
