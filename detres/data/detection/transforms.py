"""Geometric transforms for detection: shortest-edge resize and horizontal flip.

A transform is sampled once per image (``DetectionAugmentation.sample``) and then applied to the image
and to its boxes with exact arithmetic, so boxes stay aligned with pixels: a resize scales x by
``new_w / w`` and y by ``new_h / h``; a horizontal flip maps ``[x1, y1, x2, y2]`` to
``[W - x2, y1, W - x1, y2]``. Images are resized with PIL's bilinear filter on uint8 HWC arrays,
which reproduces Detectron2's preprocessing bit for bit (and so its model zoo's numbers).
Randomness comes only from the ``numpy.random.Generator`` passed in, so a seeded loader is
reproducible for any number of workers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = ["shortest_edge_size", "ResizeFlip", "DetectionAugmentation"]


def shortest_edge_size(h: int, w: int, short_edge: int, max_size: int) -> Tuple[int, int]:
    """Output ``(new_h, new_w)`` scaling the shorter side to ``short_edge`` unless the longer side would
    exceed ``max_size`` (then the longer side becomes ``max_size``); ``max_size <= 0`` means no limit."""
    scale = short_edge / min(h, w)
    new_h, new_w = h * scale, w * scale
    if max_size > 0 and max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


@dataclass(frozen=True)
class ResizeFlip:
    """Resize an ``(h, w)`` image to ``(new_h, new_w)``, then flip it horizontally when ``flip``."""

    h: int
    w: int
    new_h: int
    new_w: int
    flip: bool = False

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``image``: (h, w, C) uint8 -> (new_h, new_w, C) uint8."""
        if image.shape[:2] != (self.h, self.w):
            raise ValueError(f"transform built for a {self.h}x{self.w} image, got {image.shape[0]}x{image.shape[1]}")
        if (self.new_h, self.new_w) != (self.h, self.w):
            image = np.asarray(Image.fromarray(image).resize((self.new_w, self.new_h), Image.BILINEAR))
        if self.flip:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``boxes``: (K, 4) XYXY in the original image's pixels -> (K, 4) float32 in the output's."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scale = np.array([self.new_w / self.w, self.new_h / self.h] * 2)
        out = boxes * scale
        if self.flip:
            out = np.stack([self.new_w - out[:, 2], out[:, 1], self.new_w - out[:, 0], out[:, 3]], axis=1)
        return out.astype(np.float32)


class DetectionAugmentation:
    """Samples a ``ResizeFlip`` per image.

    ``min_sizes``: candidate shorter-side lengths; with ``sample_style="choice"`` one is drawn uniformly,
    with ``"range"`` ``min_sizes`` is ``(low, high)`` and an integer in ``[low, high]`` is drawn.
    """

    def __init__(self, min_sizes: Sequence[int], max_size: int, sample_style: str = "choice",
                 flip_prob: float = 0.0) -> None:
        min_sizes = tuple(int(s) for s in min_sizes)
        if sample_style not in ("choice", "range"):
            raise ValueError(f"INPUT.MIN_SIZE_TRAIN_SAMPLING must be 'choice' or 'range', got {sample_style!r}")
        if not min_sizes or (sample_style == "range" and len(min_sizes) != 2):
            raise ValueError(f"min sizes {min_sizes} do not fit sample style {sample_style!r} "
                             "('range' takes exactly (low, high), 'choice' at least one size)")
        if min(min_sizes) <= 0:
            raise ValueError(f"min sizes must be positive, got {min_sizes}")
        self.min_sizes, self.max_size, self.sample_style, self.flip_prob = min_sizes, int(max_size), sample_style, flip_prob

    @classmethod
    def from_config(cls, cfg, is_train: bool) -> "DetectionAugmentation":
        if not is_train:
            return cls((cfg.INPUT.MIN_SIZE_TEST,), cfg.INPUT.MAX_SIZE_TEST)
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none', got {cfg.INPUT.RANDOM_FLIP!r}")
        flip_prob = 0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0
        return cls(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING, flip_prob)

    def sample(self, h: int, w: int, rng: np.random.Generator) -> ResizeFlip:
        if self.sample_style == "range":
            short = int(rng.integers(self.min_sizes[0], self.min_sizes[1] + 1))
        else:
            short = self.min_sizes[int(rng.integers(len(self.min_sizes)))] if len(self.min_sizes) > 1 else self.min_sizes[0]
        flip = self.flip_prob > 0 and bool(rng.random() < self.flip_prob)
        return ResizeFlip(h, w, *shortest_edge_size(h, w, short, self.max_size), flip=flip)
