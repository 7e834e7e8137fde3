"""CIFAR-10 ResNets (He et al. 2015, Sec. 4.2): 6n+2 weighted layers, and two study variants.

``stem.conv1`` (3x3, 16 filters) + norm + ReLU, then stages ``res2``/``res3``/``res4`` of ``n``
BasicBlocks with 16/32/64 filters (``MODEL.CIFAR_RESNETS.WIDTHS``) on 32/16/8 maps (strides 1/2/4),
global average pooling and ``linear``. Shortcut option A by default (the paper's CIFAR choice: all
models then have exactly the parameters of their plain counterparts); B/C and ``PLAIN`` as in
:mod:`detres.modeling.backbone.blocks`, whose blocks and stages are reused with the ``ResNet`` module of
:mod:`detres.modeling.backbone.resnet`.

Study variants (:class:`CifarResNet`, same module names as the plain ResNet, so checkpoints carry over):

* ``STAGE_SHORTCUTS`` ("ResResNet", residual of residual): each stage's output becomes
  ``relu(stage(x) + stage_shortcuts[name](x))``, the shortcut being the identity when the stage keeps
  the shape, else option A (stride + zero channels, no parameters) or, for options B/C, a 1x1
  projection + norm (``stage_shortcuts.<stage>.{conv,norm}``).
* ``ABSENT_STAGES`` (block-wise training, :mod:`detres.engine.blockwise`): an absent stage is replaced
  by the option-A mapping from its input to its output shape; its weights stay in the model (and the
  checkpoint) but are not used and not trained (``requires_grad=False``).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detres.modeling.backbone.build import BACKBONE_REGISTRY
from detres.modeling.backbone.blocks import BasicBlock, ConvNorm, NormSpec, init_weights, make_stage, option_a_shortcut
from detres.modeling.backbone.resnet import ResNet, num_stages_needed
from detres.modeling.norm import freeze_batchnorm

__all__ = ["CifarResNet", "CifarStem", "OptionAShortcut", "cifar_resnet", "stage_shortcut"]

STAGE_NAMES = ("res2", "res3", "res4")


class CifarStem(nn.Module):
    """3x3 conv (stride 1, bias-free) + norm + ReLU: ``(N, 3, H, W)`` -> ``(N, out_channels, H, W)``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16, norm: NormSpec = "BN"):
        super().__init__()
        self.out_channels = out_channels
        self.stride = 1
        self.conv1 = ConvNorm(in_channels, out_channels, 3, padding=1, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv1(x))


