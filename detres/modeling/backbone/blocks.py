"""The building blocks of the ResNets (He et al. 2015): conv + norm pairs, the stem, the basic and
bottleneck residual blocks (and their plain counterparts) with shortcut options A/B/C, stages of blocks
and the paper's initialisation. :mod:`detres.modeling.backbone.resnet` and
:mod:`detres.modeling.backbone.cifar_resnet` assemble them into backbones.

Module names (checkpoint contract): a block's ``ConvNorm`` children are ``conv1``, ``conv2`` (,
``conv3``) and an optional projection ``shortcut``; a ``ConvNorm`` holds ``conv`` and ``norm``.

* ``make_stage(block_class, num_blocks, in_channels, out_channels, stride=1, **block_kwargs)
  -> nn.Sequential``: ``num_blocks`` blocks, the first with ``stride`` (and ``in_channels``).
  ``block_kwargs`` go to every block: ``norm``, ``shortcut`` ("A"/"B"/"C"), ``plain``, ``dilation``
  and, for ``BottleneckBlock``, ``bottleneck_channels``, ``num_groups``, ``stride_in_1x1``.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from detres.modeling.norm import fixed_affine, get_norm

__all__ = [
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "ConvNorm",
    "NormSpec",
    "ResidualBlock",
    "SHORTCUT_OPTIONS",
    "init_weights",
    "make_stage",
    "option_a_shortcut",
]

# A norm by config name ("BN", "FrozenBN", "GN", "SyncBN", "") or a factory ``channels -> module``.
NormSpec = Union[str, Callable[[int], nn.Module]]
SHORTCUT_OPTIONS = ("A", "B", "C")


def _make_norm(norm: NormSpec, channels: int) -> nn.Module:
    return get_norm(norm, channels) if isinstance(norm, str) else norm(channels)


class ConvNorm(nn.Module):
    """``norm(conv(x))`` with a bias-free ``nn.Conv2d``; children ``conv`` and ``norm``. No activation.

    When ``fold_norm`` is True (the default; ``MODEL.FOLD_NORM``) and the norm is a fixed affine map
    (frozen BN, or BN in eval mode), the norm is folded into the convolution at each call: one
    convolution with weight ``w * scale`` and bias ``shift`` instead of a convolution and two more
    passes over its output. The parameters and state-dict names do not change, gradients still reach
    ``conv.weight`` (frozen BN in training), and trainable BN in training mode is never folded.
    """

    fold_norm: bool = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        norm: NormSpec = "BN",
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False
        )
        self.norm = _make_norm(norm, out_channels)

    def folded(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """The convolution's weight ``(C_out, C_in, k, k)`` and bias ``(C_out,)`` with the norm folded in,
        when the norm is a fixed affine map; else None. Differentiable in ``conv.weight``."""
        affine = fixed_affine(self.norm)
        if affine is None:
            return None
        scale, shift = affine
        weight = self.conv.weight * scale.to(self.conv.weight.dtype).view(-1, 1, 1, 1)
        return weight, shift.to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        folded = self.folded() if self.fold_norm else None
        if folded is None:
            return self.norm(self.conv(x))
        return self.conv._conv_forward(x, *folded)


class BasicStem(nn.Module):
    """conv1 7x7/2 (bias-free) + norm + ReLU + 3x3/2 max pool (padding 1): ``(N, 3, H, W)`` ->
    ``(N, out_channels, ceil(H/4), ceil(W/4))``."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm: NormSpec = "BN"):
        super().__init__()
        self.out_channels = out_channels
        self.stride = 4
        self.conv1 = ConvNorm(in_channels, out_channels, 7, stride=2, padding=3, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def option_a_shortcut(x: torch.Tensor, out_channels: int, stride: int) -> torch.Tensor:
    """The paper's parameter-free option A: ``(N, C_in, H, W)`` -> ``(N, out_channels, ceil(H/s), ceil(W/s))``,
    every ``stride``-th pixel kept and ``out_channels - C_in`` zero channels appended."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    return F.pad(x, (0, 0, 0, 0, 0, extra)) if extra else x


class ResidualBlock(nn.Module):
    """Common shortcut logic: ``relu(residual(x) + shortcut(x))``, or ``relu(residual(x))`` when plain.

    Shortcut options (paper, Sec. 4.1): "A" identity, and when the shape changes subsample by
    ``stride`` and zero-pad the new channels (parameter-free); "B" a 1x1 projection (``shortcut``,
    ConvNorm with ``stride``) only when the shape changes; "C" a projection in every block.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm: NormSpec, shortcut: str, plain: bool):
        super().__init__()
        if shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(f"unknown shortcut option {shortcut!r}; expected one of {SHORTCUT_OPTIONS}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.plain = plain
        changes_shape = in_channels != out_channels or stride != 1
        if not plain and (shortcut == "C" or (shortcut == "B" and changes_shape)):
            self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride, norm=norm)
        else:
            self.shortcut = None
            if not plain and shortcut == "A" and out_channels < in_channels:
                raise ValueError(f"option A cannot shrink channels ({in_channels} -> {out_channels})")

    def last_norm(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    # Subsample the block's input by this factor once, before both branches (blocks whose first layers
    # are all strided 1x1 convs set it and build those convs with stride 1: the same sums, and the
    # branches read a contiguous tensor 1/s^2 the size, e.g. a C4 head's pooled regions).
    input_stride: int = 1
    # Set by :meth:`expect_subsampled_input`: the caller has already subsampled the input.
    input_subsampled: bool = False

    def expect_subsampled_input(self) -> int:
        """From now on take inputs already subsampled by the returned ``input_stride`` (e.g. a C4 head
        then pools only the bins this block reads)."""
        self.input_subsampled = True
        return self.input_stride

    def subsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_stride == 1:
            return x
        if not self.input_subsampled:
            x = x[:, :, ::self.input_stride, ::self.input_stride]
        return x.contiguous(memory_format=self.memory_format())

    def memory_format(self) -> torch.memory_format:
        return torch.contiguous_format

    def input_projection(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """``(weight (P, C_in, 1, 1), bias (P,))`` when every layer that reads the subsampled input is a
        1x1 convolution with a fixed affine norm (e.g. the "msra" bottleneck with a projection shortcut and
        frozen BN, or BN in eval mode): those layers folded and stacked. Such layers commute with any linear per-channel
        resampling ``pool`` (RoIAlign): ``block(pool(x)) == block.forward_projected(pool(conv2d(x,
        weight)), bias)`` up to float rounding, so a C4 head can run them once on the feature map instead
        of on every pooled region. None when the block is not of that kind (the default)."""
        return None

    def forward_projected(self, projected: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The block's output from ``projected`` ``(R, P, H, W)``: its subsampled input through the bias-free
        ``weight`` of :meth:`input_projection` (then pooled); ``bias`` is that method's ``bias``."""
        raise NotImplementedError(f"{type(self).__name__} has no input projection")

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The residual branch on the subsampled input (see ``input_stride``)."""
        raise NotImplementedError

    def shortcut_branch(self, x: torch.Tensor) -> torch.Tensor:
        """Projection, identity, or option A's subsample + zero padding, on the subsampled input."""
        if self.shortcut is not None:
            return self.shortcut(x)
        return option_a_shortcut(x, self.out_channels, self.stride // self.input_stride)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch ``F(x)`` of the block's input ``x``."""
        return self.residual_branch(self.subsample(x))

    def identity(self, x: torch.Tensor) -> torch.Tensor:
        """The shortcut branch of the block's input ``x``."""
        return self.shortcut_branch(self.subsample(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.subsample(x)
        out = self.residual_branch(x)
        if not self.plain:
            out += self.shortcut_branch(x)  # in place: no autograd node needs the residual branch's output
        return F.relu_(out)


class BasicBlock(ResidualBlock):
    """Two 3x3 convs (``conv1`` carries the stride): ``(N, in, H, W)`` -> ``(N, out, H/s, W/s)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        stride: int = 1,
        norm: NormSpec = "BN",
        shortcut: str = "B",
        plain: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride, norm, shortcut, plain)
        self.conv1 = ConvNorm(in_channels, out_channels, 3, stride, dilation, dilation, norm=norm)
        self.conv2 = ConvNorm(out_channels, out_channels, 3, 1, dilation, dilation, norm=norm)

    def last_norm(self) -> nn.Module:
        return self.conv2.norm

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu_(self.conv1(x)))


class BottleneckBlock(ResidualBlock):
    """1x1 reduce (``conv1``), 3x3 (``conv2``, grouped by ``num_groups``), 1x1 expand (``conv3``).

    ``stride_in_1x1=True`` is the "msra" style (stride in conv1, as in the paper and Caffe2 weights),
    False the "pytorch" style (stride in conv2, torchvision weights).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm: NormSpec = "BN",
        stride_in_1x1: bool = True,
        shortcut: str = "B",
        plain: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride, norm, shortcut, plain)
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        if stride_in_1x1 and stride > 1:  # conv1 and the shortcut (1x1 or option A) only read every s-th pixel
            self.input_stride, s1 = stride, 1
            if self.shortcut is not None:
                self.shortcut.conv.stride = (1, 1)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, s1, norm=norm)
        self.conv2 = ConvNorm(
            bottleneck_channels, bottleneck_channels, 3, s3, dilation, dilation, groups=num_groups, norm=norm
        )
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, norm=norm)

    def last_norm(self) -> nn.Module:
        return self.conv3.norm

    def memory_format(self) -> torch.memory_format:
        """Channels-last when the block's 3x3 weights are (1x1 weights are both formats at once)."""
        w = self.conv2.conv.weight
        return torch.channels_last if not w.is_contiguous() and w.is_contiguous(
            memory_format=torch.channels_last) else torch.contiguous_format

    def residual_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self._after_conv1(F.relu_(self.conv1(x)))

    def _after_conv1(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.relu_(self.conv2(x)))

    def input_projection(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        layers = [self.conv1] if self.plain else [self.conv1, self.shortcut]
        if layers[-1] is None or any(layer.conv.stride != (1, 1) for layer in layers):
            return None  # a parameter-free shortcut, or a 1x1 conv that subsamples by itself ("pytorch" style)
        folded = [layer.folded() for layer in layers]
        if any(f is None for f in folded):
            return None
        weights, biases = zip(*folded)
        return torch.cat(weights), torch.cat(biases)

    def forward_projected(self, projected: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``projected`` ``(R, P, H, W)``: ``conv1``'s channels, then the shortcut's (see the base class)."""
        split, bias = self.conv1.conv.out_channels, bias.to(projected.dtype)
        x = F.relu_(projected[:, :split] + bias[:split].view(1, -1, 1, 1))
        out = self._after_conv1(x.contiguous(memory_format=self.memory_format()))
        if not self.plain:
            out += projected[:, split:]
            out += bias[split:].view(1, -1, 1, 1)
        return F.relu_(out)


def make_stage(
    block_class: type, num_blocks: int, in_channels: int, out_channels: int, stride: int = 1, **block_kwargs
) -> nn.Sequential:
    """``num_blocks`` blocks named ``0``, ``1``, ...; the first maps ``in_channels`` -> ``out_channels``
    with ``stride``, the others keep shape. ``block_kwargs`` are passed to every block."""
    blocks = []
    for i in range(num_blocks):
        blocks.append(block_class(in_channels, out_channels, stride=stride if i == 0 else 1, **block_kwargs))
        in_channels = out_channels
    return nn.Sequential(*blocks)


def init_weights(module: nn.Module, zero_init_residual: bool = False) -> None:
    """He et al. initialisation: Kaiming-normal (fan_out, ReLU) convs, norms at identity, the
    classifier N(0, 0.01). ``zero_init_residual`` zeroes the last norm's scale of every residual
    (non-plain) block so that each block starts as its shortcut."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in module.modules():
            if isinstance(m, ResidualBlock) and not m.plain:
                scale = getattr(m.last_norm(), "weight", None)
                if scale is None:
                    raise ValueError("ZERO_INIT_RESIDUAL needs a norm layer with a scale (weight); the norm has none")
                with torch.no_grad():
                    scale.zero_()
