"""Train one fold model (detectron2 Mask R-CNN) into the folder layout ``predict`` reads.

``train_fold(TrainOptions(...))`` trains on the images of a folds file whose fold is not
K and leaves ``OUT/<name>/`` (``name`` defaults to ``fold<K>``)::

    config.yaml            the detectron2 config the weights belong to (inference reads it)
    model_final.pth        {"model": state_dict} (weights only)
    meta.json              {"fold": K, "heldout_score": ..., "heldout_per_cell_type": {...}, ...}
    metrics.json           detectron2's loss log, one JSON line per logged iteration
    log.txt                the training log
    heldout_scores.csv     id, cell_type, score of every held-out image
    annotation_problems.csv  rows left out of training (see kernel_lib.training.datasets)
    mended_masks.csv         with --mend-masks: each training row whose mask was mended

The run, in steps: read the split's images (:mod:`~kernel_lib.training.datasets`), build
the config (:mod:`~kernel_lib.training.recipe`) and the mapper
(:mod:`~kernel_lib.training.mappers`), train with detectron2's ``DefaultTrainer`` (the
sparse RoIAlign of :mod:`~kernel_lib.training.roi_align` on the CPU, bfloat16 autocast
where the CPU has it), write the fold folder (:mod:`~kernel_lib.training.folder`) and
score its held-out images (:mod:`~kernel_lib.training.scoring`). Several GPUs run through
``detectron2.engine.launch`` (one process per GPU, DDP). Imports torch and detectron2.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.engine import DefaultTrainer, hooks, launch
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from detectron2.utils.logger import setup_logger

from kernel_lib.config import Config
from kernel_lib.folds import FoldSplit, fold_split
from kernel_lib.model_folder import META_FILE, NORMALIZATION_KEY, WEIGHTS_FILE, read_meta, write_meta
from kernel_lib.training.checkpoint import SafeCheckpointer, read_pickled_weights
from kernel_lib.training.coco import CocoSource, load_coco_dicts
from kernel_lib.training.datasets import TrainingData, load_dataset_dicts, read_train_csv
from kernel_lib.training.download import Download, fetch_weights, is_remote
from kernel_lib.training.folder import CHECKPOINT_LINK, clear_leftovers, finish_fold, unwrap
from kernel_lib.training.mappers import build_mapper
from kernel_lib.training.options import TrainOptions
from kernel_lib.training.recipe import build_config, check_continuation, fine_tunes, source_classes
from kernel_lib.training.roi_align import use_sparse_roi_align
from kernel_lib.training.scoring import score_fold, score_weights
from kernel_lib.truth import IMAGE_ROW, AnnotationProblem
from kernel_lib.weights import read_state_dict

logger = logging.getLogger("kernel_lib.training")

WRITER_PERIOD = 20
"""Iterations between two lines of the loss log (fewer when training is shorter)."""

PROBLEMS_FILE = "annotation_problems.csv"
MENDED_FILE = "mended_masks.csv"
"""The annotation rows a run left out (id, row, what), in its fold folder."""


class _FoldTrainer(DefaultTrainer):
    """DefaultTrainer on an in-memory dataset with the Sartorius mapper, a JSON loss log
    (no TensorBoard) and held-out scoring as its evaluation."""

    def __init__(
        self, cfg: CfgNode, dataset: list[dict[str, Any]], mapper: Any, evaluate: Any, bf16: bool = False
    ) -> None:
        self._dataset = dataset
        self._mapper = mapper
        self._evaluate = evaluate
        self._bf16 = bf16
        super().__init__(cfg)
        if cfg.MODEL.DEVICE == "cpu":
            logger.info("RoIAlign: %d pooler levels on the sparse CPU kernel", use_sparse_roi_align(self.model))

    def run_step(self) -> None:
        self._trainer.iter = self.iter
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._bf16):
            self._trainer.run_step()

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        model = build_model(cfg)  # DefaultTrainer's also prints the whole module tree
        n = sum(p.numel() for p in model.parameters())
        logger.info("model %s: %.1f M parameters on %s", cfg.MODEL.META_ARCHITECTURE, n / 1e6, cfg.MODEL.DEVICE)
        return model

    def build_train_loader(self, cfg: CfgNode) -> Any:  # type: ignore[override]
        repeats = [float(record.get("repeat", 1.0)) for record in self._dataset]
        sampler = RepeatFactorTrainingSampler(torch.tensor(repeats)) if set(repeats) != {1.0} else None
        return build_detection_train_loader(
            self._dataset,
            mapper=self._mapper,
            sampler=sampler,
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )

    def build_writers(self) -> list[Any]:
        return [
            CommonMetricPrinter(self.max_iter),
            JSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json")),
        ]

    def build_hooks(self) -> list[Any]:
        # DefaultTrainer made a DetectionCheckpointer just before this call: read weights without unpickling
        old = self.checkpointer
        self.checkpointer = SafeCheckpointer(old.model, old.save_dir, **old.checkpointables)
        out = []
        for hook in super().build_hooks():
            if isinstance(hook, hooks.EvalHook):
                # periodic held-out scoring; the final one is done after training, from the written folder
                hook = hooks.EvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate, eval_after_train=False)
            elif isinstance(hook, hooks.PeriodicWriter):
                hook = hooks.PeriodicWriter(self.build_writers(), period=min(WRITER_PERIOD, self.max_iter))
            out.append(hook)
        return out


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_fold` leaves: the fold folder and its meta.json content."""

    fold_dir: Path
    meta: dict[str, Any]


