"""Anchors: a fixed set of reference boxes (sizes x aspect ratios) repeated at every feature-map cell."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
from torch import nn

from detres.modeling.backbone.backbone import ShapeSpec

__all__ = ["AnchorGenerator", "build_anchor_generator"]


def _cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """``(len(sizes) * len(aspect_ratios), 4)`` boxes centred on 0, size-major order.

    A size is the square root of the anchor's area; an aspect ratio is height / width.
    """
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            w = math.sqrt(area / ratio)
            h = ratio * w
            anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


class AnchorGenerator(nn.Module):
    """Anchors for one or more feature maps.

    For a feature map of stride ``s`` and size ``(H, W)``, cell ``(i, j)`` has its anchors centred at
    ``((j + offset) * s, (i + offset) * s)`` in input pixels. Anchors are ordered (row, column, cell anchor),
    matching the RPN head's flattened ``(N, H, W, A)`` predictions.

    Args:
        sizes: one list of anchor sizes per feature map (a single list is shared by all maps).
        aspect_ratios: likewise, height / width ratios.
        strides: the stride of each feature map.
        offset: 0.0 (Detectron2: the cell's top-left pixel) or 0.5 (the cell's centre).
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]],
        strides: Sequence[int],
        offset: float = 0.0,
    ):
        super().__init__()
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"anchor offset must be in [0, 1), got {offset}")
        num_levels = len(strides)
        sizes = _per_level(sizes, num_levels, "SIZES")
        aspect_ratios = _per_level(aspect_ratios, num_levels, "ASPECT_RATIOS")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        for level, (s, r) in enumerate(zip(sizes, aspect_ratios)):
            # Not in the state dict: anchors are a function of the config, not learned.
            self.register_buffer(f"cell_anchors_{level}", _cell_anchors(s, r), persistent=False)

    @property
    def num_anchors(self) -> List[int]:
        """Anchors per cell for each feature map (15 for 5 sizes x 3 ratios)."""
        return [len(self.get_buffer(f"cell_anchors_{i}")) for i in range(len(self.strides))]

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """``features``: one ``(N, C, H_i, W_i)`` map per level. Returns ``(H_i * W_i * A_i, 4)`` anchors per level."""
        anchors = []
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            cell = self.get_buffer(f"cell_anchors_{level}")
            height, width = feature.shape[-2:]
            grid = dict(step=stride, dtype=torch.float32, device=cell.device)
            shifts_x = torch.arange(self.offset * stride, width * stride, **grid)
            shifts_y = torch.arange(self.offset * stride, height * stride, **grid)
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4))
        return anchors


def _per_level(values: Sequence, num_levels: int, key: str) -> List[List[float]]:
    values = [list(v) for v in values]
    if len(values) == 1:
        return values * num_levels
    if len(values) != num_levels:
        raise ValueError(
            f"MODEL.ANCHOR_GENERATOR.{key} has {len(values)} lists for {num_levels} feature maps; "
            "give one list or one per map"
        )
    return values


def build_anchor_generator(cfg, input_shape: Dict[str, ShapeSpec], in_features: Sequence[str]) -> AnchorGenerator:
    """The anchor generator for the feature maps ``in_features`` (strides from ``input_shape``)."""
    ag = cfg.MODEL.ANCHOR_GENERATOR
    return AnchorGenerator(ag.SIZES, ag.ASPECT_RATIOS, [input_shape[f].stride for f in in_features], ag.OFFSET)
