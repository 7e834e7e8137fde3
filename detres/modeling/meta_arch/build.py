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


def build_model(cfg) -> nn.Module:
    """Build ``cfg.MODEL.META_ARCHITECTURE`` on ``cfg.MODEL.DEVICE``; weights are not loaded here."""
    model = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)
    memory_format = torch.channels_last if cfg.MODEL.CHANNELS_LAST else torch.preserve_format
    return model.to(resolve_device(cfg.MODEL.DEVICE), memory_format=memory_format)
