"""Match a converted state dict to a module's parameter names, load it, and report what happened."""
from __future__ import annotations

import logging
import re
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from detres.modeling.weight_import.converters import read_checkpoint
from detres.modeling.weight_import.sources import resolve

__all__ = ["ClassLayerMismatch", "LoadReport", "align_names", "load_state_dict_any", "load_weights"]

logger = logging.getLogger(__name__)
_COUNTER = "num_batches_tracked"  # BatchNorm's step counter: not a weight, never reported
# Class-dependent layers: (name pattern, outputs per class, extra outputs (background), config key of the count)
_CLASS_LAYERS = (
    (re.compile(r"(^|\.)roi_heads\.box_predictor\.cls_score\.(weight|bias)$"), 1, 1, "MODEL.ROI_HEADS.NUM_CLASSES"),
    (re.compile(r"(^|\.)roi_heads\.box_predictor\.bbox_pred\.(weight|bias)$"), 4, 0, "MODEL.ROI_HEADS.NUM_CLASSES"),
    # the R-CNN rescorer of ImageNet localization: its own box predictor, as many classes as its classifier
    (re.compile(r"^box_predictor\.cls_score\.(weight|bias)$"), 1, 1, "MODEL.CLASSIFIER.NUM_CLASSES"),
    (re.compile(r"^box_predictor\.bbox_pred\.(weight|bias)$"), 4, 0, "MODEL.CLASSIFIER.NUM_CLASSES"),
    (re.compile(r"(^|\.)linear\.(weight|bias)$"), 1, 0, "MODEL.CLASSIFIER.NUM_CLASSES"),
)
_PREDICTOR_LAYER = re.compile(r"(^|\.)box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$")
_CONTEXT_KEY = "MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT"


@dataclass
class ClassLayerMismatch:
    """Class-dependent layers (box predictor, classifier) whose checkpoint shapes are those of another
    number of classes; ``str()`` reads "80 classes (+ background) in roi_heads.box_predictor.cls_score,
    ... but MODEL.ROI_HEADS.NUM_CLASSES is 6"."""

    layers: List[str]  # module names without .weight / .bias
    checkpoint_classes: int
    module_classes: int
    key: str  # the config key of the module's number of classes
    background: bool

    def __str__(self) -> str:
        extra = " (+ background)" if self.background else ""
        return (f"{self.checkpoint_classes} classes{extra} in {', '.join(self.layers)} but {self.key} is "
                f"{self.module_classes}")

    @property
    def fix(self) -> str:
        return f"set {self.key} {self.checkpoint_classes}"


@dataclass
class LoadReport:
    """What :func:`load_weights` did: ``str(report)`` is a readable summary.

    ``missing``: module entries the checkpoint does not provide (left as initialised);
    ``unexpected``: checkpoint entries (detres names) the module has no place for;
    ``shape_mismatch``: ``(module name, checkpoint shape, module shape)``, not loaded;
    ``ambiguous``: checkpoint entries that match several module entries, not loaded;
    ``class_mismatch``: the shape mismatches that are class layers for another number of classes;
    ``class_names``: the class names a detres checkpoint records (``None`` for other files).
    """

    source: str
    path: str
    format: str
    loaded: int = 0
    renamed: int = 0
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    shape_mismatch: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(default_factory=list)
    ambiguous: List[str] = field(default_factory=list)
    class_mismatch: List[ClassLayerMismatch] = field(default_factory=list)
    class_names: Optional[List[str]] = None

    @property
    def ok(self) -> bool:
        """True when every module entry was loaded and every checkpoint entry was used."""
        return not (self.missing or self.unexpected or self.shape_mismatch or self.ambiguous)

    @property
    def only_class_layers_differ(self) -> bool:
        """True when the only problems are class layers for another number of classes (fine-tuning)."""
        in_class_layers = {f"{layer}." for m in self.class_mismatch for layer in m.layers}
        return not (self.missing or self.unexpected or self.ambiguous) and all(
            n.startswith(tuple(in_class_layers)) for n, _, _ in self.shape_mismatch)

    def __str__(self) -> str:
        origin = self.source if self.source == self.path else f"{self.source} ({self.path})"
        lines = [f"weights from {origin}, format {self.format}: loaded {self.loaded} tensors"
                 + (f" ({self.renamed} under another prefix, e.g. backbone. / roi_heads.)" if self.renamed else "")]
        lines += _section("missing in the checkpoint (left as initialised)", self.missing)
        lines += _section("unexpected (in the checkpoint, not in the module)", self.unexpected)
        lines += _section(
            "shape mismatch (not loaded)",
            [f"{n}: checkpoint {tuple(c)} vs module {tuple(m)}" for n, c, m in self.shape_mismatch],
            detail=5,
        )
        lines += _section("ambiguous (several possible targets, not loaded)", self.ambiguous)
        return "\n".join(lines)


