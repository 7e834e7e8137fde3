"""Region Proposal Network (Ren et al. 2015), registered as ``"RPN"``.

Proposals are ``List[Dict[str, Tensor]]``, one dict per image: ``"boxes"`` ``(R, 4)`` XYXY in pixels of
the (resized, unpadded) input image, best first, and ``"logits"`` ``(R,)`` objectness logits.
Targets are the per-image dicts of the model inputs: ``"gt_boxes"`` ``(K, 4)``, and optionally
``"crowd_boxes"`` ``(C, 4)`` (anchors lying mostly inside a crowd region are ignored).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import batched_nms, box_iou

from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.box_coder import BoxCoder, box_regression_loss
from detres.modeling.box_ops import clip_boxes, inside_image, nonempty
from detres.modeling.matcher import Matcher, ignore_crowd_overlaps
from detres.modeling.proposal_generator.anchor_generator import build_anchor_generator
from detres.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from detres.modeling.sampler import BalancedSampler
from detres.utils.events import get_event_storage

__all__ = ["RPN", "RPNHead"]

ImageSize = Tuple[int, int]


class RPNHead(nn.Module):
    """A 3x3 conv + ReLU shared by two sibling 1x1 convs: ``objectness_logits`` (A per cell) and
    ``anchor_deltas`` (4A per cell), applied to each input feature map.

    ``(N, C, H, W)`` -> ``(N, A, H, W)`` logits and ``(N, 4A, H, W)`` deltas (anchor-major: ``4a..4a+3``).
    """

    def __init__(self, in_channels: int, num_anchors: int, head_channels: int = 0):
        super().__init__()
        head_channels = head_channels or in_channels
        self.conv = nn.Conv2d(in_channels, head_channels, kernel_size=3, padding=1)
        self.objectness_logits = nn.Conv2d(head_channels, num_anchors, kernel_size=1)
        self.anchor_deltas = nn.Conv2d(head_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness_logits, self.anchor_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = F.relu(self.conv(x))
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """Anchors, the RPN head, anchor labelling and losses (training), and proposal selection.

    Proposal selection per image: the ``pre_nms_topk`` best anchors per feature map, decoded, clipped
    to the image, boxes not larger than ``MIN_SIZE`` dropped, NMS at ``NMS_THRESH`` (per feature map),
    then the ``post_nms_topk`` best. Proposals carry no gradient.
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        rpn = cfg.MODEL.RPN
        self.in_features: List[str] = list(rpn.IN_FEATURES)
        missing = [f for f in self.in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.RPN.IN_FEATURES {missing} not produced by the backbone (it gives {list(input_shape)})"
            )
        self.anchor_generator = build_anchor_generator(cfg, input_shape, self.in_features)
        num_anchors = set(self.anchor_generator.num_anchors)
        channels = {input_shape[f].channels for f in self.in_features}
        if len(num_anchors) != 1 or len(channels) != 1:
            raise ValueError("the RPN head is shared: every input feature needs the same channels and anchors per cell")
        self.rpn_head = RPNHead(channels.pop(), num_anchors.pop(), rpn.HEAD_CHANNELS)

        self.box_coder = BoxCoder(rpn.BBOX_REG_WEIGHTS)
        self.matcher = Matcher(rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, rpn.ALLOW_LOW_QUALITY_MATCHES)
        self.sampler = BalancedSampler(rpn.BATCH_SIZE_PER_IMAGE, rpn.POSITIVE_FRACTION)
        self.boundary_thresh = rpn.BOUNDARY_THRESH
        self.crowd_overlap_thresh = rpn.CROWD_OVERLAP_THRESH
        self.loss_type, self.smooth_l1_beta = rpn.BBOX_REG_LOSS_TYPE, rpn.SMOOTH_L1_BETA
        self.loss_weight = {
            "loss_rpn_cls": rpn.LOSS_WEIGHT,
            "loss_rpn_loc": rpn.LOSS_WEIGHT * rpn.BBOX_REG_LOSS_WEIGHT,
        }
        self.pre_nms_topk = {True: rpn.PRE_NMS_TOPK_TRAIN, False: rpn.PRE_NMS_TOPK_TEST}
        self.post_nms_topk = {True: rpn.POST_NMS_TOPK_TRAIN, False: rpn.POST_NMS_TOPK_TEST}
        self.nms_thresh = rpn.NMS_THRESH
        self.min_size = rpn.MIN_SIZE

    def forward(
        self,
        image_sizes: Sequence[ImageSize],
        features: Dict[str, torch.Tensor],
        targets: Optional[List[Dict[str, torch.Tensor]]] = None,
    ) -> Tuple[List[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]:
        """``image_sizes``: ``(height, width)`` of each image before padding; ``features``: backbone maps.

        Returns the proposals and, in training mode, ``{"loss_rpn_cls", "loss_rpn_loc"}`` (else ``{}``).
        """
        maps = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(maps)
        logits, deltas = self.rpn_head(maps)
        # (N, A, H, W) -> (N, H*W*A) and (N, 4A, H, W) -> (N, H*W*A, 4), the anchors' order.
        logits = [x.permute(0, 2, 3, 1).flatten(1) for x in logits]
        deltas = [
            x.view(x.shape[0], -1, 4, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2) for x in deltas
        ]
        losses: Dict[str, torch.Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RPN in training mode needs targets (per-image dicts with 'gt_boxes')")
            gt_labels, gt_boxes = self.label_and_sample_anchors(torch.cat(anchors), image_sizes, targets)
            losses = self.losses(torch.cat(anchors), torch.cat(logits, 1), torch.cat(deltas, 1), gt_labels, gt_boxes)
        with torch.no_grad():
            proposals = self.select_proposals(anchors, logits, deltas, image_sizes)
        return proposals, losses

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: torch.Tensor, image_sizes: Sequence[ImageSize], targets: List[Dict[str, torch.Tensor]]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``anchors`` ``(R, 4)`` -> labels ``(N, R)`` (1 positive, 0 negative, -1 ignored or not sampled)
        and the matched ground-truth box of every anchor ``(N, R, 4)`` (zeros for an image without boxes)."""
        all_labels, all_boxes = [], []
        for image_size, target in zip(image_sizes, targets):
            gt_boxes = target["gt_boxes"].to(anchors)
            matches, labels = self.matcher(box_iou(gt_boxes, anchors))
            if self.boundary_thresh >= 0:
                labels[~inside_image(anchors, image_size, self.boundary_thresh)] = -1
            if "crowd_boxes" in target:
                ignore_crowd_overlaps(labels, anchors, target["crowd_boxes"], self.crowd_overlap_thresh)
            all_labels.append(self.sampler.sample_labels(labels))
            all_boxes.append(gt_boxes[matches] if len(gt_boxes) else torch.zeros_like(anchors))
        return torch.stack(all_labels), torch.stack(all_boxes)

    def losses(
        self,
        anchors: torch.Tensor,
        pred_logits: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_labels: torch.Tensor,
        gt_boxes: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """Objectness BCE over sampled anchors and box regression over positive ones, both summed and
        divided by the number of anchors sampled per batch (``BATCH_SIZE_PER_IMAGE * N``).

        ``anchors`` ``(R, 4)``, ``pred_logits`` ``(N, R)``, ``pred_deltas`` ``(N, R, 4)``, ``gt_labels`` ``(N, R)``,
        ``gt_boxes`` ``(N, R, 4)``.
        """
        num_images = gt_labels.shape[0]
        pos_mask = gt_labels == 1
        valid_mask = gt_labels >= 0
        storage = get_event_storage()
        if storage is not None:
            num_pos = pos_mask.sum().item()
            storage.put_scalar("rpn/num_pos_anchors", num_pos / num_images)
            storage.put_scalar("rpn/num_neg_anchors", (valid_mask.sum().item() - num_pos) / num_images)
        pos_anchors = anchors.unsqueeze(0).expand_as(gt_boxes)[pos_mask]
        target_deltas = self.box_coder.encode(pos_anchors, gt_boxes[pos_mask])
        loss_loc = box_regression_loss(pred_deltas[pos_mask], target_deltas, self.loss_type, self.smooth_l1_beta)
        loss_cls = F.binary_cross_entropy_with_logits(
            pred_logits[valid_mask], gt_labels[valid_mask].to(pred_logits.dtype), reduction="sum"
        )
        normalizer = self.sampler.batch_size_per_image * num_images
        return {
            "loss_rpn_cls": loss_cls / normalizer * self.loss_weight["loss_rpn_cls"],
            "loss_rpn_loc": loss_loc / normalizer * self.loss_weight["loss_rpn_loc"],
        }

    def select_proposals(
        self,
        anchors: List[torch.Tensor],
        logits: List[torch.Tensor],
        deltas: List[torch.Tensor],
        image_sizes: Sequence[ImageSize],
    ) -> List[Dict[str, torch.Tensor]]:
        """Per level: anchors ``(R_l, 4)``, logits ``(N, R_l)``, deltas ``(N, R_l, 4)`` -> proposals per image."""
        pre_nms_topk, post_nms_topk = self.pre_nms_topk[self.training], self.post_nms_topk[self.training]
        num_images = len(image_sizes)
        batch_idx = torch.arange(num_images, device=anchors[0].device)[:, None]
        top_boxes, top_logits, top_levels = [], [], []
        for level, (anchors_l, logits_l, deltas_l) in enumerate(zip(anchors, logits, deltas)):
            k = min(pre_nms_topk, logits_l.shape[1])
            logits_l, idx = logits_l.float().topk(k, dim=1)  # (N, k), sorted best first
            boxes_l = self.box_coder.decode(deltas_l[batch_idx, idx].reshape(-1, 4), anchors_l[idx].reshape(-1, 4))
            top_boxes.append(boxes_l.view(num_images, k, 4))
            top_logits.append(logits_l)
            top_levels.append(torch.full((k,), level, dtype=torch.int64, device=idx.device))
        boxes_all, logits_all, levels = torch.cat(top_boxes, 1), torch.cat(top_logits, 1), torch.cat(top_levels)

        proposals = []
        for boxes, scores, image_size in zip(boxes_all, logits_all, image_sizes):
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not finite.all():
                if self.training:
                    raise FloatingPointError("RPN predicted non-finite boxes or logits: the training has diverged")
                boxes, scores, lvl = boxes[finite], scores[finite], levels[finite]
            else:
                lvl = levels
            boxes = clip_boxes(boxes, image_size)
            keep = nonempty(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[:post_nms_topk]
            proposals.append({"boxes": boxes[keep], "logits": scores[keep]})
        return proposals
