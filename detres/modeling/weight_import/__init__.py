"""Pretrained weights: download, safe deserialization, and conversion to detres parameter names.

Public API::

    from detres.modeling.weight_import import load_weights, load_state_dict_any
    report = load_weights(module, "msra://R-50")      # -> LoadReport (str(report) is readable)
    state = load_state_dict_any("model_final.pkl")    # -> Dict[str, Tensor] with detres names

``spec`` (also ``MODEL.WEIGHTS`` and ``weights=`` of ``create_backbone``/``create_model``) is a local
path, an http(s) URL, or a short scheme: ``torchvision://resnet{18,34,50,101,152}`` (``.v2`` for the
V2 recipe of 50/101/152), ``msra://R-50``, ``msra://R-101`` or ``detectron2://<model zoo path>``
(see :mod:`.sources`). Downloads are cached in ``$DETRES_CACHE`` or ``~/.cache/detres`` (see
:mod:`detres.utils.download`); offline, the error names the path where the file can be placed.

Formats, detected from the content (see :mod:`.converters`): torchvision ResNet state dicts, MSRA /
Caffe2 blob ``.pkl`` files (folded BN -> ``FrozenBatchNorm2d`` with ``running_mean = 0``,
``running_var = 1 - eps``), Detectron2 checkpoints (``.pkl`` model zoo files and ``.pth`` training
checkpoints) and detres' own checkpoints. ``.pkl`` files are read by a restricted unpickler (numpy
arrays and plain containers only, :mod:`.safe_pickle`), everything else by
``torch.load(..., weights_only=True)``.

Loading matches names one-to-one, exactly or up to the ``backbone.`` prefix and a C4 detector's
``roi_heads.res5.`` (which plays the backbone's ``res5``), or as a dotted suffix. So one file loads
into a detection model or a bare backbone alike: a Detectron2 C4 detector
(``/work/shared/golden/detectron2_r50_c4_w16/model_final.pkl``-style) fills a detres C4 model with
``load_weights(detection_model, path)``, and its converted names, e.g.
``backbone.stem.conv1.conv.weight``, ``backbone.res4.5.conv3.norm.running_var``,
``proposal_generator.rpn_head.objectness_logits.weight``, ``roi_heads.res5.0.shortcut.conv.weight``,
``roi_heads.box_predictor.bbox_pred.bias``, are what ``load_state_dict_any(path)`` returns. ImageNet
weights fill ``backbone.*`` and ``roi_heads.res5.*`` of a C4 model (``linear.*`` is then reported
as unexpected). Missing, unexpected, ambiguous and wrongly shaped entries are listed in the
returned :class:`LoadReport` and logged; ``strict=True`` turns them into an error.
"""
from detres.modeling.weight_import.converters import FORMATS, convert_state_dict, detect_format, read_checkpoint
from detres.modeling.weight_import.loading import LoadReport, align_names, load_state_dict_any, load_weights
from detres.modeling.weight_import.safe_pickle import UnsafePickleError, safe_load_pickle
from detres.modeling.weight_import.sources import list_sources, resolve

__all__ = [
    "FORMATS",
    "LoadReport",
    "UnsafePickleError",
    "align_names",
    "convert_state_dict",
    "detect_format",
    "list_sources",
    "load_state_dict_any",
    "load_weights",
    "read_checkpoint",
    "resolve",
    "safe_load_pickle",
]
