"""Image classification: a ResNet backbone with its ``linear`` head, plus input normalisation.

``ImageClassifier(cfg)`` (registered as ``MODEL.META_ARCHITECTURE: ImageClassifier``) and
``create_model(name, num_classes, weights, **overrides)``, the public one-line constructor.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detres.modeling.backbone.build import backbone_cfg, build_backbone, parse_backbone_name
from detres.modeling.meta_arch.build import META_ARCH_REGISTRY
from detres.utils.events import get_event_storage

__all__ = ["ImageClassifier", "create_model"]

# The config node whose OUT_FEATURES a registered backbone reads.
_OUT_FEATURES_NODE = {"resnet": "RESNETS", "cifar_resnet": "CIFAR_RESNETS"}
# Input conventions of torchvision's ImageNet weights: RGB, (x / 255 - mean) / std in [0, 255] units.
_TORCHVISION_INPUT = dict(
    style="pytorch", input_format="RGB", pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]
)


def _with_linear_output(cfg):
    """A copy of ``cfg`` whose backbone outputs include ``linear``."""
    node_name = _OUT_FEATURES_NODE.get(cfg.MODEL.BACKBONE.NAME)
    if node_name is None or "linear" in cfg.MODEL[node_name].OUT_FEATURES:
        return cfg
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL[node_name].OUT_FEATURES = list(cfg.MODEL[node_name].OUT_FEATURES) + ["linear"]
    return cfg


@META_ARCH_REGISTRY.register()
class ImageClassifier(nn.Module):
    """``backbone(normalize(image))["linear"]`` -> class scores.

    Inputs: ``List[dict]``, one per image, with ``"image"``: a uint8/float tensor in [0, 255] and
    ``cfg.INPUT.FORMAT`` channel order -- ``(3, H, W)`` (one view), ``(V, 3, h, w)`` (e.g. ten crops)
    or a list of ``(3, h_i, w_i)`` (e.g. multi-scale; the global pooling makes any size valid) --
    and, for training, ``"label"``: int in ``[0, num_classes)``.

    Normalisation: ``(x - mean) / MODEL.PIXEL_STD`` where ``mean`` is ``MODEL.PIXEL_MEAN`` per channel,
    or with ``INPUT.CLS.PER_PIXEL_MEAN`` the buffer ``pixel_mean_image`` ``(3, S, S)``
    (``S = INPUT.CLS.CROP_SIZE``; bilinearly resized for views of another size). That buffer starts
    as the per-channel mean and is set from the training set by :meth:`set_pixel_mean_image`
    (the trainer passes the train loader's ``pixel_mean_image``); it is saved in checkpoints.

    Outputs: training -> ``{"loss_cls": cross entropy}``, and the batch's top-1 error (a fraction) is
    put as ``"cls_error"`` into the active event storage; eval -> ``(N, num_classes)`` softmax
    probabilities, averaged over each input's views.
    """

    def __init__(self, cfg):
        super().__init__()
        cfg = _with_linear_output(cfg)
        self.backbone = build_backbone(cfg)
        shapes = self.backbone.output_shape()
        if "linear" not in shapes:
            raise ValueError(f"backbone {cfg.MODEL.BACKBONE.NAME!r} has no 'linear' output; outputs: {list(shapes)}")
        self.num_classes = shapes["linear"].channels
        self.input_format = cfg.INPUT.FORMAT
        for key in ("PIXEL_MEAN", "PIXEL_STD"):
            if len(cfg.MODEL[key]) != 3:
                raise ValueError(f"MODEL.{key} needs 3 values, got {list(cfg.MODEL[key])}")
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1), persistent=False)
        self.pixel_mean_image: Optional[torch.Tensor]
        if cfg.INPUT.CLS.PER_PIXEL_MEAN:
            size = cfg.INPUT.CLS.CROP_SIZE
            self.register_buffer("pixel_mean_image", self.pixel_mean.expand(3, size, size).clone())
        else:
            self.pixel_mean_image = None

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @torch.no_grad()
    def set_pixel_mean_image(self, mean_image: torch.Tensor) -> None:
        """Use ``mean_image`` ``(3, S, S)`` (``INPUT.FORMAT`` order, [0, 255]) as the per-pixel mean."""
        if self.pixel_mean_image is None:
            raise RuntimeError("this model was built with INPUT.CLS.PER_PIXEL_MEAN False: it has no per-pixel mean")
        if mean_image.shape != self.pixel_mean_image.shape:
            raise ValueError(
                f"mean image of shape {tuple(mean_image.shape)} does not match the model's "
                f"{tuple(self.pixel_mean_image.shape)} (3, INPUT.CLS.CROP_SIZE, INPUT.CLS.CROP_SIZE)"
            )
        self.pixel_mean_image.copy_(mean_image)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 255] -> normalised float ``(N, 3, H, W)`` on the model's device."""
        images = images.to(self.device, non_blocking=True).float()
        mean = self.pixel_mean
        if self.pixel_mean_image is not None:
            mean = self.pixel_mean_image
            if mean.shape[-2:] != images.shape[-2:]:
                mean = F.interpolate(mean[None], size=images.shape[-2:], mode="bilinear", align_corners=False)[0]
        return (images - mean) / self.pixel_std

    def forward(self, batched_inputs: List[Dict[str, Any]]):
        if not self.training:
            return self.inference(batched_inputs)
        images = [x["image"] for x in batched_inputs]
        if any(not torch.is_tensor(im) or im.dim() != 3 for im in images) or len({im.shape for im in images}) != 1:
            raise ValueError("training needs one (3, H, W) image per input, all of the same size")
        labels = torch.as_tensor([int(x["label"]) for x in batched_inputs], device=self.device)
        logits = self.backbone(self.normalize(torch.stack(images)))["linear"]
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
            logits = self.backbone(self.normalize(torch.stack([v for _, v in members])))["linear"]
            scores.index_add_(0, owners, F.softmax(logits.float(), dim=1))
            counts.index_add_(0, owners, torch.ones(len(members), device=self.device))
        return scores / counts[:, None]


def create_model(
    name: str, num_classes: int = 1000, weights: Optional[str] = None, **overrides: Any
) -> ImageClassifier:
    """A classifier ``name`` (``detres.list_backbones()``: ``resnet50``, ``plain34``, ``cifar_resnet20``, ...).

    ``overrides``: backbone options as in :func:`detres.create_backbone` (``style="pytorch"``,
    ``norm="FrozenBN"``, ``shortcut="B"``, ``freeze_at``...) and model options ``pixel_mean``,
    ``pixel_std`` (3 values each, in ``input_format`` order), ``input_format`` ("BGR"/"RGB"),
    ``per_pixel_mean`` (default: True for CIFAR models) and ``crop_size`` (default 32 CIFAR / 224).
    ``weights``: path, URL or short scheme (see :mod:`detres.modeling.weight_import`);
    ``torchvision://...`` weights default to their conventions (pytorch style, RGB, torchvision's
    mean/std). The model is returned in eval mode: ``model([{"image": img}])`` -> ``(1, num_classes)``.
    """
    is_cifar = parse_backbone_name(name)[0]
    options = dict(_TORCHVISION_INPUT) if weights and weights.startswith("torchvision://") else {}
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
    model = ImageClassifier(cfg)
    if weights:
        from detres.modeling.weight_import import load_weights

        load_weights(model, weights)  # matches names up to the "backbone." prefix
    return model.eval()
