"""Multi-scale testing of the ResNet paper (Appendix B), after SPPnet / Fast R-CNN.

The conv features (the RoI head's input map, res4 for C4) are computed on an image pyramid whose
shorter sides are ``TEST.MULTI_SCALE.SIZES``, the longer side capped at ``TEST.MULTI_SCALE.MAX_SIZE``
(the resize arithmetic of :func:`detres.data.detection.transforms.shortest_edge_size`). Proposals
come from the RPN on the test-size input (the "base" scale), or, with ``TEST.MULTI_SCALE.RPN``, from
the RPN on every scale too, mapped to the base scale and merged (NMS at ``MODEL.RPN.NMS_THRESH``, the
``POST_NMS_TOPK_TEST`` best). Each region is pooled at two adjacent scales chosen as in SPPnet
(:func:`select_scale_pairs`), both go through res5, and the two region features are merged by maxout
(element-wise max) before the predictor. Box refinement and global context compose: they pool through
the same region-feature function, and the context is taken from the base-scale map.

Pyramid images are read from the input's ``"file_name"`` (resized from the original like the test
loader does, bit for bit; flipped when the input says ``"hflip"``); inputs without a file are resized
from their ``"image"`` tensor (bilinear, antialiased). A level whose size is the input's own is the
input itself, and its features are the base scale's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import box_area

from detres.data.detection.mapper import read_image
from detres.data.detection.transforms import ResizeFlip, shortest_edge_size
from detres.modeling.box_ops import scale_boxes
from detres.modeling.meta_arch.faster_rcnn import FasterRCNN
from detres.modeling.test_time.base import ImageSize, Regions, SingleScaleDetector, merge_proposals

__all__ = ["select_scale_pairs", "pyramid_images", "MultiScaleRegionFeatures", "MultiScaleDetector"]


def select_scale_pairs(areas: torch.Tensor, scale_factors: Sequence[float], target_area: float) -> torch.Tensor:
    """SPPnet's scale choice: for regions of ``areas`` ``(R,)`` (pixels of some reference image) and
    the linear factors ``(S,)`` from that image to each scale (non-decreasing), the scale ``s`` where the
    scaled area ``area * factor_s ** 2`` is closest to ``target_area`` (the first on ties) and its
    neighbour: the next larger scale, or the next smaller one at the top of the pyramid.

    Returns ``(R, 2)`` int64 scale indices ``(lower, lower + 1)``; ``(0, 0)`` with one scale.
    """
    factors = torch.as_tensor(scale_factors, dtype=torch.float64, device=areas.device).reshape(-1)
    if factors.numel() == 0 or bool((factors[1:] < factors[:-1]).any()):
        raise ValueError(f"scale factors must be a non-empty non-decreasing sequence, got {factors.tolist()}")
    scaled = areas.to(torch.float64)[:, None] * factors[None, :] ** 2  # (R, S)
    best = (scaled - target_area).abs().argmin(dim=1)
    last = factors.numel() - 1
    lower = best.clamp(max=max(last - 1, 0))
    return torch.stack([lower, (lower + 1).clamp(max=last)], dim=1)


def pyramid_images(x: dict, sizes: Sequence[int], max_size: int, image_format: str) -> List[torch.Tensor]:
    """The model input ``x`` (``"image"`` ``(3, H, W)``, original ``"height"``/``"width"``, optionally
    ``"file_name"`` and ``"hflip"``) at each shorter side of ``sizes``: ``(3, H_s, W_s)`` tensors, uint8
    when read from the file, float in [0, 255] when resized from ``"image"``, ``x["image"]`` itself
    where the size is the input's."""
    image = x["image"]
    h, w = int(x.get("height", image.shape[-2])), int(x.get("width", image.shape[-1]))
    original = None
    out = []
    for size in sizes:
        new_h, new_w = shortest_edge_size(h, w, size, max_size)
        if (new_h, new_w) == tuple(image.shape[-2:]):
            out.append(image)
        elif "file_name" in x:
            if original is None:
                original = read_image(x["file_name"], image_format)
                if original.shape[:2] != (h, w):
                    raise ValueError(f"{x['file_name']}: image is {original.shape[0]}x{original.shape[1]} (HxW) "
                                     f"but the input says {h}x{w}")
            resized = ResizeFlip(h, w, new_h, new_w, flip=bool(x.get("hflip", False))).apply_image(original)
            out.append(torch.from_numpy(resized.transpose(2, 0, 1).copy()).to(image.device))
        else:
            resized = F.interpolate(image[None].float(), size=(new_h, new_w), mode="bilinear",
                                    align_corners=False, antialias=True)
            out.append(resized[0].clamp(0, 255))
    return out


@dataclass
class PyramidLevel:
    """One scale of a batch: the RoI head's input map ``(N, C, H, W)`` and per image
    ``(W_s / W_base, H_s / H_base)`` (``(N, 2)``), the factors from base pixels."""

    feature: torch.Tensor
    ratios: torch.Tensor


