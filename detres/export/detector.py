"""A tensor-in Faster R-CNN C4 for export: one resized image and its original size in, detections out.

:class:`ExportableDetector` wraps a built :class:`~detres.modeling.meta_arch.faster_rcnn.FasterRCNN`
(eval mode, weights loaded) and computes what ``model.inference`` computes for one image, with every
size kept as a tensor so that one trace (TorchScript or ONNX) is valid for any image size.

Inputs:

* ``image`` ``(3, H, W)`` float32 in [0, 255], ``INPUT.FORMAT`` channel order, already resized to the
  test size (the test loader's shortest-edge resize is not part of the graph; uint8 works for
  TorchScript too). Normalisation and the zero padding to ``size_divisibility`` are in the graph.
* ``original_size`` ``(2,)`` int64 ``(height, width)``: the size detections are mapped back to.

Outputs: ``boxes`` ``(D, 4)`` float32 XYXY in original-image pixels, ``scores`` ``(D,)`` float32,
``classes`` ``(D,)`` int64 in ``[0, NUM_CLASSES)``; best first, ``D <= DETECTIONS_PER_IMAGE``.

NMS is inside the graph. The RPN's NMS and the per-class NMS both go through
``torchvision.ops.batched_nms``, whose traced form (boxes offset per class, then one
``torchvision.ops.nms``) exports to ONNX as ``NonMaxSuppression``; RoI pooling exports as
``RoiAlign`` (``ROIAlign``/``ROIAlignV2``) or ``MaxRoiPool`` (``ROIPool``). A TorchScript file needs
``import torchvision`` before ``torch.jit.load`` (it registers those operators).

The RPN's proposal selection and the box decoding are written here for one image: ``RPN`` and
``BoxPredictor`` take Python sizes (``min(k, R)``, ``len(boxes)``, per-image splits) that a trace would
freeze to the export example's values. The tests compare this module's exported files with
``model.inference`` on images of another size, which keeps the two in step. Box refinement, global
context and the test-time wrappers (multi-scale, flip, ensembles) are not exportable.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import batched_nms

from detres.modeling.box_ops import clip_boxes, nonempty
from detres.modeling.meta_arch.faster_rcnn import FasterRCNN
from detres.modeling.proposal_generator.rpn import RPN
from detres.modeling.roi_heads.res5_roi_heads import Res5ROIHeads

__all__ = ["ExportableDetector"]

# A size: an int when run eagerly, a 0-dim int64 tensor while being traced.
Size = Union[int, torch.Tensor]


def _at_most(n: Size, k: int) -> Size:
    """``min(n, k)`` that a trace keeps dynamic (``torch.topk`` accepts the 0-dim tensor)."""
    if torch.is_tensor(n):
        return torch.clamp(n, max=k)
    return min(n, k)


def _pad_to_multiple(image: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad ``(C, H, W)`` at the bottom and right to multiples of ``divisor`` (as ``batch_images``)."""
    if divisor <= 1:
        return image
    height, width = image.shape[-2:]
    return F.pad(image, (0, (-width) % divisor, 0, (-height) % divisor))


