"""Ensembles of detectors, as in the ResNet paper's COCO/VOC entries (Appendix B).

Every member's RPN proposes on its own features; per image the union of all proposals is kept after
NMS at ``MODEL.RPN.NMS_THRESH`` (the ``MODEL.RPN.POST_NMS_TOPK_TEST`` best). Every member's RoI head
scores and regresses that same union; the class probabilities ``(R, K + 1)`` and per-class boxes
``(R, K, 4)`` are averaged over members, then the first member's predictor selects the detections
(score threshold, per-class NMS, top-k). An ensemble of one is that member's plain output.

Members are :class:`~detres.modeling.test_time.base.SingleScaleDetector` s, so a member may be
multi-scale. They must see the same inputs: the same test size, channel order and classes. Box
refinement inside a member's RoI head is not applied (the averaged predictions are selected once).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from detres.config import ConfigError, load_config
from detres.modeling.meta_arch.build import build_model
from detres.modeling.meta_arch.faster_rcnn import FasterRCNN
from detres.modeling.test_time.base import SingleScaleDetector, merge_proposals
from detres.modeling.weight_import import load_weights

__all__ = ["EnsembleDetector", "load_member"]


def load_member(config_file: str, weights: str, device: torch.device) -> FasterRCNN:
    """A detector built from ``config_file`` on ``device`` with ``weights`` loaded (class layers
    required), in eval mode."""
    cfg = load_config(config_file, ["MODEL.DEVICE", str(device)])
    model = build_model(cfg)
    if not isinstance(model, FasterRCNN):
        raise ConfigError(f"TEST.ENSEMBLE member {config_file}: needs a FasterRCNN, got {type(model).__name__}")
    load_weights(model, weights, require_class_layers=True)
    return model.eval()


class EnsembleDetector(nn.Module):
    """Averages the RoI-head predictions of ``members`` on the union of their proposals.

    Called like a detector: ``List[dict]`` -> per image ``{"boxes" (D, 4), "scores", "classes"}`` in
    original pixels. ``nms_thresh`` and ``topk`` select the proposal union.
    """

    def __init__(self, members: Sequence[SingleScaleDetector], nms_thresh: float, topk: int):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        lead = members[0].model
        for m in members[1:]:
            if m.model.roi_heads.num_classes != lead.roi_heads.num_classes or m.model.input_format != lead.input_format:
                raise ConfigError(
                    f"ensemble members differ: {m.model.roi_heads.num_classes} classes in {m.model.input_format} "
                    f"vs {lead.roi_heads.num_classes} in {lead.input_format}"
                )
        self.members = nn.ModuleList(members)
        self.nms_thresh, self.topk = nms_thresh, topk
        self.train(members[0].training)

    @torch.no_grad()
    def forward(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        regions = [m.regions(batched_inputs) for m in self.members]
        image_sizes = regions[0].image_sizes
        if any(r.image_sizes != image_sizes for r in regions):
            raise ValueError(f"ensemble members resized the inputs differently: {[r.image_sizes for r in regions]}")
        proposals = [merge_proposals(per_image, self.nms_thresh, self.topk)["boxes"]
                     for per_image in zip(*(r.proposals for r in regions))]
        member_boxes, member_probs = [], []
        for member, r in zip(self.members, regions):
            predictor = member.model.roi_heads.box_predictor
            boxes, probs = predictor.boxes_and_probs(predictor(r.region_features(proposals)), proposals)
            member_boxes.append(boxes)
            member_probs.append(probs)
        lead = self.members[0].model
        results = []
        for i, (x, size) in enumerate(zip(batched_inputs, image_sizes)):
            boxes = torch.stack([b[i] for b in member_boxes]).mean(dim=0)
            probs = torch.stack([p[i] for p in member_probs]).mean(dim=0)
            detections = lead.roi_heads.box_predictor.select(boxes, probs, size)
            results.append(lead._postprocess(detections, x, size))
        return results
