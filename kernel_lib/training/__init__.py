"""Training fold models, one room per concern (as detectron2 keeps transforms, mappers,
layers and engine apart):

- :mod:`~kernel_lib.training.options` (torch-free): :class:`TrainOptions`,
  :class:`AugmentSettings`; what ``python -m kernel_lib train`` takes, every default once.
- :mod:`~kernel_lib.training.datasets` (torch-free): train.csv -> detectron2 dataset
  dicts under the one truth policy (:func:`load_dataset_dicts`, :class:`TrainingData`).
- :mod:`~kernel_lib.training.augment`: exact 90-degree turns, brightness, contrast and
  the augmentation list (:func:`build_augmentations`).
- :mod:`~kernel_lib.training.mappers`: dataset dict -> model input
  (:class:`SartoriusMapper`, the crop-first :class:`CropFirstMapper`, :func:`build_mapper`).
- :mod:`~kernel_lib.training.roi_align`: the sparse-matrix RoIAlign for CPU training.
- :mod:`~kernel_lib.training.recipe`: the detectron2 config of a run, its initial
  weights, what continuing a fold must keep.
- :mod:`~kernel_lib.training.folder`: the fold folder a run writes.
- :mod:`~kernel_lib.training.scoring`: held-out scoring through the bundle's pipeline.
- :mod:`~kernel_lib.training.trainer`: the run itself (:func:`train_fold`,
  :func:`rescore_fold`).

The fold split is :mod:`kernel_lib.folds`' (:func:`~kernel_lib.folds.fold_split`). The
names below are imported from their modules on first use, so that importing the package
(or its options, for ``train --help``) loads neither torch nor detectron2.
"""

from __future__ import annotations

from kernel_lib._lazy import lazy_attributes

# name -> module it is imported from on first use
_LAZY: dict[str, str] = {
    **dict.fromkeys(["AugmentSettings", "TrainOptions"], "kernel_lib.training.options"),
    **dict.fromkeys(["TrainingData", "load_dataset_dicts", "record_masks"], "kernel_lib.training.datasets"),
    **dict.fromkeys(["build_augmentations"], "kernel_lib.training.augment"),
    **dict.fromkeys(["CropFirstMapper", "SartoriusMapper", "build_mapper"], "kernel_lib.training.mappers"),
    **dict.fromkeys(["sparse_roi_align", "use_sparse_roi_align"], "kernel_lib.training.roi_align"),
    **dict.fromkeys(["build_config", "check_continuation"], "kernel_lib.training.recipe"),
    **dict.fromkeys(["write_model_folder"], "kernel_lib.training.folder"),
    **dict.fromkeys(["HeldoutScore", "score_fold", "score_models"], "kernel_lib.training.scoring"),
    **dict.fromkeys(["TrainResult", "rescore_fold", "train_fold"], "kernel_lib.training.trainer"),
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = sorted(_LAZY)
