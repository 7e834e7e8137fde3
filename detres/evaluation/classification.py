"""Top-1 / top-5 error of a classifier, in percent as in the paper's tables.

The scores a model outputs already average the views ``TEST.CLS_MODE`` produced (centre crop,
ten crops or several scales); this evaluator only compares them with the labels. An input counts
as a top-k error when its label is not among the ``k`` highest scores (``k`` is capped at the number
of classes; ties are broken by ``torch.topk``).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional

import torch

from detres.evaluation.build import EVALUATOR_REGISTRY
from detres.utils import comm

__all__ = ["ClassificationEvaluator", "topk_correct"]

logger = logging.getLogger(__name__)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> List[int]:
    """For each ``k``, how many rows of ``scores`` ``(N, K)`` have their label ``(N,)`` in the top ``k``."""
    if scores.dim() != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"scores must be (N, K) and labels (N,); got {tuple(scores.shape)} and {tuple(labels.shape)}")
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


class ClassificationEvaluator:
    """``reset()``, ``process(inputs, outputs)`` (inputs carry ``"label"``, outputs are ``(N, K)`` scores),
    ``evaluate() -> {"top1_error": %, "top5_error": %}`` gathered over all processes (main process;
    others return ``{}``). With an ``output_dir`` the metrics are also written to ``metrics.json`` there."""

    def __init__(self, cfg=None, dataset_name: str = "", output_dir: Optional[str] = None):
        self.dataset_name, self.output_dir = dataset_name, output_dir
        self.mode = cfg.TEST.CLS_MODE if cfg is not None else None
        self.reset()

    def reset(self) -> None:
        self._count = 0
        self._correct = [0, 0]

    def process(self, inputs: List[dict], outputs: torch.Tensor) -> None:
        if len(inputs) != len(outputs):
            raise ValueError(f"{len(inputs)} inputs but {len(outputs)} score rows")
        labels = torch.as_tensor([int(x["label"]) for x in inputs], device=outputs.device)
        for i, c in enumerate(topk_correct(outputs.detach(), labels)):
            self._correct[i] += c
        self._count += len(inputs)

    def evaluate(self) -> Dict[str, float]:
        gathered = comm.all_gather((self._count, self._correct))
        if not comm.is_main_process():
            return {}
        count = sum(n for n, _ in gathered)
        if count == 0:
            raise RuntimeError(f"ClassificationEvaluator on {self.dataset_name!r}: no images were processed")
        top1, top5 = (sum(c[i] for _, c in gathered) for i in range(2))
        results = {"top1_error": 100.0 * (1 - top1 / count), "top5_error": 100.0 * (1 - top5 / count)}
        logger.info(
            "%s (%d images, %s): top-1 error %.2f%%, top-5 error %.2f%%",
            self.dataset_name, count, self.mode or "scores as given", results["top1_error"], results["top5_error"],
        )
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            with open(os.path.join(self.output_dir, "metrics.json"), "w") as f:
                json.dump({**results, "num_images": count, "mode": self.mode}, f, indent=2)
        return results


@EVALUATOR_REGISTRY.register()
def classification(cfg, dataset_name: str, output_dir: Optional[str] = None) -> ClassificationEvaluator:
    """Evaluator type "classification" (``MetadataCatalog.get(name).evaluator_type``)."""
    return ClassificationEvaluator(cfg, dataset_name, output_dir)