def _eval_config(opts: TrainOptions, device: str) -> Config:
    from kernel_lib.config import load_config

    config = load_config(opts.eval_config or None)
    return config.replace(inference=dataclasses.replace(config.inference, device=device))


LOGGERS = ("detectron2", "kernel_lib", "fvcore")
"""Loggers whose records go to the fold folder's log.txt."""


def _train_worker(opts: TrainOptions, device: str) -> None:
    """One training process (all of training on one GPU or the CPU; one of several with DDP).

    Logs go to the console (rank 0) and to the fold folder's ``log.txt`` (``log.txt.rank<r>``
    for the other ranks); the file handler is removed at the end, so that folds trained in
    turn by one process each get their own log.
    """
    rank = comm.get_rank()
    opts.fold_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(distributed_rank=rank, name="detectron2", abbrev_name="d2")  # console, once per process
    setup_logger(distributed_rank=rank, name="kernel_lib", abbrev_name="kl")
    log_file = logging.FileHandler(opts.fold_dir / ("log.txt" if rank == 0 else f"log.txt.rank{rank}"))
    log_file.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%m/%d %H:%M:%S"))
    log_file.setLevel(logging.DEBUG)
    for name in LOGGERS:
        logging.getLogger(name).addHandler(log_file)
    try:
        _train_and_score(opts, device, rank)
    finally:
        for name in LOGGERS:
            logging.getLogger(name).removeHandler(log_file)
        log_file.close()


@dataclass(frozen=True)
class _FoldData:
    """The images of one run: the split (None: a COCO-only run), the training records
    (train.csv's and the COCO files') and the held-out ones (None when not scored)."""

    split: FoldSplit | None
    train: TrainingData
    heldout: TrainingData | None
    coco: tuple[dict[str, Any], ...] = ()


def _load_fold_data(opts: TrainOptions, rank: int) -> _FoldData:
    """Read the split's images and every COCO file; rank 0 logs and writes the
    annotations left out (``annotation_problems.csv``: id, row, what, source)."""
    split = fold_split(opts.folds_csv, opts.fold) if opts.data_dir else None
    parts: list[tuple[str, TrainingData]] = []
    heldout = None
    if split is not None:
        train_ids = split.train_ids[: opts.max_images] if opts.max_images else split.train_ids
        parts.append(
            (str(Path(opts.data_dir) / "train.csv"), load_dataset_dicts(opts.data_dir, train_ids, mend=opts.mend_masks))
        )
        if split.heldout_ids and opts.heldout:
            heldout = load_dataset_dicts(opts.data_dir, split.heldout_ids)
    for truth, images in zip(opts.extra_truth, opts.extra_images):
        parts.append((truth, _extra_data(truth, images, split, opts.extra_weight)))
    coco = []
    for source in opts.coco_sources:
        part = load_coco_dicts(source, opts.coco_classes)
        parts.append((str(source.annotations), part))
        coco.append(_coco_meta(source, part))
    train = TrainingData.merge([part for _, part in parts])
    if opts.max_images:
        train = dataclasses.replace(train, dicts=train.dicts[: opts.max_images])
    if rank == 0:
        _report_problems(opts, parts, heldout, train)
        if opts.mend_masks:
            _report_mended(opts, train)
        logger.info(
            "%s: %d training images (%d instances; %d from COCO files), %d held-out images (%s)",
            opts.fold_name,
            len(train.dicts),
            sum(len(r["annotations"]) for r in train.dicts),
            sum(int(c["images"]) for c in coco),
            len(split.heldout_ids) if split else 0,
            "scored at the end" if heldout else "not scored",
        )
    return _FoldData(split, train, heldout, tuple(coco))


