"""Normalization layers selectable by name: ``BN``, ``FrozenBN``, ``GN``, ``SyncBN`` (or ``""`` for none)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

__all__ = ["FrozenBatchNorm2d", "fixed_affine", "get_norm", "freeze_batchnorm"]


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters (all buffers, never trained).

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, per channel of ``(N, C, H, W)``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def scale_and_shift(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The per-channel ``(C,)`` scale and shift of ``y = x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.scale_and_shift()
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A BatchNorm2d state dict carries a counter this layer does not have.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def fixed_affine(norm: nn.Module) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """``(scale, shift)``, each ``(C,)``, when ``norm`` currently computes the fixed per-channel affine map
    ``x * scale + shift`` (a ``FrozenBatchNorm2d``, or a ``BatchNorm2d``/``SyncBatchNorm`` in eval mode
    with running statistics), so that it can be folded into the preceding convolution; else None
    (batch norm in training mode, group norm, no norm). Differentiable in the norm's parameters."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.scale_and_shift()
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training and norm.running_var is not None:
        scale = (norm.running_var + norm.eps).rsqrt()
        if norm.affine:
            scale = norm.weight * scale
        shift = -norm.running_mean * scale
        return scale, shift + norm.bias if norm.affine else shift
    return None


def get_norm(name: str, channels: int, gn_groups: int = 32) -> nn.Module:
    """A norm layer for ``channels`` feature channels, by config name."""
    if not name:
        return nn.Identity()
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "SyncBN":
        # Behaves as BN outside a distributed run.
        return nn.SyncBatchNorm(channels)
    if name == "GN":
        groups = gn_groups
        while channels % groups:
            groups //= 2
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {name!r}; expected one of BN, FrozenBN, GN, SyncBN or ''")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d``/``SyncBatchNorm`` below ``module`` by a ``FrozenBatchNorm2d``
    with the same statistics and affine parameters; returns the (possibly new) module."""
    if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.running_mean is not None:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module
