"""Read a checkpoint file of any supported format and rename its parameters to detres names.

Formats (detected from the file's content, not its name):

* ``torchvision``: a ``torch.save``-d ResNet state dict (``conv1.weight``, ``bn1.*``,
  ``layer{1-4}.{i}.{conv,bn}{k}.*``, ``layer{1-4}.{i}.downsample.{0,1}.*``, ``fc.*``) ->
  ``stem.conv1.{conv,norm}``, ``res{2-5}.{i}.conv{k}.{conv,norm}``, ``res{2-5}.{i}.shortcut.*``, ``linear.*``.
* ``msra``: a Caffe2 blob pickle (MSRA ImageNet ResNets: ``{"blobs": {...}}`` or the bare blob dict):
  ``conv1_w``, ``res_conv1_bn_{s,b}``, ``res{2-5}_{i}_branch1_*`` (projection shortcut),
  ``res{2-5}_{i}_branch2{a,b,c}_*`` (conv1/conv2/conv3), ``fc1000_{w,b}``; ``*_momentum`` blobs are
  dropped. Folded batch norm ``y * s + b`` becomes ``norm.weight = s``, ``norm.bias = b``,
  ``running_mean = 0``, ``running_var = 1 - eps`` (eps 1e-5, that of detres' norms), which makes
  ``FrozenBatchNorm2d``/``BatchNorm2d`` (eval) compute exactly ``y * s + b``.
* ``detectron2``: a Detectron2 checkpoint, ``.pkl`` (``{"model": {...numpy}, "__author__": ...}``,
  possibly ``"matching_heuristics"``) or ``.pth`` (``{"model": state_dict, ...}``). A conv with a norm is
  a single module there: ``X.weight`` -> ``X.conv.weight`` for ``X`` = ``stem.conv1`` or
  ``res{k}.{i}.{conv1,conv2,conv3,shortcut}`` (under any prefix: ``backbone.``, ``roi_heads.``);
  ``X.norm.*`` and every other name (``proposal_generator.rpn_head.*``, ``roi_heads.box_predictor.*``)
  are already detres names.
* ``detres``: detres' own checkpoints (``{"model": state_dict, ...}`` from the engine) or a bare
  ``state_dict()``; names are kept.

``.pkl`` files go through :func:`~detres.modeling.weight_import.safe_pickle.safe_load_pickle`;
everything else through ``torch.load(..., weights_only=True)``. A leading ``module.`` (from
DistributedDataParallel) is stripped from every name.
"""
from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from detres.modeling.weight_import.safe_pickle import safe_load_pickle

__all__ = ["FORMATS", "convert_state_dict", "detect_format", "read_checkpoint"]

logger = logging.getLogger(__name__)

FORMATS = ("torchvision", "msra", "detectron2", "detres")
FOLDED_BN_EPS = 1e-5
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch's pre-zip serialization

Rule = Tuple["re.Pattern[str]", Union[str, Callable[["re.Match[str]"], str]]]


def _stage(m: "re.Match[str]") -> str:
    return f"res{int(m.group(1)) + 1}.{m.group(2)}"


_TORCHVISION_RULES: List[Rule] = [
    (re.compile(r"^conv1\.weight$"), "stem.conv1.conv.weight"),
    (re.compile(r"^bn1\.(\w+)$"), r"stem.conv1.norm.\1"),
    (re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\.weight$"), lambda m: f"{_stage(m)}.conv{m.group(3)}.conv.weight"),
    (re.compile(r"^layer(\d)\.(\d+)\.bn(\d)\.(\w+)$"), lambda m: f"{_stage(m)}.conv{m.group(3)}.norm.{m.group(4)}"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.0\.weight$"), lambda m: f"{_stage(m)}.shortcut.conv.weight"),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.1\.(\w+)$"), lambda m: f"{_stage(m)}.shortcut.norm.{m.group(3)}"),
    (re.compile(r"^fc\.(weight|bias)$"), r"linear.\1"),
]

_C2_PARAM = {"w": "conv.weight", "bn_s": "norm.weight", "bn_b": "norm.bias", "bn_rm": "norm.running_mean",
             "bn_riv": "norm.running_var", "gn_s": "norm.weight", "gn_b": "norm.bias"}
_C2_BRANCH = {"branch1": "shortcut", "branch2a": "conv1", "branch2b": "conv2", "branch2c": "conv3"}
_C2_SUFFIX = r"(w|bn_s|bn_b|bn_rm|bn_riv|gn_s|gn_b)"
_MSRA_RULES: List[Rule] = [
    (re.compile(rf"^(?:conv1|res_conv1)_{_C2_SUFFIX}$"), lambda m: f"stem.conv1.{_C2_PARAM[m.group(1)]}"),
    (
        re.compile(rf"^res(\d)_(\d+)_(branch1|branch2[abc])_{_C2_SUFFIX}$"),
        lambda m: f"res{m.group(1)}.{m.group(2)}.{_C2_BRANCH[m.group(3)]}.{_C2_PARAM[m.group(4)]}",
    ),
    (re.compile(r"^fc1000_w$"), "linear.weight"),
    (re.compile(r"^fc1000_b$"), "linear.bias"),
]

