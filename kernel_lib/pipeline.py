"""The whole inference pipeline: models -> ensemble -> post-processing -> submission.csv.

``run_inference`` is the notebook's one call; ``evaluate`` uses the parts:
:func:`load_models` once, :func:`predict_instances` (fused soft instances per image,
what it caches) and :func:`finalize` (hard masks after post-processing).

This module imports torch only inside :func:`load_models` / :func:`predict_instances`
(through ``kernel_lib.model``), so :func:`finalize` works without torch.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from kernel_lib.budget import BudgetGuard, DegradationStep, ImageRun, degradation_steps
from kernel_lib.config import Config, PostprocessConfig
from kernel_lib.ensemble import fuse_views
from kernel_lib.images import list_images
from kernel_lib.masks import CropMasks
from kernel_lib.postprocess import Postprocessed, image_cell_type, postprocess
from kernel_lib.rle import rle_encode_crops
from kernel_lib.soft import SoftInstances, ViewOutputs, mask_confidence, paste
from kernel_lib.submission import read_csv_columns, validate_submission, write_submission

if TYPE_CHECKING:
    from kernel_lib.model import FoldModel

MAX_PENDING = 8
"""Most images whose post-processing may queue behind the models in :func:`run_inference`."""

__all__ = ["InferenceResult", "finalize", "fuse_outputs", "load_models", "predict_instances", "run_inference"]


def load_models(models_dir: str | Path, config: Config | None = None) -> list[FoldModel]:
    """Load every model of a model folder once (see ``kernel_lib.model`` for the layout).

    Args:
        models_dir: ``MODELS/<name>/config.yaml + model_final.pth`` (+ optional models.json).
        config: its ``ensemble`` (score threshold, detection limit) and ``inference``
            (device) parts are used; None: defaults.

    Raises:
        ValueError: missing or mismatched files, naming the model.
    """
    from kernel_lib.model import load_models as _load

    config = config or Config()
    return _load(models_dir, config.ensemble, config.inference)


def predict_instances(
    image_paths: Sequence[str | Path],
    models: Sequence[FoldModel],
    config: Config | None = None,
    *,
    mask_min_score: float = 0.0,
    progress: bool = True,
) -> Iterator[tuple[str, np.ndarray, SoftInstances]]:
    """Run the ensemble on images, in order: yields (id, grey (H, W) uint8, SoftInstances).

    The instances are fused across models and TTA views with ``config.ensemble.method``
    and not post-processed (no score threshold beyond ``candidate_score``, no overlap
    removal): what ``evaluate`` caches and ``tune`` searches over.

    Args:
        image_paths: image files; the id is the file stem.
        models: from :func:`load_models`.
        config: the pipeline config (None: defaults).
        mask_min_score: "roi" only: boxes below this score skip the mask heads and get
            an all-zero soft mask (they keep score and class). 0 (default) masks all;
            :func:`run_inference` passes the lowest per-type score threshold, which
            post-processing would drop them below anyway.
        progress: show a tqdm bar.
    """
    config = config or Config()
    for image_id, grey, out in _model_outputs(image_paths, models, config, mask_min_score, progress):
        yield image_id, grey, fuse_outputs(out, config)


def _model_outputs(
    image_paths: Sequence[str | Path],
    models: Sequence[FoldModel],
    config: Config,
    mask_min_score: float,
    progress: bool,
) -> Iterator[tuple[str, np.ndarray, ViewOutputs]]:
    """The models' outputs per image; with ``config.ensemble.type_scale`` set, an image
    whose voted cell type has a factor other than 1 runs again at its type's scales."""
    from kernel_lib.model import predict

    ensemble = config.ensemble
    base = predict(image_paths, models, ensemble, config.inference, mask_min_score=mask_min_score, progress=progress)
    if not ensemble.type_scaled:
        yield from base
        return
    by_id = {Path(p).stem: p for p in image_paths}
    single = dataclasses.replace(config.inference, num_workers=0)
    try:
        for image_id, grey, out in base:
            factor = ensemble.type_scale[image_cell_type(fuse_outputs(out, config).classes)]
            if factor != 1.0:
                scaled = dataclasses.replace(ensemble, scales=tuple(factor * s for s in ensemble.scales))
                again = predict([by_id[image_id]], models, scaled, single, mask_min_score, progress=False)
                ((_, grey, out),) = list(again)
            yield image_id, grey, out
    finally:
        base.close()


def fuse_outputs(out: ViewOutputs, config: Config) -> SoftInstances:
    """One image's model outputs -> fused instances: the "roi" result as it is, else the
    per-view instances combined by :func:`kernel_lib.ensemble.fuse_views` (numpy)."""
    if out.fused is not None:
        return out.fused
    models = [name.split("/", 1)[0] for name in out.names]
    model_of = [sorted(set(models)).index(m) for m in models]
    return fuse_views(out.views, out.weights, config.ensemble, config.postprocess.mask_threshold, model_of)


