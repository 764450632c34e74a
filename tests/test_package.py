"""The package's public surface: about 20 names, each resolving from its module; torch stays unloaded."""

from __future__ import annotations

import subprocess
import sys

import kernel_lib

PUBLIC = {
    # config
    "Config": "kernel_lib.config",
    "EnsembleConfig": "kernel_lib.config",
    "InferenceConfig": "kernel_lib.config",
    "PostprocessConfig": "kernel_lib.config",
    "load_config": "kernel_lib.config",
    "config_for_models": "kernel_lib.config",
    # the inference pipeline
    "InferenceResult": "kernel_lib.pipeline",
    "finalize": "kernel_lib.pipeline",
    "load_models": "kernel_lib.pipeline",
    "predict_instances": "kernel_lib.pipeline",
    "run_inference": "kernel_lib.pipeline",
    # the submission and its score
    "score_submission": "kernel_lib.metric",
    "validate_submission": "kernel_lib.submission",
    "write_submission": "kernel_lib.submission",
    # the RLE codec
    "rle_decode": "kernel_lib.rle",
    "rle_decode_crops": "kernel_lib.rle",
    "rle_encode": "kernel_lib.rle",
    "rle_encode_crops": "kernel_lib.rle",
    # instances, and drawing them
    "CropMasks": "kernel_lib.masks",
    "SoftInstances": "kernel_lib.soft",
    "overlay": "kernel_lib.visualize",
}


def test_the_public_surface_is_the_names_a_user_calls() -> None:
    assert sorted(kernel_lib.__all__) == sorted(PUBLIC)
    assert set(PUBLIC) <= set(dir(kernel_lib))
    for name, module in PUBLIC.items():
        value = getattr(kernel_lib, name)
        assert value is getattr(sys.modules[module], name), name  # the module's own object, not a copy
        assert value.__module__ == module, name


def test_training_tuning_and_evaluation_are_reached_through_their_modules() -> None:
    for name in ("train_fold", "tune_postprocess", "read_truth", "evaluate_cache", "make_folds", "IMAGE_SHAPE"):
        assert not hasattr(kernel_lib, name), name
    code = (
        "import kernel_lib, kernel_lib.postprocess, kernel_lib.tune, kernel_lib.truth\n"
        "print(type(kernel_lib.postprocess).__name__, kernel_lib.tune.tune_postprocess.__module__,"
        " callable(kernel_lib.truth.read_truth))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["module", "kernel_lib.tune", "True"]


def test_importing_the_library_and_scoring_does_not_load_torch() -> None:
    code = (
        "import sys, kernel_lib, kernel_lib.metric, kernel_lib.submission, kernel_lib.__main__\n"
        "from kernel_lib import score_submission, validate_submission, rle_encode, CropMasks\n"
        "kernel_lib.__main__.build_parser()\n"
        "heavy = ('torch', 'detectron2', 'kernel_lib.train', 'kernel_lib.training.trainer')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
