"""The fold folder as a training run writes it (the layout is :mod:`kernel_lib.model_folder`'s).

``write_model_folder`` writes ``config.yaml`` + ``model_final.pth`` (+ ``meta.json``);
``finish_fold`` does that at the end of a run and drops the periodic checkpoints;
``clear_leftovers`` removes an unfinished run's files before a new run, and refuses a
folder holding anything a run does not write. Imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from detectron2.config import CfgNode

from kernel_lib.model_folder import CONFIG_FILE, META_FILE, WEIGHTS_FILE, write_meta
from kernel_lib.outputs import atomic_output

CHECKPOINT_LINK = "last_checkpoint"
"""detectron2's pointer to the newest periodic checkpoint (what ``--resume`` reads)."""

HELDOUT_SCORES = "heldout_scores.csv"
"""Per-image held-out scores (id, cell_type, score, n_truth, n_pred) of the fold's own held-out images."""

RUN_FILES: tuple[str, ...] = (
    CONFIG_FILE,
    META_FILE,
    "metrics.json",
    "log.txt",
    CHECKPOINT_LINK,
    HELDOUT_SCORES,
    "annotation_problems.csv",
    "mended_masks.csv",
)
"""Files a training run writes in its fold folder (besides ``model_*.pth``)."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` wrapper (else ``model`` itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def inference_config(cfg: CfgNode) -> CfgNode:
    """The config.yaml written beside the weights: the training config, weights path
    cleared (the weights are the folder's model_final.pth), device cpu (the reader
    chooses)."""
    out = cfg.clone()
    out.defrost()
    out.MODEL.WEIGHTS = ""
    out.MODEL.DEVICE = "cpu"
    return out


def write_model_folder(
    folder: Path, cfg: CfgNode, model: torch.nn.Module, meta: dict[str, Any] | None, half: bool = True
) -> None:
    """Write ``config.yaml`` + ``model_final.pth`` (+ ``meta.json``) into ``folder``.

    ``half`` stores floating-point weights as float16 (half the file; loading copies
    them into the float32 model, see :func:`kernel_lib.model.load_fold_model`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    with atomic_output(folder / WEIGHTS_FILE) as tmp:
        torch.save({"model": state}, tmp)
    (folder / CONFIG_FILE).write_text(inference_config(cfg).dump())
    if meta is not None:
        write_meta(folder, meta)


def finish_fold(
    fold_dir: Path, cfg: CfgNode, model: torch.nn.Module, meta: dict[str, Any], keep_checkpoints: bool = False
) -> None:
    """Write the fold folder (weights, config, meta) and, unless ``keep_checkpoints``,
    drop the periodic checkpoints (``model_<iter>.pth``, ``last_checkpoint``)."""
    write_model_folder(fold_dir, cfg, model, meta)
    if not keep_checkpoints:
        for path in fold_dir.glob("model_*.pth"):
            if path.name != WEIGHTS_FILE:
                path.unlink()
        (fold_dir / CHECKPOINT_LINK).unlink(missing_ok=True)


def clear_leftovers(fold_dir: Path) -> None:
    """Remove an unfinished run's files; refuse when the folder holds anything else.

    Raises:
        ValueError: naming the folder and up to five of the files a run does not write.
    """
    paths = list(fold_dir.iterdir())
    ours = [p for p in paths if p.is_file() and (p.name in RUN_FILES or p.name.startswith(("model_", "log.txt")))]
    others = sorted(p.name for p in paths if p not in ours)
    if others:
        raise ValueError(
            f"{fold_dir} exists and holds files a training run does not write ({others[:5]}); "
            "pick another --out/--name or empty it"
        )
    for path in ours:
        path.unlink()