def _section(title: str, names: Sequence[str], limit: int = 12, detail: int = 0) -> List[str]:
    """Up to ``limit`` entries one per line; beyond that the first ``detail`` ones, then the rest
    summarised per module group (``res5.* (50 tensors)``)."""
    if not names:
        return []
    if len(names) <= limit:
        return [f"{len(names)} {title}:"] + [f"  {n}" for n in names]
    groups: Dict[str, int] = defaultdict(int)
    for n in names[detail:]:
        parts = n.split(":")[0].split(".")
        numeric = [i for i, p in enumerate(parts) if p.isdigit()]
        groups[".".join(parts[: numeric[0] if numeric else max(1, len(parts) - 2)])] += 1
    more = " more" if detail else ""
    return ([f"{len(names)} {title}:"] + [f"  {n}" for n in names[:detail]]
            + [f"  {g}.* ({c}{more} tensors)" for g, c in groups.items()])


def _canonical(name: str) -> str:
    """The name relative to the ResNet: ``backbone.res4...`` -> ``res4...``; ``roi_heads.res5...``
    (a C4 detector's per-region res5) -> ``res5...``."""
    name = re.sub(r"^backbone\.", "", name)
    return re.sub(r"^roi_heads\.res5\.", "res5.", name)


def _is_dotted_suffix(a: str, b: str) -> bool:
    short, long_ = (a, b) if len(a) <= len(b) else (b, a)
    return "." in short and (long_ == short or long_.endswith("." + short))


def align_names(ckpt_keys: Sequence[str], module_keys: Sequence[str]) -> Tuple[Dict[str, str], List[str]]:
    """Map module names to checkpoint names: ``({module name: checkpoint name}, ambiguous ckpt names)``.

    In order: identical names; identical after :func:`_canonical` on both sides (so a backbone
    checkpoint fills ``backbone.*`` and a C4 detector's ``roi_heads.res5.*``, and a detector's
    checkpoint fills a bare backbone, res5 included); then one name being a dotted suffix of the
    other (a module nested under another prefix). Only one-to-one matches are used.
    """
    ckpt_set = set(ckpt_keys)
    mapping = {k: k for k in module_keys if k in ckpt_set}
    free_ckpt = [k for k in ckpt_keys if k not in mapping]
    ckpt_by_canon: Dict[str, List[str]] = defaultdict(list)
    for k in free_ckpt:
        ckpt_by_canon[_canonical(k)].append(k)
    module_by_canon: Dict[str, List[str]] = defaultdict(list)
    for k in module_keys:
        if k not in mapping:
            module_by_canon[_canonical(k)].append(k)
    for canon, names in module_by_canon.items():
        if len(names) == 1 and len(ckpt_by_canon.get(canon, [])) == 1:
            mapping[names[0]] = ckpt_by_canon[canon][0]
    used = set(mapping.values())
    free_ckpt = [k for k in free_ckpt if k not in used]
    free_module = [k for k in module_keys if k not in mapping]
    candidates: Dict[str, List[str]] = {k: [] for k in free_module}
    ckpt_hits: Dict[str, int] = defaultdict(int)
    ckpt_canon = {c: _canonical(c) for c in free_ckpt}
    for m in free_module:
        m_canon = _canonical(m)
        for c in free_ckpt:
            if _is_dotted_suffix(m_canon, ckpt_canon[c]):
                candidates[m].append(c)
                ckpt_hits[c] += 1
    ambiguous = set()
    for m, cs in candidates.items():
        if len(cs) == 1 and ckpt_hits[cs[0]] == 1:
            mapping[m] = cs[0]
        else:
            ambiguous.update(cs)
    return mapping, sorted(ambiguous)


