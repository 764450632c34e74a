"""Reading the weights a training run starts from, without unpickling objects (torch).

detectron2's ``DetectionCheckpointer`` reads a ``.pkl`` (the model zoo's COCO weights)
with ``pickle.load``, which runs whatever the file says, and knows nothing of the
compact format the shipped folds are stored in. :class:`SafeCheckpointer` reads:

- ``.pth`` initial weights through :func:`kernel_lib.weights.read_state_dict`
  (``torch.load(weights_only=True)``; compact or float16 weights come back float32);
- a run's own checkpoints (``--resume``: weights, optimizer, scheduler, iteration) with
  ``torch.load(weights_only=True)``, which builds tensors and plain containers only;
- ``.pkl`` files with :class:`ArrayUnpickler`, which builds dicts, lists, strings,
  numbers and numpy arrays and refuses any other object, naming it, before it is made.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from kernel_lib.weights import read_state_dict

ARRAY_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)
"""The only globals a ``.pkl`` of weights may name: what numpy arrays (and Python 2's
latin-1 byte strings, and ordered dicts) are pickled with."""


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which is not part of an array of weights")
        if module == "numpy.core.multiarray" and int(np.__version__.split(".")[0]) >= 2:
            module = "numpy._core.multiarray"  # numpy 2 moved it; the old path only warns
        return super().find_class(module, name)


def read_pickled_weights(path: str | Path) -> dict[str, Any]:
    """A ``.pkl`` of weights (detectron2's model zoo, Detectron1 / Caffe2 blobs) as
    detectron2 reads it, built by :class:`ArrayUnpickler`.

    Returns:
        ``{"model": {name: array}, "__author__": ..., ["matching_heuristics": True]}``.

    Raises:
        ValueError: the file is not such a pickle, or names any other object (it is not
            built: nothing in the file runs).
    """
    path = Path(path)
    try:
        data = ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as err:  # an unpickler raises many kinds for a broken or hostile file
        raise ValueError(
            f"--init-weights {path}: not a pickle of weights arrays ({type(err).__name__}: {err}); "
            "kernel_lib never builds other objects from a pickle"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"--init-weights {path}: expected a pickled dict of weights, got {type(data).__name__}")
    if "model" in data and "__author__" in data:
        return data  # detectron2's model zoo format
    blobs = data.get("blobs", data)  # Caffe2 / Detectron1: detection models keep theirs under "blobs"
    model = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
    return {"model": model, "__author__": "Caffe2", "matching_heuristics": True}


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that never unpickles objects (see the module docstring)."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            return read_pickled_weights(filename)
        if filename.endswith(".pyth"):
            raise ValueError(f"--init-weights {filename}: pycls .pyth files are not read; pass a .pth or .pkl")
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> dict[str, Any]:
        try:
            loaded = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            loaded = None
        if isinstance(loaded, dict) and "optimizer" in loaded and "iteration" in loaded:
            return loaded  # a checkpoint of a run (--resume): weights_only built it, plain data only
        return {"model": read_state_dict(f, f"--init-weights {f}")}  # says why a file is refused
