"""What gets exported: a tensor-in module with named inputs/outputs, its dynamic axes, and the eager
reference its written files are compared with.

* :func:`classifier_target`: a classifier (``detres.create_model``) -- ``images`` ``(N, 3, H, W)``
  normalised float -> ``logits`` ``(N, K)``; N, H and W dynamic.
* :func:`backbone_target`: a backbone (``detres.create_backbone``) -- ``images`` -> one output per
  feature in ``out_features`` order (``res4`` ``(N, C, H/16, W/16)``, ``linear`` ``(N, K)``); N, H, W dynamic.
* :func:`detector_target`: a C4 Faster R-CNN through :class:`~detres.export.detector.ExportableDetector`
  -- ``image`` ``(3, H, W)`` float in [0, 255] and ``original_size`` -> ``boxes``, ``scores``,
  ``classes``; H, W and the number of detections dynamic; compared with ``model.inference``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
from torch import nn

from detres.export.detector import ExportableDetector
from detres.export.formats import Inputs, PathLike, export_onnx, export_torchscript
from detres.modeling.backbone.backbone import Backbone

__all__ = ["FORMATS", "ExportTarget", "FeatureMaps", "backbone_target", "classifier_target", "detector_target"]

FORMATS = {"torchscript": ".pt", "onnx": ".onnx"}  # format -> file suffix
_BATCH_AXES = {0: "batch", 2: "height", 3: "width"}


@dataclass
class ExportTarget:
    """A module to export and how to check it.

    ``kind``: "classifier", "backbone" or "detector". ``reference(inputs)`` gives the eager outputs
    that the exported file's outputs on ``inputs`` must match (for classifiers and backbones the
    module itself, for the detector the wrapped ``FasterRCNN``).
    """

    kind: str
    module: nn.Module
    input_names: Tuple[str, ...]
    output_names: Tuple[str, ...]
    dynamic_axes: Dict[str, Dict[int, str]]
    reference: Callable[[Inputs], List[torch.Tensor]]

    def save(self, fmt: str, example: Inputs, path: PathLike) -> Path:
        """Write the module as ``fmt`` (a key of :data:`FORMATS`), traced on ``example``, to ``path``."""
        if fmt == "torchscript":
            return export_torchscript(self.module, example, path)
        if fmt == "onnx":
            return export_onnx(self.module, example, path, self.input_names, self.output_names, self.dynamic_axes)
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")


class FeatureMaps(nn.Module):
    """A backbone returning a tuple instead of a dict: ``(N, 3, H, W)`` -> its ``out_features`` in order."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.names = tuple(backbone.out_features)

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        features = self.backbone(images)
        return tuple(features[name] for name in self.names)


def _outputs(module: nn.Module) -> Callable[[Inputs], List[torch.Tensor]]:
    def reference(inputs: Inputs) -> List[torch.Tensor]:
        with torch.no_grad():
            outputs = module.eval()(*inputs)
        return list(outputs) if isinstance(outputs, tuple) else [outputs]

    return reference


def classifier_target(model: nn.Module) -> ExportTarget:
    """``model`` maps a normalised ``(N, 3, H, W)`` float batch to logits ``(N, K)``."""
    axes = {"images": dict(_BATCH_AXES), "logits": {0: "batch"}}
    return ExportTarget("classifier", model.eval(), ("images",), ("logits",), axes, _outputs(model))


def backbone_target(backbone: Backbone) -> ExportTarget:
    """Outputs named after the backbone's ``out_features``; feature maps have dynamic spatial axes."""
    module = FeatureMaps(backbone).eval()
    axes: Dict[str, Dict[int, str]] = {"images": dict(_BATCH_AXES)}
    for name in module.names:
        axes[name] = {0: "batch"} if name == "linear" else {0: "batch", 2: f"{name}_height", 3: f"{name}_width"}
    return ExportTarget("backbone", module, ("images",), module.names, axes, _outputs(module))


def detector_target(model: nn.Module) -> ExportTarget:
    """``model``: a built C4 ``FasterRCNN`` (see :class:`ExportableDetector` for what is supported)."""
    module = ExportableDetector(model)

    def reference(inputs: Inputs) -> List[torch.Tensor]:
        image, original_size = inputs
        height, width = (int(v) for v in original_size)
        result = model.eval().inference([{"image": image, "height": height, "width": width}])[0]
        return [result[name] for name in ExportableDetector.output_names]

    return ExportTarget("detector", module, ExportableDetector.input_names, ExportableDetector.output_names,
                        {name: dict(a) for name, a in ExportableDetector.dynamic_axes.items()}, reference)
