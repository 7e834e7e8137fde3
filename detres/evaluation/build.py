"""Evaluators, chosen by the dataset's ``evaluator_type`` metadata."""
from __future__ import annotations

from typing import Optional

from fvcore.common.registry import Registry

from detres.data.catalog import MetadataCatalog

EVALUATOR_REGISTRY = Registry("EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Registered by evaluator type ("classification", "coco", "voc", "localization"); called as
``cls(cfg, dataset_name, output_dir)``. An evaluator has ``reset()``, ``process(inputs, outputs)``
and ``evaluate() -> Dict[str, float | dict]``.
"""


def build_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None):
    from detres.evaluation import (  # noqa: F401  (registers)
        classification, coco_evaluation, localization_evaluation, voc_evaluation)

    kind = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", None)
    if kind is None:
        raise KeyError(f"dataset {dataset_name!r} has no evaluator_type in its metadata")
    return EVALUATOR_REGISTRY.get(kind)(cfg, dataset_name, output_dir)
