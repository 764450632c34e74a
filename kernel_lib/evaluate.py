"""Out-of-fold evaluation of fold models on annotated images, with an instance cache.

Each model runs only on the images it did not train on: a folds file
(``id,cell_type,fold``, see :mod:`kernel_lib.folds`) gives every image's fold, and a
model's fold comes from its ``meta.json`` "fold" or the number after "fold" in its
folder name (as :mod:`kernel_lib.model` reads it). Image i is predicted by the models of
fold(i), fused with the pipeline's ensemble (:func:`kernel_lib.pipeline.predict_instances`).
Without a folds file every model runs on every image (in-fold when the models saw them).

The fused instances, before post-processing (boxes, scores, classes, RoI soft masks),
go to a cache folder, one ``<id>.npz`` per image (masks as float16, compressed), with a
key that hashes the models' files and weights, the ensemble config and the image's
bytes: a changed model, ensemble or image is predicted again, a changed post-processing
is not. Scores are always computed from the stored (float16) instances, so a run that
reads the cache gives exactly the scores of the run that filled it. ``manifest.json``
in the folder lists the images of the last evaluation, their keys and the config: what
``tune`` and ``report`` read.

Scoring: :func:`kernel_lib.pipeline.finalize` (paste + post-process) then
:func:`kernel_lib.metric.image_score` per image, aggregated by
:func:`kernel_lib.metric.report_from_scores`.
"""

from __future__ import annotations

import hashlib
import json
import time
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kernel_lib.config import CELL_TYPES, Config, PostprocessConfig
from kernel_lib.folds import read_folds
from kernel_lib.images import list_images
from kernel_lib.masks import CropMasks
from kernel_lib.metric import ImageScore, ScoreReport, image_score, report_from_scores
from kernel_lib.model_folder import ModelInfo, file_digest, model_infos
from kernel_lib.outputs import atomic_output
from kernel_lib.soft import SoftInstances
from kernel_lib.truth import Truth, read_truth, truth_notes

CACHE_VERSION = 1
"""Bumped when the cache file layout or what goes into a key changes."""
MANIFEST = "manifest.json"
"""The cache folder's index of the last evaluation."""


# --------------------------------------------------------------------------- models


def assign_models(
    ids: Sequence[str], models: Sequence[ModelInfo], folds: Mapping[str, int] | None
) -> tuple[dict[str, tuple[ModelInfo, ...]], dict[str, str], list[str]]:
    """Which models predict which image.

    Args:
        ids: the images to evaluate.
        models: the available models.
        folds: id -> fold from a folds file, or None (every model on every image).

    Returns:
        ``(assigned, skipped, notes)``: id -> its models; id -> why it is left out;
        plain-language notes on the assignment.

    Raises:
        ValueError: a folds file is given and a model has no fold.
    """
    notes: list[str] = []
    skipped: dict[str, str] = {}
    if folds is None:
        notes.append(
            f"no folds file: every model ({len(models)}) runs on every image; if the models trained on these "
            "images the scores are in-fold (optimistic), not out-of-fold"
        )
        return {i: tuple(models) for i in ids}, skipped, notes
    no_fold = [m.name for m in models if m.fold is None]
    if no_fold:
        raise ValueError(
            f"model(s) {no_fold} have no fold (no meta.json 'fold', no number after 'fold' in the name): "
            "cannot tell which images they trained on; name them foldK or drop --folds"
        )
    by_fold: dict[int, list[ModelInfo]] = {}
    for m in models:
        by_fold.setdefault(int(m.fold), []).append(m)  # type: ignore[arg-type]
    assigned: dict[str, tuple[ModelInfo, ...]] = {}
    for i in ids:
        if i not in folds:
            skipped[i] = "not in the folds file"
        elif folds[i] not in by_fold:
            skipped[i] = f"no model of its fold {folds[i]}"
        else:
            assigned[i] = tuple(by_fold[folds[i]])
    used = sorted({f for i, f in folds.items() if i in assigned})
    notes.append(
        "out-of-fold: each image is predicted by the model(s) of its own fold ("
        + ", ".join(f"fold {f}: {'+'.join(m.name for m in by_fold[f])}" for f in used)
        + ")"
    )
    if skipped:
        reasons = pd.Series(list(skipped.values())).value_counts()
        notes.append("skipped " + "; ".join(f"{n} image(s): {why}" for why, n in reasons.items()))
    unused = sorted(set(by_fold) - set(used))
    if unused:
        notes.append(f"fold(s) {unused} have models but no image here")
    return assigned, skipped, notes


# ---------------------------------------------------------------------------- cache


