"""``build_test_time_model(cfg, model)``: the detector that evaluation runs, per the ``TEST.*`` keys.

Composition, inside out: each detector (the model, and every ``TEST.ENSEMBLE`` member) is
multi-scale with ``TEST.MULTI_SCALE.ENABLED``; with ``TEST.ENSEMBLE`` the model and the members form
one :class:`EnsembleDetector`; ``TEST.FLIP`` wraps the result. With none of them on, the model is
returned unchanged (so classification models pass through). An ensemble averages its members'
predictions and selects once, without box refinement (a warning says so when both are set).
"""
from __future__ import annotations

import logging
from typing import List, Tuple

from torch import nn

from detres.config import ConfigError
from detres.modeling.meta_arch.faster_rcnn import FasterRCNN
from detres.modeling.test_time.base import SingleScaleDetector
from detres.modeling.test_time.ensemble import EnsembleDetector, load_member
from detres.modeling.test_time.flip import FlipDetector
from detres.modeling.test_time.multi_scale import MultiScaleDetector

__all__ = ["build_test_time_model", "ensemble_pairs"]

logger = logging.getLogger(__name__)


def ensemble_pairs(cfg) -> List[Tuple[str, str]]:
    """``TEST.ENSEMBLE`` as ``(config_file, weights)`` pairs; anything else is a ``ConfigError``."""
    pairs = []
    for entry in cfg.TEST.ENSEMBLE:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not all(isinstance(s, str) for s in entry):
            raise ConfigError(f"TEST.ENSEMBLE entries must be [config_file, weights] pairs, got {entry!r}")
        pairs.append((entry[0], entry[1]))
    return pairs


def _regions_detector(cfg, model: FasterRCNN) -> SingleScaleDetector:
    if cfg.TEST.MULTI_SCALE.ENABLED:
        return MultiScaleDetector.from_config(cfg, model)
    return SingleScaleDetector(model)


def build_test_time_model(cfg, model: nn.Module) -> nn.Module:
    """``model`` wrapped by the test-time options of ``cfg`` (see the module docstring); the wrapper is
    called like the model in eval mode and returns detections in original-image pixels."""
    test = cfg.TEST
    members = ensemble_pairs(cfg)
    if not (test.MULTI_SCALE.ENABLED or test.FLIP or members):
        return model
    if not isinstance(model, FasterRCNN):
        raise ConfigError(f"TEST.MULTI_SCALE, TEST.FLIP and TEST.ENSEMBLE need a FasterRCNN model, "
                          f"got {type(model).__name__}")
    detector: nn.Module = _regions_detector(cfg, model)
    if members:
        if cfg.MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED:
            logger.warning("TEST.ENSEMBLE averages the members' predictions and selects once: box refinement "
                           "(MODEL.ROI_HEADS.BOX_REFINEMENT) is not applied inside the ensemble")
        others = [_regions_detector(cfg, load_member(c, w, model.device)) for c, w in members]
        detector = EnsembleDetector([detector, *others], cfg.MODEL.RPN.NMS_THRESH, cfg.MODEL.RPN.POST_NMS_TOPK_TEST)
    if test.FLIP:
        rh = cfg.MODEL.ROI_HEADS
        detector = FlipDetector(detector, rh.NMS_THRESH_TEST, rh.DETECTIONS_PER_IMAGE)
    return detector
