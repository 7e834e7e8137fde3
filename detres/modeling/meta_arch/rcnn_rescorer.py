"""The R-CNN rescoring stage of the ResNet paper's ImageNet localization (Appendix C), registered as
``"RCNNRescorer"``.

Each class-dependent proposal is cropped from the image and warped to ``MODEL.RESCORER.INPUT_SIZE``
squared pixels (:func:`warp_regions`), then a ResNet classification trunk (global average pooled) feeds
two sibling fc layers, reused from Fast R-CNN (:class:`~detres.modeling.roi_heads.box_predictor.BoxPredictor`):
``box_predictor.cls_score`` ``(R, C + 1)`` (softmax over the C classes and background, background
LAST) and ``box_predictor.bbox_pred`` ``(R, 4C)`` per-class deltas (box coder weights
``MODEL.RESCORER.BBOX_REG_WEIGHTS``). ``C`` is ``MODEL.CLASSIFIER.NUM_CLASSES``, as for the localizer.

The trunk is ``MODEL.RESNETS`` / ``MODEL.CIFAR_RESNETS`` up to its last stage, named ``backbone.*`` as
in a classifier, so a detres classifier checkpoint (``MODEL.WEIGHTS``) fills it; the classifier's
``backbone.linear`` is reported unexpected and ignored. Images are normalised with
``MODEL.PIXEL_MEAN`` / ``MODEL.PIXEL_STD`` (per channel; a per-pixel mean image is not used).

Training proposals come from a frozen per-class RPN localizer (``MODEL.RESCORER.LOCALIZER_CONFIG`` and
``LOCALIZER_WEIGHTS``), run in eval mode without gradients; it is kept outside the module tree, so it is
not in ``state_dict()``, ``parameters()`` or the optimizer, and ``train()`` leaves it in eval mode.
All boxes are XYXY in absolute pixels of the network input.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_iou, roi_align

from detres.modeling.backbone import build_backbone
from detres.config import ConfigError
from detres.modeling.box_coder import BoxCoder
from detres.modeling.box_ops import clip_boxes
from detres.modeling.matcher import Matcher
from detres.modeling.meta_arch.build import META_ARCH_REGISTRY
from detres.modeling.meta_arch.class_predictor import load_attached_model
from detres.modeling.meta_arch.classifier import normalize_images
from detres.modeling.meta_arch.loc_inputs import input_gt_boxes, input_label, input_name
from detres.modeling.roi_heads.box_predictor import BoxPredictor
from detres.modeling.sampler import BalancedSampler
from detres.utils.events import get_event_storage

__all__ = ["RCNNRescorer", "context_boxes", "warp_regions"]

# Backbone builder name -> (its config node, the last stage: the trunk's output feature).
_TRUNK_LAST_STAGE = {"resnet": ("RESNETS", "res5"), "cifar_resnet": ("CIFAR_RESNETS", "res4")}


def context_boxes(boxes: torch.Tensor, output_size: int, context_pad: int) -> torch.Tensor:
    """``(R, 4)`` boxes grown about their centres so that, warped to ``output_size`` pixels, the
    original box fills the central ``output_size - 2 * context_pad`` pixels: R-CNN's context padding
    ``p``, counted in pixels of the WARPED region (``context_pad = 0``: the boxes themselves)."""
    if context_pad == 0:
        return boxes
    factor = output_size / (output_size - 2 * context_pad)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return torch.cat([centres - half, centres + half], dim=1)


def warp_regions(image: torch.Tensor, boxes: torch.Tensor, output_size: int, context_pad: int = 0,
                 sampling_ratio: int = 0) -> torch.Tensor:
    """Crop every box from ``image`` ``(3, H, W)`` (float) and warp it (anisotropically) to
    ``(R, 3, output_size, output_size)``, bilinearly (``roi_align`` with ``aligned=True``: pixel ``i``
    covers ``[i, i + 1)``, so a box ``output_size`` pixels wide on integer coordinates gives back its
    pixels exactly; samples closer than half a pixel to the box's edge blend in the pixels just outside
    it, as any interpolation between pixel centres does). ``boxes``: ``(R, 4)``; ``context_pad``: see
    :func:`context_boxes`. Samples more than a pixel outside the image are 0, i.e. the mean colour in a
    normalised image (R-CNN's padding); within a pixel, the border pixel.
    ``sampling_ratio``: bilinear samples per output pixel side, 0 for ``ceil(box side / output_size)``
    (an area average when shrinking)."""
    regions = context_boxes(boxes.to(image.dtype), output_size, context_pad)
    return roi_align(image[None], [regions], output_size, 1.0, sampling_ratio, aligned=True)


def _load_localizer(cfg) -> Optional[nn.Module]:
    """The frozen localizer of ``MODEL.RESCORER.LOCALIZER_CONFIG`` with ``LOCALIZER_WEIGHTS``, in eval
    mode on ``MODEL.DEVICE``; ``None`` when no config is set (proposals must then come with the inputs).
    It must take this model's images (``INPUT.FORMAT``) and have its classes."""
    r = cfg.MODEL.RESCORER
    if not r.LOCALIZER_CONFIG:
        return None
    key = "MODEL.RESCORER.LOCALIZER_CONFIG"
    localizer, loc_cfg = load_attached_model(r.LOCALIZER_CONFIG, r.LOCALIZER_WEIGHTS, key, cfg.MODEL.DEVICE)
    if not hasattr(localizer, "class_proposals"):
        raise ConfigError(f"{key}: {r.LOCALIZER_CONFIG} builds a {type(localizer).__name__}, which has no "
                          f"class_proposals() (expected a PerClassRPNLocalizer)")
    num_classes = getattr(localizer, "num_classes", None)
    if loc_cfg.INPUT.FORMAT != cfg.INPUT.FORMAT or num_classes != cfg.MODEL.CLASSIFIER.NUM_CLASSES:
        raise ConfigError(f"{key}: the localizer takes {loc_cfg.INPUT.FORMAT} images and has {num_classes} classes; "
                          f"the rescorer {cfg.INPUT.FORMAT} and {cfg.MODEL.CLASSIFIER.NUM_CLASSES}")
    return localizer


@META_ARCH_REGISTRY.register()
class RCNNRescorer(nn.Module):
    """Rescores and refines class-dependent proposals (paper, Appendix C).

    Training inputs (``INPUT.LOC.TRAIN_MODE "image"``): ``List[dict]`` with ``"image"`` ``(3, H, W)``
    uint8 in ``INPUT.FORMAT`` order, ``"label"`` int in ``[0, C)``, ``"gt_boxes"`` ``(K, 4)`` (K >= 0)
    and optionally ``"proposals"`` ``(P, 4)``; without it the attached localizer gives the
    ``PROPOSALS_PER_CLASS`` best boxes of the ground-truth class. The ground-truth boxes are appended,
    regions with IoU >= ``IOU_THRESHOLD`` with a ground-truth box are the class, the others background,
    and ``BATCH_SIZE_PER_IMAGE`` are sampled per image, at most ``POSITIVE_FRACTION`` positive.
    Returns ``{"loss_rescore_cls", "loss_rescore_reg"}``: cross-entropy over the sampled regions and
    smooth L1 (beta ``SMOOTH_L1_BETA``) on the ground-truth class's deltas of the positives, both summed
    and divided by the number of sampled regions.

    Eval inputs: the same images with ``"proposals"`` ``(P, 4)`` and ``"proposal_classes"`` ``(P,)``;
    returns per image ``{"scores": (P,), "boxes": (P, 4)}`` (:meth:`rescore`).
    """

    def __init__(self, cfg):
        super().__init__()
        r = cfg.MODEL.RESCORER
        if cfg.MODEL.BACKBONE.NAME not in _TRUNK_LAST_STAGE:
            raise ValueError(f"RCNNRescorer needs a ResNet trunk (MODEL.BACKBONE.NAME one of "
                             f"{sorted(_TRUNK_LAST_STAGE)}), got {cfg.MODEL.BACKBONE.NAME!r}")
        if not 0 <= 2 * r.CONTEXT_PAD < r.INPUT_SIZE:
            raise ValueError(f"MODEL.RESCORER.CONTEXT_PAD must lie in [0, INPUT_SIZE / 2), got {r.CONTEXT_PAD} "
                             f"for INPUT_SIZE {r.INPUT_SIZE}")
        if r.TEST_CHUNK <= 0 or r.PROPOSALS_PER_CLASS <= 0:
            raise ValueError(f"MODEL.RESCORER.TEST_CHUNK and PROPOSALS_PER_CLASS must be positive, got "
                             f"{r.TEST_CHUNK} and {r.PROPOSALS_PER_CLASS}")
        node, self.trunk_feature = _TRUNK_LAST_STAGE[cfg.MODEL.BACKBONE.NAME]
        trunk_cfg = cfg.clone()
        trunk_cfg.defrost()
        trunk_cfg.MODEL[node].OUT_FEATURES = [self.trunk_feature]
        self.backbone = build_backbone(trunk_cfg)
        self.num_classes = cfg.MODEL.CLASSIFIER.NUM_CLASSES
        self.box_predictor = BoxPredictor(
            self.backbone.output_shape()[self.trunk_feature].channels,
            self.num_classes,
            BoxCoder(r.BBOX_REG_WEIGHTS),
            loss_type="smooth_l1",
            smooth_l1_beta=r.SMOOTH_L1_BETA,
        )
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1), persistent=False)
        self.input_size, self.context_pad, self.sampling_ratio = r.INPUT_SIZE, r.CONTEXT_PAD, r.SAMPLING_RATIO
        self.matcher = Matcher([r.IOU_THRESHOLD], [0, 1])
        self.sampler = BalancedSampler(r.BATCH_SIZE_PER_IMAGE, r.POSITIVE_FRACTION)
        self.proposals_per_class, self.test_chunk = r.PROPOSALS_PER_CLASS, r.TEST_CHUNK
        self.attach_localizer(_load_localizer(cfg))

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def attach_localizer(self, localizer: Optional[nn.Module]) -> None:
        """Use ``localizer`` (frozen, eval mode; ``None``: none) for the training proposals of inputs
        without ``"proposals"``. It is stored outside the module tree: not saved, not trained, not moved
        by ``.to()`` (it follows the rescorer's device when called)."""
        if localizer is not None:
            localizer.requires_grad_(False).eval()
        object.__setattr__(self, "localizer", localizer)

    # ------------------------------------------------------------------ regions
    def normalized_image(self, x: Dict[str, Any]) -> torch.Tensor:
        """The input's ``(3, H, W)`` image as normalised float32 on the model's device."""
        image = x["image"]
        if not torch.is_tensor(image) or image.dim() != 3 or image.shape[0] != 3:
            shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
            raise ValueError(f"{input_name(x)}: expected a (3, H, W) image tensor, got {shape}")
        return normalize_images(image.to(self.device, torch.float32), self.pixel_mean, self.pixel_std)

    def warp(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """:func:`warp_regions` with the model's size, context and sampling: ``(R, 3, S, S)``."""
        return warp_regions(image, boxes, self.input_size, self.context_pad, self.sampling_ratio)

    def predict(self, regions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Warped regions ``(R, 3, S, S)`` -> class logits ``(R, C + 1)`` and per-class deltas ``(R, 4C)``."""
        features = self.backbone(regions)[self.trunk_feature].mean(dim=(2, 3))
        return self.box_predictor(features)

    # ------------------------------------------------------------------ training
    def forward(self, batched_inputs: List[Dict[str, Any]]
                ) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        if not self.training:
            return self.inference(batched_inputs)
        proposals = self.training_proposals(batched_inputs)
        regions, boxes, classes, matched = [], [], [], []
        for x, props in zip(batched_inputs, proposals):
            sample = self.label_and_sample(x, props)
            regions.append(self.warp(self.normalized_image(x), sample[0]))
            for store, value in zip((boxes, classes, matched), sample):
                store.append(value)
        classes_all = torch.cat(classes)
        storage = get_event_storage()
        if storage is not None:
            num_fg = int((classes_all < self.num_classes).sum())
            storage.put_scalar("rescorer/num_fg_samples", num_fg / len(batched_inputs))
            storage.put_scalar("rescorer/num_bg_samples", (len(classes_all) - num_fg) / len(batched_inputs))
        predictions = self.predict(torch.cat(regions))
        losses = self.box_predictor.losses(predictions, torch.cat(boxes), classes_all, torch.cat(matched))
        return {"loss_rescore_cls": losses["loss_cls"], "loss_rescore_reg": losses["loss_box_reg"]}

    @torch.no_grad()
    def training_proposals(self, batched_inputs: List[Dict[str, Any]]) -> List[torch.Tensor]:
        """Per input: its ``"proposals"`` ``(P, 4)``, or the localizer's best ``PROPOSALS_PER_CLASS`` boxes
        of its ``"label"`` (the localizer runs once on the inputs lacking proposals)."""
        missing = [x for x in batched_inputs if "proposals" not in x]
        if missing and self.localizer is None:
            raise ValueError(f"{input_name(missing[0])}: no 'proposals' in the input and no localizer attached "
                             f"(set MODEL.RESCORER.LOCALIZER_CONFIG and LOCALIZER_WEIGHTS)")
        generated = iter(self._localizer_proposals(missing) if missing else [])
        out = []
        for x in batched_inputs:
            boxes = x["proposals"] if "proposals" in x else next(generated)
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device)
            if boxes.dim() != 2 or boxes.shape[1] != 4:
                raise ValueError(f"{input_name(x)}: proposals must be (P, 4), got {tuple(boxes.shape)}")
            out.append(boxes)
        return out

    def _localizer_proposals(self, batched_inputs: List[Dict[str, Any]]) -> List[torch.Tensor]:
        """The attached localizer's best boxes ``(P, 4)`` for each input's ground-truth class."""
        localizer = self.localizer.to(self.device).eval()
        classes = [torch.tensor([input_label(x, self.num_classes)], device=self.device) for x in batched_inputs]
        boxes, _ = localizer.class_proposals(batched_inputs, classes, self.proposals_per_class)
        return [b.reshape(-1, 4) for b in boxes]

    @torch.no_grad()
    def label_and_sample(self, x: Dict[str, Any], proposals: torch.Tensor
                         ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One input's sampled regions: boxes ``(S, 4)`` (its proposals plus ``"gt_boxes"``), classes
        ``(S,)`` (the label, or C: background) and matched ground-truth boxes ``(S, 4)`` (zeros when K = 0),
        positives first."""
        label = input_label(x, self.num_classes)
        gt_boxes = input_gt_boxes(x, self.device)
        boxes = torch.cat([proposals, gt_boxes])
        matches, labels = self.matcher(box_iou(gt_boxes, boxes))
        classes = torch.where(labels == 1, label, self.num_classes).to(torch.int64)
        matched = gt_boxes[matches] if len(gt_boxes) else torch.zeros_like(boxes)
        fg, bg = self.sampler(labels == 1, labels == 0)
        idx = torch.cat([fg, bg])
        return boxes[idx], classes[idx], matched[idx]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def rescore(self, batched_inputs: List[Dict[str, Any]], proposals: Sequence[torch.Tensor],
                classes: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Per input: the softmax probability ``(P,)`` of the given class for each proposal and the
        proposal ``(P, 4)`` refined by that class's deltas, clipped to the input image.

        ``proposals``: per input ``(P, 4)`` in the input image's pixels; ``classes``: per input ``(P,)``
        int64 in ``[0, C)``. Regions go through the network ``TEST_CHUNK`` at a time.
        """
        if not len(batched_inputs) == len(proposals) == len(classes):
            raise ValueError(f"rescore got {len(batched_inputs)} inputs, {len(proposals)} proposal lists and "
                             f"{len(classes)} class lists")
        all_scores, all_boxes = [], []
        for x, boxes, cls in zip(batched_inputs, proposals, classes):
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
            cls = torch.as_tensor(cls, dtype=torch.int64, device=self.device).reshape(-1)
            if len(cls) != len(boxes) or (len(cls) and (cls.min() < 0 or cls.max() >= self.num_classes)):
                raise ValueError(f"{input_name(x)}: rescore needs one class in [0, {self.num_classes}) per "
                                 f"proposal; got {len(boxes)} proposals and classes {cls.tolist()[:10]}")
            image = self.normalized_image(x)
            chunks = [self._rescore_chunk(image, b, c)
                      for b, c in zip(boxes.split(self.test_chunk), cls.split(self.test_chunk))]
            all_scores.append(torch.cat([s for s, _ in chunks]))
            all_boxes.append(torch.cat([b for _, b in chunks]))
        return all_scores, all_boxes

    def _rescore_chunk(self, image: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(R,)`` and refined, clipped boxes ``(R, 4)`` of ``R`` proposals of one image."""
        logits, deltas = self.predict(self.warp(image, boxes))
        rows = torch.arange(len(boxes), device=boxes.device)
        scores = F.softmax(logits.float(), dim=1)[rows, classes]
        class_deltas = deltas.view(len(boxes), self.num_classes, 4)[rows, classes]
        refined = self.box_predictor.box_coder.decode(class_deltas, boxes)
        return scores, clip_boxes(refined, tuple(image.shape[-2:]))

    def inference(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, torch.Tensor]]:
        """:meth:`rescore` of each input's ``"proposals"`` and ``"proposal_classes"``:
        per input ``{"scores": (P,), "boxes": (P, 4)}`` in input pixels."""
        for x in batched_inputs:
            if "proposals" not in x or "proposal_classes" not in x:
                raise ValueError(f"{input_name(x)}: RCNNRescorer evaluates given proposals: the input needs "
                                 f"'proposals' (P, 4) and 'proposal_classes' (P,); the localizer runs the pipeline")
        scores, boxes = self.rescore(batched_inputs, [x["proposals"] for x in batched_inputs],
                                     [x["proposal_classes"] for x in batched_inputs])
        return [{"scores": s, "boxes": b} for s, b in zip(scores, boxes)]
