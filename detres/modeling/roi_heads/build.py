"""RoI heads (``MODEL.ROI_HEADS.NAME``)."""
from fvcore.common.registry import Registry

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """
A registered class is called as ``cls(cfg, input_shape: Dict[str, ShapeSpec])``.
"""


def build_roi_heads(cfg, input_shape):
    return ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)(cfg, input_shape)
