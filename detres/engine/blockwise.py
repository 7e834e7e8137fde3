"""Block-wise ("partial") training of a CIFAR ResNet: the network is trained stage by stage.

With ``SOLVER.BLOCKWISE.ENABLED`` the three stages ``res2``/``res3``/``res4`` join one per phase,
``ORDER`` "top_down" from the input side (res2, then res3, then res4) or "bottom_up" from the output
side (res4, res3, res2). In a phase, the stages not yet added are absent
(``MODEL.CIFAR_RESNETS.ABSENT_STAGES``): the option-A mapping (stride + zero channels) takes their
place, so no new weights appear, and their weights are kept untrained.

Each phase is an ordinary :class:`~detres.engine.trainer.Trainer` run in ``OUTPUT_DIR/phase<k>``:
phase ``k`` (1-based) before the last trains ``PHASE_ITERS[k-1]`` iterations at the constant rate
``PHASE_LRS[k-1]``; the last phase (all stages) follows the rest of ``SOLVER``. Weights carry over:
phase ``k + 1`` starts from phase ``k``'s ``model_final.pth`` (``MODEL.WEIGHTS``), in which the new
stage still has its initialisation; the last norm of each of its residual branches (scale and shift)
is then multiplied by ``LAMBDA`` (1: the usual init), so a small ``LAMBDA`` makes the new stage start
close to the option-A mapping it replaces. A new optimizer (momentum reset) starts every phase.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from detres.config import ConfigError
from detres.engine.checkpoint import unwrap_model
from detres.engine.trainer import Trainer

__all__ = ["Phase", "blockwise_phases", "phase_config", "scale_residual_branches", "train_blockwise"]

logger = logging.getLogger(__name__)

STAGES = ("res2", "res3", "res4")
ORDERS = {"top_down": STAGES, "bottom_up": STAGES[::-1]}


@dataclass(frozen=True)
class Phase:
    """One phase: ``present`` stages (network order), the ``new_stage`` that joins in it, and its
    schedule (``base_lr`` None: the config's own ``SOLVER`` recipe, for the last phase)."""

    index: int  # 1-based
    present: Tuple[str, ...]
    new_stage: str
    max_iter: int
    base_lr: Optional[float]


def blockwise_phases(cfg) -> List[Phase]:
    """The phases ``SOLVER.BLOCKWISE`` describes for the CIFAR ResNet of ``cfg``."""
    b = cfg.SOLVER.BLOCKWISE
    if b.ORDER not in ORDERS:
        raise ConfigError(f"SOLVER.BLOCKWISE.ORDER must be one of {sorted(ORDERS)}, got {b.ORDER!r}")
    if cfg.MODEL.BACKBONE.NAME != "cifar_resnet":
        raise ConfigError(f"block-wise training needs a cifar_resnet backbone, got {cfg.MODEL.BACKBONE.NAME!r}")
    order = ORDERS[b.ORDER]
    if len(b.PHASE_ITERS) != len(order) - 1 or len(b.PHASE_LRS) != len(order) - 1:
        raise ConfigError(f"SOLVER.BLOCKWISE.PHASE_ITERS and PHASE_LRS need {len(order) - 1} entries (the phases "
                          f"before the last), got {list(b.PHASE_ITERS)} and {list(b.PHASE_LRS)}")
    phases = []
    for k, new_stage in enumerate(order):
        present = tuple(s for s in STAGES if s in order[: k + 1])
        last = k == len(order) - 1
        max_iter = cfg.SOLVER.MAX_ITER if last else int(b.PHASE_ITERS[k])
        phases.append(Phase(k + 1, present, new_stage, max_iter, None if last else float(b.PHASE_LRS[k])))
    return phases


def phase_config(cfg, phase: Phase, weights: str):
    """A copy of ``cfg`` for ``phase``: its absent stages, schedule, output folder and initial ``weights``."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.CIFAR_RESNETS.ABSENT_STAGES = [s for s in STAGES if s not in phase.present]
    cfg.MODEL.WEIGHTS = weights
    cfg.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, f"phase{phase.index}")
    cfg.SOLVER.BLOCKWISE.ENABLED = False  # each phase is a plain run
    if phase.base_lr is not None:
        cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR = phase.max_iter, phase.base_lr
        cfg.SOLVER.LR_SCHEDULER, cfg.SOLVER.STEPS = "multistep", ()
        cfg.SOLVER.WARMUP_METHOD, cfg.SOLVER.WARMUP_ITERS = "linear", 0  # a constant rate, no warm-up
    return cfg


def scale_residual_branches(stage: nn.Sequential, factor: float) -> None:
    """Multiply the scale and shift of the last norm of every block's residual branch by ``factor``
    (residual branch ``r(x)`` -> ``factor * r(x)`` in eval mode)."""
    with torch.no_grad():
        for block in stage:
            norm = block.last_norm()
            for p in (norm.weight, norm.bias):
                if p is None:
                    raise ValueError("SOLVER.BLOCKWISE.LAMBDA needs norm layers with an affine scale and shift")
                p.mul_(factor)


def train_blockwise(cfg, resume: bool = False, trainer_class: type = Trainer) -> List[str]:
    """Run every phase (a finished phase is skipped by ``resume``); returns the phases' output folders,
    the last one holding the fully trained model (``model_final.pth``)."""
    weights, folders = cfg.MODEL.WEIGHTS, []
    for phase in blockwise_phases(cfg):
        phase_cfg = phase_config(cfg, phase, weights)
        logger.info(f"Block-wise phase {phase.index}: stages {', '.join(phase.present)} (new: {phase.new_stage}), "
                    f"{phase.max_iter} iterations" + (f" at lr {phase.base_lr}" if phase.base_lr is not None else ""))
        trainer = trainer_class(phase_cfg)
        trainer.resume_or_load(resume=resume)
        if trainer.start_iter == 0 and phase.index > 1 and cfg.SOLVER.BLOCKWISE.LAMBDA != 1.0:
            backbone = unwrap_model(trainer.model).backbone
            scale_residual_branches(getattr(backbone, phase.new_stage), cfg.SOLVER.BLOCKWISE.LAMBDA)
        trainer.train()
        weights = os.path.join(phase_cfg.OUTPUT_DIR, "model_final.pth")
        folders.append(phase_cfg.OUTPUT_DIR)
    return folders