def _extra_data(truth: str, images: str, split: FoldSplit | None, weight: float) -> TrainingData:
    """An ``--extra-truth`` file (pseudo-labels) read as train.csv is, its records tagged
    with their source and sampling weight; images the fold holds out are left out."""
    if read_train_csv(truth).empty:  # a pseudo-labelling round that kept nothing: train on the rest
        return TrainingData([], [AnnotationProblem("", IMAGE_ROW, f"{truth} holds no row")], pd.DataFrame())
    data = load_dataset_dicts(Path(images).parent, None, train_csv=truth, image_dir=images)
    heldout = set(split.heldout_ids) if split is not None else set()
    dicts, problems = [], list(data.problems)
    for record in data.dicts:
        if record["image_id"] in heldout:
            what = "held out by this fold (it is scored on); its extra labels left out"
            problems.append(AnnotationProblem(str(record["image_id"]), IMAGE_ROW, what))
            continue
        dicts.append({**record, "source": truth, "repeat": weight})
    return TrainingData(dicts, problems, data.rows)


def _coco_meta(source: CocoSource, data: TrainingData) -> dict[str, Any]:
    """meta.json: one COCO file trained on."""
    return {
        "annotations": str(source.annotations),
        "images_dir": str(source.images),
        "images": len(data.dicts),
        "instances": sum(len(r["annotations"]) for r in data.dicts),
        "left_out": len(data.problems),
    }


def _report_mended(opts: TrainOptions, train: TrainingData) -> None:
    """Write each mended row to the fold folder's ``mended_masks.csv`` (id, row, what)."""
    frame = pd.DataFrame([(m.id, m.row, m.what) for m in train.mended], columns=["id", "row", "what"])
    frame.to_csv(opts.fold_dir / MENDED_FILE, index=False)
    logger.info("--mend-masks: %d training masks mended (listed in %s)", len(frame), opts.fold_dir / MENDED_FILE)


def _report_problems(
    opts: TrainOptions, parts: list[tuple[str, TrainingData]], heldout: TrainingData | None, train: TrainingData
) -> None:
    """Write every annotation left out to the fold folder's problems file and log the first 20."""
    rows = [(p.id, p.row, p.what, source) for source, part in parts for p in part.problems]
    merged = train.problems[sum(len(part.problems) for _, part in parts) :]  # images two sources share
    rows += [(p.id, p.row, p.what, "merge") for p in merged]
    if heldout is not None:
        rows += [(p.id, p.row, p.what, str(Path(opts.data_dir) / "train.csv")) for p in heldout.problems]
    frame = pd.DataFrame(rows, columns=["id", "row", "what", "source"])
    frame.to_csv(opts.fold_dir / PROBLEMS_FILE, index=False)
    for image_id, row, what, source in rows[:20]:
        logger.warning("annotation left out: %s", f"{image_id} ({source}) row {row}: {what}")
    if len(rows) > 20:
        logger.warning("... %d more in %s", len(rows) - 20, opts.fold_dir / PROBLEMS_FILE)


def _data_meta(opts: TrainOptions, data: _FoldData, reinitialised: list[str]) -> dict[str, Any]:
    """meta.json: what the fold was trained on."""
    problems = len(data.train.problems) + (len(data.heldout.problems) if data.heldout else 0)
    return {
        "fold": opts.fold if data.split is not None else None,
        "name": opts.fold_name,
        "classes": list(opts.classes),
        "arch": "" if opts.base_config else opts.arch,
        "base_config": opts.base_config or f"kernel_lib.d2config.sartorius_config({opts.arch!r})",
        **_start_meta(opts, reinitialised),
        "folds_csv": str(opts.folds_csv),
        "data_dir": str(opts.data_dir),
        "train_images": len(data.train.dicts),
        "train_instances": sum(len(r["annotations"]) for r in data.train.dicts),
        "coco": list(data.coco),
        "extra_truth": [
            {"file": truth, "images_dir": images, "weight": opts.extra_weight}
            for truth, images in zip(opts.extra_truth, opts.extra_images)
        ],
        "heldout_ids": list(data.split.heldout_ids) if data.split is not None else [],
        "annotation_problems": problems,
        "mended_masks": len(data.train.mended) if opts.mend_masks else None,
    }


