"""The paper's classification augmentations and test-time views, on ``(3, H, W)`` uint8 RGB tensors.

Training (random parameters come from an explicit ``np.random.Generator``, so a sample's augmentation
is a pure function of the generator's seed -- the loader seeds it per position in the sample stream,
which makes resumed runs reproduce the uninterrupted stream exactly):

* "cifar" (Sec. 4.2): pad ``PAD`` pixels of zeros on each side, random ``CROP_SIZE`` crop, horizontal flip.
* "imagenet" (Sec. 3.4): shorter side resized to a random integer in ``TRAIN_SHORT_RANGE``, random
  ``CROP_SIZE`` crop, horizontal flip, AlexNet-style PCA colour augmentation with std
  ``PCA_LIGHTING_STD``. Mean subtraction happens in the model.

Test (``TEST.CLS_MODE``):

* "center": "cifar" keeps the image (center-cropped to ``CROP_SIZE`` if larger); "imagenet" resizes
  the shorter side to ``TEST_SHORT_SIZE`` and takes the centre ``CROP_SIZE`` crop -> ``(3, c, c)``.
* "ten_crop": the four corner crops, the centre crop and their horizontal flips -> ``(10, 3, c, c)``
  (after the "imagenet" resize, or after the "cifar" padding).
* "multi_scale": the full image with its shorter side resized to each of ``TEST.MULTI_SCALE_SIZES``
  -> a list of ``(3, h_s, w_s)`` tensors (the fully convolutional test of Sec. 3.4).

Outputs are uint8 except after PCA lighting (float32 clipped to [0, 255]).
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

__all__ = [
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "PCALighting",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomShortSideResize",
    "InferenceViews",
    "TrainAugmentation",
    "build_test_transform",
    "build_train_transform",
]

Views = Union[torch.Tensor, List[torch.Tensor]]

# Eigen-decomposition of the RGB covariance of ImageNet pixels in [0, 1] (AlexNet; fb.resnet.torch).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (  # columns are eigenvectors, rows are R, G, B
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
AUGMENTATIONS = ("cifar", "imagenet")
CLS_MODES = ("center", "ten_crop", "multi_scale")


class RandomShortSideResize:
    """Resize so that the shorter side is a uniform random integer in ``[min_size, max_size]``."""

    def __init__(self, min_size: int, max_size: int):
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got [{min_size}, {max_size}]")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return TF.resize(image, [int(rng.integers(self.min_size, self.max_size + 1))], antialias=True)


class RandomCrop:
    """Zero-pad ``pad`` pixels on each side, then a uniformly placed ``size`` x ``size`` crop."""

    def __init__(self, size: int, pad: int = 0):
        self.size, self.pad = size, pad

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.pad:
            image = TF.pad(image, [self.pad], fill=0)
        h, w = image.shape[-2:]
        if h < self.size or w < self.size:
            raise ValueError(f"cannot take a {self.size}x{self.size} crop from a {h}x{w} image")
        top, left = int(rng.integers(0, h - self.size + 1)), int(rng.integers(0, w - self.size + 1))
        return TF.crop(image, top, left, self.size, self.size)


class RandomHorizontalFlip:
    def __init__(self, prob: float = 0.5):
        self.prob = prob

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return TF.horizontal_flip(image) if rng.random() < self.prob else image


class PCALighting:
    """AlexNet colour augmentation: add ``eigvec @ (alpha * eigval) * 255`` to every RGB pixel,
    ``alpha ~ N(0, std)`` per image. Returns float32 in [0, 255]."""

    def __init__(self, std: float = 0.1):
        self.std = std
        self.eigval = np.asarray(IMAGENET_EIGVAL)
        self.eigvec = np.asarray(IMAGENET_EIGVEC)

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        alpha = rng.normal(0.0, self.std, size=3)
        shift = torch.as_tensor(self.eigvec @ (alpha * self.eigval) * 255.0, dtype=torch.float32)
        return (image.float() + shift.view(3, 1, 1)).clamp_(0.0, 255.0)


class TrainAugmentation:
    """Applies ``ops`` in order; each op is called as ``op(image, rng)``."""

    def __init__(self, ops: Sequence[Callable[[torch.Tensor, np.random.Generator], torch.Tensor]]):
        self.ops = list(ops)

    def __call__(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        for op in self.ops:
            image = op(image, rng)
        return image


class InferenceViews:
    """Deterministic test views of one image; see the module docstring for the modes."""

    def __init__(
        self,
        mode: str,
        crop_size: int,
        short_size: Optional[int] = None,
        pad: int = 0,
        multi_scale_sizes: Sequence[int] = (),
    ):
        if mode not in CLS_MODES:
            raise ValueError(f"TEST.CLS_MODE must be one of {CLS_MODES}, got {mode!r}")
        if mode == "multi_scale" and not multi_scale_sizes:
            raise ValueError("TEST.CLS_MODE multi_scale needs TEST.MULTI_SCALE_SIZES")
        self.mode, self.crop_size, self.short_size, self.pad = mode, crop_size, short_size, pad
        self.sizes: Tuple[int, ...] = tuple(multi_scale_sizes)

    def __call__(self, image: torch.Tensor) -> Views:
        if self.mode == "multi_scale":
            return [TF.resize(image, [s], antialias=True) for s in self.sizes]
        if self.short_size:
            image = TF.resize(image, [self.short_size], antialias=True)
        c = self.crop_size
        if self.mode == "center":
            h, w = image.shape[-2:]
            return TF.center_crop(image, [c, c]) if (h, w) != (c, c) else image
        if self.pad:
            image = TF.pad(image, [self.pad], fill=0)
        return torch.stack(TF.ten_crop(image, [c, c]))


def build_train_transform(cfg) -> TrainAugmentation:
    """The training augmentation ``INPUT.CLS.AUGMENTATION`` names."""
    c = cfg.INPUT.CLS
    if c.AUGMENTATION not in AUGMENTATIONS:
        raise ValueError(f"INPUT.CLS.AUGMENTATION must be one of {AUGMENTATIONS}, got {c.AUGMENTATION!r}")
    if cfg.INPUT.RANDOM_FLIP not in ("horizontal", "none"):
        raise ValueError(f"INPUT.RANDOM_FLIP must be 'horizontal' or 'none' for classification, got {cfg.INPUT.RANDOM_FLIP!r}")
    ops: List[Callable] = []
    if c.AUGMENTATION == "cifar":
        ops.append(RandomCrop(c.CROP_SIZE, c.PAD))
    else:
        ops += [RandomShortSideResize(*c.TRAIN_SHORT_RANGE), RandomCrop(c.CROP_SIZE)]
    if cfg.INPUT.RANDOM_FLIP == "horizontal":
        ops.append(RandomHorizontalFlip())
    if c.AUGMENTATION == "imagenet" and c.PCA_LIGHTING_STD > 0:
        ops.append(PCALighting(c.PCA_LIGHTING_STD))
    return TrainAugmentation(ops)


def build_test_transform(cfg) -> InferenceViews:
    """The test views of ``TEST.CLS_MODE`` for the recipe ``INPUT.CLS.AUGMENTATION`` names."""
    c = cfg.INPUT.CLS
    if c.AUGMENTATION not in AUGMENTATIONS:
        raise ValueError(f"INPUT.CLS.AUGMENTATION must be one of {AUGMENTATIONS}, got {c.AUGMENTATION!r}")
    imagenet = c.AUGMENTATION == "imagenet"
    return InferenceViews(
        cfg.TEST.CLS_MODE,
        c.CROP_SIZE,
        short_size=c.TEST_SHORT_SIZE if imagenet else None,
        pad=0 if imagenet else c.PAD,
        multi_scale_sizes=cfg.TEST.MULTI_SCALE_SIZES,
    )
