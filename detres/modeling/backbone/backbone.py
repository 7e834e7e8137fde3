"""The backbone contract every feature extractor in detres follows."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

__all__ = ["Backbone", "ShapeSpec"]


@dataclass(frozen=True)
class ShapeSpec:
    """Channels and stride (input pixels per feature cell) of one output feature map."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Maps an image batch ``(N, 3, H, W)`` to a dict of named feature maps.

    Subclasses set ``self.out_features`` (names, in order of increasing stride) and implement
    ``output_shape()``; the feature ``name`` has shape ``(N, C, ceil(H / stride), ceil(W / stride))``
    (``linear`` is ``(N, num_classes)``).
    """

    out_features: List[str]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self) -> Dict[str, ShapeSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def size_divisibility(self) -> int:
        """Input sizes should be divisible by this for the feature maps to align (0: any size)."""
        return 0
