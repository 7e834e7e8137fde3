"""Writers of the training scalars in the current :class:`~detres.utils.events.EventStorage`.

* :class:`CommonMetricPrinter` logs one line per call: iteration, each loss (median over the last
  ``window`` iterations), lr, time/iter, data time and ETA.
* :class:`JSONWriter` appends one JSON object per call to ``metrics.json``: ``iteration`` plus every
  scalar put since the previous call, averaged over those iterations (so ``cls_error`` is the
  running training error of the period; an evaluation metric, put once, is its value), except
  ``lr``, which is its latest value.
* :class:`TensorboardWriter` writes the same averages plus the images put into ``storage.images``.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
from typing import Dict, Optional

import torch

from detres.utils.events import EventStorage, get_event_storage

__all__ = ["CommonMetricPrinter", "EventWriter", "JSONWriter", "TensorboardWriter"]


class EventWriter:
    def write(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files; the default has nothing to release."""


def _storage() -> EventStorage:
    storage = get_event_storage()
    if storage is None:
        raise RuntimeError("event writers must be called inside an EventStorage context")
    return storage


class _PeriodAverages:
    """Per-scalar mean of the values put since the previous call, as ``{name: (mean, last_iter)}``;
    the names in ``LATEST`` give their latest value instead."""

    LATEST = ("lr",)

    def __init__(self) -> None:
        self._written_iter: Dict[str, int] = {}

    def __call__(self, storage: EventStorage) -> Dict[str, tuple]:
        out = {}
        for name, (latest, last_iter) in storage.latest().items():
            after = self._written_iter.get(name, -1)
            if last_iter <= after:
                continue
            self._written_iter[name] = last_iter
            if name in self.LATEST:
                out[name] = (latest, last_iter)
                continue
            # scalars are put at most once per iteration: the new ones are among the last (iter - after)
            values = [v for v, it in storage.history(name, last=last_iter - after) if it > after]
            out[name] = (math.fsum(values) / len(values), last_iter)
        return out


class JSONWriter(EventWriter):
    def __init__(self, path: str) -> None:
        self._file = open(path, "a")
        self._averages = _PeriodAverages()

    def write(self) -> None:
        storage = _storage()
        by_iter: Dict[int, dict] = {}
        for name, (value, it) in self._averages(storage).items():
            by_iter.setdefault(it, {"iteration": it})[name] = value
        for it in sorted(by_iter):
            self._file.write(json.dumps(by_iter[it], sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorboardWriter(EventWriter):
    def __init__(self, log_dir: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir)
        self._averages = _PeriodAverages()

    def write(self) -> None:
        storage = _storage()
        for name, (value, it) in self._averages(storage).items():
            self._writer.add_scalar(name, value, it)
        for tag, image, it in storage.images:
            self._writer.add_image(tag, image, it)  # CHW uint8
        storage.images.clear()
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class CommonMetricPrinter(EventWriter):
    def __init__(self, max_iter: int, window: int = 20, logger: Optional[logging.Logger] = None) -> None:
        self.max_iter, self.window = max_iter, window
        self.logger = logger or logging.getLogger("detres.engine")

    def write(self) -> None:
        storage = _storage()
        it = storage.iter
        losses = "  ".join(
            f"{name}: {storage.median(name, self.window):.4g}"
            for name in sorted(storage.latest())
            if name.startswith("loss") or name == "total_loss"
        )
        iter_time, data_time = storage.median("time", self.window), storage.median("data_time", self.window)
        lr = storage.latest().get("lr", (float("nan"), 0))[0]
        eta = "N/A"
        if iter_time is not None:
            eta = str(datetime.timedelta(seconds=int(iter_time * (self.max_iter - it - 1))))
        fields = [f"eta: {eta}", f"iter: {it}/{self.max_iter}", losses, f"lr: {lr:.5g}"]
        if iter_time is not None:
            fields += [f"time: {iter_time:.4f}", f"data_time: {data_time:.4f}"]
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            fields.append(f"max_mem: {torch.cuda.max_memory_allocated() / 2**20:.0f}M")
        self.logger.info("  ".join(f for f in fields if f))
