from detres.modeling.backbone.backbone import Backbone, ShapeSpec
from detres.modeling.backbone.build import BACKBONE_REGISTRY, build_backbone, create_backbone, list_backbones
from detres.modeling.backbone import cifar_resnet, resnet  # noqa: F401  (registers the builders)

__all__ = ["BACKBONE_REGISTRY", "Backbone", "ShapeSpec", "build_backbone", "create_backbone", "list_backbones"]
