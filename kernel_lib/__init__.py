"""kernel_lib: offline multi-fold detectron2 inference for Sartorius cell segmentation.

The public API of every stage, re-exported here. Pure-numpy stages are imported at
once; torch-dependent names (models, the pipeline's model calls, demo checkpoints,
training) are imported on first use, so ``import kernel_lib``, scoring and validation
never load torch, and the inference path never imports the training modules.
"""

from __future__ import annotations

import importlib

from kernel_lib.config import (
    CELL_TYPES,
    IMAGE_SHAPE,
    IOU_THRESHOLDS,
    Config,
    EnsembleConfig,
    InferenceConfig,
    PostprocessConfig,
    load_config,
)
from kernel_lib.ensemble import SoftInstances, fuse_views, mask_nms, paste, paste_soft, weighted_mask_fusion

# kernel_lib.evaluate (the function) is not re-exported: the name would hide the module
from kernel_lib.evaluate import Evaluation, evaluate_cache, read_truth
from kernel_lib.folds import make_folds, read_folds, write_folds
from kernel_lib.images import list_images, read_image, to_model_input
from kernel_lib.masks import CropMasks
from kernel_lib.metric import ImageScore, ScoreReport, image_score, score_submission
from kernel_lib.postprocess import Postprocessed, image_cell_type, postprocess
from kernel_lib.report import write_report
from kernel_lib.rle import (
    rle_decode,
    rle_decode_crops,
    rle_encode,
    rle_encode_crops,
    rle_encode_labels,
    rle_encode_stack,
    rle_problems,
    rle_to_indices,
)
from kernel_lib.submission import Problem, validate_submission, write_submission
from kernel_lib.tta import View, make_views
from kernel_lib.tune import InstanceTable, TuneImage, TuneResult, images_from_cache, tune_postprocess

_LAZY: dict[str, str] = {
    # inference (torch)
    "EnsemblePredictor": "kernel_lib.model",
    "FoldModel": "kernel_lib.model",
    "make_demo_models": "kernel_lib.demo_models",
    "InferenceResult": "kernel_lib.pipeline",
    "finalize": "kernel_lib.pipeline",
    "load_models": "kernel_lib.pipeline",
    "predict_instances": "kernel_lib.pipeline",
    "run_inference": "kernel_lib.pipeline",
    # training (pycocotools; torch + detectron2)
    "AnnotationProblem": "kernel_lib.data",
    "TrainingData": "kernel_lib.data",
    "load_dataset_dicts": "kernel_lib.data",
    "AugmentSettings": "kernel_lib.train",
    "TrainOptions": "kernel_lib.train",
    "rescore_fold": "kernel_lib.train",
    "score_models": "kernel_lib.train",
    "train_fold": "kernel_lib.train",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernel_lib' has no attribute {name!r}")


__all__ = [
    "CELL_TYPES",
    "IMAGE_SHAPE",
    "IOU_THRESHOLDS",
    "AnnotationProblem",
    "AugmentSettings",
    "Config",
    "CropMasks",
    "EnsembleConfig",
    "EnsemblePredictor",
    "Evaluation",
    "FoldModel",
    "ImageScore",
    "InferenceConfig",
    "InferenceResult",
    "InstanceTable",
    "PostprocessConfig",
    "Postprocessed",
    "Problem",
    "ScoreReport",
    "SoftInstances",
    "TrainOptions",
    "TrainingData",
    "TuneImage",
    "TuneResult",
    "View",
    "evaluate_cache",
    "finalize",
    "fuse_views",
    "image_cell_type",
    "image_score",
    "images_from_cache",
    "list_images",
    "load_config",
    "load_dataset_dicts",
    "load_models",
    "make_demo_models",
    "make_folds",
    "make_views",
    "mask_nms",
    "paste",
    "paste_soft",
    "postprocess",
    "predict_instances",
    "read_folds",
    "read_image",
    "read_truth",
    "rescore_fold",
    "rle_decode",
    "rle_decode_crops",
    "rle_encode",
    "rle_encode_crops",
    "rle_encode_labels",
    "rle_encode_stack",
    "rle_problems",
    "rle_to_indices",
    "run_inference",
    "score_models",
    "score_submission",
    "to_model_input",
    "train_fold",
    "tune_postprocess",
    "validate_submission",
    "weighted_mask_fusion",
    "write_folds",
    "write_report",
    "write_submission",
]
