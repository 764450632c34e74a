"""kernel_lib.training.checkpoint: initial weights read without unpickling objects."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")

from detectron2.modeling import build_model  # noqa: E402

from kernel_lib.d2config import sartorius_config  # noqa: E402
from kernel_lib.testing import shrink_config  # noqa: E402
from kernel_lib.training.checkpoint import SafeCheckpointer, read_pickled_weights  # noqa: E402
from kernel_lib.weights import save_compact  # noqa: E402


class _Touch:
    """A pickle that would create a file when built (as a hostile weights file could)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.path}",)


def test_a_model_zoo_pickle_of_arrays_is_read(tmp_path: Path) -> None:
    weights = {"backbone.w": np.arange(6, dtype=np.float32).reshape(2, 3), "head.b": np.zeros(2, np.float64)}
    path = tmp_path / "zoo.pkl"
    path.write_bytes(pickle.dumps({"model": weights, "__author__": "Detectron2 Model Zoo"}, protocol=2))
    data = read_pickled_weights(path)
    assert data["__author__"] == "Detectron2 Model Zoo"
    assert np.array_equal(data["model"]["backbone.w"], weights["backbone.w"])
    # Caffe2 / Detectron1 blobs: under "blobs", momentum buffers dropped, matched by heuristics
    path.write_bytes(pickle.dumps({"blobs": {"conv1_w": np.ones(2), "conv1_w_momentum": np.ones(2)}}))
    data = read_pickled_weights(path)
    assert list(data["model"]) == ["conv1_w"] and data["matching_heuristics"] is True


def test_a_pickle_naming_any_other_object_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": _Touch(marker)}, "__author__": "x"}))
    with pytest.raises(ValueError, match=r"evil\.pkl: not a pickle of weights arrays .*it names posix\.system"):
        read_pickled_weights(path)
    assert not marker.exists()
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a pickle of weights arrays"):
        read_pickled_weights(path)


def _tiny_model() -> torch.nn.Module:
    cfg = shrink_config(sartorius_config("R50"))
    cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def test_compact_weights_load_into_a_model_as_float32(tmp_path: Path) -> None:
    """A shipped fold's compact (int8) weights as --init-weights: expanded, within a
    quantisation step of the original, where detectron2's own checkpointer would fail."""
    torch.manual_seed(0)
    source = _tiny_model()
    state = source.state_dict()
    save_compact(state, tmp_path / "model_final.pth")
    target = _tiny_model()
    SafeCheckpointer(target).load(str(tmp_path / "model_final.pth"))
    key = "backbone.bottom_up.res2.0.conv1.weight"
    loaded, original = target.state_dict()[key], state[key]
    assert loaded.dtype == torch.float32
    step = original.abs().amax(dim=(1, 2, 3), keepdim=True) / 127  # per output channel
    assert bool(((loaded - original).abs() <= step / 2 + 1e-7).all())


def test_a_pth_holding_objects_is_refused_by_name(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "extra": _Touch(marker)}, path)
    with pytest.raises(ValueError, match=r"--init-weights .*model\.pth is not a plain weights file"):
        SafeCheckpointer(_tiny_model()).load(str(path))
    assert not marker.exists()
