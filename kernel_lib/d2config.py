"""detectron2 base configs for Sartorius fold models (imports detectron2, so torch).

Shared by training (``kernel_lib.train``) and the demonstration checkpoints, so that
a freshly trained fold and a demo fold have the same layout. Inference never builds
from here: it reads each fold's own ``config.yaml``.
"""

from __future__ import annotations

from detectron2 import model_zoo
from detectron2.config import CfgNode, get_cfg

from kernel_lib.config import CELL_TYPES

ARCHS: dict[str, str] = {
    "R50": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "R101": "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
    "X101": "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    "cascade": "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
}
"""Architecture name -> detectron2 model-zoo config file."""

DETECTIONS_PER_IMAGE = 1000
ANCHOR_SIZES = [[8], [16], [32], [64], [128]]
"""One anchor size per FPN level (P2..P6), smaller than COCO's 32..512: cells are ~10-80 px."""


def sartorius_config(arch: str = "R50") -> CfgNode:
    """A detectron2 config for a 3-class (shsy5y, astro, cort) Mask R-CNN, no weights.

    Args:
        arch: a key of :data:`ARCHS`.

    Raises:
        ValueError: unknown ``arch``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHS)}")
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(ARCHS[arch]))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(CELL_TYPES)
    cfg.MODEL.RETINANET.NUM_CLASSES = len(CELL_TYPES)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = ANCHOR_SIZES
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 3000
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 2000
    cfg.TEST.DETECTIONS_PER_IMAGE = DETECTIONS_PER_IMAGE
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.FORMAT = "BGR"
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    return cfg
