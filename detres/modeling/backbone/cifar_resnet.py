"""CIFAR-10 ResNets (He et al. 2015, Sec. 4.2): 6n+2 weighted layers.

``stem.conv1`` (3x3, 16 filters) + norm + ReLU, then stages ``res2``/``res3``/``res4`` of ``n``
BasicBlocks with 16/32/64 filters (``MODEL.CIFAR_RESNETS.WIDTHS``) on 32/16/8 maps (strides 1/2/4),
global average pooling and ``linear``. Shortcut option A by default (the paper's CIFAR choice: all
models then have exactly the parameters of their plain counterparts); B/C and ``PLAIN`` as in
:mod:`detres.modeling.backbone.resnet`, whose blocks, stages and ``ResNet`` module are reused.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detres.modeling.backbone.build import BACKBONE_REGISTRY
from detres.modeling.backbone.resnet import (
    BasicBlock,
    ConvNorm,
    NormSpec,
    ResNet,
    init_weights,
    make_stage,
    num_stages_needed,
)

__all__ = ["CifarStem", "cifar_resnet"]


class CifarStem(nn.Module):
    """3x3 conv (stride 1, bias-free) + norm + ReLU: ``(N, 3, H, W)`` -> ``(N, out_channels, H, W)``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, norm: NormSpec = "BN"):
        super().__init__()
        self.out_channels = out_channels
        self.stride = 1
        self.conv1 = ConvNorm(in_channels, out_channels, 3, padding=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv1(x))


@BACKBONE_REGISTRY.register()
def cifar_resnet(cfg) -> ResNet:
    """The CIFAR ResNet of ``MODEL.CIFAR_RESNETS`` (depth 6n+2) with ``MODEL.CLASSIFIER.NUM_CLASSES`` outputs."""
    c = cfg.MODEL.CIFAR_RESNETS
    if c.DEPTH < 8 or (c.DEPTH - 2) % 6:
        raise ValueError(f"MODEL.CIFAR_RESNETS.DEPTH must be 6n+2 with n >= 1, got {c.DEPTH}")
    if len(c.WIDTHS) != 3:
        raise ValueError(f"MODEL.CIFAR_RESNETS.WIDTHS must have 3 entries, got {list(c.WIDTHS)}")
    n = (c.DEPTH - 2) // 6
    norm = c.NORM  # GN: get_norm halves its 32 groups until they divide the channels
    names = ["res2", "res3", "res4"]
    num_stages = num_stages_needed(names, list(c.OUT_FEATURES), "MODEL.CIFAR_RESNETS.OUT_FEATURES")
    stem = CifarStem(3, c.WIDTHS[0], norm)
    stages, in_channels = {}, c.WIDTHS[0]
    for i, (name, width) in enumerate(zip(names[:num_stages], c.WIDTHS)):
        stages[name] = make_stage(
            BasicBlock, n, in_channels, width, stride=1 if i == 0 else 2, norm=norm, shortcut=c.SHORTCUT, plain=c.PLAIN
        )
        in_channels = width
    model = ResNet(stem, stages, list(c.OUT_FEATURES), num_classes=cfg.MODEL.CLASSIFIER.NUM_CLASSES)
    init_weights(model)
    return model.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
