"""Drawing detections with OpenCV: boxes, class names and scores; ground truth vs prediction pictures.

Images are (H, W, 3) uint8 BGR arrays (OpenCV's order) unless stated otherwise; boxes are XYXY in the
pixels of the image they are drawn on.
"""
from __future__ import annotations

import colorsys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["class_colour", "draw_instances", "gt_vs_pred_picture"]


def class_colour(index: int) -> Tuple[int, int, int]:
    """A distinct, deterministic BGR colour per class index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: Sequence[int],
    scores: Optional[Sequence[float]] = None,
    class_names: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """A copy of ``image`` with each box (N, 4) outlined in its class colour and labelled
    "name score" (or "name" without scores); unknown class indices are labelled by number."""
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    font_scale = max(0.35, max(h, w) / 1600)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for i, (box, cls) in enumerate(zip(boxes, classes)):
        cls = int(cls)
        colour = class_colour(cls)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else f"class {cls}"
        label = name if scores is None else f"{name} {float(scores[i]):.2f}"
        (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        tx = min(max(x1, 0), max(w - tw, 0))
        ty = y1 - baseline - 2 if y1 - th - baseline - 2 >= 0 else min(y1 + th + 2, h - baseline)
        cv2.rectangle(out, (tx, ty - th - 1), (tx + tw, ty + baseline), colour, -1)
        text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        cv2.putText(out, label, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_colour, 1, cv2.LINE_AA)
    return out


def gt_vs_pred_picture(
    inputs: dict,
    outputs: dict,
    class_names: Optional[Sequence[str]] = None,
    input_format: str = "BGR",
    score_thresh: float = 0.5,
) -> np.ndarray:
    """A side-by-side picture for ``EventStorage.put_image``: (3, H, 2W + 4) uint8 RGB.

    ``inputs``: a model input dict ("image" (3, H, W) in ``input_format``, "gt_boxes" (K, 4) in its pixels,
    "gt_classes", "height"/"width" of the original image); ``outputs``: the model's detection output
    ("boxes" (D, 4) in ORIGINAL pixels, "scores", "classes"). Left: ground truth; right: detections
    with score >= ``score_thresh``.
    """
    image = inputs["image"].detach().cpu().numpy().transpose(1, 2, 0).astype(np.uint8)
    if input_format == "RGB":
        image = image[:, :, ::-1]
    h, w = image.shape[:2]
    left = draw_instances(image, inputs.get("gt_boxes", np.zeros((0, 4))), inputs.get("gt_classes", []),
                          class_names=class_names)
    scores = outputs["scores"].detach().cpu().numpy()
    keep = scores >= score_thresh
    scale = np.array([w / inputs["width"], h / inputs["height"]] * 2)
    boxes = outputs["boxes"].detach().cpu().numpy()[keep] * scale
    right = draw_instances(image, boxes, outputs["classes"].detach().cpu().numpy()[keep], scores[keep], class_names)
    gap = np.full((h, 4, 3), 255, np.uint8)
    return np.ascontiguousarray(np.concatenate([left, gap, right], axis=1)[:, :, ::-1].transpose(2, 0, 1))