class ExportableDetector(nn.Module):
    """``forward(image, original_size) -> (boxes, scores, classes)`` for one image (see the module doc).

    ``model``: a C4 ``FasterRCNN`` (``RPN`` + ``Res5ROIHeads``) without box refinement or global context.
    The wrapper shares the model's modules; it is put in eval mode.
    """

    input_names = ("image", "original_size")
    output_names = ("boxes", "scores", "classes")
    # ONNX dynamic axes: any image size, any number of detections.
    dynamic_axes = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in output_names}}

    def __init__(self, model: FasterRCNN):
        super().__init__()
        if not isinstance(model, FasterRCNN):
            raise ValueError(f"detector export needs a FasterRCNN, got {type(model).__name__}")
        heads, rpn = model.roi_heads, model.proposal_generator
        if not isinstance(rpn, RPN) or not isinstance(heads, Res5ROIHeads):
            raise ValueError(f"detector export supports the RPN and Res5ROIHeads (C4); got {type(rpn).__name__} "
                             f"and {type(heads).__name__}")
        options = {"MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED": heads.refinement,
                   "MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT": heads.global_context}
        extras = [key for key, part in options.items() if part is not None]
        if extras:
            raise ValueError(f"export does not support {' and '.join(extras)}; set it to False to export the detector")
        self.model = model
        self.eval()

    def forward(self, image: torch.Tensor, original_size: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        height, width = image.shape[-2:]
        model = self.model
        x = (image.to(model.device, torch.float32) - model.pixel_mean) / model.pixel_std
        features = model.backbone(_pad_to_multiple(x, model.size_divisibility)[None])
        proposals = self.proposals(features, (height, width))
        detections = self.detect(features, proposals, (height, width))
        return self.to_original(detections, (height, width), original_size)

    def proposals(self, features: Dict[str, torch.Tensor], image_size: Tuple[Size, Size]) -> torch.Tensor:
        """RPN proposals ``(R, 4)`` (input pixels, best first) of the one image in ``features``:
        ``RPN.select_proposals`` for a batch of one."""
        rpn = self.model.proposal_generator
        maps = [features[f] for f in rpn.in_features]
        all_logits, all_deltas = rpn.rpn_head(maps)
        boxes, scores, levels = [], [], []
        for level, (anchors, logits, deltas) in enumerate(zip(rpn.anchor_generator(maps), all_logits, all_deltas)):
            # (1, A, h, w) -> (h*w*A,) and (1, 4A, h, w) -> (h*w*A, 4), the anchors' order
            logits = logits[0].permute(1, 2, 0).reshape(-1)
            deltas = deltas[0].reshape(-1, 4, deltas.shape[-2], deltas.shape[-1]).permute(2, 3, 0, 1).reshape(-1, 4)
            top, idx = logits.float().topk(_at_most(logits.shape[0], rpn.pre_nms_topk[False]))
            boxes.append(rpn.box_coder.decode(deltas[idx], anchors[idx]))
            scores.append(top)
            levels.append(torch.full_like(idx, level))
        boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
        finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
        boxes, scores, levels = clip_boxes(boxes[finite], image_size), scores[finite], levels[finite]
        keep = nonempty(boxes, rpn.min_size)
        boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
        keep = batched_nms(boxes, scores, levels, rpn.nms_thresh)[: rpn.post_nms_topk[False]]
        return boxes[keep]

    def detect(self, features: Dict[str, torch.Tensor], proposals: torch.Tensor,
               image_size: Tuple[Size, Size]) -> Dict[str, torch.Tensor]:
        """Detections ``{"boxes", "scores", "classes"}`` in input pixels for proposals ``(R, 4)``:
        ``Res5ROIHeads.inference`` for one image."""
        heads = self.model.roi_heads
        predictor = heads.box_predictor
        class_logits, deltas = predictor(heads.box_features(features[heads.in_feature], [proposals]))
        boxes = predictor.box_coder.decode(deltas, proposals)  # (R, 4K), or (R, 4) class-agnostic
        boxes = boxes.reshape(proposals.shape[0], -1, 4).expand(-1, predictor.num_classes, 4)
        probs = F.softmax(class_logits.float(), dim=-1)
        # candidates() drops non-finite regions behind a Python `if` that a trace freezes: drop them here.
        finite = torch.isfinite(boxes).all(dim=2).all(dim=1) & torch.isfinite(probs).all(dim=1)
        candidates = predictor.candidates(boxes[finite], probs[finite], image_size)
        keep = predictor.suppress(candidates)
        return {k: v[keep] for k, v in candidates.items()}

    @staticmethod
    def to_original(detections: Dict[str, torch.Tensor], image_size: Tuple[Size, Size],
                    original_size: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Boxes scaled from the input size to ``original_size`` ``(height, width)`` and clipped to it,
        empty ones dropped (``FasterRCNN._postprocess``); returns ``(boxes, scores, classes)``."""
        original = original_size.to(torch.float32)
        scale_y, scale_x = original[0] / image_size[0], original[1] / image_size[1]
        boxes = detections["boxes"] * torch.stack((scale_x, scale_y, scale_x, scale_y))
        limits = torch.stack((original[1], original[0], original[1], original[0]))
        boxes = torch.min(boxes.clamp(min=0), limits)
        keep = nonempty(boxes)
        return boxes[keep], detections["scores"][keep], detections["classes"][keep]
