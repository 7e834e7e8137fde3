"""Turns a detection record (see ``detres.data.catalog``) into a model input dict.

In training, the optional albumentations pipeline (``INPUT.ALBUMENTATIONS``,
``detres.data.detection.albumentations_pipeline``) runs on the decoded image and its boxes first;
then detres's exact resize and flip. Output, per image (XYXY boxes in the pixels of the augmented,
resized, possibly flipped image):

* ``"image"``: uint8 Tensor (3, H, W) in ``INPUT.FORMAT`` channel order;
* ``"gt_boxes"``: float32 (K, 4) and ``"gt_classes"``: int64 (K,) of the non-crowd boxes;
* ``"crowd_boxes"``: float32 (M, 4), crowd regions that matchers should ignore, not learn from;
* ``"height"``, ``"width"``: the ORIGINAL image size (models rescale their outputs to it);
* ``"image_id"``, ``"file_name"``.
"""
from __future__ import annotations

import logging
import os
from typing import Optional, Set

import cv2
import numpy as np
import torch

from detres.data.build import DatasetError, DatasetFormatError
from detres.data.detection.albumentations_pipeline import AlbumentationsPipeline
from detres.data.detection.transforms import DetectionAugmentation

__all__ = ["ImageReadError", "read_image", "DetectionDatasetMapper"]

logger = logging.getLogger(__name__)
_WARNED_TRUNCATED: Set[str] = set()  # files already reported by this process


class ImageReadError(DatasetError, OSError):
    """An image file that is missing or cannot be decoded."""


def read_image(path: str, image_format: str = "BGR") -> np.ndarray:
    """(H, W, 3) uint8 in ``image_format`` ("BGR" or "RGB"); grayscale files are expanded to 3 channels."""
    if image_format not in ("BGR", "RGB"):
        raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {image_format!r}")
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ImageReadError(f"cannot decode image (corrupt or not an image file): {path}")
    if path not in _WARNED_TRUNCATED and _is_truncated_jpeg(path):
        _WARNED_TRUNCATED.add(path)
        logger.warning("%s: truncated JPEG (Premature end of JPEG file); decoded what is there", path)
    return image[:, :, ::-1].copy() if image_format == "RGB" else image


def _is_truncated_jpeg(path: str) -> bool:
    """A JPEG (starts with the SOI marker FF D8) whose end lacks the EOI marker FF D9; libjpeg decodes
    such a file up to where it stops, filling the rest grey, and only prints a note to stderr."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(max(os.path.getsize(path) - 64, 0))
        return not f.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")  # padding after EOI is harmless


class DetectionDatasetMapper:
    """Callable ``(record, rng) -> model input dict``; ``rng`` drives the random resize and flip and
    seeds the albumentations pipeline, when there is one."""

    def __init__(self, augmentation: DetectionAugmentation, image_format: str = "BGR",
                 albumentations: Optional[AlbumentationsPipeline] = None) -> None:
        self.augmentation = augmentation
        self.image_format = image_format
        self.albumentations = albumentations

    @classmethod
    def from_config(cls, cfg, is_train: bool) -> "DetectionDatasetMapper":
        return cls(DetectionAugmentation.from_config(cfg, is_train), cfg.INPUT.FORMAT,
                   AlbumentationsPipeline.from_config(cfg, is_train))

    def __call__(self, record: dict, rng: Optional[np.random.Generator] = None) -> dict:
        image = read_image(record["file_name"], self.image_format)
        h, w = image.shape[:2]
        if (h, w) != (record["height"], record["width"]):
            raise DatasetFormatError(
                f"{record['file_name']}: image is {h}x{w} (HxW) but its annotations say "
                f"{record['height']}x{record['width']}; the annotation file does not match the images"
            )
        rng = rng if rng is not None else np.random.default_rng(0)
        anns = record.get("annotations", [])
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        classes = np.array([a["category_id"] for a in anns], dtype=np.int64)
        if self.albumentations is not None:
            image, boxes, kept = self.albumentations(image, boxes, rng)
            crowd, classes = crowd[kept], classes[kept]
        transform = self.augmentation.sample(*image.shape[:2], rng)
        image = transform.apply_image(image)
        boxes = transform.apply_boxes(boxes).astype(np.float32)
        return {
            "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
            "gt_boxes": torch.from_numpy(boxes[~crowd]),
            "gt_classes": torch.from_numpy(classes[~crowd]),
            "crowd_boxes": torch.from_numpy(boxes[crowd]),
            "height": record["height"],
            "width": record["width"],
            "image_id": record["image_id"],
            "file_name": record["file_name"],
        }
