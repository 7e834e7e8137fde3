"""An optional albumentations pipeline for detection training (``INPUT.ALBUMENTATIONS``).

``INPUT.ALBUMENTATIONS`` lists transforms of the albumentations package, each ``"Name"`` or
``[Name, {argument: value, ...}]``, e.g. in YAML::

    INPUT:
      ALBUMENTATIONS:
        - [RandomBrightnessContrast, {p: 0.2}]
        - [RandomSizedBBoxSafeCrop, {height: 512, width: 512}]

or on the command line ``INPUT.ALBUMENTATIONS "[['HorizontalFlip', {'p': 0.5}]]"``. Photometric
(image-only) transforms and geometric transforms that move boxes are accepted; a name that is not an
albumentations transform, or a geometric transform that cannot move boxes, is a ``ConfigError``.

The pipeline runs in training only, in ``DetectionDatasetMapper``, on the decoded image and before
detres's exact resize and flip (``detres.data.detection.transforms``), which stay the default. Boxes,
crowd regions included, are XYXY absolute pixels ("pascal_voc" in albumentations), clipped to the
output image. Albumentations works in float32 coordinates normalized by the image size, so a box
comes back within ~1e-5 of the exact mapping (a flip of power-of-two sized images is bit-exact); a
pipeline of photometric transforms only does not touch the boxes at all (they stay bit-identical). Boxes
that leave the image or become degenerate (a side under ``MIN_BOX_SIDE`` pixels) are dropped and
counted (``dropped_boxes``; the first drop of a process is logged). Photometric transforms expect
RGB: a BGR image is reversed to RGB for the pipeline and back.

Randomness: each call seeds the pipeline's generators from one draw of the mapper's per-image
``numpy.random.Generator``, so the data stream stays deterministic and resumable.
"""
from __future__ import annotations

import difflib
import logging
import os
import random
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from detres.config import ConfigError

__all__ = ["MIN_BOX_SIDE", "AlbumentationsPipeline", "parse_transform_list"]

logger = logging.getLogger(__name__)

KEY = "INPUT.ALBUMENTATIONS"
MIN_BOX_SIDE = 0.01  # pixels; a box clipped to nothing comes back ~1e-5 wide (float32 normalized coordinates)


def _albumentations() -> Any:
    """The albumentations module, imported on first use without its network update check."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    try:
        import albumentations
    except ImportError:
        raise ConfigError(f"{KEY} needs the albumentations package: pip install albumentations") from None
    return albumentations


def parse_transform_list(spec: Sequence[Any]) -> List[Tuple[str, dict]]:
    """``INPUT.ALBUMENTATIONS`` as ``[(name, kwargs), ...]``; entries are ``name`` or ``[name, {kwargs}]``."""
    parsed = []
    for entry in spec:
        if isinstance(entry, str):
            parsed.append((entry, {}))
        elif (isinstance(entry, (list, tuple)) and len(entry) in (1, 2) and isinstance(entry[0], str)
              and (len(entry) == 1 or isinstance(entry[1], dict))):
            parsed.append((entry[0], dict(entry[1]) if len(entry) == 2 else {}))
        else:
            raise ConfigError(f"{KEY}: each entry must be a transform name or [name, {{argument: value}}], got {entry!r}")
    return parsed


def _build_transform(A: Any, name: str, kwargs: dict) -> Any:
    """One albumentations transform, checked: it exists, takes these arguments and can move boxes."""
    transform_types = (A.DualTransform, A.ImageOnlyTransform)
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transform_types)):
        known = [n for n in dir(A) if isinstance(getattr(A, n), type) and issubclass(getattr(A, n), transform_types)]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"{KEY}: {name!r} is not an albumentations transform (albumentations {A.__version__}).{hint}")
    if issubclass(cls, A.DualTransform) and cls.apply_to_bboxes is A.DualTransform.apply_to_bboxes:
        raise ConfigError(f"{KEY}: {name} is a geometric transform that cannot move bounding boxes")
    try:
        return cls(**kwargs, strict=True)  # strict: an unknown argument is an error, not a warning
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{KEY}: {name}({kwargs}) is invalid: {e}") from None


class AlbumentationsPipeline:
    """Callable ``(image, boxes, rng) -> (image, boxes, kept)``; see the module docstring."""

    def __init__(self, spec: Sequence[Any], image_format: str = "BGR") -> None:
        A = _albumentations()
        transforms = [_build_transform(A, name, kwargs) for name, kwargs in parse_transform_list(spec)]
        self.moves_boxes = any(isinstance(t, A.DualTransform) for t in transforms)
        bbox_params = A.BboxParams(format="pascal_voc", label_fields=["box_index"], clip=True,
                                   min_width=MIN_BOX_SIDE, min_height=MIN_BOX_SIDE) if self.moves_boxes else None
        self.compose = A.Compose(transforms, bbox_params=bbox_params)
        self.reverse_channels = image_format == "BGR"
        self.dropped_boxes = 0  # in this process (each data-loader worker counts its own)

    @classmethod
    def from_config(cls, cfg, is_train: bool) -> Optional["AlbumentationsPipeline"]:
        """The pipeline of ``INPUT.ALBUMENTATIONS`` for training; ``None`` when empty or testing."""
        if not is_train or not cfg.INPUT.ALBUMENTATIONS:
            return None
        return cls(cfg.INPUT.ALBUMENTATIONS, cfg.INPUT.FORMAT)

    def __call__(self, image: np.ndarray, boxes: np.ndarray,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``image``: (H, W, 3) uint8 in the mapper's channel order; ``boxes``: (K, 4) XYXY pixels.

        Returns the (H', W', 3) uint8 image, the (K', 4) float64 boxes that survived, XYXY in its
        pixels, and ``kept`` (K',) int64: their indices in ``boxes`` (in order), for classes and flags.
        """
        seed = int(rng.integers(2**63))
        self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        kept = np.arange(len(boxes))
        targets = {"bboxes": boxes, "box_index": kept} if self.moves_boxes else {}
        out = self.compose(image=image[:, :, ::-1] if self.reverse_channels else image, **targets)
        new_image = np.ascontiguousarray(out["image"][:, :, ::-1] if self.reverse_channels else out["image"])
        if not self.moves_boxes:
            return new_image, boxes, kept
        new_boxes = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        kept = np.asarray(out["box_index"], dtype=np.int64).reshape(-1)
        dropped = len(boxes) - len(kept)
        if dropped:
            if not self.dropped_boxes:
                logger.warning("%s dropped %d of %d boxes of an image (outside the augmented image or under %g "
                               "pixels wide or high); further drops are counted, not logged", KEY, dropped,
                               len(boxes), MIN_BOX_SIDE)
            self.dropped_boxes += dropped
        return new_image, new_boxes, kept
