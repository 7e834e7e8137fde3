"""Localization transforms: the classification recipe's geometry applied to an image AND its boxes.

Every transform is a :class:`LocGeometry`: resize an ``(h, w)`` image to ``(new_h, new_w)``, take the
region ``[left, left + out_w) x [top, top + out_h)`` of the resized image, flip it horizontally when
``flip``. In continuous pixel coordinates (pixel ``i`` spans ``[i, i + 1)``) this is one affine map per
axis, applied identically to pixels (the resize maps pixel centres the same way) and to XYXY box
corners::

    x -> x * new_w / w - left        (then, when flipped, x -> out_w - x; x1 and x2 swap)
    y -> y * new_h / h - top

so a box stays on its pixels to within the interpolation's blur. ``crop_box`` is the region of the
ORIGINAL image the output covers: a point ``(x, y)`` of the output maps back as
``x0 + x * (x1 - x0) / out_w`` (unflipped).

Training (``INPUT.LOC.TRAIN_MODE``; random draws from an explicit ``np.random.Generator`` in this order:
shorter side, crop corner, flip, lighting):

* "crop": shorter side resized to a random integer in ``TRAIN_SHORT_RANGE``, a random ``CROP_SIZE``
  square crop, horizontal flip with probability 0.5 (``INPUT.RANDOM_FLIP`` "horizontal"), PCA lighting
  of std ``PCA_LIGHTING_STD`` (0: none) -- the classification recipe (paper, Sec. 3.4);
* "image": the whole image, shorter side random in ``TRAIN_SHORT_RANGE`` with the longer side capped at
  ``MAX_SIZE``, flip and lighting as above (for the R-CNN rescorer, which trains on whole images).

Test (``TEST.LOC_MODE``): "center" resizes the shorter side to ``TEST_SHORT_SIZE`` and takes the
centre ``CROP_SIZE`` square; "dense" keeps the whole image with its shorter side at ``TEST_SHORT_SIZE``
(longer side capped at ``MAX_SIZE``), or at each of ``TEST.LOC_DENSE_SIZES`` when that is not empty.

Images are ``(3, H, W)`` uint8 RGB tensors in and out (lighting is rounded back to uint8).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from detres.data.classification.transforms import PCALighting
from detres.data.detection.transforms import shortest_edge_size

__all__ = [
    "LOC_TEST_MODES",
    "LOC_TRAIN_MODES",
    "LocGeometry",
    "LocTestViews",
    "LocTrainAugmentation",
    "clip_boxes",
]

LOC_TRAIN_MODES = ("crop", "image")
LOC_TEST_MODES = ("center", "dense")


@dataclass(frozen=True)
class LocGeometry:
    """Resize ``(h, w)`` -> ``(new_h, new_w)``, keep ``[left, left + out_w) x [top, top + out_h)``, flip."""

    h: int
    w: int
    new_h: int
    new_w: int
    top: int = 0
    left: int = 0
    out_h: Optional[int] = None  # None: new_h - top
    out_w: Optional[int] = None  # None: new_w - left
    flip: bool = False

    @property
    def size(self) -> Tuple[int, int]:
        """``(out_h, out_w)``, the output image's size."""
        return (self.new_h - self.top if self.out_h is None else self.out_h,
                self.new_w - self.left if self.out_w is None else self.out_w)

    def apply_image(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: (C, h, w) uint8 -> (C, out_h, out_w) uint8."""
        if tuple(image.shape[-2:]) != (self.h, self.w):
            raise ValueError(f"geometry built for a {self.h}x{self.w} image, got {tuple(image.shape[-2:])}")
        if (self.new_h, self.new_w) != (self.h, self.w):
            image = TF.resize(image, [self.new_h, self.new_w], antialias=True)
        out_h, out_w = self.size
        image = image[..., self.top:self.top + out_h, self.left:self.left + out_w]
        return image.flip(-1) if self.flip else image

    def apply_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """``boxes``: (K, 4) XYXY in the original image's pixels -> (K, 4) float64 in the output's
        (not clipped: boxes may reach outside the output)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scale = np.array([self.new_w / self.w, self.new_h / self.h] * 2)
        out = boxes * scale - np.array([self.left, self.top] * 2, dtype=np.float64)
        if self.flip:
            out_w = self.size[1]
            out = np.stack([out_w - out[:, 2], out[:, 1], out_w - out[:, 0], out[:, 3]], axis=1)
        return out

    def crop_box(self) -> List[float]:
        """``[x0, y0, x1, y1]``: the region of the original image that the output covers."""
        out_h, out_w = self.size
        sx, sy = self.w / self.new_w, self.h / self.new_h
        return [self.left * sx, self.top * sy, (self.left + out_w) * sx, (self.top + out_h) * sy]


def clip_boxes(boxes: np.ndarray, height: int, width: int, min_size: float = 1.0) -> np.ndarray:
    """(K, 4) XYXY boxes clipped to ``[0, width] x [0, height]``; those left narrower or lower than
    ``min_size`` pixels are dropped -> (K', 4) float32."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = np.clip(boxes, 0.0, [width, height, width, height])
    keep = (clipped[:, 2] - clipped[:, 0] >= min_size) & (clipped[:, 3] - clipped[:, 1] >= min_size)
    return clipped[keep].astype(np.float32)


def _check_range(short_range: Sequence[int], crop_size: int, mode: str) -> Tuple[int, int]:
    if len(short_range) != 2 or not 0 < short_range[0] <= short_range[1]:
        raise ValueError(f"INPUT.LOC.TRAIN_SHORT_RANGE must be [min, max] with 0 < min <= max, got {list(short_range)}")
    if mode == "crop" and short_range[0] < crop_size:
        raise ValueError(f"INPUT.LOC.TRAIN_SHORT_RANGE {list(short_range)} must not go below INPUT.LOC.CROP_SIZE "
                         f"{crop_size} (the crop must fit in the resized image)")
    return int(short_range[0]), int(short_range[1])


class LocTrainAugmentation:
    """Samples a :class:`LocGeometry` per image and applies it (plus lighting) to the image and boxes."""

    def __init__(self, mode: str = "crop", short_range: Sequence[int] = (256, 480), crop_size: int = 224,
                 max_size: int = 1000, flip_prob: float = 0.5, lighting_std: float = 0.0) -> None:
        if mode not in LOC_TRAIN_MODES:
            raise ValueError(f"INPUT.LOC.TRAIN_MODE must be one of {LOC_TRAIN_MODES}, got {mode!r}")
        self.mode, self.crop_size, self.max_size, self.flip_prob = mode, int(crop_size), int(max_size), flip_prob
        self.short_range = _check_range(short_range, self.crop_size, mode)
        self.lighting = PCALighting(lighting_std) if lighting_std > 0 else None

    @classmethod
    def from_config(cls, cfg) -> "LocTrainAugmentation":
        if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
            raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none' for localization, "
                             f"got {cfg.INPUT.RANDOM_FLIP!r}")
        loc = cfg.INPUT.LOC
        return cls(loc.TRAIN_MODE, loc.TRAIN_SHORT_RANGE, loc.CROP_SIZE, loc.MAX_SIZE,
                   0.5 if cfg.INPUT.RANDOM_FLIP == "horizontal" else 0.0, loc.PCA_LIGHTING_STD)

    def sample(self, h: int, w: int, rng: np.random.Generator) -> LocGeometry:
        short = int(rng.integers(self.short_range[0], self.short_range[1] + 1))
        if self.mode == "crop":
            new_h, new_w = shortest_edge_size(h, w, short, 0)
            c = self.crop_size
            top, left = int(rng.integers(0, new_h - c + 1)), int(rng.integers(0, new_w - c + 1))
            crop = dict(top=top, left=left, out_h=c, out_w=c)
        else:
            new_h, new_w = shortest_edge_size(h, w, short, self.max_size)
            crop = {}
        flip = self.flip_prob > 0 and bool(rng.random() < self.flip_prob)
        return LocGeometry(h, w, new_h, new_w, flip=flip, **crop)

    def __call__(self, image: torch.Tensor, boxes: np.ndarray,
                 rng: np.random.Generator) -> Tuple[torch.Tensor, np.ndarray]:
        """``image`` (3, h, w) uint8 RGB, ``boxes`` (K, 4) XYXY -> the augmented (3, H, W) uint8 image and
        its (K', 4) float32 boxes: those keeping >= 1 pixel of width and height inside it, clipped."""
        geometry = self.sample(*image.shape[-2:], rng)
        image = geometry.apply_image(image)
        if self.lighting is not None:
            image = self.lighting(image, rng).round_().to(torch.uint8)
        return image.contiguous(), clip_boxes(geometry.apply_boxes(boxes), *geometry.size)


class LocTestViews:
    """The deterministic test geometries of ``TEST.LOC_MODE`` (see the module docstring)."""

    def __init__(self, mode: str = "center", crop_size: int = 224, short_size: int = 256,
                 dense_sizes: Sequence[int] = (), max_size: int = 1000) -> None:
        if mode not in LOC_TEST_MODES:
            raise ValueError(f"TEST.LOC_MODE must be one of {LOC_TEST_MODES}, got {mode!r}")
        if mode == "center" and short_size < crop_size:
            raise ValueError(f"INPUT.LOC.TEST_SHORT_SIZE {short_size} must be >= INPUT.LOC.CROP_SIZE {crop_size}")
        if any(s <= 0 for s in dense_sizes) or short_size <= 0:
            raise ValueError(f"test sizes must be positive, got {short_size} and {list(dense_sizes)}")
        self.mode, self.crop_size, self.short_size, self.max_size = mode, int(crop_size), int(short_size), int(max_size)
        self.dense_sizes = tuple(int(s) for s in dense_sizes)

    @classmethod
    def from_config(cls, cfg) -> "LocTestViews":
        loc = cfg.INPUT.LOC
        return cls(cfg.TEST.LOC_MODE, loc.CROP_SIZE, loc.TEST_SHORT_SIZE, cfg.TEST.LOC_DENSE_SIZES, loc.MAX_SIZE)

    @property
    def multi_scale(self) -> bool:
        """True when an input holds a list of images, one per ``TEST.LOC_DENSE_SIZES`` entry."""
        return self.mode == "dense" and bool(self.dense_sizes)

    def geometries(self, h: int, w: int) -> List[LocGeometry]:
        """One geometry ("center", "dense" without LOC_DENSE_SIZES) or one per dense size."""
        if self.mode == "dense":
            return [LocGeometry(h, w, *shortest_edge_size(h, w, s, self.max_size))
                    for s in (self.dense_sizes or (self.short_size,))]
        new_h, new_w = shortest_edge_size(h, w, self.short_size, 0)
        c = self.crop_size
        return [LocGeometry(h, w, new_h, new_w, (new_h - c) // 2, (new_w - c) // 2, c, c)]
