"""What the test-time wrappers share: the regions of a batch (proposals and the function that turns
boxes into predictor inputs), the plain single-scale detector built on them, and the proposal union.

A :class:`SingleScaleDetector` splits ``FasterRCNN.inference`` in two steps: :meth:`~SingleScaleDetector.regions`
(backbone, RPN, region-feature function) and the RoI head's inference on those regions. Multi-scale
testing overrides the first step; ensembles combine the first steps of several detectors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn
from torchvision.ops import nms

from detres.modeling.meta_arch.faster_rcnn import FasterRCNN
from detres.modeling.roi_heads.res5_roi_heads import RegionFeatures

__all__ = ["Regions", "SingleScaleDetector", "merge_proposals"]

ImageSize = Tuple[int, int]


@dataclass
class Regions:
    """The regions of one batch, everything in the pixels of the network input (the test-size image).

    ``image_sizes``: ``(H, W)`` of each input before padding; ``proposals``: per image
    ``{"boxes" (R_i, 4) XYXY, "logits" (R_i,)}``, best first; ``region_features``: box lists
    ``(R_i, 4)`` per image -> the box predictor's inputs ``(sum R_i, C)``.
    """

    image_sizes: List[ImageSize]
    proposals: List[Dict[str, torch.Tensor]]
    region_features: RegionFeatures


def merge_proposals(proposals: Sequence[Dict[str, torch.Tensor]], nms_thresh: float,
                    topk: int) -> Dict[str, torch.Tensor]:
    """The union of several proposal sets of one image (``{"boxes" (R_j, 4), "logits" (R_j,)}`` in the same
    pixels): concatenated, NMS at ``nms_thresh`` on the logits, the ``topk`` best, best first."""
    boxes = torch.cat([p["boxes"] for p in proposals])
    logits = torch.cat([p["logits"] for p in proposals])
    keep = nms(boxes, logits.float(), nms_thresh)[:topk]
    return {"boxes": boxes[keep], "logits": logits[keep]}


class SingleScaleDetector(nn.Module):
    """A ``FasterRCNN`` run as :meth:`regions` then its RoI head's inference; called like the model
    (``List[dict]`` inputs -> per image ``{"boxes" (D, 4), "scores", "classes"}`` in original pixels).

    This class is the plain single-scale detector (its outputs equal ``model.inference``'s);
    subclasses change where the regions' features come from.
    """

    def __init__(self, model: FasterRCNN):
        super().__init__()
        if not isinstance(model, FasterRCNN):
            raise TypeError(f"test-time wrappers need a FasterRCNN detector, got {type(model).__name__}")
        self.model = model
        self.train(model.training)

    def regions(self, batched_inputs: List[dict]) -> Regions:
        """Backbone on the inputs, RPN proposals, and the RoI head's region-feature function."""
        model = self.model
        images, image_sizes = model.preprocess_image(batched_inputs)
        features = model.backbone(images)
        proposals, _ = model.proposal_generator(image_sizes, features)
        return Regions(image_sizes, proposals, model.roi_heads.region_features_fn(features, image_sizes))

    @torch.no_grad()
    def forward(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        regions = self.regions(batched_inputs)
        boxes = [p["boxes"] for p in regions.proposals]
        detections = self.model.roi_heads.inference(regions.region_features, boxes, regions.image_sizes)
        return [self.model._postprocess(d, x, s) for d, x, s in zip(detections, batched_inputs, regions.image_sizes)]
