"""Held-out scoring of fold models: the bundle's own pipeline (:mod:`kernel_lib.pipeline`:
ensemble, TTA, post-processing) on annotated images, scored by :mod:`kernel_lib.evaluate`
with the competition metric. The truth is the rows the training data kept (duplicated
and broken rows left out, as for training). Imports torch (through the models)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from detectron2.config import CfgNode

from kernel_lib.config import Config
from kernel_lib.model_folder import NORMALIZATION_KEY
from kernel_lib.training.datasets import TrainingData, record_masks
from kernel_lib.training.folder import HELDOUT_SCORES, write_model_folder


@dataclass(frozen=True)
class HeldoutScore:
    """Competition-metric score of models on annotated images.

    Attributes:
        score: mean image score.
        per_cell_type: cell type -> mean image score (types present only).
        per_image: DataFrame[id, cell_type, score, n_truth, n_pred].
        n_images: images scored.
        seconds: wall time of prediction and scoring.
    """

    score: float
    per_cell_type: dict[str, float]
    per_image: pd.DataFrame
    n_images: int
    seconds: float


def score_models(models_dir: str | Path, data: TrainingData, config: Config | None = None) -> HeldoutScore:
    """Predict ``data``'s images with every model of ``models_dir`` through the bundle's
    pipeline (ensemble, TTA, post-processing of ``config``) and score them.

    Args:
        models_dir: a models folder (``<name>/config.yaml`` + ``model_final.pth``).
        data: annotated images (:func:`~kernel_lib.training.datasets.load_dataset_dicts`); rows
            left out as problems are not part of the truth.
        config: pipeline config; defaults to :class:`kernel_lib.config.Config`.
    """
    from kernel_lib.evaluate import score_instances
    from kernel_lib.pipeline import load_models, predict_instances
    from kernel_lib.truth import Truth

    config = config or Config()
    start = time.perf_counter()
    models = load_models(models_dir, config)
    records = {str(record["image_id"]): record for record in data.dicts}
    paths = [Path(record["file_name"]) for record in data.dicts]
    lowest = min(config.postprocess.score_threshold)  # below it post-processing drops boxes anyway
    instances = {i: inst for i, _, inst in predict_instances(paths, models, config, mask_min_score=lowest)}
    truth = {i: Truth(record_masks(records[i]), str(records[i]["cell_type"])) for i in instances}
    report, _, _ = score_instances(instances, truth, config.postprocess)
    per_image = report.per_image[["id", "cell_type", "score", "n_truth", "n_pred"]].reset_index(drop=True)
    per_type = {str(k): float(v) for k, v in report.per_cell_type.items()}
    return HeldoutScore(float(report.score), per_type, per_image, len(per_image), time.perf_counter() - start)


def score_weights(
    cfg: CfgNode, model: torch.nn.Module, data: TrainingData, config: Config, name: str, normalization: str = "none"
) -> HeldoutScore:
    """Score in-memory weights: written to a temporary model folder (with the run's input
    normalisation in its meta.json), read back by the pipeline."""
    with tempfile.TemporaryDirectory(prefix="kernel_lib_eval_") as tmp:
        folder = Path(tmp) / name
        write_model_folder(folder, cfg, model, meta={NORMALIZATION_KEY: normalization})
        return score_models(tmp, data, config)


def score_fold(fold_dir: Path, heldout: TrainingData, config: Config, config_name: str = "") -> dict[str, Any]:
    """Score one model folder on its held-out images; writes :data:`HELDOUT_SCORES` there.

    Returns:
        The meta.json entries: heldout_score, heldout_per_cell_type, heldout_images,
        heldout_eval (method, tta, config, seconds).
    """
    with tempfile.TemporaryDirectory(prefix="kernel_lib_heldout_") as tmp:
        (Path(tmp) / fold_dir.name).symlink_to(fold_dir.resolve(), target_is_directory=True)
        result = score_models(tmp, heldout, config)
    result.per_image.to_csv(fold_dir / HELDOUT_SCORES, index=False)
    return {
        "heldout_score": round(result.score, 6),
        "heldout_per_cell_type": {k: round(v, 6) for k, v in result.per_cell_type.items()},
        "heldout_images": result.n_images,
        "heldout_eval": {
            "method": config.ensemble.method,
            "tta": list(config.ensemble.tta),
            "config": config_name or "defaults",
            "seconds": round(result.seconds, 1),
        },
    }
