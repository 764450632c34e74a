"""The detectron2 config of a fold run (:func:`build_config`: the Sartorius recipe, the
options, the learning-rate schedule), where its weights start (:func:`initial_weights`)
and what a run that continues a fold folder must keep (:func:`check_continuation`).
Imports detectron2's config only (no model is built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectron2.config import CfgNode, get_cfg

from kernel_lib.config import CELL_TYPES
from kernel_lib.d2config import sartorius_config, zoo_config_file
from kernel_lib.folds import FoldSplit
from kernel_lib.model_folder import NORMALIZATION_KEY
from kernel_lib.training.options import TrainOptions


def build_config(opts: TrainOptions, device: str) -> CfgNode:
    """The detectron2 config of a fold run (also what config.yaml records).

    The base is :func:`~kernel_lib.d2config.sartorius_config` (``opts.arch``), or
    ``opts.base_config`` as it is apart from 3 classes and bitmask masks; then the
    options (weights, sizes, solver) and last ``opts.overrides``.

    Raises:
        ValueError: unknown config file, non-local initial weights, bad overrides.
    """
    if opts.base_config:
        cfg = get_cfg()
        path = Path(opts.base_config)
        if not path.is_file():
            try:
                path = zoo_config_file(opts.base_config)
            except ValueError:
                raise ValueError(
                    f"--config {opts.base_config}: no such file and not a detectron2 model-zoo config name"
                ) from None
        try:
            cfg.merge_from_file(str(path))
        except Exception as err:  # yacs and yaml raise many kinds; all mean a config this detectron2 cannot read
            raise ValueError(f"--config {path}: not a detectron2 config this version reads ({err})") from None
        cfg.INPUT.MASK_FORMAT = "bitmask"
    else:
        cfg = sartorius_config(opts.arch)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(opts.classes)
    cfg.MODEL.RETINANET.NUM_CLASSES = len(opts.classes)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = str(initial_weights(opts) or "")
    source = opts.continued_fold
    if not opts.init_weights or (source is not None and source.meta.get("from_scratch")):
        # from scratch, or continuing a fold that was: the same normalisation layers
        if cfg.MODEL.RESNETS.NORM == "FrozenBN":
            cfg.MODEL.RESNETS.NORM = "GN"
            cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False
            cfg.MODEL.FPN.NORM = "GN"
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if opts.min_sizes:
        cfg.INPUT.MIN_SIZE_TRAIN = tuple(opts.min_sizes)
        cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    if opts.max_size:
        cfg.INPUT.MAX_SIZE_TRAIN = opts.max_size
        cfg.INPUT.MAX_SIZE_TEST = opts.max_size
    if opts.test_size:
        cfg.INPUT.MIN_SIZE_TEST = opts.test_size
    cfg.SOLVER.IMS_PER_BATCH = opts.batch
    cfg.SOLVER.BASE_LR = opts.lr or 0.02 * opts.batch / 16
    cfg.SOLVER.MAX_ITER = opts.iters
    # learning rate x0.1 at 70% and 90% of the run, warm-up over its first 10% (at most the base config's)
    steps = {int(opts.iters * 0.7), int(opts.iters * 0.9)}
    cfg.SOLVER.STEPS = tuple(sorted(step for step in steps if 0 < step < opts.iters))
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, opts.iters // 10)
    cfg.SOLVER.CHECKPOINT_PERIOD = opts.checkpoint_period or opts.iters
    cfg.SOLVER.AMP.ENABLED = bool(opts.amp and device == "cuda")
    cfg.SOLVER.REFERENCE_WORLD_SIZE = 0
    cfg.DATALOADER.NUM_WORKERS = opts.workers
    cfg.DATASETS.TRAIN = ()  # the trainer takes the dataset dicts directly (meta.json names the images)
    cfg.DATASETS.TEST = ()
    cfg.TEST.EVAL_PERIOD = opts.eval_period
    cfg.OUTPUT_DIR = str(opts.fold_dir)
    cfg.SEED = opts.seed
    if opts.overrides:
        try:
            cfg.merge_from_list(list(opts.overrides))
        except (KeyError, ValueError, AssertionError) as err:
            raise ValueError(f"--set {' '.join(opts.overrides)}: {err}") from None
    return cfg


def initial_weights(opts: TrainOptions) -> Path | None:
    """The weights file a run starts from (None: from scratch): ``init_weights``, or the
    model_final.pth of the fold folder it names.

    Raises:
        ValueError: not a local file, or a folder that is not a fold folder.
    """
    if not opts.init_weights:
        return None
    if "://" not in opts.init_weights:
        source = opts.continued_fold
        weights = source.weights if source else Path(opts.init_weights)
        if weights.is_file():
            return weights.resolve()
    raise ValueError(
        f"--init-weights {opts.init_weights}: expected a local .pth/.pkl file or a fold folder (URLs and "
        "zoo: names are downloaded by train_fold first); omit it to train from scratch"
    )


def fine_tunes(opts: TrainOptions) -> bool:
    """Whether ``init_weights`` names a pretraining folder (a COCO-only run: no fold, no
    held-out image): the run then starts from its weights, the class-specific layers
    re-initialised when the classes differ, instead of continuing it."""
    source = opts.continued_fold
    return source is not None and source.meta.get("fold") is None and not source.meta.get("heldout_ids")


def source_classes(meta: dict[str, Any]) -> list[str]:
    """The class names a fold folder was trained with (meta.json ``classes``; the three
    Sartorius types for folders written before it was recorded)."""
    classes = meta.get("classes")
    return [str(c) for c in classes] if isinstance(classes, list) and classes else list(CELL_TYPES)


def check_continuation(opts: TrainOptions, split: FoldSplit | None) -> None:
    """A run that starts from a fold folder (``--init-weights FOLDER``) must keep what that
    folder's weights depend on: the architecture and the input normalisation. Continuing
    a fold (not :func:`fine_tunes`) must also keep its classes and its held-out images
    (else it would train on images it is then scored on).

    Raises:
        ValueError: naming the fold folder, what it was trained with and the option to pass.
    """
    source = opts.continued_fold
    if source is None:
        return
    meta, where = source.meta, f"--init-weights {source.folder}"
    arch = meta.get("arch")
    if not opts.base_config and arch and arch != opts.arch:
        raise ValueError(f"{where}: that fold is --arch {arch}, this run --arch {opts.arch}; pass --arch {arch}")
    trained = meta.get(NORMALIZATION_KEY, "none")
    if trained != opts.normalization:
        raise ValueError(
            f"{where}: that fold was trained with --normalization {trained}, this run has "
            f"{opts.normalization}; pass --normalization {trained}"
        )
    if fine_tunes(opts):
        return
    classes = source_classes(meta)
    if classes != list(opts.classes):
        raise ValueError(
            f"{where}: that fold has the classes {classes}, this run {list(opts.classes)}; a fold is continued on "
            "the data it was trained on (a pretraining folder, trained on COCO files alone, is fine-tuned instead)"
        )
    heldout = meta.get("heldout_ids")
    theirs = sorted(split.heldout_ids) if split is not None else []
    if isinstance(heldout, list) and sorted(heldout) != theirs:
        this = f"fold {opts.fold} of {opts.folds_csv}" if split is not None else "this COCO-only run (none)"
        raise ValueError(
            f"{where}: that fold held out other images than {this}, so this run would train on images that "
            "fold is scored on; pass the --data, folds file and --fold it was trained with"
        )
