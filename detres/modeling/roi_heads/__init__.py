from detres.modeling.roi_heads.build import ROI_HEADS_REGISTRY, build_roi_heads
from detres.modeling.roi_heads import res5_roi_heads  # noqa: F401  (registers "Res5ROIHeads")

__all__ = ["ROI_HEADS_REGISTRY", "build_roi_heads"]
