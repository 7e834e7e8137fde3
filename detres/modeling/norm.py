"""Normalization layers selectable by name: ``BN``, ``FrozenBN``, ``GN``, ``SyncBN`` (or ``""`` for none)."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["FrozenBatchNorm2d", "get_norm", "freeze_batchnorm"]


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A BatchNorm2d state dict carries a counter this layer does not have.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


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
