"""Horizontal-flip testing: a detector run on each image and on its mirror image, the mirror's
detections mapped back and merged with the others by per-class NMS.

Mapping back is exact in continuous pixel coordinates: on an image of width W, ``x`` becomes
``W - x``, so ``[x1, y1, x2, y2]`` becomes ``[W - x2, y1, W - x1, y2]`` (the test loader's
training-time flip, :class:`detres.data.detection.transforms.ResizeFlip`, uses the same map).
Merging concatenates both detection sets and keeps the best after per-class NMS at
``MODEL.ROI_HEADS.NMS_THRESH_TEST`` (at most ``DETECTIONS_PER_IMAGE``): it needs nothing from the
wrapped detector but its outputs, so any detector composes (plain, multi-scale, an ensemble).
"""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn
from torchvision.ops import batched_nms

__all__ = ["hflip_boxes", "hflip_input", "merge_detections", "FlipDetector"]


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """``(D, 4)`` XYXY boxes on an image ``width`` pixels wide -> the same boxes on its mirror image."""
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return torch.stack([width - x2, y1, width - x1, y2], dim=1)


def hflip_input(x: dict) -> dict:
    """A copy of the model input ``x`` with its ``"image"`` ``(3, H, W)`` mirrored and ``"hflip"``
    toggled (so that test-time steps reading ``"file_name"`` mirror what they read)."""
    return {**x, "image": x["image"].flip(-1), "hflip": not x.get("hflip", False)}


def merge_detections(detections: List[Dict[str, torch.Tensor]], nms_thresh: float,
                     topk: int) -> Dict[str, torch.Tensor]:
    """Several detection sets of one image (``{"boxes" (D_j, 4), "scores", "classes"}``, same pixels)
    -> one: concatenated, per-class NMS at ``nms_thresh``, the ``topk`` best (all if negative), best first."""
    boxes = torch.cat([d["boxes"] for d in detections])
    scores = torch.cat([d["scores"] for d in detections])
    classes = torch.cat([d["classes"] for d in detections])
    keep = batched_nms(boxes, scores, classes, nms_thresh)
    if topk >= 0:
        keep = keep[:topk]
    return {"boxes": boxes[keep], "scores": scores[keep], "classes": classes[keep]}


class FlipDetector(nn.Module):
    """Wraps any detector (``List[dict]`` -> per image ``{"boxes", "scores", "classes"}`` in original
    pixels); the original and mirrored inputs go through it as one batch."""

    def __init__(self, detector: nn.Module, nms_thresh: float, detections_per_image: int):
        super().__init__()
        self.detector = detector
        self.nms_thresh, self.detections_per_image = nms_thresh, detections_per_image
        self.train(detector.training)

    @torch.no_grad()
    def forward(self, batched_inputs: List[dict]) -> List[Dict[str, torch.Tensor]]:
        n = len(batched_inputs)
        outputs = self.detector(list(batched_inputs) + [hflip_input(x) for x in batched_inputs])
        results = []
        for x, plain, mirrored in zip(batched_inputs, outputs[:n], outputs[n:]):
            width = int(x.get("width", x["image"].shape[-1]))
            mapped = {**mirrored, "boxes": hflip_boxes(mirrored["boxes"], width)}
            results.append(merge_detections([plain, mapped], self.nms_thresh, self.detections_per_image))
        return results