def _start_meta(opts: TrainOptions, reinitialised: list[str]) -> dict[str, Any]:
    """meta.json: what the weights started from. A run that starts from a fold folder is
    from scratch when that folder was, names it (``continues``: a fold's iterations and
    held-out score; ``initialised_from``: a pretraining folder, its classes and the
    class-specific layers ``reinitialised`` here) and counts ``total_iters`` over the
    whole chain."""
    source = opts.continued_fold
    tuning = fine_tunes(opts)
    return {
        "init_weights": opts.init_weights or None,
        "from_scratch": bool(source.meta.get("from_scratch")) if source else not opts.init_weights,
        "continues": None
        if source is None or tuning
        else {
            "folder": str(source.folder),
            "iters": source.total_iters,
            "heldout_score": source.meta.get("heldout_score"),
        },
        "initialised_from": None
        if source is None or not tuning
        else {
            "folder": str(source.folder),
            "iters": source.total_iters,
            "classes": source_classes(source.meta),
            "reinitialised": reinitialised,
        },
        "total_iters": opts.iters + (source.total_iters if source else 0),
    }


def _recipe_meta(opts: TrainOptions, cfg: CfgNode, device: str, bf16: bool, mapper: Any) -> dict[str, Any]:
    """meta.json: how it was trained (inference reads ``input_normalization`` back)."""
    return {
        "iters": opts.iters,
        "batch": opts.batch,
        "base_lr": cfg.SOLVER.BASE_LR,
        "device": device,
        "num_gpus": opts.num_gpus,
        "amp": bool(cfg.SOLVER.AMP.ENABLED),
        "bf16": bf16,
        "mapper": type(mapper).__name__,
        "min_size_train": list(cfg.INPUT.MIN_SIZE_TRAIN),
        "min_size_test": cfg.INPUT.MIN_SIZE_TEST,
        "augment": dataclasses.asdict(opts.augment),
        NORMALIZATION_KEY: opts.normalization,
        "seed": opts.seed,
    }


def _run_meta(first_iter: int, done: int, seconds: float) -> dict[str, Any]:
    """meta.json: the run itself."""
    return {
        "resumed_from_iter": first_iter,
        "train_seconds": round(seconds, 1),
        "iters_per_second": round(done / seconds, 4) if seconds > 0 else None,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _reinitialised(model: torch.nn.Module, weights: Path) -> list[str]:
    """The model's tensors that ``weights`` cannot fill, having another shape there (the
    class-specific layers of another class count): detectron2's checkpointer skips them,
    so they keep their fresh initialisation."""
    state = read_state_dict(weights, f"--init-weights {weights}")
    own = unwrap(model).state_dict()
    return sorted(k for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape))


def _train_and_score(opts: TrainOptions, device: str, rank: int) -> None:
    """One process's run: read the data, train, write the fold, score it on its held-out images."""
    seed_all_rng(opts.seed + rank)
    data = _load_fold_data(opts, rank)
    cfg = build_config(opts, device)
    cfg.freeze()
    mapper = build_mapper(cfg, opts.augment, opts.normalization)
    bf16 = opts.resolved_bf16(device)
    config = _eval_config(opts, device)
    trainer: _FoldTrainer | None = None

    def periodic_eval() -> dict[str, float]:
        if data.heldout is None or not comm.is_main_process() or trainer is None:
            return {}
        result = score_weights(cfg, trainer.model, data.heldout, config, opts.fold_name, opts.normalization)
        logger.info("iteration %d: held-out score %.4f", trainer.iter + 1, result.score)
        return {"heldout_score": result.score, **{f"heldout_{k}": v for k, v in result.per_cell_type.items()}}

    trainer = _FoldTrainer(cfg, data.train.dicts, mapper, periodic_eval, bf16=bf16)
    source = opts.continued_fold
    reinitialised = _reinitialised(trainer.model, source.weights) if source and fine_tunes(opts) else []
    if reinitialised:
        logger.info("fine-tuning %s: %d class-specific tensors start afresh", source.folder, len(reinitialised))
    trainer.resume_or_load(resume=opts.resume)
    start, first_iter = time.perf_counter(), trainer.start_iter
    trainer.train()
    seconds = time.perf_counter() - start
    if not comm.is_main_process():
        return
    meta = {
        **_data_meta(opts, data, reinitialised),
        **_recipe_meta(opts, cfg, device, bf16, mapper),
        **_run_meta(first_iter, opts.iters - first_iter, seconds),
    }
    finish_fold(opts.fold_dir, cfg, trainer.model, meta, opts.keep_checkpoints)
    if data.heldout is not None:
        meta.update(score_fold(opts.fold_dir, data.heldout, config, opts.eval_config))
        logger.info("%s held-out score %.4f %s", opts.fold_name, meta["heldout_score"], meta["heldout_per_cell_type"])
    write_meta(opts.fold_dir, meta)


