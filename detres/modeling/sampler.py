"""Balanced positive/negative sampling of anchors (RPN) and proposals (RoI heads)."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["BalancedSampler"]


class BalancedSampler:
    """Draw up to ``batch_size_per_image`` elements, at most ``positive_fraction`` of them positive;
    negatives fill the rest. Sampling is uniform without replacement (``torch.randperm``, so
    ``torch.manual_seed`` makes it reproducible)."""

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image <= 0 or not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                f"sampler needs batch_size_per_image > 0 and 0 <= positive_fraction <= 1, "
                f"got {batch_size_per_image} and {positive_fraction}"
            )
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __call__(self, positive: torch.Tensor, negative: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``positive``, ``negative``: ``(N,)`` bool masks (disjoint; elements in neither are ignored).

        Returns the sampled positive and negative indices, int64 ``(P,)`` and ``(Q,)`` with
        ``P <= batch * fraction`` and ``P + Q <= batch``.
        """
        pos_idx = positive.nonzero().squeeze(1)
        neg_idx = negative.nonzero().squeeze(1)
        num_pos = min(pos_idx.numel(), int(self.batch_size_per_image * self.positive_fraction))
        num_neg = min(neg_idx.numel(), self.batch_size_per_image - num_pos)
        pos_idx = pos_idx[torch.randperm(pos_idx.numel(), device=pos_idx.device)[:num_pos]]
        neg_idx = neg_idx[torch.randperm(neg_idx.numel(), device=neg_idx.device)[:num_neg]]
        return pos_idx, neg_idx

    def sample_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Matcher labels ``(N,)`` (1 positive, 0 negative, -1 ignored) -> the sampled ones: 1 / 0 for
        the drawn positives / negatives, -1 for everything else."""
        pos_idx, neg_idx = self(labels == 1, labels == 0)
        sampled = torch.full_like(labels, -1)
        sampled[pos_idx] = 1
        sampled[neg_idx] = 0
        return sampled
