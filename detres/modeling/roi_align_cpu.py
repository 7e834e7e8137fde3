"""RoIAlign on CPU as weighted sums of feature rows (``F.embedding_bag``), for channels-last maps.

RoIAlign is linear in the feature map: each output bin is a weighted sum of feature cells, and the
weights factor into a row part and a column part (bilinear sampling on a grid of sample points, the
validity test being per axis too). So the pooled regions are ``W @ F`` with ``F`` the map as a
``(N * H * W, C)`` table (one row per cell, which is the memory of a channels-last map, no copy)
and ``W`` a sparse matrix with at most ``(2 * grid)^2`` non-zeros per bin. ``F.embedding_bag``
(mode "sum", per-sample weights) computes exactly that product, with a fast CPU kernel forwards
and backwards, and writes the output bins as ``(R, bins, bins, C)`` rows: channels-last regions.

This gives torchvision's ``roi_align`` sums (``aligned`` True/False, adaptive or fixed sampling) in
another order, so equal within float rounding, and it can compute only every ``step``-th bin: what a
C4 head's res5 reads when its first block subsamples by 2 in 1x1 convs (the "msra" bottleneck).
torchvision's CPU kernel works on contiguous (NCHW) maps and fills every bin, and its backward pass
is slow; ``tools/benchmark.py --options`` shows what this saves end to end.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch.nn import functional as F

__all__ = ["roi_align_embedding_bag"]


def _axis_samples(start: torch.Tensor, size: torch.Tensor, output_size: int, grid: torch.Tensor,
                  length: int, bins: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cells and weights along one axis for the regions' ``bins``.

    ``start``, ``size`` ``(R,)`` in feature cells; ``grid`` ``(R,)`` samples per bin (may be 0).
    Returns ``cells`` ``(R, B, 2G)`` int64 in ``[0, length)`` and ``weights`` ``(R, B, 2G)``: each of
    the ``G = max(grid)`` sample points gives its lower and upper neighbour cell with their linear
    interpolation weights divided by the grid (points beyond ``grid`` or off the map weigh 0).
    """
    dtype = start.dtype
    points = torch.arange(max(int(grid.max()), 1), dtype=dtype, device=start.device)
    grid_f = grid.clamp(min=1).to(dtype)[:, None, None]
    bin_size = (size / output_size)[:, None, None]
    # torchvision's sample position: start + bin * bin_size + (i + 0.5) * bin_size / grid
    pos = start[:, None, None] + bins.to(dtype)[None, :, None] * bin_size + (points + 0.5) * bin_size / grid_f
    valid = (points < grid[:, None, None]) & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_end = low >= length - 1
    low = low.clamp(max=length - 1)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(pos), pos - low.to(dtype))
    scale = valid.to(dtype) / grid_f
    return torch.cat([low, high], dim=-1), torch.cat([(1 - frac) * scale, frac * scale], dim=-1)


def roi_align_embedding_bag(features: torch.Tensor, boxes: List[torch.Tensor], output_size: int,
                            spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True,
                            step: int = 1) -> torch.Tensor:
    """``torchvision.ops.roi_align(features, boxes, output_size, spatial_scale, sampling_ratio,
    aligned)[:, :, ::step, ::step]``, computed as weighted row sums.

    ``features`` ``(N, C, H, W)`` float (channels-last avoids a copy); ``boxes``: N tensors ``(R_i, 4)``
    XYXY in input pixels. Returns ``(sum R_i, C, B, B)`` in channels-last memory, ``B =
    ceil(output_size / step)``, in the features' dtype; differentiable in ``features``.
    """
    n, channels, height, width = features.shape
    bins = torch.arange(0, output_size, step, device=features.device)
    num_bins = len(bins)
    image_index = torch.cat([torch.full((len(b),), i, device=features.device) for i, b in enumerate(boxes)])
    rois = torch.cat(boxes).to(features.dtype)
    if rois.numel() == 0:
        return features.new_zeros((0, channels, num_bins, num_bins)).contiguous(memory_format=torch.channels_last)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois * spatial_scale - offset).unbind(dim=1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # the legacy RoIAlign makes every region at least one cell wide
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(image_index, sampling_ratio)
    else:
        grid_h, grid_w = torch.ceil(roi_h / output_size).long(), torch.ceil(roi_w / output_size).long()
    rows, row_weights = _axis_samples(y1, roi_h, output_size, grid_h, height, bins)
    cols, col_weights = _axis_samples(x1, roi_w, output_size, grid_w, width, bins)
    # (R, B, B, 2Gy, 2Gx): every (row, column) pair of a bin, its weight the product of the two
    cells = (image_index[:, None, None] * height + rows)[:, :, None, :, None] * width + cols[:, None, :, None, :]
    weights = row_weights[:, :, None, :, None] * col_weights[:, None, :, None, :]
    cells, weights = cells.flatten(0, 2).flatten(1), weights.flatten(0, 2).flatten(1)
    keep = weights != 0
    offsets = torch.zeros(len(keep), dtype=torch.int64, device=features.device)
    offsets[1:] = keep.sum(dim=1).cumsum(dim=0)[:-1]
    table = features.permute(0, 2, 3, 1).reshape(n * height * width, channels)
    pooled = F.embedding_bag(cells[keep], table, offsets, mode="sum", per_sample_weights=weights[keep])
    return pooled.view(len(rois), num_bins, num_bins, channels).permute(0, 3, 1, 2)
