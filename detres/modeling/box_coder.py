"""The R-CNN box parameterisation (Girshick et al.), used by the RPN and the RoI heads, and the box
regression loss on it.

For a reference box with centre ``(x, y)`` and size ``(w, h)`` and a target ``(x*, y*, w*, h*)``:
``dx = wx (x* - x) / w``, ``dy = wy (y* - y) / h``, ``dw = ww log(w* / w)``, ``dh = wh log(h* / h)``
with weights ``(wx, wy, ww, wh)``. Width is ``x2 - x1`` (no "+1"), as in Detectron2.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.nn import functional as F

__all__ = ["BoxCoder", "box_regression_loss", "DEFAULT_SCALE_CLAMP"]

# Largest dw/dh applied when decoding: a box grows at most 1000/16 = 62.5 times per side.
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as deltas relative to reference boxes, and decode them back.

    Args:
        weights: ``(wx, wy, ww, wh)``; e.g. ``(1, 1, 1, 1)`` for the RPN, ``(10, 10, 5, 5)`` for Fast R-CNN.
        scale_clamp: upper bound on ``dw / ww`` and ``dh / wh`` before ``exp`` when decoding.
    """

    def __init__(self, weights: Sequence[float], scale_clamp: float = DEFAULT_SCALE_CLAMP):
        if len(weights) != 4:
            raise ValueError(f"box coder weights must be (wx, wy, ww, wh), got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, boxes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Deltas ``(N, 4)`` that turn ``boxes`` ``(N, 4)`` into ``targets`` ``(N, 4)`` (both XYXY)."""
        wx, wy, ww, wh = self.weights
        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights
        t_widths = targets[:, 2] - targets[:, 0]
        t_heights = targets[:, 3] - targets[:, 1]
        t_ctr_x = targets[:, 0] + 0.5 * t_widths
        t_ctr_y = targets[:, 1] + 0.5 * t_heights
        return torch.stack(
            (
                wx * (t_ctr_x - ctr_x) / widths,
                wy * (t_ctr_y - ctr_y) / heights,
                ww * torch.log(t_widths / widths),
                wh * torch.log(t_heights / heights),
            ),
            dim=1,
        )

    def decode(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Apply ``deltas`` ``(N, k*4)`` (k boxes per reference, e.g. one per class) to ``boxes`` ``(N, 4)``.

        Returns ``(N, k*4)`` XYXY boxes in the dtype of ``deltas``.
        """
        deltas = deltas.float()
        boxes = boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = (boxes[:, 2] - boxes[:, 0])[:, None]
        heights = (boxes[:, 3] - boxes[:, 1])[:, None]
        ctr_x = boxes[:, 0, None] + 0.5 * widths
        ctr_y = boxes[:, 1, None] + 0.5 * heights

        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)

        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        half_w = 0.5 * torch.exp(dw) * widths
        half_h = 0.5 * torch.exp(dh) * heights
        x1, y1 = pred_ctr_x - half_w, pred_ctr_y - half_h
        x2, y2 = pred_ctr_x + half_w, pred_ctr_y + half_h
        decoded = torch.stack((x1, y1, x2, y2), dim=2)  # (N, k, 4)
        return decoded.reshape(deltas.shape)


def box_regression_loss(
    pred_deltas: torch.Tensor, target_deltas: torch.Tensor, loss_type: str, beta: float = 0.0
) -> torch.Tensor:
    """Summed regression loss over ``(N, 4)`` deltas; ``loss_type`` is ``"smooth_l1"`` or ``"l1"``.

    Smooth L1 with ``beta == 0`` is exactly L1 (Detectron2's default for both heads). The caller normalises.
    """
    if loss_type == "smooth_l1" and beta > 0:
        return F.smooth_l1_loss(pred_deltas, target_deltas, beta=beta, reduction="sum")
    if loss_type in ("smooth_l1", "l1"):
        return F.l1_loss(pred_deltas, target_deltas, reduction="sum")
    raise ValueError(f"unknown box regression loss type {loss_type!r}; expected 'smooth_l1' or 'l1'")
