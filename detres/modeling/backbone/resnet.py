"""ImageNet ResNets (He et al. 2015, Table 1): depths 18/34 (BasicBlock) and 50/101/152 (Bottleneck),
their plain counterparts, and shortcut options A/B/C.

Module names (checkpoint contract, see BRIEF): ``stem.conv1.{conv,norm}``; stages ``res2``..``res5``
are ``nn.Sequential`` of blocks with ``ConvNorm`` children ``conv1``, ``conv2`` (, ``conv3``) and an
optional projection ``shortcut``; ``linear`` is the classifier after global average pooling.

Reusable pieces:

* ``make_stage(block_class, num_blocks, in_channels, out_channels, stride=1, **block_kwargs)
  -> nn.Sequential``: ``num_blocks`` blocks, the first with ``stride`` (and ``in_channels``).
  ``block_kwargs`` go to every block: ``norm``, ``shortcut`` ("A"/"B"/"C"), ``plain``, ``dilation``
  and, for ``BottleneckBlock``, ``bottleneck_channels``, ``num_groups``, ``stride_in_1x1``.
* ``build_res5_stage(cfg) -> (nn.Sequential, out_channels)``: the ``res5`` stage that
  ``MODEL.RESNETS`` describes (depth, style, norm, widths, dilation, shortcut, plain), taking the
  res4 features as input; the C4 detector runs it per region (``roi_heads.res5``).
* ``ResNet(stem, stages, out_features, num_classes, freeze_at)``: the generic backbone, also used
  by the CIFAR ResNets (:mod:`detres.modeling.backbone.cifar_resnet`).
* ``resnet(cfg)``: the ``BACKBONE_REGISTRY`` builder "resnet" (``MODEL.RESNETS``, ``MODEL.BACKBONE.FREEZE_AT``,
  ``MODEL.CLASSIFIER.NUM_CLASSES`` for ``linear``).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from detres.modeling.backbone.backbone import Backbone, ShapeSpec
from detres.modeling.backbone.build import BACKBONE_REGISTRY
from detres.modeling.norm import fixed_affine, freeze_batchnorm, get_norm

__all__ = [
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "ConvNorm",
    "NormSpec",
    "ResNet",
    "build_res5_stage",
    "init_weights",
    "make_stage",
    "num_stages_needed",
    "option_a_shortcut",
    "resnet",
    "resnet_stage_specs",
]

# A norm by config name ("BN", "FrozenBN", "GN", "SyncBN", "") or a factory ``channels -> module``.
NormSpec = Union[str, Callable[[int], nn.Module]]
SHORTCUT_OPTIONS = ("A", "B", "C")
_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        affine = fixed_affine(self.norm) if self.fold_norm else None
        if affine is None:
            return self.norm(self.conv(x))
        scale, shift = affine
        weight = self.conv.weight * scale.to(self.conv.weight.dtype).view(-1, 1, 1, 1)
        return self.conv._conv_forward(x, weight, shift.to(weight.dtype))


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


class _ResidualBlock(nn.Module):
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

    def subsample(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_stride == 1:
            return x
        return x[:, :, ::self.input_stride, ::self.input_stride].contiguous(memory_format=self.memory_format())

    def memory_format(self) -> torch.memory_format:
        return torch.contiguous_format

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


class BasicBlock(_ResidualBlock):
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


class BottleneckBlock(_ResidualBlock):
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
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        return self.conv3(x)


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


def num_stages_needed(stage_names: Sequence[str], out_features: Sequence[str], key: str) -> int:
    """How many of ``stage_names`` must run to produce ``out_features`` (all of them for ``linear``);
    an unknown feature is an error naming the config ``key``."""
    names = ["stem", *stage_names]
    unknown = [f for f in out_features if f not in names + ["linear"]]
    if unknown or not out_features:
        raise ValueError(f"{key}={list(out_features)} invalid; choose from {names + ['linear']}")
    if "linear" in out_features:
        return len(stage_names)
    return max(names.index(f) for f in out_features)


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
            if isinstance(m, _ResidualBlock) and not m.plain:
                scale = getattr(m.last_norm(), "weight", None)
                if scale is None:
                    raise ValueError("ZERO_INIT_RESIDUAL needs a norm layer with a scale (weight); the norm has none")
                with torch.no_grad():
                    scale.zero_()


class ResNet(Backbone):
    """Stem + named stages (+ global average pool and ``linear``).

    ``stem`` must expose ``out_channels`` and ``stride``, every block ``stride`` and ``out_channels``.
    Features: ``stem`` (after the stem), each stage name (after that stage), ``linear``
    ``(N, num_classes)`` logits. Builders pass only the stages up to the last requested feature.
    ``freeze_at``: 0 nothing, 1 the stem, k the stem and the first k-1 stages; frozen parts get
    ``requires_grad=False`` and their BN layers become ``FrozenBatchNorm2d``.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Dict[str, nn.Sequential],
        out_features: Sequence[str],
        num_classes: Optional[int] = None,
        freeze_at: int = 0,
    ):
        super().__init__()
        self.stem = stem
        self.stage_names = list(stages)
        self._shapes: Dict[str, ShapeSpec] = {"stem": ShapeSpec(stem.out_channels, stem.stride)}
        stride, channels = stem.stride, stem.out_channels
        for name, stage in stages.items():
            self.add_module(name, stage)
            stride *= stage[0].stride
            channels = stage[-1].out_channels
            self._shapes[name] = ShapeSpec(channels, stride)
        if "linear" in out_features:
            if not num_classes:
                raise ValueError("out_features contains 'linear' but num_classes is not set")
            self.linear = nn.Linear(channels, num_classes)
            self._shapes["linear"] = ShapeSpec(num_classes, 0)  # stride 0: no spatial extent
        unknown = [f for f in out_features if f not in self._shapes]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} invalid; available: {list(self._shapes)}")
        order = list(self._shapes)
        self.out_features = sorted(set(out_features), key=order.index)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> "ResNet":
        """Freeze the stem (``freeze_at >= 1``) and stages res2.. up to index ``freeze_at``."""
        if not 0 <= freeze_at <= 1 + len(self.stage_names):
            raise ValueError(f"freeze_at={freeze_at} out of range 0..{1 + len(self.stage_names)}")
        names = ["stem"] + self.stage_names
        for name in names[:freeze_at]:
            module = getattr(self, name)
            for p in module.parameters():
                p.requires_grad_(False)
            freeze_batchnorm(module)
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``x``: ``(N, 3, H, W)`` normalised images -> ``{name: (N, C, H/stride, W/stride)}``."""
        outputs = {}
        x = self.stem(x)
        if "stem" in self.out_features:
            outputs["stem"] = x
        for name in self.stage_names:
            x = self.run_stage(name, x)
            if name in self.out_features:
                outputs[name] = x
        if "linear" in self.out_features:
            outputs["linear"] = self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return outputs

    def run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Stage ``name`` on its input ``x`` (subclasses add stage-level shortcuts here)."""
        return getattr(self, name)(x)

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {name: self._shapes[name] for name in self.out_features}


