"""Hooks run by the :class:`~detres.engine.trainer.Trainer` around each iteration.

``trainer.iter`` is the 0-based index of the current iteration; in ``after_step`` the trainer has
completed ``trainer.iter + 1`` iterations. The trainer's default order is evaluation, checkpoint,
writers, so that a checkpoint holds the state the evaluation changed (plateau schedule) and the
writers see the evaluation's metrics of the same iteration.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Mapping

from detres.config import ConfigError
from detres.engine.writers import EventWriter
from detres.utils import comm
from detres.utils.env import preserved_rng_state

__all__ = ["EvalHook", "HookBase", "PeriodicCheckpointer", "PeriodicWriter", "flatten_results"]

logger = logging.getLogger(__name__)


class HookBase:
    """Override any of the four methods; ``self.trainer`` is set when the hook is registered."""

    trainer = None

    def before_train(self) -> None:
        pass

    def after_train(self) -> None:
        pass

    def before_step(self) -> None:
        pass

    def after_step(self) -> None:
        pass


def _due(done: int, period: int, max_iter: int) -> bool:
    return done == max_iter or (period > 0 and done % period == 0)


class PeriodicCheckpointer(HookBase):
    """Save ``model_<iterations done, 7 digits>`` every ``period`` iterations and ``model_final`` at the
    end. Nothing is saved for an iteration that raised (e.g. a non-finite loss)."""

    def __init__(self, period: int) -> None:
        self.period = period

    def after_step(self) -> None:
        done, max_iter = self.trainer.iter + 1, self.trainer.max_iter
        if _due(done, self.period, max_iter):
            self.trainer.save_checkpoint("model_final" if done == max_iter else f"model_{done:07d}")


def flatten_results(results: Mapping, prefix: str = "") -> Dict[str, float]:
    """``{"ds": {"top1_error": 0.3}}`` -> ``{"ds/top1_error": 0.3}``; non-numeric leaves are dropped."""
    flat: Dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_results(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class EvalHook(HookBase):
    """Every ``period`` iterations (0: only after the last one) call ``eval_function() -> {dataset:
    results}``, put the flattened metrics into the event storage, log them and give the first metric
    of the first dataset to ``trainer.scheduler.observe_validation_error`` (the plateau schedule treats
    it as an error: lower is better).

    The evaluation runs with all RNG states saved and restored, so it does not change the training
    trajectory (a run with evaluations reaches the same weights as one without).
    """

    def __init__(self, period: int, eval_function: Callable[[], Dict[str, dict]]) -> None:
        self.period, self.eval_function = period, eval_function
        self.last_eval_iter = -1  # trainer.iter of the latest evaluation

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        if _due(done, self.period, self.trainer.max_iter):
            self.evaluate()

    def evaluate(self) -> Dict[str, float]:
        with preserved_rng_state():
            results = self.eval_function()
        results = comm.all_gather(results)[0]  # rank 0 holds the gathered results; share them
        flat = flatten_results(results)
        self.last_eval_iter = self.trainer.iter
        if not flat:
            return flat
        self.trainer.storage.put_scalars(**flat)
        logger.info("Evaluation after %d iterations: %s", self.trainer.iter + 1,
                    "  ".join(f"{k}: {v:.4f}" for k, v in flat.items()))
        name, value = next(iter(flat.items()))
        if self.trainer.cfg.SOLVER.LR_SCHEDULER == "plateau" and "err" not in name.lower():
            raise ConfigError(f"SOLVER.LR_SCHEDULER 'plateau' needs an error (lower is better) as the first "
                              f"metric of the evaluation; it is {name!r}")
        self.trainer.scheduler.observe_validation_error(value)
        return flat


class PeriodicWriter(HookBase):
    """Call every writer each ``period`` iterations, after the last one and after each evaluation (so
    every evaluation gets its own metrics.json line), and close them at the end."""

    def __init__(self, writers: List[EventWriter], period: int = 20) -> None:
        self.writers, self.period = writers, period
        self._written = 0  # iterations done at the last write

    def after_step(self) -> None:
        done = self.trainer.iter + 1
        evaluated = any(getattr(h, "last_eval_iter", None) == self.trainer.iter for h in self.trainer.hooks)
        if evaluated or _due(done, self.period, self.trainer.max_iter):
            for writer in self.writers:
                writer.write()
            self._written = done

    def after_train(self) -> None:
        stopped_early = self._written < self.trainer.iter  # iterations after the last write
        for writer in self.writers:
            if stopped_early:
                writer.write()
            writer.close()
