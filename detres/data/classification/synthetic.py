"""A generated, labelled image set for the quick start and tests: no download needed.

Ten classes of coloured shapes and textures (disc, square, triangle, plus, ring, horizontal /
vertical / diagonal stripes, checkerboard, x-cross) on a random background, with random colours,
sizes, positions and pixel noise. The class is defined by the shape only (never by colour), so a
network has to learn spatial patterns. Image ``i`` of a split depends only on ``(seed, split, i)``:
the set is deterministic for a seed and independent of how many images are asked for. Images are
generated in memory on first use (about 0.4 s per thousand 32x32 images) and cached.
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple

import cv2
import numpy as np

__all__ = ["SYNTHETIC_CLASSES", "generate_synthetic", "load_synthetic"]

SYNTHETIC_CLASSES = (
    "disc",
    "square",
    "triangle",
    "plus",
    "ring",
    "horizontal_stripes",
    "vertical_stripes",
    "diagonal_stripes",
    "checkerboard",
    "x_cross",
)
_SPLIT_IDS = {"train": 0, "val": 1}


def _colours(rng: np.random.Generator) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """A background and a foreground colour that differ by at least 150 in summed |RGB| difference."""
    while True:
        bg, fg = rng.integers(0, 256, size=(2, 3))
        if np.abs(bg - fg).sum() >= 150:
            return tuple(int(v) for v in bg), tuple(int(v) for v in fg)


def _draw_shape(canvas: np.ndarray, label: int, fg: Tuple[int, ...], rng: np.random.Generator) -> None:
    size = canvas.shape[0]
    radius = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(radius, size - radius, size=2)
    thick = max(2, int(round(radius * rng.uniform(0.25, 0.4))))
    centre = (int(round(cx)), int(round(cy)))
    r = int(round(radius))
    if label == 0:  # disc
        cv2.circle(canvas, centre, r, fg, -1, cv2.LINE_AA)
    elif label == 1:  # square
        cv2.rectangle(canvas, (centre[0] - r, centre[1] - r), (centre[0] + r, centre[1] + r), fg, -1)
    elif label == 2:  # triangle, random rotation
        angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2.0, 4.0]) * np.pi / 3
        points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
        cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], fg, cv2.LINE_AA)
    elif label == 3:  # plus
        cv2.line(canvas, (centre[0] - r, centre[1]), (centre[0] + r, centre[1]), fg, thick, cv2.LINE_AA)
        cv2.line(canvas, (centre[0], centre[1] - r), (centre[0], centre[1] + r), fg, thick, cv2.LINE_AA)
    elif label == 4:  # ring
        cv2.circle(canvas, centre, max(r - thick // 2, 2), fg, thick, cv2.LINE_AA)
    else:  # x-cross
        d = int(round(radius * 0.75))
        cv2.line(canvas, (centre[0] - d, centre[1] - d), (centre[0] + d, centre[1] + d), fg, thick, cv2.LINE_AA)
        cv2.line(canvas, (centre[0] - d, centre[1] + d), (centre[0] + d, centre[1] - d), fg, thick, cv2.LINE_AA)


def _draw_texture(canvas: np.ndarray, label: int, fg: Tuple[int, ...], rng: np.random.Generator) -> None:
    """Stripes / checkerboard filling a random rectangle that covers 60-100% of each side."""
    size = canvas.shape[0]
    h, w = (rng.uniform(0.6, 1.0, size=2) * size).astype(int)
    y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    period = int(rng.integers(4, 9))
    phase = rng.uniform(0, period)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if label == 5:
        mask = ((yy + phase) % period) < period / 2
    elif label == 6:
        mask = ((xx + phase) % period) < period / 2
    elif label == 7:
        mask = ((xx + yy + phase) % period) < period / 2
    else:
        mask = (((yy + phase) // (period / 2)) + ((xx + phase) // (period / 2))) % 2 == 0
    region = canvas[y0 : y0 + h, x0 : x0 + w]
    region[mask] = fg


def _render(label: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    bg, fg = _colours(rng)
    canvas = np.empty((image_size, image_size, 3), np.uint8)
    canvas[:] = bg
    if SYNTHETIC_CLASSES[label].endswith(("stripes", "checkerboard")):
        _draw_texture(canvas, label, fg, rng)
    else:
        _draw_shape(canvas, label if label < 5 else 9, fg, rng)
    noise = rng.normal(0.0, 10.0, size=canvas.shape)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def generate_synthetic(num_images: int, seed: int, split: str = "train", image_size: int = 32) -> Tuple[np.ndarray, np.ndarray]:
    """``(images (N, S, S, 3) uint8 RGB, labels (N,) int64)``; labels cycle through the 10 classes
    (balanced), image ``i`` is drawn from ``np.random.default_rng([seed, split_id, i])``.
    The arrays are cached and read-only."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"synthetic split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    if num_images <= 0 or image_size < 16:
        raise ValueError(f"need num_images > 0 and image_size >= 16, got {num_images}, {image_size}")
    labels = np.arange(num_images, dtype=np.int64) % len(SYNTHETIC_CLASSES)
    images = np.stack(
        [_render(int(c), image_size, np.random.default_rng([seed, _SPLIT_IDS[split], i])) for i, c in enumerate(labels)]
    )
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_synthetic(num_images: int, seed: int, split: str, image_size: int = 32) -> List[dict]:
    """Catalog records ``{"image": (S, S, 3) uint8 RGB, "label": int}`` of :func:`generate_synthetic`."""
    images, labels = generate_synthetic(num_images, seed, split, image_size)
    return [{"image": image, "label": int(label)} for image, label in zip(images, labels)]
