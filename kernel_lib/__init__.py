"""kernel_lib: offline multi-fold detectron2 inference for Sartorius cell segmentation.

The names a user of the inference path calls, re-exported here: the typed config,
the pipeline (:func:`run_inference`, the notebook's one call, and its steps
:func:`load_models`, :func:`predict_instances`, :func:`finalize`), the submission
(:func:`write_submission`, :func:`validate_submission`) and its score
(:func:`score_submission`), the RLE codec, the two instance types (:class:`CropMasks`,
:class:`SoftInstances`) and :func:`overlay`. Everything else is reached through its
module: training (``kernel_lib.training``, ``kernel_lib.folds``, ``kernel_lib.pseudo``),
tuning (``kernel_lib.tune``), evaluation (``kernel_lib.evaluate``,
``kernel_lib.metric``, ``kernel_lib.report``), the stages (``kernel_lib.images``,
``kernel_lib.tta``, ``kernel_lib.model``, ``kernel_lib.ensemble``,
``kernel_lib.postprocess``, ``kernel_lib.model_folder``), helpers for tests and
benchmarks (``kernel_lib.testing``).

Only the typed config is imported at once; every other name is imported from its
module on first use, so ``import kernel_lib`` and the command line's start-up load
neither numpy, pandas nor torch, scoring and validation never load torch, and the
inference path never imports the training modules.
"""

from __future__ import annotations

from kernel_lib._lazy import lazy_attributes
from kernel_lib.config import (
    Config,
    EnsembleConfig,
    InferenceConfig,
    PostprocessConfig,
    config_for_models,
    load_config,
)

# name -> module it is imported from on first use
_LAZY: dict[str, str] = {
    **dict.fromkeys(
        ["InferenceResult", "finalize", "load_models", "predict_instances", "run_inference"], "kernel_lib.pipeline"
    ),
    "score_submission": "kernel_lib.metric",
    **dict.fromkeys(["validate_submission", "write_submission"], "kernel_lib.submission"),
    **dict.fromkeys(["rle_decode", "rle_decode_crops", "rle_encode", "rle_encode_crops"], "kernel_lib.rle"),
    "CropMasks": "kernel_lib.masks",
    "SoftInstances": "kernel_lib.soft",
    "overlay": "kernel_lib.visualize",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "Config",
    "CropMasks",
    "EnsembleConfig",
    "InferenceConfig",
    "InferenceResult",
    "PostprocessConfig",
    "SoftInstances",
    "config_for_models",
    "finalize",
    "load_config",
    "load_models",
    "overlay",
    "predict_instances",
    "rle_decode",
    "rle_decode_crops",
    "rle_encode",
    "rle_encode_crops",
    "run_inference",
    "score_submission",
    "validate_submission",
    "write_submission",
]
