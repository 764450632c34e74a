"""Model folders: the hand-off from training to inference (torch-free).

Layout (``docs/design.md``)::

    MODELS/<name>/config.yaml      a detectron2 config dump (what training writes)
    MODELS/<name>/model_final.pth  its weights ({"model": state_dict} or a state dict; float32,
                                   float16 as train writes them, or the compact int8 format of
                                   kernel_lib.weights the shipped folds use)
    MODELS/<name>/meta.json        optional, {"fold": K, "arch": ..., "heldout_score": ..., ...}
    MODELS/models.json             optional, {"models": [{"name": "fold0", "weight": 1.0}, ...]}
                                   (weights relative, each in [MIN_WEIGHT, MAX_WEIGHT])

This module owns the file names, reading and writing ``models.json`` and ``meta.json``,
the fold of a model and a folder's content digest. Training (``kernel_lib.train``), the
demonstration models, the training notebook and evaluation use it; building and
loading the torch model from a folder is ``kernel_lib.model``'s.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel_lib.config import NORMALIZATIONS, read_json_object
from kernel_lib.outputs import atomic_output

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model_final.pth"
META_FILE = "meta.json"
MANIFEST_FILE = "models.json"
MIN_WEIGHT, MAX_WEIGHT = 1e-6, 1e6
"""The range a model's ``models.json`` weight must lie in. Weights are relative (1.0 each:
equal votes; 2.0: twice the say of a 1.0), so the range allows a ratio of 10^12 between
models while keeping weighted sums of float32 masks and scores far from overflow (1e39)
and underflow (1e-300), which gave an empty submission."""
NORMALIZATION_KEY = "input_normalization"
"""meta.json key of the input normalisation a fold was trained with (one of
:data:`kernel_lib.config.NORMALIZATIONS`; absent: ``none``). Inference applies it."""


def weight_problem(weight: object) -> str:
    """What is wrong with a model's ensemble weight ("" when it is a number in
    [:data:`MIN_WEIGHT`, :data:`MAX_WEIGHT`])."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        return (
            f"weight must be a finite number from {MIN_WEIGHT:g} to {MAX_WEIGHT:g} (weights are relative: "
            f"1.0 for each model is an equal vote), got {weight!r}"
        )
    return ""


def read_manifest(models_dir: Path) -> list[tuple[str, float]]:
    """(name, weight) of each model: from models.json when present, else every
    sub-folder (sorted, hidden ones skipped) with weight 1.0.

    Raises:
        ValueError: the folder is missing or empty, or models.json is malformed (a weight
            outside [:data:`MIN_WEIGHT`, :data:`MAX_WEIGHT`], NaN or inf included).
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ValueError(f"model folder {models_dir} does not exist; pass the folder holding <name>/{CONFIG_FILE}")
    manifest = models_dir / MANIFEST_FILE
    if manifest.is_file():
        data = read_json_object(manifest, str(manifest), "fix it or delete it")
        entries = data.get("models")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f'{manifest}: expected {{"models": [{{"name": "fold0", "weight": 1.0}}, ...]}}')
        out = []
        for k, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ValueError(f"{manifest}: models[{k}] needs a string 'name', got {entry!r}")
            weight = entry.get("weight", 1.0)
            problem = weight_problem(weight)
            if problem:
                raise ValueError(f"{manifest}: models[{k}] ({entry['name']}): {problem}")
            out.append((entry["name"], float(weight)))
        names = [n for n, _ in out]
        if len(set(names)) != len(names):
            raise ValueError(f"{manifest}: a model is listed twice: {names}")
        return out
    subdirs = sorted(p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not subdirs:
        raise ValueError(
            f"model folder {models_dir} holds no model sub-folder; expected {models_dir}/<name>/{CONFIG_FILE} "
            f"and {WEIGHTS_FILE} (make demo ones with kernel_lib.demo_models.make_demo_models)"
        )
    return [(name, 1.0) for name in subdirs]


def read_meta(folder: Path) -> dict[str, Any]:
    """A model folder's ``meta.json`` as a dict ({} when absent).

    Raises:
        ValueError: the file is not a JSON object; the message names the model.
    """
    path = folder / META_FILE
    if not path.is_file():
        return {}
    return read_json_object(path, f"model {folder.name}: {path}")


def fold_of(name: str, meta: dict[str, Any]) -> int | None:
    """A model's fold: ``meta["fold"]``, else the first integer after "fold" in its name."""
    if isinstance(meta.get("fold"), int):
        return int(meta["fold"])
    match = re.search(r"fold\D*(\d+)", name, flags=re.IGNORECASE)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class FoldSource:
    """A fold folder that a training run starts from, to continue it (``train --init-weights FOLDER``).

    Attributes:
        folder: the fold folder (config.yaml, model_final.pth, meta.json).
        meta: its meta.json.
    """

    folder: Path
    meta: dict[str, Any]

    @property
    def weights(self) -> Path:
        return self.folder / WEIGHTS_FILE

    @property
    def total_iters(self) -> int:
        """Iterations behind its weights: its own ``total_iters`` (a continued fold), else ``iters``."""
        value = self.meta.get("total_iters", self.meta.get("iters", 0))
        return int(value) if isinstance(value, int) and not isinstance(value, bool) else 0