def cache_key(models: Sequence[ModelInfo], config: Config, image_digest: str) -> str:
    """Hex key of what determines an image's fused instances: the models (content and
    weight), the ensemble config (and the mask threshold where fusion uses it), the
    inference precision and the image bytes."""
    ensemble = config.to_dict()["ensemble"]
    if not config.ensemble.type_scaled:
        del ensemble["type_scale"]  # one pass, as before the field existed: earlier caches stay valid
    what = {
        "version": CACHE_VERSION,
        "models": sorted((m.digest, m.weight) for m in models),
        "ensemble": ensemble,
        "mask_threshold": config.postprocess.mask_threshold if config.ensemble.method != "roi" else None,
        "half": config.inference.half,
        "image": image_digest,
    }
    return hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=16).hexdigest()


def compact(inst: SoftInstances) -> SoftInstances:
    """The instances as the cache stores them (soft masks rounded to float16)."""
    return SoftInstances(inst.boxes, inst.scores, inst.classes, inst.masks.astype(np.float16), inst.shape)


def save_instances(path: str | Path, inst: SoftInstances, key: str) -> None:
    """Write one image's fused instances (compressed .npz, masks float16)."""
    path = Path(path)
    with atomic_output(path, durable=False) as tmp:
        np.savez_compressed(
            tmp,
            key=np.array(key),
            version=np.array(CACHE_VERSION),
            boxes=inst.boxes.astype(np.float32),
            scores=inst.scores.astype(np.float32),
            classes=inst.classes.astype(np.int8),
            masks=inst.masks.astype(np.float16),
            shape=np.array(inst.shape, np.int32),
        )


def load_instances(path: str | Path, key: str | None = None) -> SoftInstances | None:
    """Read one cached image; None when the file is absent or its key (if given) or
    version differs (a stale entry).

    Raises:
        ValueError: the file exists but is not a readable cache entry.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != CACHE_VERSION or (key is not None and str(data["key"]) != key):
                return None
            return SoftInstances(
                data["boxes"],
                data["scores"],
                data["classes"].astype(np.int64),
                data["masks"].astype(np.float32),
                tuple(int(v) for v in data["shape"]),  # type: ignore[arg-type]
            )
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise ValueError(
            f"cache entry {path} is unreadable ({reason}; truncated or not written by evaluate); "
            f"delete it and run evaluate again to predict that image anew"
        ) from None


@dataclass(frozen=True)
class CacheEntry:
    """A manifest line: image id, its cache file, key, models and fold."""

    id: str
    file: Path
    key: str
    models: tuple[str, ...]
    fold: int | None


def read_cache_manifest(cache_dir: str | Path) -> tuple[list[CacheEntry], Config]:
    """The images of the last evaluation in ``cache_dir`` and the config it used.

    Raises:
        ValueError: no manifest (run ``evaluate`` first) or a malformed one.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST
    if not path.is_file():
        raise ValueError(
            f"{path} does not exist; fill the cache first with `python -m kernel_lib evaluate ... --cache {cache_dir}`"
        )
    try:
        data = json.loads(path.read_text())
        entries = [
            CacheEntry(e["id"], cache_dir / e["file"], e["key"], tuple(e["models"]), e.get("fold"))
            for e in data["images"]
        ]
        config = Config.from_dict(data["config"], source=str(path))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid cache manifest ({err}); run evaluate again") from None
    return entries, config


def load_cached(entries: Sequence[CacheEntry]) -> dict[str, SoftInstances]:
    """The instances of manifest entries. Raises ValueError on a missing or stale file."""
    out = {}
    for e in entries:
        inst = load_instances(e.file, e.key)
        if inst is None:
            raise ValueError(f"cache file {e.file} is missing or stale (key differs); run evaluate again")
        out[e.id] = inst
    return out


# ----------------------------------------------------------------------- evaluation


@dataclass(frozen=True, eq=False)
class Evaluation:
    """An evaluation's outcome.

    Attributes:
        report: the metric (overall, per cell type, per threshold, per image); its
            per_image frame also has ``predicted_type`` and ``n_candidates`` (instances
            before post-processing).
        config: the config used.
        instances: id -> the (cache-rounded) fused instances scored.
        scores: id -> ImageScore.
        skipped: id -> why it was not evaluated.
        notes: plain-language notes (out-of-fold or not, skipped images).
        cached, predicted: images read from the cache / run through the models.
        seconds: "predict" and "score" wall time.
    """

    report: ScoreReport
    config: Config
    instances: dict[str, SoftInstances]
    scores: dict[str, ImageScore]
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cached: int = 0
    predicted: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = self.report.to_dict()
        out.update(
            notes=self.notes,
            skipped=self.skipped,
            cached=self.cached,
            predicted=self.predicted,
            seconds=self.seconds,
            postprocess=self.config.to_dict()["postprocess"],
        )
        predicted_type = dict(zip(self.report.per_image["id"], self.report.per_image["predicted_type"]))
        for row in out["per_image"]:  # type: ignore[union-attr]
            row["predicted_type"] = predicted_type[row["id"]]
        return out


