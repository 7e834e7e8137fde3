"""Image classification: a ResNet backbone with its ``linear`` head.

* :class:`ResNetClassifier`, what :func:`create_model` returns: a normalised float tensor
  ``(N, 3, H, W)`` in -> logits ``(N, num_classes)`` out, like torchvision and timm models. It also
  carries its input convention (channel order, pixel mean/std in [0, 255] units, optionally a
  per-pixel mean image), from which :func:`create_transform` builds its preprocessing.
* :class:`ImageClassifier` (``MODEL.META_ARCHITECTURE: ImageClassifier``): the same network with the
  trainer's interface -- a list of dicts with uint8 images in, a loss or softmax scores out. It adds
  no parameters, so both classes have the same state-dict names (``backbone.*``, ``pixel_mean_image``)
  and checkpoints of either load into the other. A state dict does not record the input convention
  (style, channel order, mean/std): loading one with ``create_model`` warns and uses the defaults
  unless they are given again (torchvision files are recognised and get theirs).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from detres.modeling.backbone.backbone import Backbone
from detres.modeling.backbone.build import backbone_cfg, build_backbone, parse_backbone_name
from detres.modeling.meta_arch.build import META_ARCH_REGISTRY
from detres.utils.events import get_event_storage

logger = logging.getLogger(__name__)

__all__ = ["ClassificationTransform", "ImageClassifier", "ResNetClassifier", "as_rgb_image", "create_model",
           "create_transform", "normalize_images"]

# The config node whose OUT_FEATURES a registered backbone reads.
_OUT_FEATURES_NODE = {"resnet": "RESNETS", "cifar_resnet": "CIFAR_RESNETS"}
# Input conventions of torchvision's ImageNet weights: RGB, (x / 255 - mean) / std in [0, 255] units.
_TORCHVISION_INPUT = dict(
    style="pytorch", input_format="RGB", pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]
)
# An image as the public API takes it: a file path, a PIL image, an (H, W, 3) uint8 array or a (3, H, W) uint8 tensor.
ImageLike = Union[str, Path, np.ndarray, torch.Tensor, Any]


def normalize_images(images: torch.Tensor, pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                     mean_image: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(images - mean) / pixel_std`` for ``(..., 3, H, W)`` float images in [0, 255].

    ``mean`` is ``mean_image`` ``(3, S, S)`` when given (bilinearly resized to ``(H, W)`` if needed),
    else ``pixel_mean`` ``(3, 1, 1)``; ``pixel_std`` is ``(3, 1, 1)``.
    """
    mean = pixel_mean
    if mean_image is not None:
        mean = mean_image
        if mean.shape[-2:] != images.shape[-2:]:
            mean = F.interpolate(mean[None], size=images.shape[-2:], mode="bilinear", align_corners=False)[0]
    return (images - mean) / pixel_std


