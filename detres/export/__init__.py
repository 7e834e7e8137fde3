"""Export to TorchScript and ONNX, and checks that the written files match eager outputs.

* :mod:`detres.export.formats`: ``export_torchscript``, ``export_onnx``, ``run_exported``
  (TorchScript, or ONNX through onnxruntime) and ``max_abs_difference``.
* :mod:`detres.export.targets`: classifiers, backbones and detectors as :class:`ExportTarget`
  (a tensor-in module, input/output names, dynamic axes, the eager reference).
* :mod:`detres.export.detector`: :class:`ExportableDetector`, the one-image tensor-in C4 Faster
  R-CNN (NMS inside the graph).

``tools/export_model.py`` is the command line over these.
"""
from detres.export.detector import ExportableDetector
from detres.export.formats import (
    ONNX_OPSET,
    export_onnx,
    export_torchscript,
    max_abs_difference,
    onnxruntime_available,
    run_exported,
)
from detres.export.targets import (
    FORMATS,
    ExportTarget,
    FeatureMaps,
    backbone_target,
    classifier_target,
    detector_target,
)

__all__ = [
    "FORMATS",
    "ONNX_OPSET",
    "ExportTarget",
    "ExportableDetector",
    "FeatureMaps",
    "backbone_target",
    "classifier_target",
    "detector_target",
    "export_onnx",
    "export_torchscript",
    "max_abs_difference",
    "onnxruntime_available",
    "run_exported",
]