def fold_source(init_weights: str | Path) -> FoldSource | None:
    """The fold folder that initial weights come from: ``init_weights`` itself when it is a
    folder, or the folder of a ``model_final.pth`` with a meta.json beside it; None for
    any other weights file (a COCO .pkl, a checkpoint of elsewhere).

    Raises:
        ValueError: a folder without model_final.pth and meta.json.
    """
    path = Path(init_weights)
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file() or not (path / META_FILE).is_file():
            raise ValueError(
                f"--init-weights {path}: a folder must be a fold folder with {WEIGHTS_FILE} and {META_FILE} "
                "(what train writes); name a weights file otherwise"
            )
        return FoldSource(path, read_meta(path))
    if path.name == WEIGHTS_FILE and (path.parent / META_FILE).is_file():
        return FoldSource(path.parent, read_meta(path.parent))
    return None


def input_normalization(name: str, meta: dict[str, Any]) -> str:
    """The input normalisation a model was trained with: ``meta["input_normalization"]``,
    ``"none"`` when absent.

    Raises:
        ValueError: a value that is not one of :data:`kernel_lib.config.NORMALIZATIONS`.
    """
    value = meta.get(NORMALIZATION_KEY, "none")
    if value not in NORMALIZATIONS:
        raise ValueError(
            f"model {name}: {META_FILE} {NORMALIZATION_KEY!r} must be one of {', '.join(NORMALIZATIONS)}, "
            f"got {value!r}; it names the normalisation the model was trained with"
        )
    return str(value)


def write_manifest(models_dir: str | Path, models: Sequence[tuple[str, float]], note: str = "") -> Path:
    """Write ``models_dir/models.json`` listing ``(name, weight)`` in ensemble order
    (and a ``note`` for people reading it, when given).

    Raises:
        ValueError: no model, a name listed twice, a weight outside [:data:`MIN_WEIGHT`,
            :data:`MAX_WEIGHT`], or a listed folder without config.yaml and model_final.pth.
    """
    models_dir = Path(models_dir)
    if not models:
        raise ValueError(f"write_manifest: expected at least one (name, weight), got none for {models_dir}")
    names = [name for name, _ in models]
    if len(set(names)) != len(names):
        raise ValueError(f"write_manifest: a model is listed twice: {names}")
    for name, weight in models:
        problem = weight_problem(weight)
        if problem:
            raise ValueError(f"write_manifest: {name}: {problem}")
        for file in (CONFIG_FILE, WEIGHTS_FILE):
            if not (models_dir / name / file).is_file():
                raise ValueError(f"write_manifest: {models_dir / name / file} is missing; train or copy {name} first")
    path = models_dir / MANIFEST_FILE
    content: dict[str, Any] = {"models": [{"name": name, "weight": float(weight)} for name, weight in models]}
    if note:
        content["note"] = note
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(content, indent=2) + "\n")
    return path


def write_meta(folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write a model folder's ``meta.json`` (replaced only when complete)."""
    path = Path(folder) / META_FILE
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def folder_digest(folder: str | Path) -> str:
    """Hex digest of a model folder's content: config.yaml, model_final.pth and meta.json.

    Raises:
        ValueError: config.yaml or model_final.pth is missing.
    """
    folder = Path(folder)
    parts = []
    for file in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
        if (folder / file).is_file():
            parts.append(f"{file}:{file_digest(folder / file)}")
        elif file != META_FILE:
            raise ValueError(
                f"model {folder.name}: {folder / file} is missing; "
                f"a model folder needs {CONFIG_FILE} and {WEIGHTS_FILE}"
            )
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


def file_digest(path: str | Path) -> str:
    """blake2b-128 hex digest of a file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelInfo:
    """A model folder entry: name, folder, fold (None: unknown), weight, content digest."""

    name: str
    path: Path
    fold: int | None
    weight: float
    digest: str


def model_infos(models_dir: str | Path) -> list[ModelInfo]:
    """The models of a model folder (models.json order, else sub-folders), with their
    folds and a digest of config.yaml, model_final.pth and meta.json (no torch).

    Raises:
        ValueError: see :func:`read_manifest`; a model without weights.
    """
    models_dir = Path(models_dir)
    infos = []
    for name, weight in read_manifest(models_dir):
        folder = models_dir / name
        digest = folder_digest(folder)
        infos.append(ModelInfo(name, folder, fold_of(name, read_meta(folder)), float(weight), digest))
    return infos
