"""Smoke test: a 3-class Mask R-CNN R50-FPN, no weights, on the CPU, on one real image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_mask_rcnn_r50_fpn_runs_on_a_real_test_image(data_dir: Path) -> None:
    from detectron2.modeling import build_model

    from kernel_lib.d2config import sartorius_config
    from kernel_lib.images import read_image, to_model_input

    cfg = sartorius_config("R50")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep every detection
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert not any(p.is_cuda for p in model.parameters())
    grey = read_image(data_dir / "test" / "7ae19de7bc2a.png")
    image = torch.as_tensor(np.ascontiguousarray(to_model_input(grey).transpose(2, 0, 1)))
    with torch.inference_mode():
        (out,) = model([{"image": image, "height": 520, "width": 704}])
    inst = out["instances"]
    n = len(inst)
    assert 1 <= n <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert tuple(inst.pred_masks.shape) == (n, 520, 704)
    assert inst.pred_classes.min() >= 0 and inst.pred_classes.max() < 3
    assert tuple(inst.pred_boxes.tensor.shape) == (n, 4)
