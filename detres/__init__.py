"""detres: the systems of "Deep Residual Learning for Image Recognition" (He et al., 2015) as a toolkit.

Public API for downstream projects::

    import detres
    # classification: a normalised (N, 3, H, W) float tensor -> (N, 1000) logits, like torchvision / timm
    model = detres.create_model("resnet50", num_classes=1000, weights="torchvision://resnet50")
    transform = detres.create_transform(model, resize=256, crop_size=224)  # image -> (3, 224, 224)
    logits = model(transform("cat.jpg")[None])
    # features: (N, 3, H, W) -> {"res4": (N, 1024, H/16, W/16)}
    backbone = detres.create_backbone("resnet101", out_features=["res4"], weights="msra://R-101")
    # detection: an image -> boxes (XYXY, original pixels), scores, classes, class names
    predictor = detres.Predictor("quickstart", weights="output/quickstart/model_final.pth")
    detector = detres.create_detector("quickstart", weights="output/quickstart/model_final.pth")
    detres.list_backbones()

The API is imported lazily so that ``import detres.config`` stays light.
"""
from typing import Any

__version__ = "0.1.0"

_API = {
    "create_backbone": "detres.modeling.backbone.build",
    "list_backbones": "detres.modeling.backbone.build",
    "create_model": "detres.modeling.meta_arch.classifier",
    "create_transform": "detres.modeling.meta_arch.classifier",
    "create_detector": "detres.engine.predictor",
    "Predictor": "detres.engine.predictor",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        importlib.import_module("detres.modeling.backbone")  # registers the backbone builders
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'detres' has no attribute {name!r}")