def score_instances(
    instances: Mapping[str, SoftInstances],
    truth: Mapping[str, Truth],
    pp: PostprocessConfig,
    progress: bool = False,
) -> tuple[ScoreReport, dict[str, ImageScore], dict[str, CropMasks]]:
    """Post-process and score fused instances against the truth.

    Returns:
        ``(report, scores, predictions)``: the metric report (per_image gains
        ``predicted_type`` and ``n_candidates``), id -> ImageScore, id -> final masks.
    """
    from tqdm.auto import tqdm

    from kernel_lib.pipeline import finalize

    scores: dict[str, ImageScore] = {}
    predictions: dict[str, CropMasks] = {}
    predicted_type: dict[str, str] = {}
    for image_id, inst in tqdm(instances.items(), desc="score", unit="img", disable=not progress):
        t = truth[image_id]
        post = finalize(inst, t.masks.shape, pp)
        predictions[image_id] = post.masks
        predicted_type[image_id] = CELL_TYPES[post.cell_type] if len(inst) else ""
        scores[image_id] = image_score(t.masks, post.masks)
    report = report_from_scores(scores, {i: truth[i].cell_type for i in scores})
    report.per_image["predicted_type"] = [predicted_type[i] for i in report.per_image["id"]]
    report.per_image["n_candidates"] = [len(instances[i]) for i in report.per_image["id"]]
    return report, scores, predictions


