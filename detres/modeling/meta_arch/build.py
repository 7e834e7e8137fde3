"""Meta-architectures: the whole model a config names in ``MODEL.META_ARCHITECTURE``."""
from __future__ import annotations

import torch
from fvcore.common.registry import Registry
from torch import nn

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """
Registry for meta-architectures. A registered class is called as ``cls(cfg)`` and returns an
``nn.Module`` that takes ``List[dict]`` batched inputs (see detres.data) and returns a dict of
losses in training mode and a list of per-image results in eval mode.
"""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# The parts that ``MODEL.COMPILE`` compiles: the trunk and the per-region network of a C4 RoI head,
# block by block (with ``MODEL.PROJECT_BEFORE_POOLING`` the head enters res5 after its first block's convs).
_COMPILED_PARTS = ("backbone", "roi_heads.res5")


def apply_speed_options(cfg, model: nn.Module) -> nn.Module:
    """``MODEL.FOLD_NORM`` (batch norm folded into convolutions where it is a fixed affine map) and
    ``MODEL.COMPILE`` (``nn.Module.compile`` of the backbone and the RoI head's res5 blocks, in place, so that
    parameter and state-dict names do not change). Returns ``model``."""
    from detres.modeling.backbone.blocks import ConvNorm

    for module in model.modules():
        if isinstance(module, ConvNorm):
            module.fold_norm = cfg.MODEL.FOLD_NORM
    if cfg.MODEL.COMPILE:
        for path in _COMPILED_PARTS:
            try:
                part = model.get_submodule(path)
            except AttributeError:
                continue
            for module in part if isinstance(part, nn.Sequential) else [part]:
                module.compile(mode=None if cfg.MODEL.COMPILE == "default" else cfg.MODEL.COMPILE)
    return model


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` on ``cfg.MODEL.DEVICE`` with its speed options; weights
    are not loaded here."""
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    memory_format = torch.channels_last if cfg.MODEL.CHANNELS_LAST else torch.preserve_format
    model = model.to(resolve_device(cfg.MODEL.DEVICE), memory_format=memory_format)
    return apply_speed_options(cfg, model)