def load_state_dict_any(spec: Union[str, Path], progress: bool = True) -> Dict[str, torch.Tensor]:
    """The state dict of ``spec`` (path, URL or short scheme) with detres names, as CPU tensors."""
    return read_checkpoint(resolve(spec, progress=progress))[1]


def _class_layer_mismatches(shape_mismatch: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]
                            ) -> List[ClassLayerMismatch]:
    """The entries of ``shape_mismatch`` that are class layers differing only in their number of
    outputs, grouped per config key (the first matching layer, e.g. ``cls_score``, gives the counts)."""
    found: Dict[str, ClassLayerMismatch] = {}
    for name, ckpt_shape, own_shape in shape_mismatch:
        for pattern, per_class, extra, key in _CLASS_LAYERS:
            if not pattern.search(name) or tuple(ckpt_shape[1:]) != tuple(own_shape[1:]):
                continue
            layer = name.rsplit(".", 1)[0]
            if key not in found:
                found[key] = ClassLayerMismatch([], (ckpt_shape[0] - extra) // per_class,
                                                (own_shape[0] - extra) // per_class, key, extra > 0)
            if layer not in found[key].layers:
                found[key].layers.append(layer)
    return list(found.values())


def _global_context_mismatch(shape_mismatch: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]
                             ) -> Optional[str]:
    """What the checkpoint has when the only layers of another shape are the box predictor's and its
    input width is twice the module's (the checkpoint has global context) or half of it (the module
    has it); ``None`` otherwise (e.g. a res5 of another width changes the res5 shapes as well)."""
    if not shape_mismatch or not all(_PREDICTOR_LAYER.search(n) for n, _, _ in shape_mismatch):
        return None
    for name, ckpt_shape, own_shape in shape_mismatch:
        if not name.endswith("cls_score.weight") or ckpt_shape[1] == own_shape[1]:
            continue
        if ckpt_shape[1] == 2 * own_shape[1]:
            return (f"global context (box predictor input width {ckpt_shape[1]}, the module's is {own_shape[1]}) "
                    f"but {_CONTEXT_KEY} is False; set {_CONTEXT_KEY} True")
        if 2 * ckpt_shape[1] == own_shape[1]:
            return (f"no global context (box predictor input width {ckpt_shape[1]}, the module's is {own_shape[1]}) "
                    f"but {_CONTEXT_KEY} is True; set {_CONTEXT_KEY} False")
    return None


