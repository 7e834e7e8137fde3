"""The ImageNet localizer of the ResNet paper (Appendix C), registered as ``"PerClassRPNLocalizer"``:
a ResNet backbone (its weights from a detres classifier checkpoint) and a per-class RPN
(:mod:`detres.modeling.proposal_generator.per_class_rpn`) on one of its feature maps.

Test-time pipeline, per image: the attached classifiers (``MODEL.LOCALIZER.CLASSIFIER_CONFIGS`` /
``CLASSIFIER_WEIGHTS``, softmax averaged) give the top-5 classes; the per-class RPN gives, for each of
them and for the ground-truth class, its best box -- or, with an attached R-CNN rescorer
(``MODEL.LOCALIZER.RESCORER_CONFIG`` / ``RESCORER_WEIGHTS``), its ``POST_NMS_TOPK_TEST`` (200) best
boxes, which the rescorer scores and refines before the best is taken (ranked by the rescorer's
probability, or its product with the RPN's: ``MODEL.LOCALIZER.RESCORED_SCORE``). Attached models are
loaded when the localizer is built and are not part of its ``state_dict()`` (see :mod:`.class_predictor`).

An input ``"image"`` is a ``(3, H, W)`` tensor or a list of such views covering the same region (e.g.
the shorter sides of multi-scale dense testing): each view is run fully convolutionally, its boxes
brought to the first view's pixels and merged by per-class NMS. ``"crop_box"`` ``[x0, y0, x1, y1]`` is
the region of the original image that the input covers: a box ``(x, y)`` of an ``H' x W'`` input is
``(x0 + x (x1 - x0) / W', y0 + y (y1 - y0) / H')`` in the original. All boxes are XYXY absolute pixels.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from detres.config import ConfigError
from detres.modeling.backbone import build_backbone
from detres.modeling.box_ops import clip_boxes, scale_boxes
from detres.modeling.meta_arch.build import META_ARCH_REGISTRY
from detres.modeling.meta_arch.class_predictor import ClassifierEnsemble, load_attached_model
from detres.modeling.meta_arch.classifier import normalize_images
from detres.modeling.meta_arch.loc_inputs import input_gt_boxes, input_label, input_name
from detres.modeling.proposal_generator.per_class_rpn import PerClassRPN, select_per_class

__all__ = ["NUM_GUESSES", "PerClassRPNLocalizer", "boxes_to_original", "input_views"]

NUM_GUESSES = 5  # ILSVRC: five (class, box) guesses per image
RESCORED_SCORES = ("rescorer", "product")  # MODEL.LOCALIZER.RESCORED_SCORE


def input_views(x: Dict[str, Any]) -> List[torch.Tensor]:
    """The ``(3, H_v, W_v)`` views of an input's ``"image"``: a tensor ``(3, H, W)``, ``(V, 3, H, W)``
    or a list of ``(3, H_v, W_v)`` tensors."""
    image = x["image"]
    views = list(image) if isinstance(image, (list, tuple)) or image.dim() == 4 else [image]
    if not views or any(not torch.is_tensor(v) or v.dim() != 3 or v.shape[0] != 3 for v in views):
        shape = [tuple(v.shape) for v in views] if isinstance(image, (list, tuple)) else tuple(image.shape)
        raise ValueError(f"{input_name(x)}: 'image' must be (3, H, W), (V, 3, H, W) or a list of (3, H, W) tensors, "
                         f"got {shape}")
    return views


def boxes_to_original(boxes: torch.Tensor, input_size: Tuple[int, int], crop_box: Sequence[float]) -> torch.Tensor:
    """``(P, 4)`` boxes in pixels of an input of size ``(H', W')`` that covers ``crop_box``
    ``[x0, y0, x1, y1]`` of the original image -> ``(P, 4)`` in original pixels."""
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    scaled = scale_boxes(boxes, (x1 - x0) / input_size[1], (y1 - y0) / input_size[0])
    return scaled + scaled.new_tensor([x0, y0, x0, y0])


def _backbone_cfg(cfg):
    """``cfg`` with the backbone's outputs reduced to ``MODEL.PER_CLASS_RPN.IN_FEATURE`` (no ``linear``)."""
    cfg = cfg.clone()
    cfg.defrost()
    for node in ("RESNETS", "CIFAR_RESNETS"):
        cfg.MODEL[node].OUT_FEATURES = [cfg.MODEL.PER_CLASS_RPN.IN_FEATURE]
    return cfg


