"""Running a model over a test loader and feeding an evaluator.

An evaluator (see ``EVALUATOR_REGISTRY``) has ``reset()``, ``process(inputs, outputs)`` and
``evaluate()``; in a multi-process run every process processes its shard of the dataset and
``evaluate()`` gathers to the main process (``detres.utils.comm.all_gather``), which returns the
metrics; other processes may return ``{}`` or ``None``.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Dict, Iterable, Optional

import torch
from torch import nn
from tqdm import tqdm

from detres.utils import comm

__all__ = ["inference_on_dataset"]

logger = logging.getLogger(__name__)


def inference_on_dataset(model: nn.Module, data_loader: Iterable, evaluator) -> Optional[Dict[str, Any]]:
    """Run ``model`` in eval mode under ``torch.inference_mode`` on every batch of ``data_loader``,
    give ``(inputs, outputs)`` to ``evaluator.process`` and return ``evaluator.evaluate()``.

    A tqdm progress bar is shown on the main process. The model's train/eval mode is restored
    afterwards, also when an exception is raised.
    """
    try:
        total = len(data_loader)  # this process's batches
    except TypeError:
        total = None
    evaluator.reset()
    was_training = model.training
    model.eval()
    start, num_images = time.perf_counter(), 0
    try:
        with torch.inference_mode():
            bar = tqdm(data_loader, total=total, desc="inference", unit="batch", disable=not comm.is_main_process(),
                       dynamic_ncols=True, leave=False)
            for inputs in bar:
                outputs = model(inputs)
                evaluator.process(inputs, outputs)
                num_images += len(inputs)
    finally:
        model.train(was_training)
    elapsed = time.perf_counter() - start
    logger.info(
        "Inference on %d images (this process) took %s (%.4f s / image)",
        num_images, datetime.timedelta(seconds=int(elapsed)), elapsed / max(num_images, 1),
    )
    return evaluator.evaluate()
