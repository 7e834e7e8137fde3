"""Fast R-CNN output layers: class scores and class-specific box deltas per region, their losses,
and the per-image inference (score threshold, per-class NMS, top detections)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import batched_nms

from detres.modeling.box_coder import BoxCoder, box_regression_loss
from detres.modeling.box_ops import clip_boxes
from detres.utils.events import get_event_storage

__all__ = ["BoxPredictor"]


class BoxPredictor(nn.Module):
    """Two linear layers on ``(R, C)`` region features.

    ``cls_score``: ``(R, K + 1)`` logits, background is the LAST class (index K).
    ``bbox_pred``: ``(R, 4K)`` deltas, class-major (``4k..4k+3`` refine the box for class k), or
    ``(R, 4)`` with ``cls_agnostic_bbox_reg``. Deltas are encoded by ``box_coder`` relative to the proposal.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        box_coder: BoxCoder,
        *,
        cls_agnostic_bbox_reg: bool = False,
        loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
        box_reg_loss_weight: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_image: int = 100,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        self.bbox_pred = nn.Linear(input_size, (1 if cls_agnostic_bbox_reg else num_classes) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        self.loss_type, self.smooth_l1_beta = loss_type, smooth_l1_beta
        self.box_reg_loss_weight = box_reg_loss_weight
        self.score_thresh, self.nms_thresh = score_thresh, nms_thresh
        self.detections_per_image = detections_per_image

    @classmethod
    def from_config(cls, cfg, input_size: int) -> "BoxPredictor":
        head, rh = cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_HEADS
        return cls(
            input_size,
            rh.NUM_CLASSES,
            BoxCoder(head.BBOX_REG_WEIGHTS),
            cls_agnostic_bbox_reg=head.CLS_AGNOSTIC_BBOX_REG,
            loss_type=head.BBOX_REG_LOSS_TYPE,
            smooth_l1_beta=head.SMOOTH_L1_BETA,
            box_reg_loss_weight=head.BBOX_REG_LOSS_WEIGHT,
            score_thresh=rh.SCORE_THRESH_TEST,
            nms_thresh=rh.NMS_THRESH_TEST,
            detections_per_image=rh.DETECTIONS_PER_IMAGE,
        )

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(R, C)`` (or ``(R, C, 1, 1)``) -> class logits ``(R, K + 1)`` and deltas ``(R, 4K)``."""
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)

    def losses(
        self,
        predictions: Tuple[torch.Tensor, torch.Tensor],
        proposal_boxes: torch.Tensor,
        gt_classes: torch.Tensor,
        gt_boxes: torch.Tensor,
    ) -> Dict[str, torch.Tensor]:
        """Softmax cross-entropy over all R sampled regions and box regression on the foreground ones
        (summed, divided by R). ``proposal_boxes`` ``(R, 4)``, ``gt_classes`` ``(R,)`` in ``[0, K]``
        (K: background), ``gt_boxes`` ``(R, 4)`` the matched ground truth."""
        scores, deltas = predictions
        num_regions = gt_classes.numel()
        fg = ((gt_classes >= 0) & (gt_classes < self.num_classes)).nonzero().squeeze(1)
        self._log_accuracy(scores, gt_classes, fg)
        loss_cls = F.cross_entropy(scores, gt_classes, reduction="sum") / max(num_regions, 1)
        if deltas.shape[1] == 4:
            fg_deltas = deltas[fg]
        else:
            fg_deltas = deltas.view(-1, self.num_classes, 4)[fg, gt_classes[fg]]
        target = self.box_coder.encode(proposal_boxes[fg], gt_boxes[fg])
        loss_box = box_regression_loss(fg_deltas, target, self.loss_type, self.smooth_l1_beta) / max(num_regions, 1)
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box * self.box_reg_loss_weight}

    def _log_accuracy(self, scores: torch.Tensor, gt_classes: torch.Tensor, fg: torch.Tensor) -> None:
        storage = get_event_storage()
        if storage is None or gt_classes.numel() == 0:
            return
        pred = scores.argmax(dim=1)
        storage.put_scalar("fast_rcnn/cls_accuracy", (pred == gt_classes).float().mean().item())
        if fg.numel() > 0:
            storage.put_scalar("fast_rcnn/fg_cls_accuracy", (pred[fg] == gt_classes[fg]).float().mean().item())
            storage.put_scalar("fast_rcnn/false_negative", (pred[fg] == self.num_classes).float().mean().item())

    @torch.no_grad()
    def inference(
        self,
        predictions: Tuple[torch.Tensor, torch.Tensor],
        proposal_boxes: List[torch.Tensor],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> List[Dict[str, torch.Tensor]]:
        """Detections per image from the predictions for all images' proposals (concatenated in order).

        Returns per image ``{"boxes": (D, 4), "scores": (D,), "classes": (D,) int64}``, boxes clipped to
        ``image_sizes`` (the network input), best first, ``D <= detections_per_image``.
        """
        boxes, probs = self.boxes_and_probs(predictions, proposal_boxes)
        return [self.select(b, p, size) for b, p, size in zip(boxes, probs, image_sizes)]

    def boxes_and_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposal_boxes: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per image: the regressed boxes ``(R_i, K, 4)`` of each proposal for each class (the same box
        K times with ``cls_agnostic_bbox_reg``), in input pixels, unclipped, and the class
        probabilities ``(R_i, K + 1)`` (background last), float32."""
        scores, deltas = predictions
        boxes = self.box_coder.decode(deltas, torch.cat(proposal_boxes))
        boxes = boxes.reshape(-1, deltas.shape[1] // 4, 4).expand(-1, self.num_classes, 4)  # also 0 proposals
        probs = F.softmax(scores.float(), dim=-1)
        counts = [len(b) for b in proposal_boxes]
        return list(boxes.split(counts)), list(probs.split(counts))

    def select(
        self, boxes: torch.Tensor, probs: torch.Tensor, image_size: Tuple[int, int], nms_thresh: Optional[float] = None
    ) -> Dict[str, torch.Tensor]:
        """One image's detections from per-class boxes ``(R, K, 4)`` and probabilities ``(R, K + 1)``:
        the :meth:`candidates` after :meth:`suppress` (per-class NMS at ``nms_thresh``, default: the
        predictor's; the best ``detections_per_image``).
        Returns ``{"boxes": (D, 4), "scores": (D,), "classes": (D,) int64}``, best first."""
        candidates = self.candidates(boxes, probs, image_size)
        keep = self.suppress(candidates, nms_thresh)
        return {k: v[keep] for k, v in candidates.items()}

    def candidates(
        self, boxes: torch.Tensor, probs: torch.Tensor, image_size: Tuple[int, int]
    ) -> Dict[str, torch.Tensor]:
        """The (region, class) pairs of one image that may become detections: per-class boxes ``(R, K, 4)``
        clipped to ``image_size``, regions with non-finite values dropped, probabilities ``(R, K + 1)``
        above ``score_thresh`` (background excluded). Returns ``{"boxes": (M, 4), "scores": (M,),
        "classes": (M,) int64}`` in region-major order."""
        finite = torch.isfinite(boxes).all(dim=2).all(dim=1) & torch.isfinite(probs).all(dim=1)
        if not finite.all():
            boxes, probs = boxes[finite], probs[finite]
        probs = probs[:, :-1]  # drop background
        boxes = clip_boxes(boxes, image_size)
        keep_mask = probs > self.score_thresh  # (R, K)
        region_class = keep_mask.nonzero()  # (M, 2): region, class
        return {"boxes": boxes[keep_mask], "scores": probs[keep_mask], "classes": region_class[:, 1]}

    def suppress(self, candidates: Dict[str, torch.Tensor], nms_thresh: Optional[float] = None) -> torch.Tensor:
        """Indices ``(D,)`` into :meth:`candidates`' output kept by per-class NMS at ``nms_thresh``
        (default: the predictor's), best score first, at most ``detections_per_image``."""
        thresh = self.nms_thresh if nms_thresh is None else nms_thresh
        keep = batched_nms(candidates["boxes"], candidates["scores"], candidates["classes"], thresh)
        return keep[: self.detections_per_image] if self.detections_per_image >= 0 else keep
