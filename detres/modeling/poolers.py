"""RoI feature extraction from one feature map (the C4 detector pools from res4 only)."""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torchvision.ops import roi_align, roi_pool

__all__ = ["RoIPooler", "POOLER_TYPES"]

POOLER_TYPES = ("ROIPool", "ROIAlign", "ROIAlignV2")


class RoIPooler(nn.Module):
    """Pool a fixed ``output_size x output_size`` grid for each box.

    Types: ``ROIPool`` (max pooling on quantised bins, Fast R-CNN and the ResNet paper),
    ``ROIAlign`` (bilinear sampling, Mask R-CNN) and ``ROIAlignV2`` (RoIAlign with ``aligned=True``:
    box coordinates shifted by -0.5 pixel so that pixel centres sit at half-integers; Detectron2's default).

    Args:
        spatial_scale: feature cells per input pixel, ``1 / stride``.
        sampling_ratio: bilinear samples per bin side for RoIAlign (0: adaptive, ``ceil(bin size)``).
    """

    def __init__(self, pooler_type: str, output_size: int, spatial_scale: float, sampling_ratio: int = 0):
        super().__init__()
        if pooler_type not in POOLER_TYPES:
            raise ValueError(f"unknown pooler type {pooler_type!r}; expected one of {', '.join(POOLER_TYPES)}")
        self.pooler_type = pooler_type
        self.output_size = int(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)

    def forward(self, features: torch.Tensor, boxes: List[torch.Tensor]) -> torch.Tensor:
        """``features`` ``(N, C, H, W)``; ``boxes``: N tensors ``(R_i, 4)`` XYXY in input pixels.

        Returns ``(sum R_i, C, output_size, output_size)``, boxes of image 0 first.
        """
        if len(boxes) != features.shape[0]:
            raise ValueError(f"RoIPooler got {len(boxes)} box lists for a batch of {features.shape[0]} images")
        # torchvision's autocast wrappers run the pooling in float32: keep box coordinates exact then.
        box_dtype = torch.float32 if torch.is_autocast_enabled(features.device.type) else features.dtype
        boxes = [b.to(box_dtype) for b in boxes]
        if self.pooler_type == "ROIPool":
            return roi_pool(features, boxes, self.output_size, self.spatial_scale)
        return roi_align(
            features,
            boxes,
            self.output_size,
            self.spatial_scale,
            self.sampling_ratio,
            aligned=self.pooler_type == "ROIAlignV2",
        )

    def extra_repr(self) -> str:
        return f"{self.pooler_type}, output_size={self.output_size}, spatial_scale={self.spatial_scale}"
