"""Optimizer and learning-rate schedule built from ``cfg.SOLVER``.

The learning rate of parameter group ``g`` after ``t`` completed iterations is
``base_lr_g * warmup(t) * decay(t / MAX_ITER)``:

* ``decay`` (``SOLVER.LR_SCHEDULER``): "multistep" (times ``GAMMA`` at each of ``STEPS``), "cosine"
  (to 0 at ``MAX_ITER``) — fvcore param schedulers — or "plateau": times ``GAMMA`` each time the
  validation error has not improved for ``PLATEAU_PATIENCE`` consecutive evaluations.
* ``warmup`` (``SOLVER.WARMUP_METHOD``): "linear" from ``WARMUP_FACTOR`` to 1 or "constant"
  ``WARMUP_FACTOR`` over ``WARMUP_ITERS`` iterations; or "until_train_error": ``WARMUP_FACTOR``
  until the median of the model's ``cls_error`` over the last ``TRAIN_ERROR_WINDOW`` iterations (mean
  over processes) drops below ``WARMUP_TRAIN_ERROR``, then 1 for the rest of training (the paper's
  110-layer CIFAR recipe).
"""
from __future__ import annotations

import logging
import statistics
from typing import Any, Dict, List, Optional

import torch
from fvcore.common.param_scheduler import (
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
)
from torch import nn

from detres.config import ConfigError
from detres.utils import comm
from detres.utils.events import get_event_storage

__all__ = [
    "IterationWarmup",
    "LRScheduler",
    "PlateauParamScheduler",
    "TrainErrorWarmup",
    "build_lr_scheduler",
    "build_optimizer",
]

logger = logging.getLogger(__name__)

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
TRAIN_ERROR_WINDOW = 20


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SGD over the trainable parameters of ``model``.

    Norm layers' parameters use ``WEIGHT_DECAY_NORM``; every bias (norm layers' included) has its
    learning rate scaled by ``BIAS_LR_FACTOR``. Each group records its unscheduled rate in
    ``group["base_lr"]``.
    """
    s = cfg.SOLVER
    if s.OPTIMIZER != "SGD":
        raise ConfigError(f"SOLVER.OPTIMIZER: only 'SGD' is supported, got {s.OPTIMIZER!r}")
    groups: Dict[tuple, List[nn.Parameter]] = {}
    seen = set()
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr = s.BASE_LR * (s.BIAS_LR_FACTOR if name == "bias" else 1.0)
            weight_decay = s.WEIGHT_DECAY_NORM if is_norm else s.WEIGHT_DECAY
            groups.setdefault((lr, weight_decay), []).append(param)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    param_groups = [{"params": p, "lr": lr, "base_lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()]
    return torch.optim.SGD(param_groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)


class PlateauParamScheduler(ParamScheduler):
    """``gamma ** k`` where ``k`` counts the reductions so far; a reduction happens when the error given
    to :meth:`observe` has not improved on the best one for ``patience`` consecutive observations."""

    def __init__(self, gamma: float, patience: int) -> None:
        if patience < 1:
            raise ConfigError(f"SOLVER.PLATEAU_PATIENCE must be >= 1, got {patience}")
        self.gamma, self.patience = gamma, patience
        self.best: Optional[float] = None
        self.num_bad = 0
        self.num_reductions = 0

    def __call__(self, where: float) -> float:
        return self.gamma**self.num_reductions

    def observe(self, error: float) -> None:
        if self.best is None or error < self.best:
            self.best, self.num_bad = error, 0
            return
        self.num_bad += 1
        if self.num_bad >= self.patience:
            self.num_reductions += 1
            self.num_bad = 0
            logger.info(f"validation error {error:.4g} has not improved on {self.best:.4g} for {self.patience} "
                        f"evaluations: learning rate multiplier is now {self(0):.4g}")

    def state_dict(self) -> Dict[str, Any]:
        return {"best": self.best, "num_bad": self.num_bad, "num_reductions": self.num_reductions}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best, self.num_bad, self.num_reductions = state["best"], state["num_bad"], state["num_reductions"]


class IterationWarmup:
    """Multiplier over the first ``iters`` iterations: "linear" ramp from ``factor`` to 1, or
    "constant" ``factor``; 1 afterwards."""

    def __init__(self, method: str, factor: float, iters: int) -> None:
        ramp = {"linear": LinearParamScheduler(factor, 1.0), "constant": ConstantParamScheduler(factor)}
        self.ramp, self.iters = ramp[method], iters

    def __call__(self, iteration: int) -> float:
        return self.ramp(iteration / self.iters) if iteration < self.iters else 1.0

    def update(self, iteration: int) -> None:
        """Stateless: nothing to observe."""


class TrainErrorWarmup:
    """Multiplier ``factor`` until the running training error drops below ``threshold``, then 1.

    The error is the median over the last ``window`` iterations of the ``key`` scalar the model puts
    into the :class:`~detres.utils.events.EventStorage` (averaged over processes, so every process
    ends the warm-up at the same iteration). The window is part of the state, so resuming is exact.
    """

    def __init__(self, factor: float, threshold: float, window: int = TRAIN_ERROR_WINDOW, key: str = "cls_error"):
        self.factor, self.threshold, self.window, self.key = factor, threshold, window, key
        self.errors: List[float] = []
        self.ended_at: Optional[int] = None

    def __call__(self, iteration: int) -> float:
        return 1.0 if self.ended_at is not None else self.factor

    def update(self, iteration: int) -> None:
        """Read this iteration's error from the current event storage (``iteration`` completed iterations)."""
        if self.ended_at is not None:
            return
        storage = get_event_storage()
        latest = storage.latest().get(self.key) if storage is not None else None
        if latest is None or latest[1] != storage.iter:
            raise RuntimeError(
                f"SOLVER.WARMUP_METHOD 'until_train_error' needs the model to put '{self.key}' into the "
                "event storage at every training iteration; this model did not"
            )
        error = float(comm.all_reduce_mean(torch.tensor([latest[0]], dtype=torch.float64))[0])
        self.errors = (self.errors + [error])[-self.window:]
        if len(self.errors) == self.window and statistics.median(self.errors) < self.threshold:
            self.ended_at = iteration
            logger.info(f"training error {statistics.median(self.errors):.4f} < {self.threshold}: "
                        f"warm-up ends after {iteration} iterations")

    def state_dict(self) -> Dict[str, Any]:
        return {"errors": list(self.errors), "ended_at": self.ended_at}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.errors, self.ended_at = list(state["errors"]), state["ended_at"]