class OptionAShortcut(nn.Module):
    """The parameter-free option-A mapping ``(N, C_in, H, W)`` -> ``(N, C_out, ceil(H/s), ceil(W/s))``:
    keep every ``stride``-th pixel and append ``C_out - C_in`` zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"option A cannot shrink channels ({in_channels} -> {out_channels})")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return option_a_shortcut(x, self.out_channels, self.stride)


def stage_shortcut(in_channels: int, out_channels: int, stride: int, option: str, norm: NormSpec) -> nn.Module:
    """A stage-level shortcut: identity when the shape is kept, else option A or (B/C) a 1x1 projection."""
    if in_channels == out_channels and stride == 1:
        return nn.Identity()
    if option == "A":
        return OptionAShortcut(in_channels, out_channels, stride)
    return ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)


class CifarResNet(ResNet):
    """:class:`ResNet` with optional stage shortcuts and absent stages (see the module docstring).

    ``stage_shortcut_option``: None (no stage shortcuts) or "A"/"B"/"C". ``absent_stages``: names of
    stages replaced by the option-A mapping.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Dict[str, nn.Sequential],
        out_features: Sequence[str],
        num_classes: Optional[int] = None,
        stage_shortcut_option: Optional[str] = None,
        absent_stages: Sequence[str] = (),
        norm: NormSpec = "BN",
    ):
        super().__init__(stem, stages, out_features, num_classes)
        unknown = sorted(set(absent_stages) - set(self.stage_names))
        if unknown:
            raise ValueError(f"absent stages {unknown} are not among the built stages {self.stage_names}")
        self.absent_stages = tuple(n for n in self.stage_names if n in absent_stages)
        shapes, in_channels = {}, stem.out_channels
        for name in self.stage_names:
            stage = getattr(self, name)
            shapes[name] = (in_channels, stage[-1].out_channels, stage[0].stride)
            in_channels = stage[-1].out_channels
        self.stage_shortcuts = None
        if stage_shortcut_option is not None:
            self.stage_shortcuts = nn.ModuleDict(
                {n: stage_shortcut(*shapes[n], stage_shortcut_option, norm) for n in self.stage_names}
            )
        # parameter-free, so a plain dict (no submodules: the module tree is that of the full network)
        self.absent_adapters = {n: OptionAShortcut(*shapes[n]) for n in self.absent_stages}
        for name in self.absent_stages:
            getattr(self, name).requires_grad_(False)
            if self.stage_shortcuts is not None:
                self.stage_shortcuts[name].requires_grad_(False)

    def freeze(self, freeze_at: int) -> "CifarResNet":
        """:meth:`ResNet.freeze`, also freezing the stage shortcuts of the frozen stages."""
        super().freeze(freeze_at)
        shortcuts = getattr(self, "stage_shortcuts", None)  # None while ResNet.__init__ calls this
        for name in self.stage_names[: max(freeze_at - 1, 0)]:
            if shortcuts is not None:
                shortcuts[name].requires_grad_(False)
                freeze_batchnorm(shortcuts[name])  # a projection's norm is replaced in place
        return self

    def run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Stage ``name`` on its input ``x``: option A when absent, plus the stage shortcut (and ReLU) if any."""
        if name in self.absent_stages:
            return self.absent_adapters[name](x)
        out = getattr(self, name)(x)
        if self.stage_shortcuts is not None:
            out = F.relu(out + self.stage_shortcuts[name](x))
        return out


@BACKBONE_REGISTRY.register()
def cifar_resnet(cfg) -> CifarResNet:
    """The CIFAR ResNet of ``MODEL.CIFAR_RESNETS`` (depth 6n+2) with ``MODEL.CLASSIFIER.NUM_CLASSES`` outputs."""
    c = cfg.MODEL.CIFAR_RESNETS
    if c.DEPTH < 8 or (c.DEPTH - 2) % 6:
        raise ValueError(f"MODEL.CIFAR_RESNETS.DEPTH must be 6n+2 with n >= 1, got {c.DEPTH}")
    if len(c.WIDTHS) != 3:
        raise ValueError(f"MODEL.CIFAR_RESNETS.WIDTHS must have 3 entries, got {list(c.WIDTHS)}")
    n = (c.DEPTH - 2) // 6
    norm = c.NORM  # GN: get_norm halves its 32 groups until they divide the channels
    num_stages = num_stages_needed(STAGE_NAMES, list(c.OUT_FEATURES), "MODEL.CIFAR_RESNETS.OUT_FEATURES")
    stem = CifarStem(3, c.WIDTHS[0], norm)
    stages, in_channels = {}, c.WIDTHS[0]
    for i, (name, width) in enumerate(zip(STAGE_NAMES[:num_stages], c.WIDTHS)):
        stages[name] = make_stage(
            BasicBlock, n, in_channels, width, stride=1 if i == 0 else 2, norm=norm, shortcut=c.SHORTCUT, plain=c.PLAIN
        )
        in_channels = width
    model = CifarResNet(
        stem,
        stages,
        list(c.OUT_FEATURES),
        num_classes=cfg.MODEL.CLASSIFIER.NUM_CLASSES,
        stage_shortcut_option=c.SHORTCUT if c.STAGE_SHORTCUTS else None,
        absent_stages=list(c.ABSENT_STAGES),
        norm=norm,
    )
    init_weights(model)
    return model.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