def evaluate(
    truth_csv: str | Path,
    images_dir: str | Path,
    models_dir: str | Path,
    folds_csv: str | Path | None = None,
    config: Config | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> Evaluation:
    """Out-of-fold evaluation (see the module docstring).

    Args:
        truth_csv: train.csv with the annotations of the images.
        images_dir: folder of ``<id>.png``; its images that have annotations are evaluated.
        models_dir: the model folder (``<name>/config.yaml + model_final.pth``).
        folds_csv: folds file (id -> fold); None: every model on every image.
        config: pipeline config (ensemble for prediction, postprocess for scoring).
        cache_dir: instance cache folder (created; entries reused when their key
            matches); None: no cache (instances still rounded as the cache would).
        progress: tqdm bars.

    Raises:
        ValueError: missing files, no annotated image in ``images_dir``, models without
            folds while a folds file is given, or no image left to evaluate.
    """
    config = config or Config()
    started = time.perf_counter()
    paths, truth, notes = _annotated_images(truth_csv, images_dir)
    folds = None
    if folds_csv is not None:
        table = read_folds(folds_csv)
        folds = {str(i): int(f) for i, f in zip(table["id"], table["fold"])}
    models = model_infos(models_dir)
    assigned, skipped, more_notes = assign_models(list(paths), models, folds)
    notes.extend(more_notes)
    if not assigned:
        raise ValueError(f"no image left to evaluate: {'; '.join(notes)}")

    cache = Path(cache_dir) if cache_dir is not None else None
    keys = {i: cache_key(assigned[i], config, file_digest(paths[i])) for i in assigned}
    instances = _cached_instances(cache, keys, notes) if cache is not None else {}
    cached = len(instances)
    missing = [i for i in assigned if i not in instances]
    instances.update(_predict_missing(missing, assigned, models, paths, config, cache, keys, progress))
    t_predicted = time.perf_counter()
    instances = {i: instances[i] for i in assigned}  # in image order
    if cache is not None:
        entries = [
            CacheEntry(i, cache / f"{i}.npz", keys[i], tuple(m.name for m in assigned[i]), folds[i] if folds else None)
            for i in assigned
        ]
        write_cache_manifest(cache, entries, config)

    report, scores, _ = score_instances(instances, truth, config.postprocess, progress)
    return Evaluation(
        report=report,
        config=config,
        instances=instances,
        scores=scores,
        skipped=skipped,
        notes=notes,
        cached=cached,
        predicted=len(missing),
        seconds={"predict": t_predicted - started, "score": time.perf_counter() - t_predicted},
    )


def _annotated_images(
    truth_csv: str | Path, images_dir: str | Path
) -> tuple[dict[str, Path], dict[str, Truth], list[str]]:
    """The images of ``images_dir`` that have annotations (id -> path, in name order),
    their truth, and notes on what the truth left out and on images without annotation.

    Raises:
        ValueError: no image of the folder has annotations.
    """
    found = {p.stem: p for p in list_images(images_dir)}
    truth = read_truth(truth_csv, ids=found)
    paths = {i: p for i, p in found.items() if i in truth}
    if not paths:
        raise ValueError(f"no image of {images_dir} has annotations in {truth_csv}; pass the matching train folder")
    notes: list[str] = truth_notes({i: truth[i] for i in paths}, truth_csv)
    if len(found) > len(paths):
        notes.append(
            f"{len(found) - len(paths)} image(s) of {images_dir} have no annotation in {truth_csv}: not evaluated"
        )
    return paths, truth, notes


def _cached_instances(cache: Path, keys: Mapping[str, str], notes: list[str]) -> dict[str, SoftInstances]:
    """The cache entries whose key matches; an unreadable entry is noted and left out
    (predicted again and rewritten)."""
    out = {}
    for i, key in keys.items():
        try:
            hit = load_instances(cache / f"{i}.npz", key)
        except ValueError:  # a truncated or foreign entry
            notes.append(f"cache entry {cache / f'{i}.npz'} was unreadable (truncated?): predicted again")
            hit = None
        if hit is not None:
            out[i] = hit
    return out


def _predict_missing(
    missing: Sequence[str],
    assigned: Mapping[str, Sequence[ModelInfo]],
    models: Sequence[ModelInfo],
    paths: Mapping[str, Path],
    config: Config,
    cache: Path | None,
    keys: Mapping[str, str],
    progress: bool,
) -> dict[str, SoftInstances]:
    """Predict the images not in the cache, grouped by the models assigned to them (each
    group loads its models once); each image's instances are written to the cache."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for i in missing:
        groups.setdefault(tuple(m.name for m in assigned[i]), []).append(i)
    out: dict[str, SoftInstances] = {}
    for names, group in groups.items():
        chosen = [m for m in models if m.name in names]
        out.update(_predict_group(chosen, [paths[i] for i in group], config, progress))
        if cache is not None:
            for i in group:
                save_instances(cache / f"{i}.npz", out[i], keys[i])
    return out


def _predict_group(
    models: Sequence[ModelInfo], paths: Sequence[Path], config: Config, progress: bool
) -> dict[str, SoftInstances]:
    """Load ``models`` (torch), run the ensemble on ``paths``, return rounded instances."""
    from kernel_lib.model import load_fold_model, resolve_device
    from kernel_lib.pipeline import predict_instances

    device = resolve_device(config.inference.device)
    loaded = [load_fold_model(m.path, m.weight, device, config.ensemble) for m in models]
    out = {}
    for image_id, _grey, inst in predict_instances(paths, loaded, config, progress=progress):
        out[image_id] = compact(inst)
    return out


def write_cache_manifest(cache_dir: str | Path, entries: Sequence[CacheEntry], config: Config) -> Path:
    """Write ``cache_dir/manifest.json``: the evaluated images (entries' files relative
    to ``cache_dir``) and the config used. Returns its path."""
    cache_dir = Path(cache_dir)
    data = {
        "version": CACHE_VERSION,
        "config": config.to_dict(),
        "images": [
            {"id": e.id, "file": Path(e.file).name, "key": e.key, "models": list(e.models), "fold": e.fold}
            for e in entries
        ],
    }
    with atomic_output(cache_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    return cache_dir / MANIFEST


def evaluate_cache(
    truth_csv: str | Path, cache_dir: str | Path, config: Config | None = None, progress: bool = True
) -> tuple[Evaluation, dict[str, CropMasks]]:
    """Score the last evaluation's cached instances again with ``config``'s
    post-processing (None: the config the evaluation used); no model runs.

    Returns:
        ``(evaluation, predictions)`` with id -> final masks.
    """
    entries, used = read_cache_manifest(cache_dir)
    config = config or used
    instances = load_cached(entries)
    truth = read_truth(truth_csv, ids=instances)
    absent = [i for i in instances if i not in truth]
    if absent:
        raise ValueError(f"{len(absent)} cached image(s) have no annotation in {truth_csv}, e.g. {absent[:3]}")
    report, scores, predictions = score_instances(instances, truth, config.postprocess, progress)
    notes = [f"scored from the cache in {cache_dir} ({len(instances)} images)", *truth_notes(truth, truth_csv)]
    evaluation = Evaluation(report, config, instances, scores, notes=notes, cached=len(instances))
    return evaluation, predictions
