"""Global context (the ResNet paper's COCO system, Appendix B): a whole-image feature appended to
each region's feature before the box predictor.

The image's own box is pooled from the same map as the regions (a one-level spatial pyramid over
the full image), goes through the same res5 and global average pooling, and is concatenated with
the feature of every region of that image; the predictor's input width doubles. No weights of its own:
it is trained end to end through the shared res5 and backbone.
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
from torch import nn

__all__ = ["GlobalContext", "image_boxes"]

# (N, C, H, W) map and N box lists (R_i, 4) in input pixels -> (sum R_i, C5) pooled region features
BoxFeatures = Callable[[torch.Tensor, List[torch.Tensor]], torch.Tensor]


def image_boxes(image_sizes: Sequence[Tuple[int, int]], device: torch.device) -> List[torch.Tensor]:
    """Each image's own box ``[[0, 0, w, h]]`` (``(1, 4)`` float32, XYXY input pixels) for its size
    ``(h, w)`` before padding."""
    return [torch.tensor([[0.0, 0.0, w, h]], device=device) for h, w in image_sizes]


class GlobalContext(nn.Module):
    """Joins each region's feature with its image's whole-image feature: ``(sum R_i, C5)`` ->
    ``(sum R_i, 2 * C5)``.

    :meth:`pool_with_regions` pools the regions and the whole-image boxes in ONE pass through res5, so
    that in training its batch norm sees them as one batch (pooled apart, the N whole-image features
    would form batches of their own and skew the running statistics); :meth:`forward` adds the context
    to region features pooled elsewhere (e.g. merged over scales at test time)."""

    @staticmethod
    def output_width(region_width: int) -> int:
        """The predictor's input width for regions of ``region_width`` channels."""
        return 2 * region_width

    @staticmethod
    def join(region_features: torch.Tensor, context: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """``(sum R_i, C5)`` regions (``counts`` per image) and ``(N, C5)`` image features ->
        ``(sum R_i, 2 * C5)``, each region followed by its image's feature."""
        repeats = torch.as_tensor(list(counts), device=context.device)
        return torch.cat([region_features, context.repeat_interleave(repeats, dim=0)], dim=1)

    def image_features(self, box_features: BoxFeatures, feature: torch.Tensor,
                       image_sizes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """``(N, C5)``: each image's whole-image box pooled from ``feature`` ``(N, C, H, W)``."""
        return box_features(feature, image_boxes(image_sizes, feature.device))

    def pool_with_regions(self, box_features: BoxFeatures, feature: torch.Tensor, boxes: List[torch.Tensor],
                          image_sizes: Sequence[Tuple[int, int]]) -> torch.Tensor:
        """Predictor inputs ``(sum R_i, 2 * C5)`` for box lists ``(R_i, 4)`` on ``feature``, the regions
        and the whole-image boxes pooled together (each image's own box last in its list)."""
        counts = [len(b) for b in boxes]
        joint = [torch.cat([b, whole.to(b.dtype)]) for b, whole in zip(boxes, image_boxes(image_sizes, feature.device))]
        pooled = box_features(feature, joint).split([c + 1 for c in counts])
        return self.join(torch.cat([p[:-1] for p in pooled]), torch.stack([p[-1] for p in pooled]), counts)

    def forward(self, box_features: BoxFeatures, region_features: torch.Tensor, feature: torch.Tensor,
                image_sizes: Sequence[Tuple[int, int]], counts: Sequence[int]) -> torch.Tensor:
        """Region features pooled elsewhere ``(sum R_i, C5)`` joined with the image features of
        ``feature`` (pooled in a pass of their own: use it at test time, where batch norm is frozen)."""
        return self.join(region_features, self.image_features(box_features, feature, image_sizes), counts)
