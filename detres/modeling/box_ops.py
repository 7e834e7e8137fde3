"""Box helpers shared by the RPN, the RoI heads and the detector's post-processing.

All boxes are ``(N, 4)`` float tensors, XYXY in absolute pixels; an image size is ``(height, width)``.
IoU, area and clipping come from :mod:`torchvision.ops`; this module only adds what it lacks.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torchvision.ops import box_area, clip_boxes_to_image

__all__ = ["clip_boxes", "nonempty", "inside_image", "pairwise_ioa", "scale_boxes"]


def clip_boxes(boxes: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """Clamp x to ``[0, width]`` and y to ``[0, height]``; ``boxes`` is ``(..., 4)``."""
    return clip_boxes_to_image(boxes, image_size)


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """``(N,)`` bool: width and height both strictly greater than ``threshold``.

    Unlike ``torchvision.ops.remove_small_boxes`` (``>=``), zero-size boxes are dropped at threshold 0.
    """
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return (widths > threshold) & (heights > threshold)


def inside_image(boxes: torch.Tensor, image_size: Tuple[int, int], boundary_threshold: float) -> torch.Tensor:
    """``(N,)`` bool: the box lies inside the image grown by ``boundary_threshold`` pixels on every side."""
    height, width = image_size
    return (
        (boxes[:, 0] >= -boundary_threshold)
        & (boxes[:, 1] >= -boundary_threshold)
        & (boxes[:, 2] < width + boundary_threshold)
        & (boxes[:, 3] < height + boundary_threshold)
    )


def pairwise_ioa(boxes: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Intersection over the area of ``boxes``: ``(N, 4)``, ``(M, 4)`` -> ``(N, M)``.

    Used to ignore anchors/proposals lying mostly inside crowd regions; a zero-area box gives 0.
    """
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = box_area(boxes)[:, None]
    return torch.where(area > 0, inter / area.clamp(min=torch.finfo(boxes.dtype).tiny), torch.zeros_like(inter))


def scale_boxes(boxes: torch.Tensor, scale_x: float, scale_y: float) -> torch.Tensor:
    """Multiply x coordinates by ``scale_x`` and y coordinates by ``scale_y`` (a new tensor)."""
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y])