def _recorded_class_names(path: Path) -> Optional[List[str]]:
    """The ``class_names`` a detres checkpoint (a torch zip file) records; read memory-mapped, so the
    tensors are not read again."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file after all: it has no class names for us
        return None
    names = data.get("class_names") if isinstance(data, dict) else None
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def load_weights(module: nn.Module, spec: Union[str, Path], strict: bool = False, progress: bool = True,
                 require_class_layers: bool = False) -> LoadReport:
    """Load the weights named by ``spec`` into ``module`` (format detected, names converted).

    ``strict=True`` raises ``RuntimeError`` with the report (and leaves ``module`` untouched) when
    anything is missing, unexpected, ambiguous or of the wrong shape; otherwise the matching
    tensors are loaded and the problems are logged: class layers for another number of classes as
    one warning line with the fix, the detailed report as a warning (at DEBUG level when only class
    layers differ, the usual fine-tuning case). ``require_class_layers=True`` (evaluation) raises
    :class:`~detres.config.ConfigError` instead of leaving class layers as initialised. Weights whose
    box predictor differs only by global context (``MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT``, which doubles
    its input width) always raise ``ConfigError``, ``module`` untouched: the setting must match them.
    """
    path = resolve(spec, progress=progress)
    fmt, ckpt = read_checkpoint(path)
    own = module.state_dict()
    ckpt = {k: v for k, v in ckpt.items() if not (k.endswith(_COUNTER) and k not in own)}
    mapping, ambiguous = align_names(list(ckpt), list(own))
    report = LoadReport(source=str(spec), path=str(path), format=fmt, ambiguous=ambiguous)
    to_load: Dict[str, torch.Tensor] = {}
    for name, ckpt_name in mapping.items():
        value = ckpt[ckpt_name]
        if tuple(value.shape) != tuple(own[name].shape):
            report.shape_mismatch.append((name, tuple(value.shape), tuple(own[name].shape)))
            continue
        to_load[name] = value
        report.renamed += name != ckpt_name
    used = set(mapping.values())
    report.loaded = len(to_load)
    report.missing = [k for k in own if k not in mapping and not k.endswith(_COUNTER)]
    report.unexpected = [k for k in ckpt if k not in used and k not in ambiguous]
    report.class_mismatch = _class_layer_mismatches(report.shape_mismatch)
    report.class_names = _recorded_class_names(Path(path))
    from detres.config import ConfigError

    context = _global_context_mismatch(report.shape_mismatch)
    if context is not None:
        raise ConfigError(f"weights {spec} have {context}")
    if strict and not report.ok:
        raise RuntimeError(f"strict loading failed:\n{report}")
    if require_class_layers and report.class_mismatch:
        m = report.class_mismatch[0]
        raise ConfigError(f"weights {spec} have {m}: those layers would stay randomly initialised, which makes "
                          f"the evaluation meaningless; {m.fix} (or TEST.ALLOW_CLASS_MISMATCH True)")
    module.load_state_dict(to_load, strict=False)
    _warn_style(module, fmt, to_load)
    for m in report.class_mismatch:
        logger.warning("weights %s have %s: those layers are left as initialised; %s to use them", spec, m, m.fix)
    if report.ok:
        logger.info("%s", report)
    else:
        (logger.debug if report.only_class_layers_differ else logger.warning)("%s", report)
    return report


def _warn_style(module: nn.Module, fmt: str, loaded: Dict[str, torch.Tensor]) -> None:
    """Warn when torchvision ("pytorch" style) or MSRA ("msra" style) bottleneck weights go into a
    module whose downsampling bottlenecks put the stride in the other conv."""
    expected = {"torchvision": "pytorch", "msra": "msra"}.get(fmt)
    if expected is None:
        return
    modules = dict(module.named_modules())
    for name in loaded:
        m = re.match(r"^(.*res[3-5]\.0)\.conv3\.conv\.weight$", name)
        convs = [modules.get(f"{m.group(1)}.{c}.conv") for c in ("conv1", "conv2")] if m else []
        if not convs or not all(isinstance(c, nn.Conv2d) for c in convs) or convs[0].stride == convs[1].stride:
            continue  # not a bottleneck, or no downsampling in this block (e.g. a dilated res5)
        actual = "msra" if tuple(convs[0].stride) != (1, 1) else "pytorch"
        if actual != expected:
            logger.warning(
                "%s weights are %s style (stride in the %s conv) but %s is %s style; set MODEL.RESNETS.STYLE / "
                "style=%r to reproduce the original network", fmt, expected,
                "3x3" if expected == "pytorch" else "first 1x1", m.group(1), actual, expected,
            )
        return
