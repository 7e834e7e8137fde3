"""Faster R-CNN (Ren et al. 2015) with a shared ResNet trunk, registered as ``"FasterRCNN"``.

With ``configs/detection/Base-RCNN-C4.yaml`` this is the ResNet paper's detector: conv1..res4 shared
by the RPN and the RoI heads, RoI pooling on res4 and the res5 stage per region ("C4"). Parameter
names follow Detectron2's (``backbone.*``, ``proposal_generator.rpn_head.*``, ``roi_heads.res5.*``,
``roi_heads.box_predictor.*``), so its C4 checkpoints load through ``detres.modeling.weight_import``.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from detres.modeling.backbone import build_backbone
from detres.modeling.box_ops import clip_boxes, nonempty, scale_boxes
from detres.modeling.meta_arch.build import META_ARCH_REGISTRY
from detres.modeling.proposal_generator import build_proposal_generator
from detres.modeling.roi_heads import build_roi_heads

__all__ = ["FasterRCNN", "batch_images"]

ImageSize = Tuple[int, int]


def batch_images(images: Sequence[torch.Tensor], size_divisibility: int = 0) -> Tuple[torch.Tensor, List[ImageSize]]:
    """Stack ``(C, H_i, W_i)`` images into ``(N, C, H, W)``, zero-padded at the bottom/right to the
    largest size rounded up to a multiple of ``size_divisibility``; also returns each ``(H_i, W_i)``."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    max_h, max_w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if size_divisibility > 1:
        max_h = int(math.ceil(max_h / size_divisibility) * size_divisibility)
        max_w = int(math.ceil(max_w / size_divisibility) * size_divisibility)
    batch = torch.stack([F.pad(im, (0, max_w - w, 0, max_h - h)) for im, (h, w) in zip(images, sizes)])
    return batch, sizes


@META_ARCH_REGISTRY.register()
class FasterRCNN(nn.Module):
    """Backbone -> proposal generator (RPN) -> RoI heads.

    Inputs: ``List[dict]`` with ``"image"`` ``(3, H, W)`` in ``INPUT.FORMAT`` order (uint8 or float in
    [0, 255]), for training ``"gt_boxes"`` ``(K, 4)`` XYXY in input pixels and ``"gt_classes"`` ``(K,)``,
    optionally ``"crowd_boxes"`` ``(C, 4)``; ``"height"``/``"width"`` give the original image size that
    detections are mapped back to (default: the input's size).
    Training returns ``{"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}``; eval returns per
    image ``{"boxes" (D, 4), "scores" (D,), "classes" (D,) int64}`` in original-image pixels.
    """

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        self.proposal_generator = build_proposal_generator(cfg, shapes)
        self.roi_heads = build_roi_heads(cfg, shapes)
        if len(cfg.MODEL.PIXEL_MEAN) != 3 or len(cfg.MODEL.PIXEL_STD) != 3:
            raise ValueError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need 3 values (one per channel)")
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1), persistent=False)
        self.size_divisibility = max(cfg.INPUT.SIZE_DIVISIBILITY, self.backbone.size_divisibility)
        self.input_format = cfg.INPUT.FORMAT

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[dict]) -> Tuple[torch.Tensor, List[ImageSize]]:
        """Normalise each image and batch them: ``(N, 3, H, W)`` padded with zeros, and sizes before padding."""
        images = []
        for x in batched_inputs:
            image = x["image"]
            if image.dim() != 3 or image.shape[0] != 3:
                name = x.get("file_name", "input")
                raise ValueError(f"{name}: expected a (3, H, W) image, got shape {tuple(image.shape)}")
            images.append((image.to(self.device, torch.float32) - self.pixel_mean) / self.pixel_std)
        return batch_images(images, self.size_divisibility)

    def forward(self, batched_inputs: List[dict]) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        if not self.training:
            return self.inference(batched_inputs)
        images, image_sizes = self.preprocess_image(batched_inputs)
        targets = [self._targets(x) for x in batched_inputs]
        features = self.backbone(images)
        proposals, rpn_losses = self.proposal_generator(image_sizes, features, targets)
        _, detector_losses = self.roi_heads(image_sizes, features, proposals, targets)
        return {**rpn_losses, **detector_losses}

    @torch.no_grad()
    def inference(self, batched_inputs: List[dict], return_proposals: bool = False):
        """Detections per input (see the class docstring). With ``return_proposals`` also the RPN
        proposals per input, ``{"boxes" (R, 4), "logits" (R,)}`` in resized-input pixels, best first."""
        images, image_sizes = self.preprocess_image(batched_inputs)
        features = self.backbone(images)
        proposals, _ = self.proposal_generator(image_sizes, features)
        detections, _ = self.roi_heads(image_sizes, features, proposals)
        results = [self._postprocess(d, x, s) for d, x, s in zip(detections, batched_inputs, image_sizes)]
        return (results, proposals) if return_proposals else results

    def _targets(self, x: dict) -> Dict[str, torch.Tensor]:
        name = x.get("file_name", "input")
        if "gt_boxes" not in x or "gt_classes" not in x:
            raise ValueError(f"{name}: training inputs need 'gt_boxes' and 'gt_classes'")
        boxes = torch.as_tensor(x["gt_boxes"], dtype=torch.float32, device=self.device).reshape(-1, 4)
        classes = torch.as_tensor(x["gt_classes"], dtype=torch.int64, device=self.device).reshape(-1)
        if len(boxes) != len(classes):
            raise ValueError(f"{name}: {len(boxes)} gt_boxes but {len(classes)} gt_classes")
        degenerate = ~nonempty(boxes)
        if degenerate.any():
            bad = boxes[degenerate][0].tolist()
            raise ValueError(f"{name}: degenerate ground-truth box (x2 <= x1 or y2 <= y1): {bad}")
        num_classes = self.roi_heads.num_classes
        if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"{name}: gt_classes must lie in [0, {num_classes}), got {classes.tolist()}")
        targets = {"gt_boxes": boxes, "gt_classes": classes}
        if "crowd_boxes" in x:
            crowd = torch.as_tensor(x["crowd_boxes"], dtype=torch.float32, device=self.device)
            targets["crowd_boxes"] = crowd.reshape(-1, 4)
        return targets

    @staticmethod
    def _postprocess(detections: Dict[str, torch.Tensor], x: dict, image_size: ImageSize) -> Dict[str, torch.Tensor]:
        """Rescale boxes from the input size to the original ``height`` x ``width``, clip, drop empty ones."""
        height, width = int(x.get("height", image_size[0])), int(x.get("width", image_size[1]))
        boxes = scale_boxes(detections["boxes"], width / image_size[1], height / image_size[0])
        boxes = clip_boxes(boxes, (height, width))
        keep = nonempty(boxes)
        return {"boxes": boxes[keep], "scores": detections["scores"][keep], "classes": detections["classes"][keep]}
