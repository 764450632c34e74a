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

__all__ = [
    "CELL_TYPES",
    "IMAGE_SHAPE",
    "IOU_THRESHOLDS",
    "Config",
    "CropMasks",
    "EnsembleConfig",
    "InferenceConfig",
    "PostprocessConfig",
    "list_images",
    "load_config",
    "read_image",
    "to_model_input",
]
