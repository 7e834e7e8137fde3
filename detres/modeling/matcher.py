"""Assign each prediction (anchor or proposal) to its best ground-truth box and a label by IoU."""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

from detres.modeling.box_ops import pairwise_ioa

__all__ = ["Matcher", "ignore_crowd_overlaps"]


class Matcher:
    """IoU thresholds split ``[0, 1]`` into intervals, each with a label.

    With ``thresholds=[0.3, 0.7]`` and ``labels=[0, -1, 1]``: IoU < 0.3 is negative (0), 0.3 <= IoU < 0.7
    is ignored (-1), IoU >= 0.7 is positive (1). With ``allow_low_quality_matches``, the predictions
    that have the highest IoU with some ground-truth box are positive too (ties included), so every
    ground-truth box overlapping at least one prediction gets one (Faster R-CNN's RPN rule).
    """

    def __init__(self, thresholds: Sequence[float], labels: Sequence[int], allow_low_quality_matches: bool = False):
        thresholds = [float(t) for t in thresholds]
        if any(a > b for a, b in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"matcher IoU thresholds must be sorted, got {thresholds}")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"matcher needs one label per IoU interval: {len(thresholds) + 1} labels, got {list(labels)}"
            )
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"matcher labels must be -1 (ignore), 0 (negative) or 1 (positive), got {list(labels)}")
        self.thresholds: List[float] = [-math.inf, *thresholds, math.inf]
        self.labels = [int(label) for label in labels]
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``iou``: ``(M ground truth, N predictions)``.

        Returns ``matches`` ``(N,)`` int64 (index of the best ground-truth box; 0 when ``M == 0``) and
        ``labels`` ``(N,)`` int8 in ``{-1, 0, 1}``.
        """
        num_preds = iou.shape[1]
        if iou.shape[0] == 0:
            matches = torch.zeros(num_preds, dtype=torch.int64, device=iou.device)
            return matches, torch.full((num_preds,), self.labels[0], dtype=torch.int8, device=iou.device)
        best, matches = iou.max(dim=0)
        labels = torch.ones(num_preds, dtype=torch.int8, device=iou.device)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            labels[(best >= low) & (best < high)] = label
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=1, keepdim=True).values
            # A ground-truth box that overlaps no prediction at all would otherwise make every
            # prediction with IoU 0 positive.
            is_best = (iou == best_per_gt) & (best_per_gt > 0)
            labels[is_best.any(dim=0)] = 1
        return matches, labels


def ignore_crowd_overlaps(
    labels: torch.Tensor, boxes: torch.Tensor, crowd_boxes: torch.Tensor, threshold: float, ignore_value: int = -1
) -> torch.Tensor:
    """Set ``labels`` ``(N,)`` to ``ignore_value`` where ``boxes`` ``(N, 4)`` lie more than ``threshold``
    of their area inside some crowd region ``(C, 4)`` (Detectron's crowd filter); returns ``labels``."""
    if crowd_boxes.numel() == 0 or threshold >= 1.0:
        return labels
    ioa = pairwise_ioa(boxes, crowd_boxes.to(boxes))
    labels[ioa.max(dim=1).values > threshold] = ignore_value
    return labels