_DETECTRON2_RULES: List[Rule] = [
    (re.compile(r"^(.*?)(stem\.conv1|res\d\.\d+\.(?:conv\d|shortcut))\.(weight|bias)$"), r"\1\2.conv.\3"),
]

# One matching name is enough to tell a format (checked in this order).
_FORMAT_SIGNATURES = [
    ("msra", re.compile(r"^(conv1_w|res_conv1_bn_[sb]|res\d_\d+_branch\w+|fc1000_[wb])$")),
    ("torchvision", re.compile(r"^(conv1\.weight|bn1\.\w+|layer\d\.\d+\..+|fc\.(weight|bias))$")),
    ("detectron2", _DETECTRON2_RULES[0][0]),
]


def _rename(state: Dict[str, torch.Tensor], rules: Sequence[Rule]) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            if pattern.match(key):
                new = pattern.sub(repl, key)
                break
        out[new] = value
    return out


def _unfold_frozen_bn(state: Dict[str, torch.Tensor], eps: float) -> Dict[str, torch.Tensor]:
    """Add ``running_mean = 0``, ``running_var = 1 - eps`` to every norm that only has scale and bias."""
    out = dict(state)
    for key, value in state.items():
        if key.endswith(".norm.weight"):
            prefix = key[: -len("weight")]
            out.setdefault(prefix + "running_mean", torch.zeros_like(value))
            out.setdefault(prefix + "running_var", torch.full_like(value, 1.0 - eps))
    return out


def detect_format(keys: Sequence[str]) -> str:
    """The format whose parameter names ``keys`` are (``"detres"`` when no other matches)."""
    for name, pattern in _FORMAT_SIGNATURES:
        if any(pattern.match(k) for k in keys):
            return name
    return "detres"


def convert_state_dict(state: Dict[str, torch.Tensor], fmt: str) -> Dict[str, torch.Tensor]:
    """Rename ``state`` (names of format ``fmt``) to detres names; unknown names are kept as they are."""
    if fmt == "torchvision":
        return _rename(state, _TORCHVISION_RULES)
    if fmt == "msra":
        blobs = {k: v for k, v in state.items() if not k.endswith("_momentum")}
        return _unfold_frozen_bn(_rename(blobs, _MSRA_RULES), FOLDED_BN_EPS)
    if fmt == "detectron2":
        return _rename(state, _DETECTRON2_RULES)
    if fmt == "detres":
        return dict(state)
    raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")


def _load_file(path: Path):
    """Deserialize ``path`` safely: torch's zip format (and legacy format) with ``weights_only=True``,
    anything else as a restricted pickle."""
    if zipfile.is_zipfile(path):
        return _torch_load(path)
    obj = safe_load_pickle(path)
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path)
    return obj


def _torch_load(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... with its own message
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from e


def _unwrap(obj, path: Path) -> Mapping:
    """The name -> array mapping inside a checkpoint container."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    for key in ("blobs", "model", "state_dict"):
        for variant in (key, key.encode()):  # bytes keys: a Python 3 pickle of a Python 2 dict
            if isinstance(obj.get(variant), Mapping):
                return obj[variant]
    return obj


def _to_tensors(mapping: Mapping, path: Path) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    for key, value in mapping.items():
        name = key.decode("latin1") if isinstance(key, bytes) else str(key)
        name = re.sub(r"^(module\.)+", "", name)
        if isinstance(value, torch.Tensor):
            out[name] = value
        elif isinstance(value, (np.ndarray, np.generic)) and value.dtype != object:
            out[name] = torch.from_numpy(np.array(value))
        else:
            skipped.append(f"{name} ({type(value).__name__})")
    if skipped:
        logger.warning("%s: ignoring %d entries that are not arrays: %s", path, len(skipped), ", ".join(skipped[:10]))
    if not out:
        raise ValueError(f"{path}: contains no weight arrays")
    return out


def read_checkpoint(path: Union[str, Path]) -> Tuple[str, Dict[str, torch.Tensor]]:
    """``(format, state dict with detres names, CPU tensors)`` of a local checkpoint file."""
    path = Path(path)
    state = _to_tensors(_unwrap(_load_file(path), path), path)
    fmt = detect_format(list(state))
    return fmt, convert_state_dict(state, fmt)
