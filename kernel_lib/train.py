"""Kept for code written against the single training module: training now lives in the
:mod:`kernel_lib.training` package (one module per concern; see its docstring). Every
name this module held is re-exported from its new room."""

from __future__ import annotations

from kernel_lib.folds import FoldSplit, fold_split
from kernel_lib.training.augment import RandomRot90, Rot90Transform, build_augmentations, photometric_augmentations
from kernel_lib.training.datasets import TrainingData, load_dataset_dicts, record_masks
from kernel_lib.training.folder import RUN_FILES, inference_config, write_model_folder
from kernel_lib.training.mappers import CropFirstMapper, SartoriusMapper, build_mapper
from kernel_lib.training.options import AugmentSettings, TrainOptions
from kernel_lib.training.recipe import build_config, check_continuation
from kernel_lib.training.roi_align import SparseROIAlign, sparse_roi_align, use_sparse_roi_align
from kernel_lib.training.scoring import HeldoutScore, score_fold, score_models
from kernel_lib.training.trainer import TrainResult, rescore_fold, train_fold

__all__ = [
    "RUN_FILES",
    "AugmentSettings",
    "CropFirstMapper",
    "FoldSplit",
    "HeldoutScore",
    "RandomRot90",
    "Rot90Transform",
    "SartoriusMapper",
    "SparseROIAlign",
    "TrainOptions",
    "TrainResult",
    "TrainingData",
    "build_augmentations",
    "build_config",
    "build_mapper",
    "check_continuation",
    "fold_split",
    "inference_config",
    "load_dataset_dicts",
    "photometric_augmentations",
    "record_masks",
    "rescore_fold",
    "score_fold",
    "score_models",
    "sparse_roi_align",
    "train_fold",
    "use_sparse_roi_align",
    "write_model_folder",
]
