"""Random-weight demonstration checkpoints in the model-folder layout (torch).

They let the whole pipeline (loading, batched TTA inference, ensembling, submission)
run end to end without trained weights: in tests, in the benchmark, and to try the
notebook. Their predictions are meaningless, and their meta.json says so.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kernel_lib.model_folder import CONFIG_FILE, WEIGHTS_FILE, write_manifest, write_meta

DEMO_NOTE = "RANDOM DEMONSTRATION WEIGHTS, NOT TRAINED: predictions are meaningless; for tests and benchmarks only."


def make_demo_models(
    out_dir: str | Path,
    n_folds: int = 2,
    arch: str = "R50",
    seed: int = 0,
    *,
    min_size_test: int | None = None,
    max_size_test: int | None = None,
    archs: list[str] | None = None,
    tiny: bool = False,
) -> list[Path]:
    """Write ``out_dir/fold{K}/{config.yaml, model_final.pth, meta.json}`` for K < n_folds,
    plus ``out_dir/models.json`` (weight 1.0 each).

    Each fold is a detectron2 model built from :func:`kernel_lib.d2config.sartorius_config`
    with random weights (seed ``seed + K``), saved as ``{"model": state_dict}``, the
    layout a training run writes. meta.json holds ``{"fold": K, "weights": "random", ...}``.

    Args:
        out_dir: folder to create (existing fold folders are overwritten).
        n_folds: number of models, >= 1.
        arch: architecture of every fold (a key of ``kernel_lib.d2config.ARCHS``).
        seed: base random seed.
        min_size_test, max_size_test: override ``INPUT.MIN_SIZE_TEST`` /
            ``MAX_SIZE_TEST`` (small values make CPU tests fast); None keeps the
            zoo's 800 / 1333.
        archs: one architecture per fold instead of ``arch`` (mixed ensembles).
        tiny: shrink the architecture for fast CPU tests (see :func:`kernel_lib.testing.shrink_config`): same
            model classes and layout, far fewer channels and layers.

    Returns:
        The fold folders, in order.

    Raises:
        ValueError: ``n_folds`` < 1, an unknown architecture, or ``archs`` of the wrong length.
    """
    from detectron2.modeling import build_model

    from kernel_lib.d2config import sartorius_config

    if n_folds < 1:
        raise ValueError(f"make_demo_models: n_folds must be >= 1, got {n_folds}")
    if archs is not None and len(archs) != n_folds:
        raise ValueError(f"make_demo_models: expected {n_folds} archs (one per fold), got {len(archs)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = []
    for fold in range(n_folds):
        fold_arch = archs[fold] if archs is not None else arch
        cfg = sartorius_config(fold_arch)
        if min_size_test is not None:
            cfg.INPUT.MIN_SIZE_TEST = int(min_size_test)
        if max_size_test is not None:
            cfg.INPUT.MAX_SIZE_TEST = int(max_size_test)
        if tiny:
            from kernel_lib.testing import shrink_config

            shrink_config(cfg)
        torch.manual_seed(seed + fold)
        model = build_model(cfg)
        folder = out_dir / f"fold{fold}"
        folder.mkdir(exist_ok=True)
        (folder / CONFIG_FILE).write_text(cfg.dump())
        torch.save({"model": model.state_dict()}, folder / WEIGHTS_FILE)
        meta = {
            "fold": fold,
            "arch": fold_arch + (" (tiny)" if tiny else ""),
            "weights": "random",
            "seed": seed + fold,
            "note": DEMO_NOTE,
        }
        write_meta(folder, meta)
        folders.append(folder)
    write_manifest(out_dir, [(f.name, 1.0) for f in folders], note=DEMO_NOTE)
    return folders
