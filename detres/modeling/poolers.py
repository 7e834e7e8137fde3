"""RoI feature extraction from one feature map (the C4 detector pools from res4 only)."""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from torchvision.ops import roi_align, roi_pool

from detres.modeling.roi_align_cpu import roi_align_embedding_bag

__all__ = ["RoIPooler", "POOLER_TYPES", "CPU_ROI_ALIGN_IMPLS"]

POOLER_TYPES = ("ROIPool", "ROIAlign", "ROIAlignV2")
# How RoIAlign runs on CPU: torchvision's kernel, or weighted row sums (detres.modeling.roi_align_cpu).
CPU_ROI_ALIGN_IMPLS = ("torchvision", "embedding_bag")


class RoIPooler(nn.Module):
    """Pool a fixed ``output_size x output_size`` grid for each box.

    Types: ``ROIPool`` (max pooling on quantised bins, Fast R-CNN and the ResNet paper),
    ``ROIAlign`` (bilinear sampling, Mask R-CNN) and ``ROIAlignV2`` (RoIAlign with ``aligned=True``:
    box coordinates shifted by -0.5 pixel so that pixel centres sit at half-integers; Detectron2's default).

    Args:
        spatial_scale: feature cells per input pixel, ``1 / stride``.
        sampling_ratio: bilinear samples per bin side for RoIAlign (0: adaptive, ``ceil(bin size)``).
        step: keep every ``step``-th bin of the grid (bins 0, step, 2 * step, ...), for a consumer that
            reads no other (a C4 res5 whose first block subsamples its input, see ``ResidualBlock``).
        cpu_impl: RoIAlign on CPU, one of ``CPU_ROI_ALIGN_IMPLS``: "embedding_bag" computes the kept
            bins only, as weighted row sums of a channels-last map (same values within float
            rounding, much faster); torchvision's kernel is used on GPU and while tracing for export.
    """

    def __init__(self, pooler_type: str, output_size: int, spatial_scale: float, sampling_ratio: int = 0,
                 step: int = 1, cpu_impl: str = "torchvision"):
        super().__init__()
        if pooler_type not in POOLER_TYPES:
            raise ValueError(f"unknown pooler type {pooler_type!r}; expected one of {', '.join(POOLER_TYPES)}")
        if cpu_impl not in CPU_ROI_ALIGN_IMPLS:
            raise ValueError(f"unknown CPU RoIAlign {cpu_impl!r} (MODEL.CPU_ROI_ALIGN); expected one of "
                             f"{', '.join(CPU_ROI_ALIGN_IMPLS)}")
        self.pooler_type = pooler_type
        self.output_size = int(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.step = int(step)
        self.cpu_impl = cpu_impl

    def forward(self, features: torch.Tensor, boxes: List[torch.Tensor]) -> torch.Tensor:
        """``features`` ``(N, C, H, W)``; ``boxes``: N tensors ``(R_i, 4)`` XYXY in input pixels.

        Returns ``(sum R_i, C, B, B)``, boxes of image 0 first, ``B = ceil(output_size / step)``.
        """
        if len(boxes) != features.shape[0]:
            raise ValueError(f"RoIPooler got {len(boxes)} box lists for a batch of {features.shape[0]} images")
        # torchvision's autocast wrappers run the pooling in float32: keep box coordinates exact then.
        box_dtype = torch.float32 if torch.is_autocast_enabled(features.device.type) else features.dtype
        boxes = [b.to(box_dtype) for b in boxes]
        aligned = self.pooler_type == "ROIAlignV2"
        if self.pooler_type != "ROIPool" and self._use_embedding_bag(features):
            if features.dtype in (torch.float16, torch.bfloat16):  # as torchvision's autocast wrapper
                features = features.float()
            with torch.autocast("cpu", enabled=False):
                return roi_align_embedding_bag(features, boxes, self.output_size, self.spatial_scale,
                                               self.sampling_ratio, aligned, self.step)
        if self.pooler_type == "ROIPool":
            pooled = roi_pool(features, boxes, self.output_size, self.spatial_scale)
        else:
            pooled = roi_align(features, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, aligned)
        return pooled if self.step == 1 else pooled[:, :, ::self.step, ::self.step]

    def num_bins(self) -> int:
        """Bins per side of the output, ``ceil(output_size / step)``."""
        return -(-self.output_size // self.step)

    def can_pool_projection(self, features: torch.Tensor) -> bool:
        """Whether pooling ``features`` is a linear map (RoIAlign, not max pooling) that computes no bin
        beyond the kept ones: then pooling a projection of the map to more channels is exact and costs
        only those channels' row sums (see ``ResidualBlock.input_projection``)."""
        if self.pooler_type == "ROIPool":
            return False
        return self.step == 1 or self._use_embedding_bag(features)

    def _use_embedding_bag(self, features: torch.Tensor) -> bool:
        exporting = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
        return self.cpu_impl == "embedding_bag" and features.device.type == "cpu" and not exporting

    def extra_repr(self) -> str:
        step = f", step={self.step}" if self.step != 1 else ""
        return f"{self.pooler_type}, output_size={self.output_size}, spatial_scale={self.spatial_scale}{step}"