def as_rgb_image(image: ImageLike, image_format: str = "RGB") -> np.ndarray:
    """``image`` as an ``(H, W, 3)`` uint8 RGB array.

    A path is read from disk and a PIL image converted (both are RGB whatever ``image_format`` says);
    an ``(H, W, 3)`` uint8 array or a ``(3, H, W)`` uint8 tensor is taken in ``image_format`` ("RGB"
    or "BGR") channel order.
    """
    if image_format not in ("RGB", "BGR"):
        raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
    if isinstance(image, (str, Path)):
        from detres.data.detection.mapper import read_image

        return read_image(str(image), "RGB")
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image
        return np.array(image.convert("RGB"))
    if torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W), got {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("expected a path, a PIL image, an (H, W, 3) array or a (3, H, W) tensor, got "
                         f"{type(image).__name__}"
                         + (f" of shape {tuple(image.shape)}" if hasattr(image, "shape") else ""))
    if image.dtype != np.uint8:
        raise TypeError(f"image arrays and tensors must be uint8 in [0, 255], got {image.dtype}")
    return np.ascontiguousarray(image[:, :, ::-1] if image_format == "BGR" else image)


class ResNetClassifier(nn.Module):
    """``backbone(x)["linear"]``: a normalised float tensor ``(N, 3, H, W)`` -> logits ``(N, num_classes)``.

    ``x`` is an image in ``input_format`` channel order and [0, 255] units, minus the mean, divided by
    ``pixel_std`` (:meth:`normalize`, or :func:`create_transform` for images from disk). The global
    pooling before the head accepts any ``H, W``.

    Input convention: ``input_format`` ("BGR"/"RGB"); buffers ``pixel_mean`` and ``pixel_std``
    ``(3, 1, 1)`` (not saved); with ``mean_image_size`` ``S`` the saved buffer ``pixel_mean_image``
    ``(3, S, S)`` is the mean instead (it starts as ``pixel_mean`` everywhere; see
    :meth:`set_pixel_mean_image`).
    """

    def __init__(self, backbone: Backbone, input_format: str = "BGR",
                 pixel_mean: Sequence[float] = (103.530, 116.280, 123.675),
                 pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
                 mean_image_size: Optional[int] = None):
        super().__init__()
        shapes = backbone.output_shape()
        if "linear" not in shapes:
            raise ValueError(f"backbone {type(backbone).__name__} has no 'linear' output; outputs: {list(shapes)}")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"input format must be 'BGR' or 'RGB', got {input_format!r}")
        for key, values in (("pixel mean", pixel_mean), ("pixel std", pixel_std)):
            if len(values) != 3:
                raise ValueError(f"the {key} needs 3 values, got {list(values)}")
        self.backbone = backbone
        self.num_classes = shapes["linear"].channels
        self.input_format = input_format
        as_buffer = lambda values: torch.tensor(values, dtype=torch.float32).view(3, 1, 1)  # noqa: E731
        self.register_buffer("pixel_mean", as_buffer(pixel_mean), persistent=False)
        self.register_buffer("pixel_std", as_buffer(pixel_std), persistent=False)
        self.pixel_mean_image: Optional[torch.Tensor]
        if mean_image_size:
            size = mean_image_size
            self.register_buffer("pixel_mean_image", self.pixel_mean.expand(3, size, size).clone())
        else:
            self.pixel_mean_image = None

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` normalised float -> ``(N, num_classes)`` logits."""
        return self.backbone(x)["linear"]

    @torch.no_grad()
    def set_pixel_mean_image(self, mean_image: torch.Tensor) -> None:
        """Use ``mean_image`` ``(3, S, S)`` (``input_format`` order, [0, 255]) as the per-pixel mean."""
        if self.pixel_mean_image is None:
            raise RuntimeError("this model was built with INPUT.CLS.PER_PIXEL_MEAN False: it has no per-pixel mean")
        if mean_image.shape != self.pixel_mean_image.shape:
            raise ValueError(
                f"mean image of shape {tuple(mean_image.shape)} does not match the model's "
                f"{tuple(self.pixel_mean_image.shape)} (3, INPUT.CLS.CROP_SIZE, INPUT.CLS.CROP_SIZE)"
            )
        self.pixel_mean_image.copy_(mean_image)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 255] (``input_format`` order) -> normalised float on the model's device."""
        images = images.to(self.device, non_blocking=True).float()
        return normalize_images(images, self.pixel_mean, self.pixel_std, self.pixel_mean_image)


def _network_args(cfg) -> Dict[str, Any]:
    """:class:`ResNetClassifier` arguments from a config; the backbone gets a ``linear`` output."""
    node_name = _OUT_FEATURES_NODE.get(cfg.MODEL.BACKBONE.NAME)
    if node_name is not None and "linear" not in cfg.MODEL[node_name].OUT_FEATURES:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL[node_name].OUT_FEATURES = list(cfg.MODEL[node_name].OUT_FEATURES) + ["linear"]
    return dict(
        backbone=build_backbone(cfg),
        input_format=cfg.INPUT.FORMAT,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
        pixel_std=list(cfg.MODEL.PIXEL_STD),
        mean_image_size=cfg.INPUT.CLS.CROP_SIZE if cfg.INPUT.CLS.PER_PIXEL_MEAN else None,
    )


@META_ARCH_REGISTRY.register()
class ImageClassifier(ResNetClassifier):
    """The :class:`ResNetClassifier` of ``cfg`` with the trainer's dict interface.

    Inputs: ``List[dict]``, one per image, with ``"image"``: a uint8/float tensor in [0, 255] and
    ``cfg.INPUT.FORMAT`` channel order -- ``(3, H, W)`` (one view), ``(V, 3, h, w)`` (e.g. ten crops)
    or a list of ``(3, h_i, w_i)`` (e.g. multi-scale; the global pooling makes any size valid) --
    and, for training, ``"label"``: int in ``[0, num_classes)``.

    Normalisation (:meth:`normalize`): ``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD``, or with
    ``INPUT.CLS.PER_PIXEL_MEAN`` the buffer ``pixel_mean_image`` ``(3, S, S)``
    (``S = INPUT.CLS.CROP_SIZE``), which the trainer sets from the training set (the train loader's
    ``pixel_mean_image``) and checkpoints save.

    Outputs: training -> ``{"loss_cls": cross entropy}``, and the batch's top-1 error (a fraction) is
    put as ``"cls_error"`` into the active event storage; eval -> ``(N, num_classes)`` softmax
    probabilities, averaged over each input's views.
    """

    def __init__(self, cfg):
        super().__init__(**_network_args(cfg))

    def forward(self, batched_inputs: List[Dict[str, Any]]):  # type: ignore[override]
        if not self.training:
            return self.inference(batched_inputs)
        images = [x["image"] for x in batched_inputs]
        if any(not torch.is_tensor(im) or im.dim() != 3 for im in images) or len({im.shape for im in images}) != 1:
            raise ValueError("training needs one (3, H, W) image per input, all of the same size")
        labels = torch.as_tensor([int(x["label"]) for x in batched_inputs], device=self.device)
        logits = super().forward(self.normalize(torch.stack(images)))
        storage = get_event_storage()
        if storage is not None:
            storage.put_scalar("cls_error", (logits.argmax(1) != labels).float().mean().item())
        return {"loss_cls": F.cross_entropy(logits.float(), labels)}

    @staticmethod
    def _views(image) -> List[torch.Tensor]:
        if isinstance(image, (list, tuple)):
            return list(image)
        if image.dim() == 3:
            return [image]
        if image.dim() == 4:
            return list(image.unbind(0))
        raise ValueError(f"an input image must be (3, H, W), (V, 3, h, w) or a list of (3, h, w); got {tuple(image.shape)}")

    def inference(self, batched_inputs: List[Dict[str, Any]]) -> torch.Tensor:
        """``(N, num_classes)`` softmax scores, averaged over each input's views. Views of equal size
        (across all inputs) run as one batch."""
        groups: Dict[Tuple[int, ...], List[Tuple[int, torch.Tensor]]] = defaultdict(list)
        for i, x in enumerate(batched_inputs):
            for view in self._views(x["image"]):
                groups[tuple(view.shape)].append((i, view))
        n = len(batched_inputs)
        scores = torch.zeros(n, self.num_classes, device=self.device)
        counts = torch.zeros(n, device=self.device)
        for members in groups.values():
            owners = torch.tensor([i for i, _ in members], device=self.device)
            logits = super().forward(self.normalize(torch.stack([v for _, v in members])))
            scores.index_add_(0, owners, F.softmax(logits.float(), dim=1))
            counts.index_add_(0, owners, torch.ones(len(members), device=self.device))
        return scores / counts[:, None]


class ClassificationTransform:
    """An image -> the ``(3, H, W)`` normalised float32 tensor a :class:`ResNetClassifier` takes
    (``model(transform(image)[None])``); build it with :func:`create_transform`.

    Steps: :func:`as_rgb_image` (arrays and tensors in ``image_format``), the shorter side resized to
    ``resize`` (antialiased bilinear, as the classification test loader), the centre
    ``crop_size`` x ``crop_size`` crop, the model's channel order, then :func:`normalize_images` with
    the model's mean and std as they were when the transform was made. Runs on the CPU; picklable,
    so it can serve as a dataset transform in ``DataLoader`` workers.
    """

    def __init__(self, input_format: str, pixel_mean: torch.Tensor, pixel_std: torch.Tensor,
                 mean_image: Optional[torch.Tensor] = None, resize: Optional[int] = None,
                 crop_size: Optional[int] = None, image_format: str = "RGB"):
        self.input_format, self.image_format = input_format, image_format
        self.pixel_mean, self.pixel_std, self.mean_image = pixel_mean, pixel_std, mean_image
        self.resize, self.crop_size = resize, crop_size

    def __call__(self, image: ImageLike) -> torch.Tensor:
        tensor = torch.from_numpy(as_rgb_image(image, self.image_format)).permute(2, 0, 1)
        if self.resize:
            tensor = TF.resize(tensor, [self.resize], antialias=True)
        if self.crop_size:
            tensor = TF.center_crop(tensor, [self.crop_size, self.crop_size])
        if self.input_format == "BGR":
            tensor = tensor.flip(0)
        return normalize_images(tensor.float(), self.pixel_mean, self.pixel_std, self.mean_image)


def create_transform(model: ResNetClassifier, resize: Optional[int] = None, crop_size: Optional[int] = None,
                     image_format: str = "RGB") -> ClassificationTransform:
    """The preprocessing of ``model`` (its input format, mean and std; make it after loading weights).

    ``image_format``: the channel order of the array and tensor images it will get (PIL images and
    paths are always RGB). ImageNet-style evaluation: ``resize=256, crop_size=224``; CIFAR models take
    their 32 x 32 images as they are (the default: no resize, no crop).
    """
    snapshot = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
    return ClassificationTransform(model.input_format, snapshot(model.pixel_mean), snapshot(model.pixel_std),
                                   snapshot(model.pixel_mean_image), resize, crop_size, image_format)


def _weights_conventions(weights: str) -> Dict[str, Any]:
    """Defaults that reproduce the network ``weights`` were trained as: torchvision files (by content,
    e.g. ``torchvision://resnet50`` or a saved torchvision state dict) are pytorch style, RGB, with
    torchvision's mean and std; other formats keep the config defaults."""
    from detres.modeling.weight_import import read_checkpoint, resolve

    fmt, _ = read_checkpoint(resolve(weights))
    if fmt == "torchvision":
        return dict(_TORCHVISION_INPUT)
    if fmt == "detres":
        logger.warning("%s is a detres state dict, which does not record the input convention it was trained "
                       "with: the defaults (msra style, BGR, Caffe mean/std) are used unless given, e.g. "
                       "style='pytorch', input_format='RGB', pixel_mean=..., pixel_std=...", weights)
    return {}


def create_model(
    name: str, num_classes: int = 1000, weights: Optional[str] = None, **overrides: Any
) -> ResNetClassifier:
    """A classifier ``name`` (``detres.list_backbones()``: ``resnet50``, ``plain34``, ``cifar_resnet20``, ...)
    in eval mode: ``model(x)`` maps a normalised ``(N, 3, H, W)`` float tensor to ``(N, num_classes)``
    logits; ``detres.create_transform(model)`` makes ``x`` from images.

    ``overrides``: backbone options as in :func:`detres.create_backbone` (``style="pytorch"``,
    ``norm="FrozenBN"``, ``shortcut="B"``, ``freeze_at``...) and input options ``pixel_mean``,
    ``pixel_std`` (3 values each, [0, 255] units, in ``input_format`` order), ``input_format``
    ("BGR"/"RGB"), ``per_pixel_mean`` (default: True for CIFAR models) and ``crop_size`` (the size of
    the per-pixel mean image; default 32 CIFAR / 224). ``weights``: path, URL or short scheme (see
    :mod:`detres.modeling.weight_import`); torchvision weights default to their conventions (pytorch
    style, RGB, torchvision's mean/std), so that the logits are torchvision's.
    """
    is_cifar = parse_backbone_name(name)[0]
    options = _weights_conventions(weights) if weights else {}
    options.update(overrides)
    model_keys = {"pixel_mean", "pixel_std", "input_format", "per_pixel_mean", "crop_size"}
    model_options = {k: options.pop(k) for k in model_keys & set(options)}
    cfg = backbone_cfg(name, out_features=["linear"], **options)
    cfg.merge_from_dict(
        {
            "MODEL": {
                "CLASSIFIER": {"NUM_CLASSES": num_classes},
                **{k.upper(): v for k, v in model_options.items() if k.startswith("pixel_")},
            },
            "INPUT": {
                "FORMAT": model_options.get("input_format", cfg.INPUT.FORMAT),
                "CLS": {
                    "PER_PIXEL_MEAN": bool(model_options.get("per_pixel_mean", is_cifar)),
                    "CROP_SIZE": int(model_options.get("crop_size", 32 if is_cifar else 224)),
                },
            },
        },
        source=f"create_model({name!r})",
    )
    model = ResNetClassifier(**_network_args(cfg))
    if weights:
        from detres.modeling.weight_import import load_weights

        load_weights(model, weights)  # matches names up to the "backbone." prefix
    return model.eval()
