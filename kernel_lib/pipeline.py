"""The whole inference pipeline: models -> ensemble -> post-processing -> submission.csv.

``run_inference`` is the notebook's one call; ``evaluate`` uses the parts:
:func:`load_models` once, :func:`predict_instances` (fused soft instances per image,
what it caches) and :func:`finalize` (hard masks after post-processing).

This module imports torch only inside :func:`load_models` / :func:`predict_instances`
(through ``kernel_lib.model``), so :func:`finalize` works without torch.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kernel_lib.config import Config, PostprocessConfig
from kernel_lib.ensemble import SoftInstances, fuse_views, paste
from kernel_lib.images import list_images
from kernel_lib.masks import CropMasks
from kernel_lib.postprocess import Postprocessed, postprocess
from kernel_lib.rle import rle_encode_crops
from kernel_lib.submission import read_csv_columns, validate_submission, write_submission

if TYPE_CHECKING:
    from kernel_lib.model import FoldModel, ViewOutputs

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
    from kernel_lib.model import predict

    yield from predict(
        image_paths, models, config.ensemble, config.inference, mask_min_score=mask_min_score, progress=progress
    )


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
    :func:`kernel_lib.postprocess.postprocess` (cell type, per-type thresholds, overlaps).

    Raises:
        ValueError: ``inst`` is of another frame than ``grey_shape``.
    """
    if tuple(inst.shape) != tuple(grey_shape):
        raise ValueError(f"finalize: instances are of a {inst.shape} frame, the image is {tuple(grey_shape)}")
    return postprocess(paste(inst, pp.mask_threshold), inst.scores, inst.classes, pp)


@dataclass
class InferenceResult:
    """What :func:`run_inference` did.

    Attributes:
        submission: the CSV written (validated).
        timings: seconds per stage: "load_models"; "inference" (the models' loop, wall
            time); "postprocess" (instance-level fusion for "wmf"/"mask_nms", pasting,
            post-processing and RLE, summed over images: it runs in a background thread
            during "inference"); "postprocess_tail" (what was left of it after the
            models finished); "write" (write + validate); "total".
        n_images: images predicted.
        n_instances: instances written.
        predictions: id -> final masks.
    """

    submission: Path
    timings: dict[str, float]
    n_images: int
    n_instances: int
    predictions: dict[str, CropMasks] = field(default_factory=dict)


def _sample_ids(sample_csv: str | Path) -> list[str]:
    df = read_csv_columns(sample_csv, ("id",), "pass the competition's sample_submission.csv")
    return list(dict.fromkeys(df["id"].str.strip().tolist()))


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
    paths = list_images(test_dir)
    if sample_csv is not None:
        ids = _sample_ids(sample_csv)
        by_id = {p.stem: p for p in paths}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise ValueError(
                f"{len(missing)} id(s) of {sample_csv} have no image in {test_dir}, e.g. {missing[:3]}; "
                f"pass the test folder that matches the sample submission"
            )
        paths = [by_id[i] for i in ids]
    else:
        ids = [p.stem for p in paths]

    models = load_models(models_dir, config)
    t_loaded = time.perf_counter()

    pp = config.postprocess
    post_seconds = 0.0

    def _finish(out: ViewOutputs, shape: tuple[int, int]) -> tuple[CropMasks, list[str], float]:
        start = time.perf_counter()
        result = finalize(fuse_outputs(out, config), shape, pp)
        rles = rle_encode_crops(result.masks)
        return result.masks, rles, time.perf_counter() - start

    masks_by_id: dict[str, CropMasks] = {}
    rles_by_id: dict[str, list[str]] = {}
    pending: deque[tuple[str, Future]] = deque()

    def _collect_oldest() -> float:
        image_id, future = pending.popleft()
        masks, rles, seconds = future.result()
        masks_by_id[image_id], rles_by_id[image_id] = masks, rles
        return seconds

    # fusion ("wmf"/"mask_nms"), post-processing and encoding of image i run in a thread
    # while the models work on the next images; at most MAX_PENDING images wait
    with ThreadPoolExecutor(max_workers=1) as pool:
        for image_id, grey, out in _model_outputs(paths, models, config, min(pp.score_threshold), progress):
            pending.append((image_id, pool.submit(_finish, out, grey.shape)))
            while len(pending) > MAX_PENDING or (pending and pending[0][1].done()):
                post_seconds += _collect_oldest()
        t_predicted = time.perf_counter()
        while pending:
            post_seconds += _collect_oldest()
    t_post = time.perf_counter()

    out_csv = write_submission(rles_by_id, out_csv, ids)
    problems = validate_submission(out_csv, sample_csv)
    if problems:
        listed = "; ".join(str(p) for p in problems[:5])
        raise ValueError(f"{out_csv}: the written submission has {len(problems)} problem(s): {listed}")
    t_end = time.perf_counter()
    timings = {
        "load_models": t_loaded - t0,
        "inference": t_predicted - t_loaded,
        "postprocess": post_seconds,
        "postprocess_tail": t_post - t_predicted,
        "write": t_end - t_post,
        "total": t_end - t0,
    }
    return InferenceResult(
        submission=Path(out_csv),
        timings=timings,
        n_images=len(paths),
        n_instances=sum(len(m) for m in masks_by_id.values()),
        predictions=masks_by_id,
    )
