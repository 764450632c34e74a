"""What one fold's training run takes: :class:`TrainOptions` and :class:`AugmentSettings`.

Torch-free, so that ``python -m kernel_lib train --help`` builds its parser from these
dataclasses (their defaults are the command's) without importing torch or detectron2;
checking an architecture name imports :mod:`kernel_lib.d2config` when options are built.
Training itself is :mod:`kernel_lib.training.trainer`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from kernel_lib.config import NORMALIZATIONS
from kernel_lib.model_folder import FoldSource, fold_source


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
    """

    crop: int = 0
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.8, 1.2)

    def __post_init__(self) -> None:
        if not 0 <= self.crop <= 4096:
            raise ValueError(f"crop: expected a side in [0, 4096] pixels (0 = no crop), got {self.crop!r}")
        for name in ("brightness", "contrast"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 4.0:
                raise ValueError(f"{name}: expected (min, max) with 0 <= min <= max <= 4, got {(lo, hi)!r}")


@dataclass(frozen=True)
class TrainOptions:
    """Everything one fold's training run needs (what ``python -m kernel_lib train`` takes).

    Attributes:
        data_dir: competition folder (train.csv, train/<id>.png).
        folds_csv: folds file ``id,cell_type,fold`` (``python -m kernel_lib folds``).
        fold: K; trains on the images whose fold is not K, scores on those whose fold is K.
        out_dir: models folder; the fold lands in ``out_dir/name``.
        name: fold folder name; "" gives ``fold<K>``.
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

    data_dir: str
    folds_csv: str
    fold: int
    out_dir: str
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
        if self.fold < 0:
            raise ValueError(f"fold: expected an integer >= 0, got {self.fold}")
        if self.iters < 1:
            raise ValueError(f"iters: expected >= 1, got {self.iters}")
        if self.num_gpus < 1:
            raise ValueError(f"num_gpus: expected >= 1, got {self.num_gpus}")
        if self.batch < 1 or self.batch % self.num_gpus:
            raise ValueError(f"batch: expected a positive multiple of num_gpus ({self.num_gpus}), got {self.batch}")
        if self.lr < 0:
            raise ValueError(f"lr: expected >= 0 (0 = linear scaling), got {self.lr}")
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
        return self.name or f"fold{self.fold}"

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