def finalize(inst: SoftInstances, grey_shape: tuple[int, int], pp: PostprocessConfig) -> Postprocessed:
    """Soft instances -> hard, disjoint masks: paste once at ``pp.mask_threshold``, then
    :func:`kernel_lib.postprocess.postprocess` (cell type, rescoring by mask confidence,
    per-type thresholds, overlaps).

    Raises:
        ValueError: ``inst`` is of another frame than ``grey_shape``.
    """
    if tuple(inst.shape) != tuple(grey_shape):
        raise ValueError(f"finalize: instances are of a {inst.shape} frame, the image is {tuple(grey_shape)}")
    confidence = mask_confidence(inst, pp.mask_threshold) if any(pp.rescore) else None
    return postprocess(paste(inst, pp.mask_threshold), inst.scores, inst.classes, pp, confidence)


@dataclass
class InferenceResult:
    """What :func:`run_inference` did.

    Attributes:
        submission: the CSV written (validated).
        timings: seconds per stage: "load_models"; "inference" (the models' loop, wall
            time); "postprocess" (instance-level fusion for "wmf"/"mask_nms", pasting,
            post-processing and RLE, summed over images: it runs in a background thread
            during "inference"); "postprocess_tail" (what was left of it after the
            models finished); "write" (write + validate); "total". With a time budget
            also "time_budget" (the budget itself) and "inference step K (LABEL)": the
            models' seconds at each degradation step that ran (see
            :mod:`kernel_lib.budget`).
        n_images: images predicted.
        n_instances: instances written.
        predictions: id -> final masks.
        runs: per image, in order, the ensemble that ran on it (step, models, views,
            scales, seconds).
    """

    submission: Path
    timings: dict[str, float]
    n_images: int
    n_instances: int
    predictions: dict[str, CropMasks] = field(default_factory=dict)
    runs: list[ImageRun] = field(default_factory=list)

    @property
    def n_degraded(self) -> int:
        """Images that ran a lighter ensemble than the configured one (time budget)."""
        return sum(run.step > 0 for run in self.runs)

    def per_image_table(self) -> pd.DataFrame:
        """One row per image: id, step, label, models, tta, scales, seconds (a CSV's columns)."""
        rows = [
            {
                "id": run.id,
                "step": run.step,
                "label": run.label,
                "models": " ".join(run.models),
                "tta": " ".join(run.tta),
                "scales": " ".join(f"{s:g}" for s in run.scales),
                "seconds": run.seconds,
            }
            for run in self.runs
        ]
        return pd.DataFrame(rows, columns=["id", "step", "label", "models", "tta", "scales", "seconds"])


def _sample_ids(sample_csv: str | Path) -> list[str]:
    df = read_csv_columns(sample_csv, ("id",), "pass the competition's sample_submission.csv")
    return list(dict.fromkeys(df["id"].str.strip().tolist()))


def _test_images(test_dir: str | Path, sample_csv: str | Path | None) -> tuple[list[Path], list[str]]:
    """The images to predict and the ids to write: the sample's, in its order, else every image."""
    paths = list_images(test_dir)
    if sample_csv is None:
        return paths, [p.stem for p in paths]
    ids = _sample_ids(sample_csv)
    by_id = {p.stem: p for p in paths}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValueError(
            f"{len(missing)} id(s) of {sample_csv} have no image in {test_dir}, e.g. {missing[:3]}; "
            f"pass the test folder that matches the sample submission"
        )
    return [by_id[i] for i in ids], ids


def _guarded_outputs(
    paths: Sequence[Path],
    models: Sequence[FoldModel],
    config: Config,
    guard: BudgetGuard,
    mask_min_score: float,
    progress: bool,
) -> Iterator[tuple[str, np.ndarray, ViewOutputs, DegradationStep]]:
    """The models' outputs, image by image, at the guard's current step: the probe image
    alone first when the guard asks for one; when the guard steps down (after a batch),
    the remaining images restart with the lighter ensemble."""
    by_name = {fm.name: fm for fm in models}
    start = 0
    while start < len(paths):
        step = guard.step
        chosen = [by_name[name] for name in step.models]
        stop = start + 1 if guard.probing else len(paths)
        outputs = _model_outputs(
            paths[start:stop], chosen, config.replace(ensemble=step.ensemble), mask_min_score, progress
        )
        try:
            for image_id, grey, out in outputs:
                start += 1
                yield image_id, grey, out, step
                if guard.step is not step:
                    break
        finally:
            outputs.close()


