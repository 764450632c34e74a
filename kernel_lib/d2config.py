"""detectron2 base configs for Sartorius fold models (imports detectron2, so torch).

Shared by training (``kernel_lib.training``) and the demonstration checkpoints, so that
a freshly trained fold and a demo fold have the same layout. Inference never builds
from here: it reads each fold's own ``config.yaml``.

The model zoo's config files are found inside the installed detectron2 package, not
through ``detectron2.model_zoo`` (which imports ``pkg_resources``, gone from
setuptools >= 82).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

from kernel_lib.config import CELL_TYPES

ARCHS: dict[str, str] = {
    "R50": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "R101": "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
    "X101": "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml",
    "cascade": "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
    "R50-narrow": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
}
"""Architecture name -> detectron2 model-zoo config file (``R50-narrow`` adds :data:`NARROW`)."""

NARROW: dict[str, object] = {
    "MODEL.RESNETS.NUM_GROUPS": 2,
    "MODEL.RESNETS.WIDTH_PER_GROUP": 16,
    "MODEL.RESNETS.RES2_OUT_CHANNELS": 64,
    "MODEL.FPN.OUT_CHANNELS": 128,
    "MODEL.ROI_BOX_HEAD.FC_DIM": 256,
    "MODEL.ROI_MASK_HEAD.CONV_DIM": 128,
}
"""``R50-narrow``: the R50-FPN Mask R-CNN at a quarter of its widths, for training from
scratch on a CPU. Stages 64/128/256/512 channels out (R50: 256..2048), bottlenecks of
2 groups x 16 (32..256 channels; GroupNorm's 32 groups still divide them), FPN 128
channels, box head 2 x 256, mask head 4 x 128: 6.0 M parameters (R50: 44 M), 11.5 MiB
in float16 on disk. Only config keys, so inference builds it from config.yaml like any
other fold."""

NARROW_TRAINING: dict[str, object] = {
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": 128,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": 1000,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": 500,
}
"""Training-only keys of ``R50-narrow``, sized for 256 x 256 crops (at most ~150 cells):
128 sampled RoIs per image (the zoo's 512), 1,000 / 500 RPN proposals before / after NMS
per image (2,000 / 1,000). Inference reads none of them."""

SAMPLING_RATIO = 2
"""RoIAlign samples per bin side for every preset (detectron2's 0 = adaptive, ceil(RoI /
bins), which costs up to 16x more per large cell and cannot be batched)."""

DETECTIONS_PER_IMAGE = 1000
ANCHOR_SIZES = [[8], [16], [32], [64], [128]]
"""One anchor size per FPN level (P2..P6), smaller than COCO's 32..512: cells are ~10-80 px."""


def zoo_config_file(name: str) -> Path:
    """Path of a detectron2 model-zoo config (e.g. ``"COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"``).

    Read from the ``model_zoo/configs`` folder the detectron2 wheel ships, without
    ``pkg_resources``.

    Raises:
        ValueError: detectron2 is not installed, or has no such config file.
    """
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("detectron2 is not installed; install the bundle's wheels (see README)")
    root = Path(next(iter(spec.submodule_search_locations))) / "model_zoo" / "configs"
    path = root / name
    if not path.is_file():
        raise ValueError(f"{name}: not a detectron2 model-zoo config (looked in {root})")
    return path


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
    cfg.merge_from_file(str(zoo_config_file(ARCHS[arch])))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(CELL_TYPES)
    cfg.MODEL.RETINANET.NUM_CLASSES = len(CELL_TYPES)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = ANCHOR_SIZES
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 3000
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 2000
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = SAMPLING_RATIO
    cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = SAMPLING_RATIO
    cfg.TEST.DETECTIONS_PER_IMAGE = DETECTIONS_PER_IMAGE
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.FORMAT = "BGR"
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    if arch == "R50-narrow":
        for key, value in {**NARROW, **NARROW_TRAINING}.items():
            node, _, leaf = key.rpartition(".")
            setattr(_node(cfg, node), leaf, value)
    return cfg


def _node(cfg: CfgNode, dotted: str) -> CfgNode:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


ZOO_URL_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
"""Where detectron2's model zoo keeps its checkpoints."""


def zoo_checkpoint_url(name: str) -> str:
    """The checkpoint URL of a detectron2 model-zoo config name (``.yaml`` optional), read
    from the table in the installed ``detectron2/model_zoo/model_zoo.py`` without
    importing it (it imports ``pkg_resources``).

    Raises:
        ValueError: detectron2 is not installed, or the zoo has no checkpoint of that name.
    """
    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("detectron2 is not installed; install the bundle's wheels (see README)")
    source = Path(next(iter(spec.submodule_search_locations))) / "model_zoo" / "model_zoo.py"
    table: dict[str, str] = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "CONFIG_PATH_TO_URL_SUFFIX" for t in node.targets
        ):
            table = ast.literal_eval(node.value)
    key = name.removesuffix(".yaml").removesuffix(".py")
    if key not in table:
        raise ValueError(f"{name}: no checkpoint of that name in detectron2's model zoo ({len(table)} names known)")
    return f"{ZOO_URL_PREFIX}{key}/{table[key]}"
