"""Test-time detection: multi-scale testing, horizontal-flip testing and ensembles (the ResNet
paper's Appendix B), as wrappers around a built ``FasterRCNN`` chosen by the ``TEST.*`` keys.

    from detres.modeling.test_time import build_test_time_model
    detector = build_test_time_model(cfg, model)   # the model itself when no option is on
    outputs = detector(batched_inputs)             # like model.inference: original-image pixels
"""
from detres.modeling.test_time.base import Regions, SingleScaleDetector, merge_proposals
from detres.modeling.test_time.build import build_test_time_model
from detres.modeling.test_time.ensemble import EnsembleDetector, load_member
from detres.modeling.test_time.flip import FlipDetector, hflip_boxes, hflip_input
from detres.modeling.test_time.multi_scale import MultiScaleDetector, MultiScaleRegionFeatures, select_scale_pairs

__all__ = [
    "EnsembleDetector",
    "FlipDetector",
    "MultiScaleDetector",
    "MultiScaleRegionFeatures",
    "Regions",
    "SingleScaleDetector",
    "build_test_time_model",
    "hflip_boxes",
    "hflip_input",
    "load_member",
    "merge_proposals",
    "select_scale_pairs",
]
