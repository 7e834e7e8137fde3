"""Backbone registry and the public ``create_backbone`` / ``list_backbones`` API."""
from __future__ import annotations

import re
from typing import Any, List, NamedTuple, Optional, Sequence

from fvcore.common.registry import Registry

from detres.modeling.backbone.backbone import Backbone

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """
Registry for backbones. A registered function is called as ``fn(cfg)`` and returns a ``Backbone``.
"""

IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
_NAME_RE = re.compile(r"^(?P<cifar>cifar_)?(?P<kind>resnet|plain|resresnet)(?P<depth>\d+)$")
# CIFAR only: the ResResNet (stage shortcuts, MODEL.CIFAR_RESNETS.STAGE_SHORTCUTS) of the residual-network studies.
CIFAR_KINDS = ("resnet", "plain", "resresnet")


class BackboneName(NamedTuple):
    """A parsed backbone name: ``"cifar_resresnet20"`` -> ``(True, False, 20, True)``."""

    is_cifar: bool
    plain: bool
    depth: int
    stage_shortcuts: bool


def build_backbone(cfg) -> Backbone:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME`` from the rest of ``cfg``."""
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg)


def list_backbones() -> List[str]:
    """Names accepted by :func:`create_backbone` and :func:`detres.create_model`."""
    names = [f"{kind}{d}" for kind in ("resnet", "plain") for d in IMAGENET_DEPTHS]
    names += [f"cifar_{kind}{d}" for kind in CIFAR_KINDS for d in CIFAR_DEPTHS]
    return names


def backbone_cfg(name: str, out_features: Optional[Sequence[str]] = None, **overrides: Any):
    """The config that :func:`create_backbone` builds ``name`` from.

    ``name`` is ``resnet{18,34,50,101,152}``, ``plain{...}`` or ``cifar_{resnet,plain,resresnet}{6n+2}``.
    ``overrides`` are lower-case keys of ``MODEL.RESNETS`` (or ``MODEL.CIFAR_RESNETS``), e.g.
    ``style="pytorch"``, ``norm="FrozenBN"``, ``shortcut="A"``, ``res2_out_channels=64``, plus
    ``freeze_at``.
    """
    from detres.config import get_cfg

    is_cifar, plain, depth, stage_shortcuts = parse_backbone_name(name)
    cfg = get_cfg()
    node_name = "CIFAR_RESNETS" if is_cifar else "RESNETS"
    cfg.MODEL.BACKBONE.NAME = "cifar_resnet" if is_cifar else "resnet"
    node = cfg.MODEL[node_name]
    node.DEPTH = depth
    node.PLAIN = plain
    if is_cifar:
        node.STAGE_SHORTCUTS = stage_shortcuts
        cfg.MODEL.CLASSIFIER.NUM_CLASSES = 10  # CIFAR-10
    if out_features is not None:
        node.OUT_FEATURES = list(out_features)
    values = {}
    for key, value in overrides.items():
        if key == "freeze_at":
            cfg.MODEL.BACKBONE.FREEZE_AT = int(value)
        elif key.upper() in node:
            values[key.upper()] = value
        else:
            valid = sorted(k.lower() for k in node) + ["freeze_at"]
            raise TypeError(f"create_backbone({name!r}): unknown option {key!r}; valid options: {', '.join(valid)}")
    cfg.merge_from_dict({"MODEL": {node_name: values}}, source=f"create_backbone({name!r})")
    return cfg


def parse_backbone_name(name: str) -> BackboneName:
    """``"cifar_plain56"`` -> ``BackboneName(is_cifar=True, plain=True, depth=56, stage_shortcuts=False)``."""
    m = _NAME_RE.match(name)
    if m is None:
        raise ValueError(f"unknown backbone {name!r}; detres.list_backbones() gives the valid names")
    is_cifar, depth = bool(m.group("cifar")), int(m.group("depth"))
    if is_cifar and (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNets have 6n+2 layers; {depth} is not of that form")
    if not is_cifar and m.group("kind") == "resresnet":
        raise ValueError(f"{name!r}: the ResResNet exists only in the CIFAR family (cifar_resresnet<6n+2>)")
    if not is_cifar and depth not in IMAGENET_DEPTHS:
        raise ValueError(f"ImageNet ResNet depth must be one of {IMAGENET_DEPTHS}, got {depth}")
    return BackboneName(is_cifar, m.group("kind") == "plain", depth, m.group("kind") == "resresnet")


def create_backbone(
    name: str,
    out_features: Optional[Sequence[str]] = None,
    weights: Optional[str] = None,
    **overrides: Any,
) -> Backbone:
    """A backbone module mapping ``(N, 3, H, W)`` images to a dict of feature maps.

    Example: ``create_backbone("resnet101", out_features=["res4"], weights="msra://R-101", norm="FrozenBN")``.
    ``weights``: a local path, an http(s) URL or a short scheme (see ``detres.modeling.weight_import``).
    """
    cfg = backbone_cfg(name, out_features, **overrides)
    backbone = build_backbone(cfg)
    if weights:
        from detres.modeling.weight_import import load_weights

        load_weights(backbone, weights)
    return backbone
