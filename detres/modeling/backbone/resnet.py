"""ImageNet ResNets (He et al. 2015, Table 1): depths 18/34 (BasicBlock) and 50/101/152 (Bottleneck),
their plain counterparts, and shortcut options A/B/C, assembled from the blocks of
:mod:`detres.modeling.backbone.blocks`.

Module names (checkpoint contract, see BRIEF): ``stem.conv1.{conv,norm}``; stages ``res2``..``res5``
are ``nn.Sequential`` of blocks with ``ConvNorm`` children ``conv1``, ``conv2`` (, ``conv3``) and an
optional projection ``shortcut``; ``linear`` is the classifier after global average pooling.

Reusable pieces:

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
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detres.modeling.backbone.backbone import Backbone, ShapeSpec
from detres.modeling.backbone.blocks import BasicBlock, BasicStem, BottleneckBlock, NormSpec, init_weights, make_stage
from detres.modeling.backbone.build import BACKBONE_REGISTRY
from detres.modeling.norm import freeze_batchnorm, get_norm

__all__ = ["ResNet", "build_res5_stage", "num_stages_needed", "resnet", "resnet_stage_specs"]

_BLOCKS_PER_STAGE = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


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
