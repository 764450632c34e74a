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