class LRScheduler:
    """Sets every group's ``lr`` to ``group["base_lr"] * warmup(t) * decay(t / max_iter)``.

    Call :meth:`step` after each training iteration and :meth:`observe_validation_error` after each
    evaluation (only the plateau schedule uses it).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, decay: ParamScheduler, max_iter: int, warmup=None):
        self.optimizer, self.decay, self.max_iter, self.warmup = optimizer, decay, max_iter, warmup
        self.iter = 0
        self._apply()

    def multiplier(self) -> float:
        value = self.decay(min(self.iter / self.max_iter, 1.0))
        return value * (self.warmup(self.iter) if self.warmup is not None else 1.0)

    def step(self) -> None:
        self.iter += 1
        if self.warmup is not None:
            self.warmup.update(self.iter)
        self._apply()

    def observe_validation_error(self, error: float) -> None:
        if isinstance(self.decay, PlateauParamScheduler):
            self.decay.observe(error)
            self._apply()

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def _apply(self) -> None:
        m = self.multiplier()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * m

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"iter": self.iter}
        for name in ("decay", "warmup"):
            part = getattr(self, name)
            if hasattr(part, "state_dict"):
                state[name] = part.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.iter = state["iter"]
        for name in ("decay", "warmup"):
            if name in state:
                getattr(self, name).load_state_dict(state[name])
        self._apply()


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRScheduler:
    s = cfg.SOLVER
    if s.MAX_ITER <= 0:
        raise ConfigError(f"SOLVER.MAX_ITER must be positive, got {s.MAX_ITER}")
    if s.LR_SCHEDULER == "multistep":
        steps = [x for x in s.STEPS if x < s.MAX_ITER]
        if len(steps) != len(s.STEPS):
            logger.warning(f"SOLVER.STEPS {list(s.STEPS)} beyond SOLVER.MAX_ITER {s.MAX_ITER} are ignored")
        if list(steps) != sorted(set(steps)):
            raise ConfigError(f"SOLVER.STEPS must be strictly increasing, got {list(s.STEPS)}")
        decay = MultiStepParamScheduler(
            [s.GAMMA**k for k in range(len(steps) + 1)], num_updates=s.MAX_ITER, milestones=steps
        )
    elif s.LR_SCHEDULER == "cosine":
        decay = CosineParamScheduler(1.0, 0.0)
    elif s.LR_SCHEDULER == "plateau":
        decay = PlateauParamScheduler(s.GAMMA, s.PLATEAU_PATIENCE)
    else:
        raise ConfigError(f"SOLVER.LR_SCHEDULER must be multistep, cosine or plateau, got {s.LR_SCHEDULER!r}")

    if s.WARMUP_METHOD == "until_train_error":
        warmup = TrainErrorWarmup(s.WARMUP_FACTOR, s.WARMUP_TRAIN_ERROR)
    elif s.WARMUP_METHOD in ("linear", "constant"):
        warmup = IterationWarmup(s.WARMUP_METHOD, s.WARMUP_FACTOR, s.WARMUP_ITERS) if s.WARMUP_ITERS > 0 else None
    else:
        raise ConfigError(
            f"SOLVER.WARMUP_METHOD must be linear, constant or until_train_error, got {s.WARMUP_METHOD!r}"
        )
    return LRScheduler(optimizer, decay, s.MAX_ITER, warmup)
