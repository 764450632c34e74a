"""Weights files: reading them safely, and the compact int8 format the shipped folds use (torch).

Reading (:func:`read_state_dict`): ``torch.load(weights_only=True)`` only. Model
datasets come from anyone on Kaggle, and unpickling an arbitrary object can run any
code; a file holding anything but tensors, numbers, strings and containers of them (a
detectron2 training checkpoint with its scheduler objects, a pickled module) is refused
with a ``ValueError`` saying how to re-save it as plain weights.

The compact format (:func:`compact_state_dict` / :func:`expand_state_dict`) is still a
plain tensor state dict, which ``torch.load(weights_only=True)`` reads and which needs
no code of this module to inspect::

    {"model": {"<key>::int8": int8 tensor, "<key>::scale": float32 (C,), "<other key>": float16 ...},
     "weights_format": "kernel_lib/int8-per-channel/1"}

- every floating tensor of >= 2 dimensions and >= :data:`MIN_QUANTIZED_ELEMENTS`
  elements (the convolution and linear weights: nearly all of a Mask R-CNN's bytes) is
  stored as int8 per output channel (dim 0), symmetric: ``scale[c] = max |w[c]| / 127``,
  ``q = round(w / scale[c])``, so each value comes back within ``scale[c] / 2``;
- every other floating tensor (biases, GroupNorm, small weights) as float16;
- anything else (integer buffers) as it is.

Reading expands it back to float32 (:func:`read_state_dict`); a plain state dict (the
float16 folders ``train`` writes, float32 checkpoints) reads as it always did, its
floating tensors as float32. Keys are recognised by their ``::int8`` / ``::scale``
suffix (a module name never holds ``:``); ``weights_format`` says so to a reader.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

FORMAT_KEY = "weights_format"
FORMAT = "kernel_lib/int8-per-channel/1"
"""The value of ``weights_format`` in a compact checkpoint (the version of the layout above)."""
QUANTIZED_SUFFIX = "::int8"
SCALE_SUFFIX = "::scale"
MIN_QUANTIZED_ELEMENTS = 1024
"""Smallest floating tensor (>= 2-D) stored as int8; smaller ones stay float16 (their
bytes do not matter, and a scale per channel would cost as much as they save)."""
QMAX = 127


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation per output channel (dim 0) of a >= 1-D tensor.

    Returns:
        ``(q, scale)``: ``q`` int8 of ``weight``'s shape, values in [-127, 127];
        ``scale`` float32 ``(C,)``, ``max |weight[c]| / 127`` (0 for an all-zero channel).
        ``dequantize_per_channel(q, scale)`` is within ``scale[c] / 2`` of ``weight[c]``.

    Raises:
        ValueError: a tensor that is not floating, has no channel, or holds NaN or inf.
    """
    if not weight.is_floating_point() or weight.dim() < 1 or weight.shape[0] == 0:
        raise ValueError(
            f"quantize_per_channel: expected a floating tensor with channels, got {weight.dtype} {tuple(weight.shape)}"
        )
    w = weight.detach().to(torch.float32).reshape(weight.shape[0], -1)
    if not torch.isfinite(w).all():
        raise ValueError("quantize_per_channel: the tensor holds NaN or inf")
    scale = w.abs().amax(dim=1) / QMAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / safe[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q.reshape(weight.shape), scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 ``q * scale[c]`` per output channel (dim 0): the inverse of :func:`quantize_per_channel`.

    Raises:
        ValueError: ``q`` not int8, or ``scale`` not one value per channel of ``q``.
    """
    if q.dtype != torch.int8 or q.dim() < 1 or scale.dim() != 1 or scale.shape[0] != q.shape[0]:
        raise ValueError(
            f"dequantize_per_channel: expected int8 values and one scale per channel, got {q.dtype} "
            f"{tuple(q.shape)} and scales {tuple(scale.shape)}"
        )
    shape = (q.shape[0],) + (1,) * (q.dim() - 1)
    return q.to(torch.float32) * scale.to(torch.float32).reshape(shape)


def _quantizable(value: torch.Tensor, min_elements: int) -> bool:
    return value.is_floating_point() and value.dim() >= 2 and value.numel() >= min_elements


def compact_state_dict(
    state: Mapping[str, torch.Tensor], min_elements: int = MIN_QUANTIZED_ELEMENTS
) -> dict[str, torch.Tensor]:
    """The compact form of a state dict (the layout in this module's docstring).

    Raises:
        ValueError: a key that already holds ``::``, or a floating tensor with NaN or inf
            (a diverged run: nothing to ship).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if "::" in key:
            raise ValueError(f"compact_state_dict: key {key!r} holds '::' (already compact?)")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"compact_state_dict: {key} holds NaN or inf")
        if _quantizable(value, min_elements):
            q, scale = quantize_per_channel(value)
            out[key + QUANTIZED_SUFFIX], out[key + SCALE_SUFFIX] = q, scale
        elif value.is_floating_point():
            out[key] = value.detach().to(torch.float16)
        else:
            out[key] = value.detach()
    return out


def is_compact(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is in the compact format (any ``::int8`` key)."""
    return any(key.endswith(QUANTIZED_SUFFIX) for key in state)


def expand_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A plain state dict, every floating tensor float32: compact keys dequantised, the
    rest upcast (a plain state dict comes back as it is, in float32). Key order kept.

    Raises:
        ValueError: an ``::int8`` key without its ``::scale`` (or the reverse), or one that
            does not fit it.
    """
    out: dict[str, torch.Tensor] = {}
    scales = {key[: -len(SCALE_SUFFIX)] for key in state if key.endswith(SCALE_SUFFIX)}
    for key, value in state.items():
        if key.endswith(SCALE_SUFFIX):
            if key[: -len(SCALE_SUFFIX)] + QUANTIZED_SUFFIX not in state:
                raise ValueError(f"{key} has no {QUANTIZED_SUFFIX} values beside it")
            continue
        if key.endswith(QUANTIZED_SUFFIX):
            base = key[: -len(QUANTIZED_SUFFIX)]
            if base not in scales:
                raise ValueError(f"{key} has no {SCALE_SUFFIX} beside it")
            out[base] = dequantize_per_channel(value, state[base + SCALE_SUFFIX])
        elif value.is_floating_point():
            out[key] = value.to(torch.float32)
        else:
            out[key] = value
    return out


def save_compact(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write ``{"model": compact_state_dict(state), "weights_format": FORMAT}`` to ``path``."""
    path = Path(path)
    torch.save({"model": compact_state_dict(state), FORMAT_KEY: FORMAT}, path)
    return path


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """The keys of the floating tensors that hold NaN or inf (a diverged run), in order."""
    return [key for key, value in state.items() if value.is_floating_point() and not torch.isfinite(value).all()]


_RESAVE = (
    "kernel_lib reads weights with torch.load(weights_only=True) only: it never unpickles other "
    "objects, since a model dataset may come from anyone and unpickling can run any code. If the file "
    "is your own, re-save its weights alone where you trust it: "
    "torch.save({'model': state_dict}, 'model_final.pth') (what `python -m kernel_lib train` writes)"
)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_state_dict(path: str | Path, what: str | None = None) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint file as a plain state dict (floating tensors float32).

    Reads ``{"model": state_dict, ...}`` or a bare state dict, plain or compact, with
    ``torch.load(weights_only=True)`` only; strips a ``module.`` prefix (DataParallel).

    Args:
        path: the file.
        what: how messages name it (default: the path), e.g. ``"model fold0: <path>"``.

    Raises:
        ValueError: the file is not a torch checkpoint, holds pickled objects other than
            tensors and plain containers (never unpickled; the message says how to re-save
            it), holds no state dict, or is of an unknown compact format.
    """
    path = Path(path)
    what = what or str(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's refusals all read "Weights only load failed ..."; one that names a GLOBAL is
        # a pickled object (a class, a function) that weights_only will not build
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found:
            raise ValueError(
                f"{what} is not a plain weights file: it holds pickled Python objects (it names "
                f"{found.group(1)}). {_RESAVE}"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
        reason = detail.group(1).strip() if detail else _first_line(err)
        raise ValueError(
            f"{what} could not be read as a torch checkpoint of plain weights ({reason}). {_RESAVE}"
        ) from None
    except Exception as err:
        raise ValueError(f"{what} could not be read as a torch checkpoint ({_first_line(err)})") from None
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{what} holds no state dict (expected {{'model': state_dict}} or a state dict)")
    fmt = ckpt.get(FORMAT_KEY) if state is not ckpt else None
    if fmt is not None and fmt != FORMAT:
        raise ValueError(
            f"{what}: weights_format {fmt!r} is not one this kernel_lib reads ({FORMAT}); update kernel_lib"
        )
    try:
        state = expand_state_dict(state)
    except ValueError as err:
        raise ValueError(f"{what}: broken compact weights ({err})") from None
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state
