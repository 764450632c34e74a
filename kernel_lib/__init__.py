"""kernel_lib: offline multi-fold detectron2 inference for Sartorius cell segmentation.

Pure-numpy stages are imported here; the torch model module (``kernel_lib.model``) is
imported only when used, so scoring and validation never load torch.
"""

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
from kernel_lib.images import list_images, read_image, to_model_input
from kernel_lib.masks import CropMasks

# --- core: RLE, post-processing, submission, metric (issue 3) ---
from kernel_lib.metric import ImageScore, ScoreReport, image_score, score_submission
from kernel_lib.postprocess import Postprocessed, image_cell_type, postprocess
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

# --- end core (issue 3) ---

# --- evaluation: folds, out-of-fold evaluation, tuning, report (issue 6) ---
# (the function kernel_lib.evaluate.evaluate is not re-exported: the name would hide the module)
# isort: split
from kernel_lib.evaluate import Evaluation, evaluate_cache, read_truth
from kernel_lib.folds import make_folds, read_folds, write_folds
from kernel_lib.report import write_report
from kernel_lib.tune import InstanceTable, TuneImage, TuneResult, images_from_cache, tune_postprocess

# --- end evaluation (issue 6) ---

# --- inference: TTA, ensembling, pipeline (issue 4) ---
# isort: split
from kernel_lib.ensemble import (
    SoftInstances,
    fuse_views,
    mask_nms,
    paste,
    paste_soft,
    weighted_mask_fusion,
)
from kernel_lib.tta import View, make_views

# torch-dependent names, imported on first use (``import kernel_lib`` never imports torch)
_LAZY: dict[str, str] = {
    "FoldModel": "kernel_lib.model",
    "EnsemblePredictor": "kernel_lib.model",
    "make_demo_models": "kernel_lib.demo_models",
    "InferenceResult": "kernel_lib.pipeline",
    "finalize": "kernel_lib.pipeline",
    "load_models": "kernel_lib.pipeline",
    "predict_instances": "kernel_lib.pipeline",
    "run_inference": "kernel_lib.pipeline",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kernel_lib' has no attribute {name!r}")


# --- end inference (issue 4) ---

__all__ = [
    "CELL_TYPES",
    "IMAGE_SHAPE",
    "IOU_THRESHOLDS",
    "Config",
    "CropMasks",
    "EnsembleConfig",
    "ImageScore",
    "InferenceConfig",
    "PostprocessConfig",
    "Postprocessed",
    "Problem",
    "ScoreReport",
    "image_cell_type",
    "image_score",
    "list_images",
    "load_config",
    "postprocess",
    "read_image",
    "rle_decode",
    "rle_decode_crops",
    "rle_encode",
    "rle_encode_crops",
    "rle_encode_labels",
    "rle_encode_stack",
    "rle_problems",
    "rle_to_indices",
    "score_submission",
    "to_model_input",
    "validate_submission",
    "write_submission",
]

# issue 4 exports (lazy names included: resolved through __getattr__)
__all__ += [
    "EnsemblePredictor",
    "FoldModel",
    "InferenceResult",
    "SoftInstances",
    "View",
    "finalize",
    "fuse_views",
    "load_models",
    "make_demo_models",
    "make_views",
    "mask_nms",
    "paste",
    "paste_soft",
    "predict_instances",
    "run_inference",
    "weighted_mask_fusion",
]

# issue 6 exports
__all__ += [
    "Evaluation",
    "InstanceTable",
    "TuneImage",
    "TuneResult",
    "evaluate_cache",
    "images_from_cache",
    "make_folds",
    "read_folds",
    "read_truth",
    "tune_postprocess",
    "write_folds",
    "write_report",
]

# --- training: dataset dicts, fold training (issue 7) ---
# kernel_lib.data needs pycocotools and kernel_lib.train torch + detectron2: imported on first use
_LAZY.update(
    {
        "AnnotationProblem": "kernel_lib.data",
        "TrainingData": "kernel_lib.data",
        "load_dataset_dicts": "kernel_lib.data",
        "AugmentSettings": "kernel_lib.train",
        "TrainOptions": "kernel_lib.train",
        "rescore_fold": "kernel_lib.train",
        "score_models": "kernel_lib.train",
        "train_fold": "kernel_lib.train",
    }
)
__all__ += [
    "AnnotationProblem",
    "AugmentSettings",
    "TrainOptions",
    "TrainingData",
    "load_dataset_dicts",
    "rescore_fold",
    "score_models",
    "train_fold",
]
# --- end training (issue 7) ---
