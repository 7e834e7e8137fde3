"""The C4 RoI heads of the ResNet paper (Sec. A / Table 7): RoI pooling on res4, the res5 stage run
per region, global average pooling, then the Fast R-CNN predictor. Registered as ``"Res5ROIHeads"``.

For ResNet-18/34 the per-region res5 is made of BasicBlocks (512 channels out), for 50+ of
Bottlenecks (``8 * RES2_OUT_CHANNELS`` out); its first block has stride 2 (14x14 pooled -> 7x7; an
"msra" bottleneck reads only every other bin there, so the pooler computes just those 7x7, and with frozen
BN its opening 1x1 convolutions can run once on the res4 map before pooling: ``MODEL.PROJECT_BEFORE_POOLING``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_iou

from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.backbone.resnet import build_res5_stage
from detres.modeling.matcher import Matcher, ignore_crowd_overlaps
from detres.modeling.poolers import RoIPooler
from detres.modeling.roi_heads.box_predictor import BoxPredictor
from detres.modeling.roi_heads.box_refinement import BoxRefinement
from detres.modeling.roi_heads.build import ROI_HEADS_REGISTRY
from detres.modeling.roi_heads.global_context import GlobalContext
from detres.modeling.sampler import BalancedSampler
from detres.utils.events import get_event_storage

__all__ = ["RegionFeatures", "Res5ROIHeads"]

# Box lists (R_i, 4) per image, in network-input pixels -> the box predictor's inputs (sum R_i, C)
RegionFeatures = Callable[[List[torch.Tensor]], torch.Tensor]


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeads(nn.Module):
    """``forward(image_sizes, features, proposals, targets)`` -> ``(detections, losses)``.

    Training (``targets`` given): proposals (plus the ground-truth boxes with ``PROPOSAL_APPEND_GT``)
    are matched to the ground truth at ``IOU_THRESHOLDS`` and ``BATCH_SIZE_PER_IMAGE`` of them sampled
    per image with at most ``POSITIVE_FRACTION`` foreground; returns ``([], {"loss_cls", "loss_box_reg"})``.
    Inference: returns per-image ``{"boxes", "scores", "classes"}`` in input-image pixels and ``{}``.
    All images' regions go through the pooler and res5 as one batch.

    Region features come from one function per batch (:meth:`region_features_fn`: pool on the res4
    map, res5, average pool, with global context the whole-image boxes in the same pass), so test-time
    extras can pool again (box refinement) or from other maps (multi-scale testing, which adds the
    context to its merged region features through :meth:`predictor_inputs`) through :meth:`inference`.

    Options composed from the config: ``MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT`` (:class:`GlobalContext`,
    the predictor's input width doubles) and ``MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED``
    (:class:`BoxRefinement` at inference).
    """

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        super().__init__()
        rh, bh = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
        if len(rh.IN_FEATURES) != 1 or rh.IN_FEATURES[0] not in input_shape:
            raise ValueError(
                f"Res5ROIHeads pools from exactly one backbone feature; MODEL.ROI_HEADS.IN_FEATURES="
                f"{list(rh.IN_FEATURES)}, backbone gives {list(input_shape)}"
            )
        self.in_feature = rh.IN_FEATURES[0]
        shape = input_shape[self.in_feature]
        self.res5, out_channels = build_res5_stage(cfg)
        # An msra res5 starts with stride-2 1x1 convs that read every other pooled bin: pool only those.
        step = self.res5[0].expect_subsampled_input()
        self.pooler = RoIPooler(bh.POOLER_TYPE, bh.POOLER_RESOLUTION, 1.0 / shape.stride, bh.POOLER_SAMPLING_RATIO,
                                step=step, cpu_impl=cfg.MODEL.CPU_ROI_ALIGN)
        self.project_before_pooling = cfg.MODEL.PROJECT_BEFORE_POOLING
        if self.res5[0].in_channels != shape.channels:
            raise ValueError(
                f"res5 expects {self.res5[0].in_channels} input channels but '{self.in_feature}' has {shape.channels}"
            )
        self.global_context = GlobalContext() if bh.GLOBAL_CONTEXT else None
        if self.global_context is not None:
            out_channels = self.global_context.output_width(out_channels)
        self.box_predictor = BoxPredictor.from_config(cfg, out_channels)
        self.refinement = BoxRefinement.from_config(cfg) if rh.BOX_REFINEMENT.ENABLED else None
        self.num_classes = rh.NUM_CLASSES
        self.proposal_matcher = Matcher(rh.IOU_THRESHOLDS, rh.IOU_LABELS, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(rh.BATCH_SIZE_PER_IMAGE, rh.POSITIVE_FRACTION)
        self.proposal_append_gt = rh.PROPOSAL_APPEND_GT
        self.crowd_overlap_thresh = rh.CROWD_OVERLAP_THRESH

    def forward(
        self,
        image_sizes: Sequence[Tuple[int, int]],
        features: Dict[str, torch.Tensor],
        proposals: List[Dict[str, torch.Tensor]],
        targets: Optional[List[Dict[str, torch.Tensor]]] = None,
    ) -> Tuple[List[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]]:
        region_features = self.region_features_fn(features, image_sizes)
        if not self.training:
            return self.inference(region_features, [p["boxes"] for p in proposals], image_sizes), {}
        if targets is None:
            raise ValueError("Res5ROIHeads in training mode needs targets ('gt_boxes', 'gt_classes')")
        boxes, gt_classes, gt_boxes = self.label_and_sample_proposals(proposals, targets)
        predictions = self.box_predictor(region_features(boxes))
        boxes, gt_classes, gt_boxes = torch.cat(boxes), torch.cat(gt_classes), torch.cat(gt_boxes)
        return [], self.box_predictor.losses(predictions, boxes, gt_classes, gt_boxes)

    # ------------------------------------------------------------------ region features
    def box_features(self, feature: torch.Tensor, boxes: List[torch.Tensor]) -> torch.Tensor:
        """``(N, C, H, W)`` and N box lists ``(R_i, 4)`` in that map's input pixels -> ``(sum R_i, C5)``:
        pooled, res5, global average pool. Test-time extras (e.g. multi-scale testing) call it per scale.

        With ``MODEL.PROJECT_BEFORE_POOLING``, res5's opening 1x1 convolutions run on the map and their
        outputs are pooled when that is cheaper (see ``ResidualBlock.input_projection``)."""
        projection = self._input_projection(feature, boxes)
        if projection is None:
            return self.res5(self.pooler(feature, boxes)).mean(dim=(2, 3))
        weight, bias = projection
        projected = F.conv2d(feature, weight)  # (N, P, H, W); under autocast pooled in float32, then cast back
        x = self.res5[0].forward_projected(self.pooler(projected, boxes).to(projected.dtype), bias)
        return self.res5[1:](x).mean(dim=(2, 3))

    def _input_projection(self, feature: torch.Tensor,
                          boxes: List[torch.Tensor]) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """res5's first-block projection, when it applies and the map ``(N, C, H, W)`` has fewer cells
        than the regions have pooled bins."""
        if not self.project_before_pooling or not self.pooler.can_pool_projection(feature):
            return None
        bins = self.pooler.num_bins() ** 2
        if feature.shape[0] * feature.shape[2] * feature.shape[3] >= sum(len(b) for b in boxes) * bins:
            return None
        return self.res5[0].input_projection()

    def predictor_inputs(self, region_features: torch.Tensor, feature: torch.Tensor,
                         image_sizes: Sequence[Tuple[int, int]], counts: Sequence[int]) -> torch.Tensor:
        """The box predictor's input for ``(sum R_i, C5)`` region features of the images' ``counts``
        regions each, ``feature`` being the image-level map (``(N, C, H, W)``) they came from: the
        region features themselves, or with global context ``(sum R_i, 2 * C5)``."""
        if self.global_context is None:
            return region_features
        return self.global_context(self.box_features, region_features, feature, image_sizes, counts)

    def region_features_fn(self, features: Dict[str, torch.Tensor],
                           image_sizes: Sequence[Tuple[int, int]]) -> RegionFeatures:
        """The function mapping box lists (``(R_i, 4)`` per image, input pixels) to predictor inputs
        ``(sum R_i, C)`` for this batch: what training, inference and box refinement pool with."""
        feature = features[self.in_feature]

        def region_features(boxes: List[torch.Tensor]) -> torch.Tensor:
            if self.global_context is not None:  # regions and whole images in one res5 pass
                return self.global_context.pool_with_regions(self.box_features, feature, boxes, image_sizes)
            return self.box_features(feature, boxes)

        return region_features

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def inference(self, region_features: RegionFeatures, proposals: List[torch.Tensor],
                  image_sizes: Sequence[Tuple[int, int]]) -> List[Dict[str, torch.Tensor]]:
        """Per-image detections ``{"boxes" (D, 4), "scores" (D,), "classes" (D,)}`` (input pixels) for
        proposal boxes ``(R_i, 4)``, their features given by ``region_features`` (box refinement, when
        enabled, pools its refined boxes through it too)."""
        predictions = self.box_predictor(region_features(proposals))
        if self.refinement is not None:
            return self.refinement(self.box_predictor, region_features, predictions, proposals, image_sizes)
        return self.box_predictor.inference(predictions, proposals, image_sizes)

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Dict[str, torch.Tensor]], targets: List[Dict[str, torch.Tensor]]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Per image: sampled boxes ``(S, 4)``, their classes ``(S,)`` (K: background) and matched
        ground-truth boxes ``(S, 4)`` (zeros where there is no ground truth)."""
        sampled_boxes, sampled_classes, sampled_gt = [], [], []
        num_fg = num_bg = 0
        for props, target in zip(proposals, targets):
            boxes = props["boxes"]
            gt_boxes = target["gt_boxes"].to(boxes)
            gt_classes = target["gt_classes"].to(device=boxes.device, dtype=torch.int64)
            num_props = len(boxes)
            if self.proposal_append_gt:
                boxes = torch.cat([boxes, gt_boxes])
            matches, labels = self.proposal_matcher(box_iou(gt_boxes, boxes))
            if "crowd_boxes" in target:  # only real proposals, not the appended ground truth
                crowd = target["crowd_boxes"]
                ignore_crowd_overlaps(labels[:num_props], boxes[:num_props], crowd, self.crowd_overlap_thresh)
            if len(gt_boxes):
                classes = gt_classes[matches]
                classes[labels == 0] = self.num_classes
                classes[labels == -1] = -1
                matched_gt = gt_boxes[matches]
            else:
                classes = torch.where(labels == -1, -1, self.num_classes).to(torch.int64)
                matched_gt = torch.zeros_like(boxes)
            fg_idx, bg_idx = self.sampler((classes >= 0) & (classes < self.num_classes), classes == self.num_classes)
            idx = torch.cat([fg_idx, bg_idx])
            sampled_boxes.append(boxes[idx])
            sampled_classes.append(classes[idx])
            sampled_gt.append(matched_gt[idx])
            num_fg, num_bg = num_fg + fg_idx.numel(), num_bg + bg_idx.numel()
        storage = get_event_storage()
        if storage is not None:
            storage.put_scalar("roi_head/num_fg_samples", num_fg / len(proposals))
            storage.put_scalar("roi_head/num_bg_samples", num_bg / len(proposals))
        return sampled_boxes, sampled_classes, sampled_gt
