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
# isort: split
from kernel_lib.evaluate import Evaluation, evaluate, evaluate_cache, read_truth
from kernel_lib.folds import make_folds, read_folds, write_folds
from kernel_lib.report import write_report
from kernel_lib.tune import InstanceTable, TuneImage, TuneResult, images_from_cache, tune_postprocess

# --- end evaluation (issue 6) ---

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

# issue 6 exports
__all__ += [
    "Evaluation",
    "InstanceTable",
    "TuneImage",
    "TuneResult",
    "evaluate",
    "evaluate_cache",
    "images_from_cache",
    "make_folds",
    "read_folds",
    "read_truth",
    "tune_postprocess",
    "write_folds",
    "write_report",
]