def rescore_fold(opts: TrainOptions) -> TrainResult:
    """Score an already trained fold folder again (e.g. with a tuned ``eval_config``) and
    update its meta.json; no training.

    Raises:
        ValueError: the fold folder has no model_final.pth / meta.json, or the folds file
            gives the fold no held-out image.
    """
    fold_dir = opts.fold_dir
    if not (fold_dir / WEIGHTS_FILE).is_file() or not (fold_dir / META_FILE).is_file():
        raise ValueError(f"--score-only: {fold_dir} holds no trained model ({WEIGHTS_FILE} and {META_FILE})")
    if not opts.data_dir:
        raise ValueError("--score-only: pass --data, --folds and --fold; a COCO-only run holds no image out to score")
    split = fold_split(opts.folds_csv, opts.fold)
    if not split.heldout_ids:
        raise ValueError(f"--score-only: fold {opts.fold} of {opts.folds_csv} holds no image to score")
    heldout = load_dataset_dicts(opts.data_dir, split.heldout_ids)
    meta = read_meta(fold_dir)
    meta.update(score_fold(fold_dir, heldout, _eval_config(opts, opts.resolved_device()), opts.eval_config))
    write_meta(fold_dir, meta)
    return TrainResult(fold_dir, meta)


def train_fold(opts: TrainOptions) -> TrainResult:
    """Train fold ``opts.fold`` and score its held-out images; see the module docstring.

    With ``num_gpus`` > 1 the work runs in that many processes started by
    ``detectron2.engine.launch`` (DDP); this process waits for them.

    Raises:
        ValueError: bad options, folds file, data folder or initial weights.
    """
    device = opts.resolved_device()
    _check_before_training(opts)
    opts, fetched = _local_initial_weights(opts)
    build_config(opts, device)  # a config detectron2 refuses stops here, before any process starts
    if opts.fold_dir.exists() and not opts.resume:
        clear_leftovers(opts.fold_dir)
    launch(_train_worker, opts.num_gpus if device == "cuda" else 1, dist_url="auto", args=(opts, device))
    if not (opts.fold_dir / META_FILE).is_file():
        raise RuntimeError(f"training of {opts.fold_dir} ended without writing {opts.fold_dir / META_FILE}")
    meta = read_meta(opts.fold_dir)
    if fetched is not None:
        meta["init_weights_source"] = {"url": fetched.url, "sha256": fetched.sha256}
        write_meta(opts.fold_dir, meta)
    return TrainResult(opts.fold_dir, meta)


def _check_before_training(opts: TrainOptions) -> None:
    """What would stop a run, checked before anything is downloaded or started: the folds
    file, each COCO file and folder, what continuing a fold must keep, the fold folder."""
    split = fold_split(opts.folds_csv, opts.fold) if opts.data_dir else None
    for source in opts.coco_sources:  # each --coco file and its image folder exist (else ValueError)
        logger.debug("COCO file %s, images under %s", source.annotations, source.images)
    check_continuation(opts, split)
    out = Path(opts.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; pass the models folder the fold folder goes in")
    if opts.init_weights and opts.continued_fold is None and not is_remote(opts.init_weights):
        _check_weights_file(Path(opts.init_weights))
    fold_dir = opts.fold_dir
    if (fold_dir / WEIGHTS_FILE).exists() and not opts.resume:
        raise ValueError(f"{fold_dir} already holds a trained model; remove it, pick another --out/--name or --resume")
    if opts.resume and not (fold_dir / CHECKPOINT_LINK).is_file():
        raise ValueError(f"--resume: {fold_dir} holds no last_checkpoint to resume from (keep_checkpoints off?)")


def _check_weights_file(path: Path) -> None:
    """A local ``--init-weights`` file is read once before anything starts, as the run
    will read it (never unpickling objects), so that a wrong file stops here."""
    if not path.is_file():
        return  # build_config says what to pass
    if path.suffix == ".pkl":
        read_pickled_weights(path)
    else:
        read_state_dict(path, f"--init-weights {path}")


def weights_cache() -> Path:
    """Where downloaded initial weights are kept: ``$XDG_CACHE_HOME/kernel_lib/weights``
    (``~/.cache/...``), never inside a models folder that would be uploaded."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kernel_lib" / "weights"


def _local_initial_weights(opts: TrainOptions) -> tuple[TrainOptions, Download | None]:
    """``opts`` with a URL or model-zoo ``init_weights`` replaced by the downloaded file."""
    if not is_remote(opts.init_weights):
        return opts, None
    fetched = fetch_weights(opts.init_weights, weights_cache())
    logger.info("initial weights %s: %s (sha256 %s)", fetched.url, fetched.path, fetched.sha256)
    return dataclasses.replace(opts, init_weights=str(fetched.path)), fetched