@dataclass
class _Finished:
    """What the models' loop and the post-processing thread left."""

    masks: dict[str, CropMasks]
    rles: dict[str, list[str]]
    post_seconds: float
    models_done: float  # clock when the last model output came


def _predict_and_finish(
    paths: Sequence[Path], models: Sequence[FoldModel], config: Config, guard: BudgetGuard, progress: bool
) -> _Finished:
    """Run the models (under the guard) and, in one background thread, fuse ("wmf" /
    "mask_nms"), post-process and encode each image while the models work on the next;
    at most MAX_PENDING images wait."""
    pp = config.postprocess
    done = _Finished({}, {}, 0.0, 0.0)
    pending: deque[tuple[str, Future]] = deque()

    def _finish(out: ViewOutputs, shape: tuple[int, int], step: DegradationStep) -> tuple[CropMasks, list[str], float]:
        start = time.perf_counter()
        result = finalize(fuse_outputs(out, config.replace(ensemble=step.ensemble)), shape, pp)
        return result.masks, rle_encode_crops(result.masks), time.perf_counter() - start

    def _collect_oldest() -> None:
        image_id, future = pending.popleft()
        masks, rles, seconds = future.result()
        done.masks[image_id], done.rles[image_id] = masks, rles
        done.post_seconds += seconds

    with ThreadPoolExecutor(max_workers=1) as pool:
        outputs = _guarded_outputs(paths, models, config, guard, min(pp.score_threshold), progress)
        for image_id, grey, out, step in outputs:
            pending.append((image_id, pool.submit(_finish, out, grey.shape, step)))
            while len(pending) > MAX_PENDING or (pending and pending[0][1].done()):
                _collect_oldest()
            per_image_post = done.post_seconds / max(len(done.masks), 1)
            guard.image_done(image_id, tail_s=len(pending) * per_image_post)
        done.models_done = time.perf_counter()
        while pending:
            _collect_oldest()
    return done


def run_inference(
    test_dir: str | Path,
    models_dir: str | Path,
    out_csv: str | Path,
    config: Config | None = None,
    sample_csv: str | Path | None = None,
    *,
    progress: bool = True,
) -> InferenceResult:
    """Predict every test image and write a validated ``submission.csv``.

    With ``config.inference.time_budget_s`` set, a :class:`kernel_lib.budget.BudgetGuard`
    projects the finish after a first image run alone and after each batch, and runs a
    lighter ensemble on the remaining images when it would overrun (extra scales, then
    flip views, then the lowest-weight models; each step logged, each image's in
    ``runs``); every image still gets predictions.

    Args:
        test_dir: folder of ``<id>.png`` test images.
        models_dir: the model folder (see :func:`load_models`).
        out_csv: where to write the submission.
        config: the pipeline config (None: defaults).
        sample_csv: the sample submission; when given, exactly its ids are predicted and
            written (in its order) and every one must have an image in ``test_dir``;
            otherwise every image of ``test_dir``.
        progress: show a tqdm bar.

    Raises:
        ValueError: no images, a sample id without image, model folder problems, or a
            written file the validator rejects (a bug: the message lists the problems).
    """
    config = config or Config()
    t0 = time.perf_counter()
    paths, ids = _test_images(test_dir, sample_csv)
    models = load_models(models_dir, config)
    t_loaded = time.perf_counter()

    steps = degradation_steps(config.ensemble, [(fm.name, fm.weight) for fm in models])
    budget = config.inference.time_budget_s
    guard = BudgetGuard(budget, steps, len(paths), config.inference.batch_size, start=t_loaded)
    done = _predict_and_finish(paths, models, config, guard, progress)
    t_post = time.perf_counter()

    out_csv = write_submission(done.rles, out_csv, ids)
    problems = validate_submission(out_csv, sample_csv)
    if problems:
        listed = "; ".join(str(p) for p in problems[:5])
        raise ValueError(f"{out_csv}: the written submission has {len(problems)} problem(s): {listed}")
    t_end = time.perf_counter()

    timings = {
        "load_models": t_loaded - t0,
        "inference": done.models_done - t_loaded,
        "postprocess": done.post_seconds,
        "postprocess_tail": t_post - done.models_done,
        "write": t_end - t_post,
        "total": t_end - t0,
    }
    if budget is not None:
        timings["time_budget"] = float(budget)
        for index, seconds in guard.seconds_per_step.items():
            timings[f"inference step {index} ({steps[index].label})"] = seconds
    return InferenceResult(
        submission=Path(out_csv),
        timings=timings,
        n_images=len(paths),
        n_instances=sum(len(m) for m in done.masks.values()),
        predictions=done.masks,
        runs=guard.runs,
    )
