"""Models attached to the ImageNet localizer at test time (paper, Appendix C): the classifiers whose
top-5 classes it localizes, and the loader shared with the R-CNN rescorer.

Attached models are built from their own config and weights when the localizer is built, frozen and
kept in eval mode. They are not submodules of the localizer: its ``state_dict()``, ``parameters()``
and optimizer do not see them, so its checkpoints hold the localizer alone.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from detres.config import CfgNode, ConfigError, load_config

__all__ = ["ClassifierEnsemble", "load_attached_model", "to_format"]


def to_format(image: torch.Tensor, source: str, target: str) -> torch.Tensor:
    """``(..., 3, H, W)`` ``image`` in channel order ``source`` ("BGR"/"RGB") as ``target``."""
    return image if source == target else image.flip(-3)


def load_attached_model(config_file: str, weights: str, key: str, device: str, opts: Sequence[str] = (),
                        weights_key: Optional[str] = None) -> Tuple[nn.Module, CfgNode]:
    """The model of ``config_file`` (plus ``KEY VALUE`` overrides ``opts``) on ``device`` with ``weights``
    loaded (class layers required), frozen, in eval mode, and its config. ``key`` (e.g.
    ``"MODEL.LOCALIZER.CLASSIFIER_CONFIGS[0]"``) prefixes the errors, ``weights_key`` (default ``key``)
    those about the weights: ``ConfigError`` for a missing or bad config, ``FileNotFoundError`` for
    missing weights."""
    from detres.modeling.meta_arch.build import build_model
    from detres.modeling.weight_import import load_weights

    if not weights:
        raise ConfigError(f"{key}: {config_file} is given without weights")
    try:
        cfg = load_config(config_file, ["MODEL.DEVICE", device, *opts])
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from e
    model = build_model(cfg)
    try:
        load_weights(model, weights, require_class_layers=True)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{weights_key or key}: {e}") from e
    model.requires_grad_(False)
    return model.eval(), cfg


class ClassifierEnsemble:
    """Detres ``ImageClassifier`` s whose softmax scores are averaged (one model: its scores).

    Each classifier gets the same views in its own channel order and applies its own normalisation;
    views of any size are classified fully convolutionally (global average pooling over the whole
    map) and a classifier's scores are averaged over an image's views, as ``ImageClassifier`` does.
    """

    def __init__(self, models: Sequence[nn.Module]):
        if not models:
            raise ValueError("a classifier ensemble needs at least one classifier")
        classes = {m.num_classes for m in models}
        if len(classes) != 1:
            raise ConfigError(f"the attached classifiers disagree on the number of classes: {sorted(classes)}")
        self.models = list(models)
        self.num_classes = classes.pop()

    @classmethod
    def from_config(cls, cfg) -> Optional["ClassifierEnsemble"]:
        """The classifiers of ``MODEL.LOCALIZER.CLASSIFIER_CONFIGS`` / ``CLASSIFIER_WEIGHTS`` (two lists
        of the same length) on ``MODEL.DEVICE``; ``None`` when the lists are empty."""
        loc = cfg.MODEL.LOCALIZER
        configs, weights = list(loc.CLASSIFIER_CONFIGS), list(loc.CLASSIFIER_WEIGHTS)
        if len(configs) != len(weights):
            raise ConfigError(f"MODEL.LOCALIZER.CLASSIFIER_CONFIGS has {len(configs)} entries but CLASSIFIER_WEIGHTS "
                              f"{len(weights)}: give one weights file per classifier config")
        if not configs:
            return None
        models = []
        for i, (config_file, weight_file) in enumerate(zip(configs, weights)):
            key = f"MODEL.LOCALIZER.CLASSIFIER_CONFIGS[{i}]"
            model, _ = load_attached_model(config_file, weight_file, key, cfg.MODEL.DEVICE,
                                           weights_key=f"MODEL.LOCALIZER.CLASSIFIER_WEIGHTS[{i}]")
            if not hasattr(model, "inference") or not hasattr(model, "num_classes"):
                raise ConfigError(f"{key}: {config_file} builds a {type(model).__name__}, not an ImageClassifier")
            models.append(model)
        return cls(models)

    @torch.no_grad()
    def __call__(self, views: Sequence[Sequence[torch.Tensor]], input_format: str) -> torch.Tensor:
        """``views``: per image its ``(3, h, w)`` views in ``input_format`` order, [0, 255] ->
        ``(N, num_classes)`` softmax scores averaged over views and classifiers."""
        scores: List[torch.Tensor] = []
        for model in self.models:
            device = views[0][0].device
            model.to(device)
            inputs = [{"image": [to_format(v, input_format, model.input_format) for v in image_views]}
                      for image_views in views]
            scores.append(model.inference(inputs).to(device))
        return torch.stack(scores).mean(dim=0)
