"""Drawing detections with OpenCV: boxes, class names and scores; ground truth vs prediction pictures.

Images are (H, W, 3) uint8 BGR arrays (OpenCV's order) unless stated otherwise; boxes are XYXY in the
pixels of the image they are drawn on.
"""
from __future__ import annotations

import colorsys
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = ["class_colour", "draw_instances", "gt_vs_pred_picture", "place_label"]


def class_colour(index: int) -> Tuple[int, int, int]:
    """A distinct, deterministic BGR colour per class index (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((index * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


Rect = Tuple[int, int, int, int]  # x1, y1, x2, y2


def _intersects(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_label(box: Rect, size: Tuple[int, int], image_size: Tuple[int, int], placed: Sequence[Rect]) -> Rect:
    """Where a label of ``size`` (w, h) goes for ``box`` (XYXY) in an image of ``image_size`` (h, w):
    the first of above the box, inside its top, then further down in label-height steps that
    overlaps no rectangle of ``placed`` (the last one tried when all overlap)."""
    (lw, lh), (h, w) = size, image_size
    x = min(max(box[0], 0), max(w - lw, 0))
    starts = [box[1] - lh, box[1]] + [box[1] + k * lh for k in range(1, max(h // max(lh, 1), 1) + 1)]
    rect = (x, 0, x + lw, lh)
    for y in starts:
        y = min(max(y, 0), max(h - lh, 0))
        rect = (x, y, x + lw, y + lh)
        if not any(_intersects(rect, other) for other in placed):
            return rect
    return rect


def draw_instances(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: Sequence[int],
    scores: Optional[Sequence[float]] = None,
    class_names: Optional[Sequence[str]] = None,
) -> np.ndarray:
    """A copy of ``image`` with each box (N, 4) outlined in its class colour and labelled
    "name score" (or "name" without scores); unknown class indices are labelled by number.

    Line width and font scale grow with the image; labels are drawn after all boxes, in the given
    order (detections: by score), each where it hides no earlier label (see :func:`place_label`).
    """
    out = np.ascontiguousarray(image, dtype=np.uint8).copy()
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 400))
    font_scale = max(0.35, max(h, w) / 1600)
    font_thickness = max(1, round(font_scale * 1.5))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    rects = [tuple(int(round(v)) for v in box) for box in boxes]
    for rect, cls in zip(rects, classes):
        cv2.rectangle(out, rect[:2], rect[2:], class_colour(int(cls)), thickness)
    placed: List[Rect] = []
    for i, (rect, cls) in enumerate(zip(rects, classes)):
        cls = int(cls)
        colour = class_colour(cls)
        name = class_names[cls] if class_names is not None and 0 <= cls < len(class_names) else f"class {cls}"
        label = name if scores is None else f"{name} {float(scores[i]):.2f}"
        (tw, th), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, font_thickness)
        x1, y1, x2, y2 = place_label(rect, (tw + 2, th + baseline + 2), (h, w), placed)
        placed.append((x1, y1, x2, y2))
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, -1)
        text_colour = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        cv2.putText(out, label, (x1 + 1, y2 - 1 - baseline), cv2.FONT_HERSHEY_SIMPLEX, font_scale, text_colour,
                    font_thickness, cv2.LINE_AA)
    return out


def gt_vs_pred_picture(
    image: np.ndarray,
    gt_boxes: np.ndarray,
    gt_classes: Sequence[int],
    outputs: dict,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.5,
) -> np.ndarray:
    """A side-by-side picture for ``EventStorage.put_image``: (3, H, 2W + 4) uint8 RGB.

    ``image``: the ORIGINAL (H, W, 3) uint8 BGR image; ``gt_boxes`` (K, 4) and ``gt_classes`` (K,): the
    ground truth in its pixels; ``outputs``: the model's detection output ("boxes" (D, 4) in ORIGINAL
    pixels, "scores", "classes"). Left: ground truth; right: detections with score >= ``score_thresh``.
    """
    h = image.shape[0]
    left = draw_instances(image, gt_boxes, gt_classes, class_names=class_names)
    scores = outputs["scores"].detach().cpu().numpy()
    keep = scores >= score_thresh
    boxes = outputs["boxes"].detach().cpu().numpy()[keep]
    right = draw_instances(image, boxes, outputs["classes"].detach().cpu().numpy()[keep], scores[keep], class_names)
    gap = np.full((h, 4, 3), 255, np.uint8)
    return np.ascontiguousarray(np.concatenate([left, gap, right], axis=1)[:, :, ::-1].transpose(2, 0, 1))
