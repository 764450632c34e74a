"""What one fold's training run takes: :class:`TrainOptions` and :class:`AugmentSettings`.

Torch-free, so that ``python -m kernel_lib train --help`` builds its parser from these
dataclasses (their defaults are the command's) without importing torch or detectron2;
checking an architecture name imports :mod:`kernel_lib.d2config` when options are built.
Training itself is :mod:`kernel_lib.training.trainer`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from kernel_lib.config import CELL_CLASS, CELL_TYPES, COCO_CLASSES, NORMALIZATIONS
from kernel_lib.model_folder import FoldSource, fold_source

if TYPE_CHECKING:
    from kernel_lib.training.coco import CocoSource


@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentation (applied in this order after the multi-scale resize).

    Attributes:
        crop: side in pixels of a random square crop taken after the resize; 0 keeps
            the whole image; range [0, 4096]. Cropping keeps cells at their size while
            making each iteration cheaper (CPU runs, tests).
        hflip: random horizontal flip (p = 0.5).
        vflip: random vertical flip (p = 0.5).
        rot90: random rotation by 0, 90, 180 or 270 degrees (exact, no interpolation).
        brightness: (min, max) brightness factor, uniform; range [0, 4], min <= max;
            (1, 1) turns it off.
        contrast: (min, max) contrast factor around the image mean; same range.
        copy_paste: probability in [0, 1] that a training crop gets cells pasted from
            images of its cell type (:mod:`kernel_lib.training.copy_paste`; crop
            training only); 0 turns it off.
        copy_paste_max: most cells pasted into one crop (1 to that many, uniformly);
            range [1, 256].
        type_scale: per cell type (shsy5y, astro, cort), a factor on the resize's short
            edge and longest edge for that type's images, in [0.25, 4] (crop training
            only): 1.5 shows shsy5y's small cells 1.5 times larger; pair it with the
            same factor at inference (``EnsembleConfig.type_scale``). Images of no
            Sartorius type (class-agnostic COCO data) keep factor 1.
    """

    crop: int = 0
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.8, 1.2)
    copy_paste: float = 0.0
    copy_paste_max: int = 8
    type_scale: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 <= self.copy_paste <= 1.0:
            raise ValueError(f"copy_paste: expected a probability in [0, 1], got {self.copy_paste!r}")
        if not 1 <= self.copy_paste_max <= 256:
            raise ValueError(f"copy_paste_max: expected 1 to 256 cells, got {self.copy_paste_max!r}")
        if len(self.type_scale) != len(CELL_TYPES) or not all(0.25 <= f <= 4.0 for f in self.type_scale):
            raise ValueError(
                f"type_scale: expected {len(CELL_TYPES)} factors in [0.25, 4] ({', '.join(CELL_TYPES)}), "
                f"got {self.type_scale!r}"
            )
        if self.type_scale != (1.0, 1.0, 1.0) and not self.crop:
            raise ValueError("type_scale: per-type resizing works on training crops; pass --crop SIDE (e.g. 256) too")
        if self.copy_paste and not self.crop:
            raise ValueError("copy_paste: pasting works on training crops; pass --crop SIDE (e.g. 256) too")
        if not 0 <= self.crop <= 4096:
            raise ValueError(f"crop: expected a side in [0, 4096] pixels (0 = no crop), got {self.crop!r}")
        for name in ("brightness", "contrast"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 4.0:
                raise ValueError(f"{name}: expected (min, max) with 0 <= min <= max <= 4, got {(lo, hi)!r}")


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Everything one fold's training run needs (what ``python -m kernel_lib train`` takes).

    A run trains on train.csv data (``data_dir`` with a folds file and a fold), on COCO
    files (``coco``, e.g. LIVECell), or on both; a COCO-only run holds nothing out (a
    pretraining run, its folder named ``pretrain`` by default).

    Attributes:
        out_dir: models folder; the fold lands in ``out_dir/name``.
        data_dir: competition folder (train.csv, train/<id>.png); "" for a COCO-only run.
        folds_csv: folds file ``id,cell_type,fold`` (``python -m kernel_lib folds``);
            required with ``data_dir``.
        fold: K; trains on the images whose fold is not K, scores on those whose fold is
            K; required (>= 0) with ``data_dir``, -1 without.
        coco: COCO instances files (:mod:`kernel_lib.training.coco`: list or dict
            annotations, polygons or RLE), trained on in full beside the fold's images.
        coco_images: the image folder of each ``coco`` file, in the same order.
        coco_classes: one of :data:`kernel_lib.config.COCO_CLASSES`: "sartorius"
            (the three classes; LIVECell's SH-SY5Y is shsy5y, other lines left out) or
            "cell" (one class-agnostic class; COCO-only runs, for pretraining).
        extra_truth: more annotations in train.csv's format (``python -m kernel_lib pseudo``'s
            pseudo-labels), trained on beside the fold's images; an image the fold holds
            out is left out of them (reported).
        extra_images: the image folder of each ``extra_truth`` file, in the same order.
        extra_weight: how often an ``extra_truth`` image is drawn relative to a labelled
            one, in (0, 10] (detectron2's repeat-factor sampler); 1 draws them alike.
        mend_masks: train on mended masks of the fold's train.csv images (holes filled,
            fragments dropped: :func:`kernel_lib.training.datasets.mend_mask`), each row
            changed listed in the fold folder's ``mended_masks.csv``; held-out scoring
            keeps the masks as annotated.
        name: fold folder name; "" gives ``fold<K>`` (``pretrain`` for a COCO-only run).
        base_config: a detectron2 config file or model-zoo name; "" uses
            :func:`~kernel_lib.d2config.sartorius_config` (``arch``).
        arch: a key of :data:`kernel_lib.d2config.ARCHS` (when ``base_config`` is "").
        init_weights: local .pth/.pkl file to start from, or a fold folder of this project
            to continue (its model_final.pth; same split, architecture and normalisation);
            "" trains from scratch.
        iters: training iterations (>= 1).
        batch: images per iteration, over all GPUs (>= 1, a multiple of ``num_gpus``).
        lr: base learning rate; 0 gives 0.02 * batch / 16 (linear scaling of the
            detectron2 COCO schedule).
        device: "cpu" or "cuda" ("auto" picks CUDA when available).
        num_gpus: processes (one per GPU) started by detectron2's launcher.
        amp: mixed precision (only on CUDA).
        bf16: bfloat16 autocast on the CPU; ``None`` turns it on where the CPU runs
            bfloat16 natively (:func:`kernel_lib.model.fast_cpu_bf16`: AMX or
            AVX512-BF16), where it halves the time of an iteration.
        min_sizes: short-edge sizes the resize picks from (scale jitter); () keeps the
            base config's ``INPUT.MIN_SIZE_TRAIN``.
        max_size: longest edge after the resize; 0 keeps the base config's.
        test_size: ``INPUT.MIN_SIZE_TEST`` written to config.yaml; 0 keeps the base
            config's. Keep it in the range of ``min_sizes``.
        augment: :class:`AugmentSettings`.
        normalization: input normalisation, one of
            :data:`kernel_lib.config.NORMALIZATIONS`: ``"per_image"`` brings every image
            to one mean and spread before augmentation (:func:`kernel_lib.images.normalize_image`);
            it is recorded in meta.json (``input_normalization``), and inference applies it.
        eval_period: also score the held-out images every this many iterations (0: only
            at the end).
        eval_config: a pipeline config JSON (``tune``'s) for the held-out scoring; ""
            uses the defaults (:class:`kernel_lib.config.Config`).
        heldout: score the held-out images at the end.
        checkpoint_period: iterations between checkpoints (for ``resume``).
        keep_checkpoints: keep the periodic checkpoints (with optimizer state) after a
            finished run; by default they are deleted and ``model_final.pth`` holds
            only the weights.
        resume: continue from the fold folder's last checkpoint.
        workers: data-loader processes per GPU.
        seed: random seed (numpy, torch, python; +rank per process).
        max_images: use at most this many training images (0: all); for smoke tests.
        overrides: detectron2 config overrides applied last, ``(KEY, VALUE, KEY, VALUE,
            ...)`` as detectron2's ``merge_from_list`` takes them, e.g.
            ``("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "128")``.
    """

    out_dir: str
    data_dir: str = ""
    folds_csv: str = ""
    fold: int = -1
    coco: tuple[str, ...] = ()
    coco_images: tuple[str, ...] = ()
    coco_classes: str = "sartorius"
    extra_truth: tuple[str, ...] = ()
    extra_images: tuple[str, ...] = ()
    extra_weight: float = 1.0
    mend_masks: bool = False
    name: str = ""
    base_config: str = ""
    arch: str = "R50"
    init_weights: str = ""
    iters: int = 3000
    batch: int = 2
    lr: float = 0.0
    device: str = "auto"
    num_gpus: int = 1
    amp: bool = True
    bf16: bool | None = None
    min_sizes: tuple[int, ...] = ()
    max_size: int = 0
    test_size: int = 0
    augment: AugmentSettings = field(default_factory=AugmentSettings)
    normalization: str = "none"
    eval_period: int = 0
    eval_config: str = ""
    heldout: bool = True
    checkpoint_period: int = 1000
    keep_checkpoints: bool = False
    resume: bool = False
    workers: int = 2
    seed: int = 0
    max_images: int = 0
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._check_data()
        if self.iters < 1:
            raise ValueError(f"iters: expected >= 1, got {self.iters}")
        if self.num_gpus < 1:
            raise ValueError(f"num_gpus: expected >= 1, got {self.num_gpus}")
        if self.batch < 1 or self.batch % self.num_gpus:
            raise ValueError(f"batch: expected a positive multiple of num_gpus ({self.num_gpus}), got {self.batch}")
        if not 0 <= self.lr < math.inf:  # NaN fails too
            raise ValueError(f"lr: expected a finite number >= 0 (0 = linear scaling), got {self.lr}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed: expected a whole number in [0, 2**32) (numpy's seeds), got {self.seed}")
        if self.name and (self.name in (".", "..") or self.name.startswith(".") or any(c in self.name for c in "/\\")):
            raise ValueError(
                f"name: expected a plain folder name inside --out (no path separator, not hidden), got {self.name!r}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        from kernel_lib.d2config import ARCHS  # detectron2: only when options are built, not for --help

        if not self.base_config and self.arch not in ARCHS:
            raise ValueError(f"arch: expected one of {sorted(ARCHS)}, got {self.arch!r}")
        if any(s < 32 for s in self.min_sizes) or self.max_size < 0 or self.test_size < 0:
            raise ValueError(
                f"sizes: expected min_sizes >= 32 and max_size, test_size >= 0 (0 = keep), "
                f"got {self.min_sizes}, {self.max_size}, {self.test_size}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization: expected one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")
        if len(self.overrides) % 2:
            raise ValueError(f"overrides: expected KEY VALUE pairs, got an odd number of items {self.overrides!r}")
        for name in ("eval_period", "checkpoint_period", "workers", "max_images"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")

    def _check_data(self) -> None:
        if self.extra_truth and not self.data_dir:
            raise ValueError("--extra-truth: pseudo-labels are trained on beside --data (train.csv); pass --data too")
        if not self.data_dir and not self.coco:
            raise ValueError("data: expected --data (train.csv and train/) and/or --coco FILE.json, got neither")
        if self.data_dir and not self.folds_csv:
            raise ValueError(f"--data {self.data_dir}: pass --folds FOLDS_CSV (from the folds command) and --fold K")
        if self.data_dir and self.fold < 0:
            raise ValueError(f"fold: expected an integer >= 0 with --data, got {self.fold}")
        if not self.data_dir and self.fold != -1:
            raise ValueError(f"fold {self.fold}: a COCO-only run holds no fold out; drop --fold or pass --data")
        if len(self.coco) != len(self.coco_images):
            raise ValueError(
                f"coco: expected one --coco-images folder per --coco file, got {len(self.coco)} file(s) "
                f"and {len(self.coco_images)} folder(s)"
            )
        if len(self.extra_truth) != len(self.extra_images):
            raise ValueError(
                f"extra_truth: expected one --extra-images folder per --extra-truth file, got "
                f"{len(self.extra_truth)} file(s) and {len(self.extra_images)} folder(s)"
            )
        if not 0.0 < self.extra_weight <= 10.0:
            raise ValueError(f"extra_weight: expected a sampling weight in (0, 10], got {self.extra_weight!r}")
        if self.coco_classes not in COCO_CLASSES:
            raise ValueError(f"coco_classes: expected one of {', '.join(COCO_CLASSES)}, got {self.coco_classes!r}")
        if self.coco_classes == CELL_CLASS and self.data_dir:
            raise ValueError(
                "--coco-classes cell: train.csv data has the three Sartorius classes; a class-agnostic run is "
                "COCO-only (pretraining); fine-tune it with --data and --init-weights THAT_FOLDER"
            )

    @property
    def coco_sources(self) -> list[CocoSource]:
        """Each ``coco`` file with its image folder (checked to exist).

        Raises:
            ValueError: a file or folder that does not exist.
        """
        from kernel_lib.training.coco import CocoSource

        return [CocoSource.of(a, i) for a, i in zip(self.coco, self.coco_images)]

    @property
    def classes(self) -> tuple[str, ...]:
        """The model's class names, in class-index order."""
        return (CELL_CLASS,) if self.coco_classes == CELL_CLASS else CELL_TYPES

    @cached_property
    def continued_fold(self) -> FoldSource | None:
        """The fold folder ``init_weights`` names, when the run continues one (its meta.json
        read once); None for another weights file or none.

        Raises:
            ValueError: a folder that is not a fold folder.
        """
        return fold_source(self.init_weights) if self.init_weights else None

    @property
    def fold_name(self) -> str:
        return self.name or (f"fold{self.fold}" if self.data_dir else "pretrain")

    @property
    def fold_dir(self) -> Path:
        return Path(self.out_dir) / self.fold_name

    def resolved_bf16(self, device: str) -> bool:
        """Whether the run uses bfloat16 autocast (CPU only)."""
        from kernel_lib.model import fast_cpu_bf16

        if device != "cpu":
            return False
        return fast_cpu_bf16() if self.bf16 is None else bool(self.bf16)

    def resolved_device(self) -> str:
        """ "cpu" or "cuda"; raises ``ValueError`` for cuda without a CUDA device."""
        import torch

        cuda = torch.cuda.is_available()
        device = ("cuda" if cuda else "cpu") if self.device == "auto" else self.device
        if device == "cuda" and not cuda:
            raise ValueError("device: cuda asked for, but torch sees no CUDA device; use --device cpu")
        if device == "cpu" and self.num_gpus > 1:
            raise ValueError(f"num_gpus: {self.num_gpus} processes need --device cuda; on the CPU use --num-gpus 1")
        if device == "cuda" and self.num_gpus > torch.cuda.device_count():
            raise ValueError(f"num_gpus: {self.num_gpus} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
        return device
