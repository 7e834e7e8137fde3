"""Box refinement and box voting, the test-time steps of the ResNet paper's COCO system (Appendix B).

Refinement: the regressed box of each proposal's top-scoring class is pooled again and goes through
res5 and the predictor once more; the N new predictions join the N original ones, per-class NMS at
a lower IoU (0.3) runs on the union, and box voting replaces each kept box by the score-weighted
mean of the union's boxes of its class that overlap it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import torch
from torchvision.ops import box_iou

from detres.modeling.box_ops import clip_boxes
from detres.modeling.roi_heads.box_predictor import BoxPredictor

if TYPE_CHECKING:  # the RoI head composes this module
    from detres.modeling.roi_heads.res5_roi_heads import RegionFeatures

__all__ = ["BoxRefinement", "box_voting", "top_class_boxes"]


def box_voting(
    boxes: torch.Tensor,
    classes: torch.Tensor,
    voter_boxes: torch.Tensor,
    voter_scores: torch.Tensor,
    voter_classes: torch.Tensor,
    iou_thresh: float = 0.5,
) -> torch.Tensor:
    """Each of the ``(D, 4)`` boxes (classes ``(D,)``) replaced by the average of the voters
    ``(M, 4)`` of the same class whose IoU with it is ``>= iou_thresh``, weighted by their scores
    ``(M,)``. A box without voters (zero total weight) stays as it is. Returns ``(D, 4)``, XYXY."""
    if len(boxes) == 0 or len(voter_boxes) == 0:
        return boxes
    votes = (box_iou(boxes, voter_boxes) >= iou_thresh) & (classes[:, None] == voter_classes[None, :])
    weights = votes.to(voter_scores.dtype) * voter_scores[None, :]  # (D, M)
    total = weights.sum(dim=1, keepdim=True)
    voted = (weights @ voter_boxes.to(weights.dtype)) / total.clamp(min=torch.finfo(weights.dtype).tiny)
    return torch.where(total > 0, voted.to(boxes.dtype), boxes)


def top_class_boxes(boxes: torch.Tensor, probs: torch.Tensor, image_size: Tuple[int, int]) -> torch.Tensor:
    """The regressed box ``(R, 4)`` of each region's most probable non-background class, from its
    per-class boxes ``(R, K, 4)`` and probabilities ``(R, K + 1)`` (background last), clipped to
    ``image_size`` ``(h, w)`` as a detection would be."""
    top = probs[:, :-1].argmax(dim=1)
    return clip_boxes(boxes[torch.arange(len(boxes), device=boxes.device), top], image_size)


class BoxRefinement:
    """Test-time refinement of a box predictor's output (no parameters of its own).

    Args:
        nms_thresh: the per-class NMS IoU threshold on the union of both predictions (paper: 0.3).
        voting_iou_thresh: the IoU at which a union box votes for a kept box of its class (paper: 0.5).
            The voters are the union's (box, class) pairs scoring above the predictor's score threshold
            (the detection candidates), clipped to the image, the kept box among them.
    """

    def __init__(self, nms_thresh: float = 0.3, voting_iou_thresh: float = 0.5):
        self.nms_thresh = nms_thresh
        self.voting_iou_thresh = voting_iou_thresh

    @classmethod
    def from_config(cls, cfg) -> "BoxRefinement":
        refinement = cfg.MODEL.ROI_HEADS.BOX_REFINEMENT
        return cls(refinement.NMS_THRESH, refinement.VOTING_IOU_THRESH)

    @torch.no_grad()
    def __call__(
        self,
        box_predictor: BoxPredictor,
        region_features: RegionFeatures,
        predictions: Tuple[torch.Tensor, torch.Tensor],
        proposals: List[torch.Tensor],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> List[Dict[str, torch.Tensor]]:
        """Per-image detections ``{"boxes" (D, 4), "scores" (D,), "classes" (D,)}`` (input pixels,
        best first) from ``box_predictor``'s ``predictions`` for the ``proposals`` ``(R_i, 4)``;
        the refined boxes are pooled through ``region_features`` (whatever maps the caller pools from)."""
        boxes, probs = box_predictor.boxes_and_probs(predictions, proposals)
        refined = [top_class_boxes(b, p, size) for b, p, size in zip(boxes, probs, image_sizes)]
        new_boxes, new_probs = box_predictor.boxes_and_probs(box_predictor(region_features(refined)), refined)
        return [
            self._select(box_predictor, torch.cat([b0, b1]), torch.cat([p0, p1]), size)
            for b0, b1, p0, p1, size in zip(boxes, new_boxes, probs, new_probs, image_sizes)
        ]

    def _select(self, box_predictor: BoxPredictor, boxes: torch.Tensor, probs: torch.Tensor,
                image_size: Tuple[int, int]) -> Dict[str, torch.Tensor]:
        """One image's detections from the union's per-class boxes ``(2R, K, 4)`` and probabilities
        ``(2R, K + 1)``: NMS at ``nms_thresh``, then each kept box voted by the candidates."""
        candidates = box_predictor.candidates(boxes, probs, image_size)
        keep = box_predictor.suppress(candidates, self.nms_thresh)
        detections = {k: v[keep] for k, v in candidates.items()}
        detections["boxes"] = box_voting(detections["boxes"], detections["classes"], candidates["boxes"],
                                         candidates["scores"], candidates["classes"], self.voting_iou_thresh)
        return detections
