"""The per-class RPN of the ResNet paper's ImageNet localization (He et al. 2015, Appendix C),
registered as ``"PerClassRPN"``.

Unlike the class-agnostic RPN of Faster R-CNN, both sibling 1x1 layers are per class: for anchor ``a``
and class ``c`` the ``cls`` layer gives one binary logistic regression ("an object of class c / not")
and the ``reg`` layer four deltas with respect to anchor ``a``. One feature map (``IN_FEATURE``) carries
``A`` anchors per cell (``ANCHOR_SIZES`` x ``ANCHOR_ASPECT_RATIOS``).

Training, per image: anchors are matched to the image's ground-truth boxes (all of its label's class),
``BATCH_SIZE_PER_IMAGE`` (8) anchors are sampled, positives:negatives 1:1 when there are enough
positives, negatives filling the rest; an image without a box in its crop gives only negatives. The
losses -- binary cross-entropy on the sampled anchors' logits and smooth L1 on the positives' deltas --
read only the outputs of the image's ground-truth class.

Inference, for requested classes: each class's deltas decoded on its ``PRE_NMS_TOPK_TEST`` best
anchors, clipped to the image, NMS per class at ``NMS_THRESH``, at most ``POST_NMS_TOPK_TEST`` boxes per
class. All boxes are XYXY in pixels of the network input.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import batched_nms, box_iou

from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.box_coder import BoxCoder, box_regression_loss
from detres.modeling.box_ops import clip_boxes, nonempty
from detres.modeling.matcher import Matcher
from detres.modeling.proposal_generator.anchor_generator import AnchorGenerator
from detres.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from detres.modeling.sampler import BalancedSampler
from detres.utils.events import get_event_storage

__all__ = ["PerClassRPN", "PerClassRPNHead", "select_per_class"]

ImageSize = Tuple[int, int]


class PerClassRPNHead(nn.Module):
    """An optional 3x3 conv + ReLU, then the sibling 1x1 convs ``cls`` (``A * C`` outputs) and ``reg``
    (``A * C * 4``), class-major: output ``c * A + a`` (times 4, plus the coordinate, for ``reg``).

    ``(N, C_in, H, W)`` -> logits ``(N, C, A, H, W)`` and deltas ``(N, C, A, 4, H, W)``.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, head_conv: bool = True,
                 head_channels: int = 0):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.conv: Optional[nn.Conv2d] = None
        channels = in_channels
        if head_conv:
            channels = head_channels or in_channels
            self.conv = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
        self.cls = nn.Conv2d(channels, num_anchors * num_classes, kernel_size=1)
        self.reg = nn.Conv2d(channels, num_anchors * num_classes * 4, kernel_size=1)
        for layer in (self.conv, self.cls, self.reg):
            if layer is not None:
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.conv is not None:
            x = F.relu(self.conv(x))
        n, _, h, w = x.shape
        logits = self.cls(x).view(n, self.num_classes, self.num_anchors, h, w)
        deltas = self.reg(x).view(n, self.num_classes, self.num_anchors, 4, h, w)
        return logits, deltas


def select_per_class(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, nms_thresh: float,
                     limit: int) -> torch.Tensor:
    """Indices of the boxes ``(P, 4)`` that survive NMS at ``nms_thresh`` within their class
    (``classes`` ``(P,)`` int64 >= 0), at most ``limit`` per class: grouped by class (ascending),
    best ``scores`` first inside a group."""
    keep = batched_nms(boxes, scores, classes, nms_thresh)  # best first
    groups, order = torch.sort(classes[keep], stable=True)
    counts = torch.bincount(groups)
    rank = torch.arange(len(groups), device=groups.device) - (counts.cumsum(0) - counts)[groups]
    return keep[order[rank < limit]]


