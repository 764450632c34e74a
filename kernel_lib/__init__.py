"""kernel_lib: offline multi-fold detectron2 inference for Sartorius cell segmentation.

The public API of every stage, re-exported here. Only the typed config is imported at
once; every other name is imported from its module on first use, so ``import kernel_lib``
and the command line's start-up load neither numpy, pandas nor torch, scoring and
validation never load torch, and the inference path never imports the training modules.
"""

from __future__ import annotations

import importlib
import sys
import types

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

# name -> module, one line per stage; kernel_lib.evaluate (the function) is not
# re-exported: the name would hide the module
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ["SoftInstances", "fuse_views", "mask_nms", "paste", "paste_soft", "weighted_mask_fusion"],
        "kernel_lib.ensemble",
    ),
    **dict.fromkeys(["Evaluation", "evaluate_cache", "read_truth"], "kernel_lib.evaluate"),
    **dict.fromkeys(["make_folds", "read_folds", "write_folds"], "kernel_lib.folds"),
    **dict.fromkeys(["list_images", "read_image", "to_model_input"], "kernel_lib.images"),
    "CropMasks": "kernel_lib.masks",
    **dict.fromkeys(["ImageScore", "ScoreReport", "image_score", "score_submission"], "kernel_lib.metric"),
    **dict.fromkeys(["Postprocessed", "image_cell_type", "postprocess"], "kernel_lib.postprocess"),
    "write_report": "kernel_lib.report",
    **dict.fromkeys(
        [
            "rle_decode",
            "rle_decode_crops",
            "rle_encode",
            "rle_encode_crops",
            "rle_encode_labels",
            "rle_encode_stack",
            "rle_problems",
            "rle_to_indices",
        ],
        "kernel_lib.rle",
    ),
    **dict.fromkeys(["Problem", "validate_submission", "write_submission"], "kernel_lib.submission"),
    **dict.fromkeys(["View", "make_views"], "kernel_lib.tta"),
    **dict.fromkeys(
        ["InstanceTable", "TuneImage", "TuneResult", "images_from_cache", "tune_postprocess"], "kernel_lib.tune"
    ),
    # inference (torch)
    **dict.fromkeys(["EnsemblePredictor", "FoldModel"], "kernel_lib.model"),
    "make_demo_models": "kernel_lib.demo_models",
    **dict.fromkeys(
        ["InferenceResult", "finalize", "load_models", "predict_instances", "run_inference"], "kernel_lib.pipeline"
    ),
    # training (pycocotools; torch + detectron2)
    **dict.fromkeys(["AnnotationProblem", "TrainingData", "load_dataset_dicts"], "kernel_lib.data"),
    **dict.fromkeys(
        ["AugmentSettings", "TrainOptions", "rescore_fold", "score_models", "train_fold"], "kernel_lib.train"
    ),
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module 'kernel_lib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """Keeps an exported function named like its module (``postprocess``) the function
    when the submodule is imported later: importing ``kernel_lib.postprocess`` sets the
    package's attribute to the module, which would hide the function."""

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