def resnet_stage_specs(cfg) -> List[dict]:
    """``make_stage`` arguments for res2..res5 as ``MODEL.RESNETS`` describes them; each dict has
    ``name`` plus the keyword arguments of :func:`make_stage` (including block kwargs)."""
    r = cfg.MODEL.RESNETS
    if r.DEPTH not in _BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(_BLOCKS_PER_STAGE)}, got {r.DEPTH}")
    if r.STYLE not in ("msra", "pytorch"):
        raise ValueError(f"MODEL.RESNETS.STYLE must be 'msra' or 'pytorch', got {r.STYLE!r}")
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}")
    bottleneck = r.DEPTH >= 50
    if not bottleneck and r.NUM_GROUPS != 1:
        raise ValueError(f"MODEL.RESNETS.NUM_GROUPS must be 1 for depth {r.DEPTH} (BasicBlock)")
    norm: NormSpec = partial(get_norm, "GN", gn_groups=r.GN_NUM_GROUPS) if r.NORM == "GN" else r.NORM
    out_channels = r.RES2_OUT_CHANNELS or (256 if bottleneck else 64)
    width = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    in_channels = r.STEM_OUT_CHANNELS
    specs = []
    for i, num_blocks in enumerate(_BLOCKS_PER_STAGE[r.DEPTH]):
        dilation = r.RES5_DILATION if i == 3 else 1
        spec = dict(
            name=f"res{i + 2}",
            block_class=BottleneckBlock if bottleneck else BasicBlock,
            num_blocks=num_blocks,
            in_channels=in_channels,
            out_channels=out_channels,
            stride=1 if i == 0 or dilation > 1 else 2,
            norm=norm,
            shortcut=r.SHORTCUT,
            plain=r.PLAIN,
            dilation=dilation,
        )
        if bottleneck:
            spec.update(bottleneck_channels=width, num_groups=r.NUM_GROUPS, stride_in_1x1=r.STYLE == "msra")
        specs.append(spec)
        in_channels, out_channels, width = out_channels, out_channels * 2, width * 2
    return specs


def _build_stage(spec: dict) -> nn.Sequential:
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return make_stage(**kwargs)


def build_res5_stage(cfg) -> Tuple[nn.Sequential, int]:
    """The res5 stage of ``MODEL.RESNETS`` (input: res4 features) and its output channels,
    initialised like the backbone."""
    spec = resnet_stage_specs(cfg)[3]
    stage = _build_stage(spec)
    init_weights(stage, cfg.MODEL.RESNETS.ZERO_INIT_RESIDUAL)
    return stage, spec["out_channels"]


@BACKBONE_REGISTRY.register()
def resnet(cfg) -> ResNet:
    """The ImageNet ResNet of ``MODEL.RESNETS``; stages after the last of ``OUT_FEATURES`` are not built."""
    r = cfg.MODEL.RESNETS
    specs = resnet_stage_specs(cfg)
    out_features = list(r.OUT_FEATURES)
    num_stages = num_stages_needed([s["name"] for s in specs], out_features, "MODEL.RESNETS.OUT_FEATURES")
    stem = BasicStem(3, r.STEM_OUT_CHANNELS, specs[0]["norm"])
    stages = {s["name"]: _build_stage(s) for s in specs[:num_stages]}
    model = ResNet(stem, stages, out_features, num_classes=cfg.MODEL.CLASSIFIER.NUM_CLASSES)
    init_weights(model, r.ZERO_INIT_RESIDUAL)
    return model.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
