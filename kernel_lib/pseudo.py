"""Pseudo-labels: the shipped pipeline's predictions on unlabelled images, as train.csv rows.

The competition's ``train_semi_supervised/`` holds ~1,970 images without annotations;
2nd, 4th, 5th and 7th place trained on their predicted instances too. :func:`pseudo_label`
runs the same ensemble, TTA and post-processing as a submission
(:func:`kernel_lib.pipeline.predict_instances` -> :func:`~kernel_lib.pipeline.finalize`)
and keeps, per image, the instances scoring at least ``min_score``; an image is kept
when the mean score of what it kept (its *image score*) is at least ``min_image_score``
and it kept at least one instance. The rows are train.csv's (``id, annotation, width,
height, cell_type``: row-major RLE, the image's voted cell type) plus ``score`` and
``image_score``, so that ``train --extra-truth pseudo.csv --extra-images DIR`` reads
them as it reads train.csv. Rounds repeat: train with them, label again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kernel_lib.config import CELL_TYPES, Config

PSEUDO_COLUMNS: tuple[str, ...] = ("id", "annotation", "width", "height", "cell_type", "score", "image_score")
"""Columns of a pseudo-label file: train.csv's, then the instance and image confidence."""


@dataclass(frozen=True)
class PseudoImage:
    """One image's outcome: how many instances the pipeline kept, how many passed
    ``min_score``, their mean score, and whether the image is kept."""

    id: str
    cell_type: str
    n_final: int
    n_kept: int
    image_score: float
    kept: bool


def pseudo_label(
    image_paths: Sequence[str | Path],
    models_dir: str | Path,
    config: Config,
    min_score: float = 0.5,
    min_image_score: float = 0.0,
    progress: bool = True,
) -> tuple[pd.DataFrame, list[PseudoImage]]:
    """Predict ``image_paths`` with every model of ``models_dir`` and keep confident instances.

    Args:
        image_paths: unlabelled images (competition frame).
        models_dir: the fold models (``models.json`` weights, ``best_config.json`` as ``config``).
        config: the pipeline config (ensemble, TTA, post-processing: a submission's).
        min_score: an instance's least score to become a label, in [0, 1].
        min_image_score: an image's least mean kept score, in [0, 1].
        progress: a tqdm bar.

    Returns:
        (DataFrame[PSEUDO_COLUMNS], one :class:`PseudoImage` per image in order).

    Raises:
        ValueError: a threshold outside [0, 1]; what :func:`kernel_lib.pipeline.load_models` raises.
    """
    from kernel_lib.pipeline import finalize, load_models, predict_instances
    from kernel_lib.rle import rle_encode_crops

    for name, value in (("min_score", min_score), ("min_image_score", min_image_score)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: expected a score in [0, 1], got {value!r}")
    models = load_models(models_dir, config)
    rows: list[pd.DataFrame] = []
    images: list[PseudoImage] = []
    lowest = min(config.postprocess.score_threshold)
    predicted = predict_instances(image_paths, models, config, mask_min_score=lowest, progress=progress)
    for image_id, grey, inst in predicted:
        final = finalize(inst, grey.shape, config.postprocess)
        confident = np.flatnonzero(final.scores >= min_score)
        scores = final.scores[confident]
        image_score = float(scores.mean()) if len(scores) else 0.0
        cell_type = CELL_TYPES[final.cell_type]
        kept = len(confident) > 0 and image_score >= min_image_score
        images.append(PseudoImage(image_id, cell_type, len(final.scores), len(confident), image_score, kept))
        if kept:
            height, width = grey.shape
            rles = rle_encode_crops(final.masks.subset(confident))
            rows.append(
                pd.DataFrame(
                    {
                        "id": image_id,
                        "annotation": rles,
                        "width": width,
                        "height": height,
                        "cell_type": cell_type,
                        "score": np.round(scores.astype(np.float64), 4),
                        "image_score": round(image_score, 4),
                    }
                )
            )
    frame = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=list(PSEUDO_COLUMNS))
    return frame[list(PSEUDO_COLUMNS)], images


def summary_lines(images: Sequence[PseudoImage]) -> Iterator[str]:
    """Per cell type: images kept of predicted, labels kept, mean image score."""
    for cell_type in CELL_TYPES:
        these = [i for i in images if i.cell_type == cell_type]
        if not these:
            continue
        kept = [i for i in these if i.kept]
        mean = float(np.mean([i.image_score for i in kept])) if kept else 0.0
        labels = sum(i.n_kept for i in kept)
        yield f"{cell_type}: {len(kept)} of {len(these)} images kept, {labels} labels, mean image score {mean:.3f}"