@PROPOSAL_GENERATOR_REGISTRY.register()
class PerClassRPN(nn.Module):
    """Anchors, the per-class head, training losses and per-class box inference (module docstring).

    The number of classes is ``MODEL.CLASSIFIER.NUM_CLASSES`` (the classifier the localizer starts
    from); the other settings are ``MODEL.PER_CLASS_RPN.*``.
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        p = cfg.MODEL.PER_CLASS_RPN
        self.in_feature = p.IN_FEATURE
        if self.in_feature not in input_shape:
            raise ValueError(f"MODEL.PER_CLASS_RPN.IN_FEATURE {self.in_feature!r} is not produced by the backbone "
                             f"(it gives {list(input_shape)})")
        shape = input_shape[self.in_feature]
        self.anchor_generator = AnchorGenerator([p.ANCHOR_SIZES], [p.ANCHOR_ASPECT_RATIOS], [shape.stride],
                                                p.ANCHOR_OFFSET)
        self.num_classes = int(cfg.MODEL.CLASSIFIER.NUM_CLASSES)
        self.head = PerClassRPNHead(shape.channels, self.anchor_generator.num_anchors[0], self.num_classes,
                                    p.HEAD_CONV, p.HEAD_CHANNELS)
        self.box_coder = BoxCoder(p.BBOX_REG_WEIGHTS)
        self.matcher = Matcher(p.IOU_THRESHOLDS, p.IOU_LABELS, p.ALLOW_LOW_QUALITY_MATCHES)
        self.sampler = BalancedSampler(p.BATCH_SIZE_PER_IMAGE, p.POSITIVE_FRACTION)
        self.smooth_l1_beta, self.reg_loss_weight = p.SMOOTH_L1_BETA, p.BBOX_REG_LOSS_WEIGHT
        self.pre_nms_topk, self.post_nms_topk = p.PRE_NMS_TOPK_TEST, p.POST_NMS_TOPK_TEST
        self.nms_thresh = p.NMS_THRESH

    def predictions(self, features: Dict[str, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(N, C, A, H, W)``, deltas ``(N, C, A, 4, H, W)`` and the anchors ``(H * W * A, 4)``
        (order: row, column, cell anchor) of the input feature map."""
        x = features[self.in_feature]
        logits, deltas = self.head(x)
        return logits, deltas, self.anchor_generator([x])[0]

    @staticmethod
    def class_predictions(logits: torch.Tensor, deltas: torch.Tensor, image_idx: torch.Tensor,
                          classes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The outputs of class ``classes[m]`` on image ``image_idx[m]`` (both ``(M,)`` int64), in the
        anchors' order: logits ``(M, H * W * A)`` and deltas ``(M, H * W * A, 4)``. Only these
        entries of ``logits`` / ``deltas`` get a gradient."""
        selected_logits = logits[image_idx, classes]  # (M, A, H, W)
        selected_deltas = deltas[image_idx, classes]  # (M, A, 4, H, W)
        return (selected_logits.permute(0, 2, 3, 1).flatten(1),
                selected_deltas.permute(0, 3, 4, 1, 2).flatten(1, 3))

    @torch.no_grad()
    def label_and_sample_anchors(self, anchors: torch.Tensor, gt_boxes: Sequence[torch.Tensor]
                                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``anchors`` ``(R, 4)`` and each image's boxes ``(K_i, 4)`` -> sampled labels ``(N, R)`` (1
        positive, 0 negative, -1 not sampled) and each anchor's matched box ``(N, R, 4)`` (zeros for
        an image without boxes)."""
        all_labels, all_boxes = [], []
        for boxes in gt_boxes:
            boxes = boxes.to(anchors)
            matches, labels = self.matcher(box_iou(boxes, anchors))
            all_labels.append(self.sampler.sample_labels(labels))
            all_boxes.append(boxes[matches] if len(boxes) else torch.zeros_like(anchors))
        return torch.stack(all_labels), torch.stack(all_boxes)

    def losses(self, features: Dict[str, torch.Tensor], labels: torch.Tensor,
               gt_boxes: Sequence[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """``labels`` ``(N,)`` int64 (each image's class) and ``gt_boxes`` (per image ``(K_i, 4)``, XYXY
        input pixels) -> ``{"loss_loc_cls", "loss_loc_reg"}``, sums over the sampled anchors divided
        by ``BATCH_SIZE_PER_IMAGE * N``. Only the outputs of class ``labels[i]`` of image ``i`` are read."""
        logits, deltas, anchors = self.predictions(features)
        num_images = len(labels)
        pred_logits, pred_deltas = self.class_predictions(
            logits, deltas, torch.arange(num_images, device=labels.device), labels)
        gt_labels, matched = self.label_and_sample_anchors(anchors, gt_boxes)
        pos, valid = gt_labels == 1, gt_labels >= 0
        storage = get_event_storage()
        if storage is not None:
            num_pos = pos.sum().item()
            storage.put_scalar("loc/num_pos_anchors", num_pos / num_images)
            storage.put_scalar("loc/num_neg_anchors", (valid.sum().item() - num_pos) / num_images)
        target = self.box_coder.encode(anchors.expand(num_images, -1, -1)[pos], matched[pos])
        loss_reg = box_regression_loss(pred_deltas[pos].float(), target, "smooth_l1", self.smooth_l1_beta)
        loss_cls = F.binary_cross_entropy_with_logits(
            pred_logits[valid].float(), gt_labels[valid].float(), reduction="sum")
        normalizer = self.sampler.batch_size_per_image * num_images
        return {"loss_loc_cls": loss_cls / normalizer, "loss_loc_reg": loss_reg / normalizer * self.reg_loss_weight}

    @torch.no_grad()
    def inference(self, features: Dict[str, torch.Tensor], image_sizes: Sequence[ImageSize],
                  classes: Sequence[torch.Tensor], post_nms_topk: Optional[int] = None
                  ) -> List[Dict[str, torch.Tensor]]:
        """Boxes of the classes ``classes[i]`` ``(k_i,)`` int64 (distinct) on image ``i`` of size
        ``image_sizes[i]`` ``(H, W)``.

        Returns per image ``{"boxes" (P, 4) XYXY input pixels, "scores" (P,) sigmoid probabilities,
        "classes" (P,) int64}``, grouped by class (ascending) and best first inside a group, at most
        ``post_nms_topk`` (default ``POST_NMS_TOPK_TEST``) per class.
        """
        limit = self.post_nms_topk if post_nms_topk is None else post_nms_topk
        logits, deltas, anchors = self.predictions(features)
        device = logits.device
        counts = [len(c) for c in classes]
        image_idx = torch.repeat_interleave(torch.arange(len(classes), device=device),
                                            torch.tensor(counts, device=device))
        requested = torch.cat([c.to(device=device, dtype=torch.int64) for c in classes])
        if len(requested) and (requested.min() < 0 or requested.max() >= self.num_classes):
            raise ValueError(f"classes to localize must lie in [0, {self.num_classes}), got {requested.tolist()}")
        class_logits, class_deltas = self.class_predictions(logits, deltas, image_idx, requested)
        k = min(self.pre_nms_topk, class_logits.shape[1])
        top_logits, idx = class_logits.float().topk(k, dim=1)  # (M, k), best first
        rows = torch.arange(len(requested), device=device)[:, None]
        boxes = self.box_coder.decode(class_deltas[rows, idx].reshape(-1, 4), anchors[idx].reshape(-1, 4))
        boxes, scores = boxes.view(-1, k, 4), torch.sigmoid(top_logits)
        results = []
        for size, group in zip(image_sizes, torch.split(torch.arange(len(requested), device=device), counts)):
            b, s = clip_boxes(boxes[group].reshape(-1, 4), size), scores[group].reshape(-1)
            c = requested[group].repeat_interleave(k)
            keep = nonempty(b) & torch.isfinite(b).all(dim=1)
            b, s, c = b[keep], s[keep], c[keep]
            keep = select_per_class(b, s, c, self.nms_thresh, limit)
            results.append({"boxes": b[keep], "scores": s[keep], "classes": c[keep]})
        return results
