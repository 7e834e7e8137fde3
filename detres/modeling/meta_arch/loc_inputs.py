"""Reading the fields of a localization input dict (the per-class RPN localizer's and the R-CNN
rescorer's), with errors that name the image: ``"label"`` (an int class index) and ``"gt_boxes"``
(``(K, 4)`` XYXY absolute pixels, ``K >= 0``)."""
from __future__ import annotations

from typing import Any, Dict

import torch

__all__ = ["input_gt_boxes", "input_label", "input_name"]


def input_name(x: Dict[str, Any]) -> str:
    """What error messages call the input: its ``"file_name"``, else its ``"image_id"``."""
    return str(x.get("file_name", x.get("image_id", "input")))


def input_label(x: Dict[str, Any], num_classes: int) -> int:
    """The input's ``"label"``, checked to lie in ``[0, num_classes)``."""
    if "label" not in x:
        raise ValueError(f"{input_name(x)}: the input has no 'label'")
    label = int(x["label"])
    if not 0 <= label < num_classes:
        raise ValueError(f"{input_name(x)}: label {label} outside [0, {num_classes}) (MODEL.CLASSIFIER.NUM_CLASSES)")
    return label


def input_gt_boxes(x: Dict[str, Any], device: torch.device) -> torch.Tensor:
    """The input's ``"gt_boxes"`` as ``(K, 4)`` float32 on ``device`` (an empty list gives ``(0, 4)``)."""
    if "gt_boxes" not in x:
        raise ValueError(f"{input_name(x)}: training inputs need 'gt_boxes' (K, 4)")
    boxes = torch.as_tensor(x["gt_boxes"], dtype=torch.float32, device=device)
    if boxes.numel() and (boxes.dim() != 2 or boxes.shape[1] != 4):
        raise ValueError(f"{input_name(x)}: gt_boxes must be (K, 4), got {tuple(boxes.shape)}")
    return boxes.reshape(-1, 4)
