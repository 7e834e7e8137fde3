"""detres: the systems of "Deep Residual Learning for Image Recognition" (He et al., 2015) as a toolkit.

Public API for downstream projects::

    import detres
    backbone = detres.create_backbone("resnet101", out_features=["res4"], weights="msra://R-101")
    model = detres.create_model("resnet50", num_classes=1000, weights="torchvision://resnet50")
    detres.list_backbones()

The API is imported lazily so that ``import detres.config`` stays light.
"""
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_backbone": "detres.modeling.backbone.build",
    "list_backbones": "detres.modeling.backbone.build",
    "create_model": "detres.modeling.meta_arch.classifier",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        importlib.import_module("detres.modeling.backbone")  # registers the backbone builders
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'detres' has no attribute {name!r}")