@META_ARCH_REGISTRY.register()
class PerClassRPNLocalizer(nn.Module):
    """Backbone + per-class RPN, with optional attached classifiers and rescorer (module docstring).

    Training inputs: ``List[dict]`` with ``"image"`` ``(3, S, S)`` uint8 in ``INPUT.FORMAT`` order,
    ``"label"`` int and ``"gt_boxes"`` ``(K, 4)`` (``K >= 0``) in crop pixels; returns
    ``{"loss_loc_cls", "loss_loc_reg"}``.

    Eval inputs: ``"image"`` (a view or a list of views), optionally ``"label"``, ``"crop_box"``,
    ``"height"``, ``"width"`` (the original size; default: the first view's). Returns per image, boxes
    in original pixels clipped to the image: ``"gt_class_box"`` ``(4,)`` (when the input has a label)
    and, with attached classifiers, ``"pred_classes"`` ``(5,)`` int64 (best first), ``"scores"`` ``(5,)``
    (their averaged softmax probabilities) and ``"pred_boxes"`` ``(5, 4)``.
    """

    def __init__(self, cfg):
        super().__init__()
        try:
            self.backbone = build_backbone(_backbone_cfg(cfg))
        except ValueError as e:
            raise ConfigError(f"MODEL.PER_CLASS_RPN.IN_FEATURE {cfg.MODEL.PER_CLASS_RPN.IN_FEATURE!r}: {e}") from e
        self.per_class_rpn = PerClassRPN(cfg, self.backbone.output_shape())
        self.num_classes = self.per_class_rpn.num_classes
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1), persistent=False)
        self.input_format = cfg.INPUT.FORMAT
        self.proposals_per_class = cfg.MODEL.PER_CLASS_RPN.POST_NMS_TOPK_TEST
        self.nms_thresh = cfg.MODEL.PER_CLASS_RPN.NMS_THRESH
        classifiers = ClassifierEnsemble.from_config(cfg)
        if classifiers is not None and classifiers.num_classes != self.num_classes:
            raise ConfigError(f"the attached classifiers have {classifiers.num_classes} classes but the localizer "
                              f"{self.num_classes} (MODEL.CLASSIFIER.NUM_CLASSES)")
        # Plain attributes, not submodules: not in state_dict(), parameters() or the optimizer.
        object.__setattr__(self, "classifiers", classifiers)
        object.__setattr__(self, "rescorer", self._load_rescorer(cfg))
        self.rescored_score = cfg.MODEL.LOCALIZER.RESCORED_SCORE
        if self.rescored_score not in RESCORED_SCORES:
            raise ConfigError(f"MODEL.LOCALIZER.RESCORED_SCORE must be one of {RESCORED_SCORES}, "
                              f"got {self.rescored_score!r}")

    def _load_rescorer(self, cfg) -> Optional[nn.Module]:
        loc = cfg.MODEL.LOCALIZER
        if not loc.RESCORER_CONFIG:
            return None
        # the rescorer's own training localizer is not needed to rescore
        rescorer, rescorer_cfg = load_attached_model(
            loc.RESCORER_CONFIG, loc.RESCORER_WEIGHTS, "MODEL.LOCALIZER.RESCORER_CONFIG", cfg.MODEL.DEVICE,
            ["MODEL.RESCORER.LOCALIZER_CONFIG", "", "MODEL.RESCORER.LOCALIZER_WEIGHTS", ""],
            weights_key="MODEL.LOCALIZER.RESCORER_WEIGHTS")
        if not hasattr(rescorer, "rescore"):
            raise ConfigError(f"MODEL.LOCALIZER.RESCORER_CONFIG: {loc.RESCORER_CONFIG} builds a "
                              f"{type(rescorer).__name__}, which has no rescore()")
        if rescorer_cfg.INPUT.FORMAT != self.input_format or rescorer.num_classes != self.num_classes:
            raise ConfigError(f"MODEL.LOCALIZER.RESCORER_CONFIG: the rescorer takes {rescorer_cfg.INPUT.FORMAT} "
                              f"images and has {rescorer.num_classes} classes; the localizer {self.input_format} "
                              f"and {self.num_classes}")
        return rescorer

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` in [0, 255] -> normalised float32 on the model's device."""
        return normalize_images(images.to(self.device, torch.float32), self.pixel_mean, self.pixel_std)

    def forward(self, batched_inputs: List[Dict[str, Any]]
                ) -> Union[Dict[str, torch.Tensor], List[Dict[str, torch.Tensor]]]:
        if not self.training:
            return self.inference(batched_inputs)
        images = [x["image"] for x in batched_inputs]
        if any(not torch.is_tensor(im) or im.dim() != 3 for im in images) or len({im.shape for im in images}) != 1:
            raise ValueError("localizer training needs one (3, S, S) crop per input, all of the same size; got "
                             f"{[tuple(im.shape) if torch.is_tensor(im) else type(im).__name__ for im in images]}")
        labels = torch.as_tensor([input_label(x, self.num_classes) for x in batched_inputs], device=self.device)
        gt_boxes = [input_gt_boxes(x, self.device) for x in batched_inputs]
        features = self.backbone(self.normalize(torch.stack(images)))
        return self.per_class_rpn.losses(features, labels, gt_boxes)

    # ------------------------------------------------------------------ proposals
    @torch.no_grad()
    def propose(self, batched_inputs: List[Dict[str, Any]], classes: Sequence[torch.Tensor],
                topk: int) -> List[Dict[str, torch.Tensor]]:
        """Boxes of the distinct classes ``classes[i]`` ``(k_i,)`` on input ``i``: per input
        ``{"boxes" (P, 4) in pixels of its first view, "scores" (P,), "classes" (P,) int64}``, at most
        ``topk`` per class, grouped by class (ascending), best first in a group. Views of equal size
        (across inputs) run as one batch; an input's views are merged by per-class NMS."""
        views = [input_views(x) for x in batched_inputs]
        groups: Dict[Tuple[int, ...], List[Tuple[int, torch.Tensor]]] = defaultdict(list)
        for i, image_views in enumerate(views):
            for view in image_views:
                groups[tuple(view.shape)].append((i, view))
        parts: List[List[Dict[str, torch.Tensor]]] = [[] for _ in batched_inputs]
        for shape, members in groups.items():
            features = self.backbone(self.normalize(torch.stack([v for _, v in members])))
            owners = [i for i, _ in members]
            found = self.per_class_rpn.inference(features, [shape[-2:]] * len(members), [classes[i] for i in owners],
                                                 topk)
            for i, result in zip(owners, found):
                first = views[i][0].shape[-2:]
                result["boxes"] = scale_boxes(result["boxes"], first[1] / shape[-1], first[0] / shape[-2])
                parts[i].append(result)
        merged = []
        for image_parts in parts:
            joined = {k: torch.cat([p[k] for p in image_parts]) for k in ("boxes", "scores", "classes")}
            keep = select_per_class(joined["boxes"], joined["scores"], joined["classes"], self.nms_thresh, topk)
            merged.append({k: v[keep] for k, v in joined.items()})
        return merged

    def class_proposals(self, batched_inputs: List[Dict[str, Any]], classes: Sequence[torch.Tensor],
                        topk: int) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """:meth:`propose` as per-input box ``(P, 4)`` and score ``(P,)`` lists (the R-CNN rescorer's
        training proposals: one class per input)."""
        proposals = self.propose(batched_inputs, classes, topk)
        return [p["boxes"] for p in proposals], [p["scores"] for p in proposals]

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, torch.Tensor]]:
        """Per-image outputs of the class docstring."""
        views = [[v.to(self.device) for v in input_views(x)] for x in batched_inputs]
        top_scores = top_classes = None
        if self.classifiers is not None:
            probabilities = self.classifiers(views, self.input_format)
            top_scores, top_classes = probabilities.topk(min(NUM_GUESSES, self.num_classes), dim=1)
        wanted = []
        for i, x in enumerate(batched_inputs):
            found = [] if top_classes is None else top_classes[i].tolist()
            label = input_label(x, self.num_classes) if "label" in x else None
            if label is not None and label not in found:
                found.append(label)
            if not found:
                raise ValueError(f"{input_name(x)}: nothing to localize: the input has no 'label' and no classifier is "
                                 "attached (MODEL.LOCALIZER.CLASSIFIER_CONFIGS)")
            wanted.append(found)
        topk = 1 if self.rescorer is None else self.proposals_per_class
        proposals = self.propose(batched_inputs, [torch.tensor(w, device=self.device) for w in wanted], topk)
        if self.rescorer is not None:
            self.rescorer.to(self.device)
            first_views = [{**x, "image": v[0]} for x, v in zip(batched_inputs, views)]
            scores, boxes = self.rescorer.rescore(first_views, [p["boxes"] for p in proposals],
                                                  [p["classes"] for p in proposals])
            if self.rescored_score == "product":
                scores = [s * p["scores"] for s, p in zip(scores, proposals)]
            proposals = [{**p, "scores": s, "boxes": b} for p, s, b in zip(proposals, scores, boxes)]
        outputs = []
        for i, (x, image_views, found) in enumerate(zip(batched_inputs, views, wanted)):
            size = tuple(image_views[0].shape[-2:])
            height, width = int(x.get("height", size[0])), int(x.get("width", size[1]))
            crop_box = x.get("crop_box", [0.0, 0.0, float(width), float(height)])
            boxes = boxes_to_original(self._best_boxes(proposals[i], found, size), size, crop_box)
            boxes = clip_boxes(boxes, (height, width))
            out: Dict[str, torch.Tensor] = {}
            if top_classes is not None:
                k = len(top_classes[i])
                out.update(pred_classes=top_classes[i], scores=top_scores[i], pred_boxes=boxes[:k])
            if "label" in x:
                out["gt_class_box"] = boxes[found.index(int(x["label"]))]
            outputs.append(out)
        return outputs

    @staticmethod
    def _best_boxes(proposals: Dict[str, torch.Tensor], classes: Sequence[int], size: Tuple[int, int]) -> torch.Tensor:
        """The highest-scoring box of each of ``classes`` ``(k, 4)``; the whole input where a class has none."""
        best = []
        for c in classes:
            mask = proposals["classes"] == c
            if mask.any():
                best.append(proposals["boxes"][mask][proposals["scores"][mask].argmax()])
            else:
                best.append(proposals["boxes"].new_tensor([0.0, 0.0, size[1], size[0]]))
        return torch.stack(best)