class MultiScaleRegionFeatures:
    """The :data:`~detres.modeling.roi_heads.res5_roi_heads.RegionFeatures` of a pyramid: box lists
    ``(R_i, 4)`` in base-scale pixels -> predictor inputs ``(sum R_i, C)``.

    Each region is pooled (``roi_heads.box_features``) at its two scales of :func:`select_scale_pairs`
    (``target_size ** 2`` the target area), the two features merged by element-wise max, then
    ``roi_heads.predictor_inputs`` with the base-scale map ``base_feature``.
    """

    def __init__(self, roi_heads: nn.Module, levels: Sequence[PyramidLevel], base_feature: torch.Tensor,
                 base_sizes: Sequence[ImageSize], target_size: float):
        self.roi_heads = roi_heads
        self.levels = list(levels)
        self.base_feature, self.base_sizes = base_feature, list(base_sizes)
        self.target_area = float(target_size) ** 2
        # (N, S): per image, the linear factor from base pixels to each scale
        self.factors = torch.stack([lv.ratios.prod(dim=1).sqrt() for lv in self.levels], dim=1)

    def scale_pairs(self, boxes: List[torch.Tensor]) -> List[torch.Tensor]:
        """Per image, the ``(R_i, 2)`` pyramid-level indices each box is pooled at."""
        return [select_scale_pairs(box_area(b), f.tolist(), self.target_area) for b, f in zip(boxes, self.factors)]

    def __call__(self, boxes: List[torch.Tensor]) -> torch.Tensor:
        counts = [len(b) for b in boxes]
        offsets = [sum(counts[:i]) for i in range(len(counts))]
        pairs = self.scale_pairs(boxes)
        merged = None
        for k, level in enumerate(self.levels):
            chosen = [(p == k).any(dim=1).nonzero().squeeze(1) for p in pairs]
            level_boxes = [b[idx] * r.repeat(2) for b, idx, r in zip(boxes, chosen, level.ratios)]
            pooled = self.roi_heads.box_features(level.feature, level_boxes)
            index = torch.cat([idx + off for idx, off in zip(chosen, offsets)])
            if merged is None:
                merged = pooled.new_full((sum(counts), pooled.shape[1]), float("-inf"))
            merged[index] = torch.maximum(merged[index], pooled)
        return self.roi_heads.predictor_inputs(merged, self.base_feature, self.base_sizes, counts)


class MultiScaleDetector(SingleScaleDetector):
    """A ``FasterRCNN`` tested on an image pyramid (see the module docstring).

    Args:
        sizes: the pyramid's shorter sides (sorted here; duplicates dropped).
        max_size: the cap on the longer side (``<= 0``: none).
        target_size: regions are pooled where their scaled area is closest to ``target_size ** 2``.
        rpn_over_scales: proposals from every scale (merged) instead of the test-size input only.
    """

    def __init__(self, model: FasterRCNN, sizes: Sequence[int], max_size: int, target_size: float = 224,
                 rpn_over_scales: bool = False):
        super().__init__(model)
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"TEST.MULTI_SCALE.SIZES must be positive shorter sides, got {tuple(sizes)}")
        self.sizes = tuple(sorted(set(int(s) for s in sizes)))
        self.max_size, self.target_size, self.rpn_over_scales = int(max_size), float(target_size), rpn_over_scales

    @classmethod
    def from_config(cls, cfg, model: FasterRCNN) -> "MultiScaleDetector":
        ms = cfg.TEST.MULTI_SCALE
        return cls(model, ms.SIZES, ms.MAX_SIZE, ms.TARGET_SIZE, ms.RPN)

    def regions(self, batched_inputs: List[dict]) -> Regions:
        model = self.model
        images, base_sizes = model.preprocess_image(batched_inputs)
        base_features = model.backbone(images)
        proposals, _ = model.proposal_generator(base_sizes, base_features)
        pyramids = [pyramid_images(x, self.sizes, self.max_size, model.input_format) for x in batched_inputs]
        levels, scale_proposals = [], [proposals]
        in_feature = model.roi_heads.in_feature
        for k in range(len(self.sizes)):
            level_images = [p[k] for p in pyramids]
            if all(im is x["image"] for im, x in zip(level_images, batched_inputs)):
                features, sizes = base_features, base_sizes
            else:
                images, sizes = model.preprocess_image([{"image": im} for im in level_images])
                features = model.backbone(images)
                if self.rpn_over_scales:
                    scale_proposals.append(self._proposals_at(features, sizes, base_sizes))
            ratios = torch.tensor([[w / bw, h / bh] for (h, w), (bh, bw) in zip(sizes, base_sizes)],
                                  dtype=torch.float32, device=model.device)
            levels.append(PyramidLevel(features[in_feature], ratios))
        if len(scale_proposals) > 1:
            rpn = model.proposal_generator
            proposals = [merge_proposals(per_image, rpn.nms_thresh, rpn.post_nms_topk[False])
                         for per_image in zip(*scale_proposals)]
        region_features = MultiScaleRegionFeatures(model.roi_heads, levels, base_features[in_feature], base_sizes,
                                                   self.target_size)
        return Regions(base_sizes, proposals, region_features)

    def _proposals_at(self, features: Dict[str, torch.Tensor], sizes: List[ImageSize],
                      base_sizes: List[ImageSize]) -> List[Dict[str, torch.Tensor]]:
        """The RPN's proposals on one pyramid level, boxes mapped to base-scale pixels."""
        proposals, _ = self.model.proposal_generator(sizes, features)
        out = []
        for p, (h, w), (bh, bw) in zip(proposals, sizes, base_sizes):
            out.append({"boxes": scale_boxes(p["boxes"], bw / w, bh / h), "logits": p["logits"]})
        return out
