"""The training loop shared by classification and detection.

``Trainer(cfg)`` builds the model (``build_model``), the optimizer and lr schedule (``solver``), and
the hooks (evaluation, checkpoints, writers); ``resume_or_load`` restores a checkpoint or loads
``MODEL.WEIGHTS``; ``train`` builds the train loader at the start iteration and runs to
``SOLVER.MAX_ITER``. Nothing here is task-specific: the datasets' metadata choose the loaders and
evaluators, the config chooses the model. A train loader that computed a ``pixel_mean_image`` from
the training set hands it to the model (``model.set_pixel_mean_image``) before the first iteration.

Exact resume: a checkpoint holds the model, optimizer, scheduler, grad scaler, the number of
completed iterations and every process's RNG states; the train loader is rebuilt at that iteration
of its seeded stream, and the RNG states are restored after the loader's iterator is created (which
draws from torch's RNG), so a resumed run reproduces the uninterrupted one bit for bit (on CPU).
"""
from __future__ import annotations

import inspect
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detres.data.build import build_test_loader, build_train_loader
from detres.engine import hooks as H
from detres.engine.checkpoint import Checkpointer, unwrap_model
from detres.engine.solver import build_lr_scheduler, build_optimizer
from detres.engine.writers import CommonMetricPrinter, JSONWriter, TensorboardWriter
from detres.evaluation.build import build_evaluator
from detres.evaluation.classes import check_classes, dataset_class_names
from detres.evaluation.evaluator import inference_on_dataset
from detres.modeling.meta_arch.build import build_model, resolve_device
from detres.modeling.test_time import build_test_time_model
from detres.utils import comm
from detres.utils.env import capture_rng_state, restore_rng_state
from detres.utils.events import EventStorage

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)
LOG_PERIOD = 20
# BN statistics stay rank-local (no buffer broadcast at each forward); newer torch renamed the option
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


def amp_dtype(amp, device: torch.device, key: str = "SOLVER.AMP") -> Optional[torch.dtype]:
    """The autocast dtype of an ``AMP`` config node (``SOLVER.AMP`` or ``TEST.AMP``) on ``device``, or
    None (float32). bfloat16 runs on CPU and GPU; float16 needs a GPU (on CPU: a warning, float32)."""
    if not amp.ENABLED:
        return None
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    if amp.DTYPE not in dtypes:
        from detres.config import ConfigError

        raise ConfigError(f"{key}.DTYPE must be bfloat16 or float16, got {amp.DTYPE!r}")
    if device.type != "cuda" and amp.DTYPE == "float16":
        logger.warning(f"{key}.DTYPE float16 needs a GPU; the model is on {device}: running in float32")
        return None
    return dtypes[amp.DTYPE]


def autocast(dtype: Optional[torch.dtype], device: torch.device):
    """``torch.autocast`` with ``dtype`` on ``device``'s type, or a no-op context when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


class Trainer:
    """Attributes: ``model`` (DDP-wrapped in multi-process runs), ``optimizer``, ``scheduler``,
    ``checkpointer``, ``start_iter``, ``iter`` (0-based index of the current iteration), ``max_iter``,
    ``storage`` (the :class:`EventStorage` during :meth:`train`)."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        world = comm.get_world_size()
        if cfg.SOLVER.IMS_PER_BATCH % world:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
        model = self.build_model(cfg)
        self.device = resolve_device(cfg.MODEL.DEVICE)
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.amp_dtype = amp_dtype(cfg.SOLVER.AMP, self.device)
        self.grad_scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if world > 1:
            ids = [comm.get_local_rank()] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids, **_NO_BUFFER_SYNC)
        self.model = model
        self.checkpointer = Checkpointer(
            model, cfg.OUTPUT_DIR, optimizer=self.optimizer, scheduler=self.scheduler, grad_scaler=self.grad_scaler
        )
        self.start_iter = self.iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.storage: Optional[EventStorage] = None
        self._pending_rng: Optional[Dict[str, Any]] = None
        self.hooks: List[H.HookBase] = []
        self.register_hooks(self.build_hooks())

    # ------------------------------------------------------------------ building blocks (overridable)
    @classmethod
    def build_model(cls, cfg) -> nn.Module:
        model = build_model(cfg)
        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"Model: {type(model).__name__}, {params / 1e6:.2f} M parameters ({trainable / 1e6:.2f} M trained)")
        logger.debug("Model structure:\n%s", model)
        return model

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        return build_train_loader(cfg, start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str):
        return build_evaluator(cfg, dataset_name, os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name))

    @classmethod
    def test(cls, cfg, model: nn.Module, class_names: Optional[List[str]] = None) -> "OrderedDict[str, dict]":
        """Evaluate ``model`` (unwrapped; wrapped by the ``TEST.MULTI_SCALE`` / ``FLIP`` / ``ENSEMBLE`` test-time
        options when on) on every dataset of ``DATASETS.TEST``; results on the main process.

        Each dataset's classes are checked against the model's first (``check_classes``: another
        number of classes is a ``ConfigError``); ``class_names`` are those its checkpoint records.
        """
        model = build_test_time_model(cfg, unwrap_model(model))
        device = next(model.parameters()).device
        dtype = amp_dtype(cfg.TEST.AMP, device, "TEST.AMP")
        results: "OrderedDict[str, dict]" = OrderedDict()
        for name in cfg.DATASETS.TEST:
            loader = cls.build_test_loader(cfg, name)  # loads the records: lazily known class names are known now
            check_classes(cfg, name, class_names)
            with autocast(dtype, device):
                results[name] = inference_on_dataset(model, loader, cls.build_evaluator(cfg, name)) or {}
        return results

    def build_hooks(self) -> List[H.HookBase]:
        cfg = self.cfg
        # the checkpoint first: an evaluation that fails never costs the weights of that iteration
        hooks: List[H.HookBase] = [H.PeriodicCheckpointer(cfg.SOLVER.CHECKPOINT_PERIOD)]
        if len(cfg.DATASETS.TEST):
            hooks.append(H.EvalHook(cfg.TEST.EVAL_PERIOD, lambda: self.test(self.cfg, self.model)))
        if comm.is_main_process():
            hooks.append(H.PeriodicWriter(self.build_writers(), LOG_PERIOD))
        return hooks

    def build_writers(self) -> list:
        out = self.cfg.OUTPUT_DIR
        os.makedirs(out, exist_ok=True)
        return [
            CommonMetricPrinter(self.max_iter, window=LOG_PERIOD),
            JSONWriter(os.path.join(out, "metrics.json")),
            TensorboardWriter(os.path.join(out, "tensorboard")),
        ]

    def register_hooks(self, hooks: List[Optional[H.HookBase]]) -> None:
        for hook in hooks:
            if hook is not None:
                hook.trainer = self
                self.hooks.append(hook)

    # ------------------------------------------------------------------ checkpoints
    def resume_or_load(self, resume: bool = True) -> None:
        """Continue from ``OUTPUT_DIR``'s last checkpoint when ``resume`` and one exists; otherwise
        initialise the model from ``MODEL.WEIGHTS`` (if set) and start at iteration 0."""
        extra = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if not extra:
            return
        self.start_iter = int(extra["iteration"])
        if extra.get("seed", self.cfg.SEED) != self.cfg.SEED:
            logger.warning(f"the checkpoint was trained with SEED {extra['seed']}, this run has SEED {self.cfg.SEED}: "
                           "the resumed data stream differs from the interrupted run's")
        rng_states = extra.get("rng_states") or []
        if len(rng_states) == comm.get_world_size():
            self._pending_rng = rng_states[comm.get_rank()]
        else:
            logger.warning(f"the checkpoint holds RNG states of {len(rng_states)} processes, this run has "
                           f"{comm.get_world_size()}: random draws will differ from the interrupted run")
        logger.info(f"Resuming after {self.start_iter} completed iterations")

    def save_checkpoint(self, name: str) -> Optional[str]:
        """Save the full training state after ``self.iter + 1`` completed iterations (collective call),
        with the training datasets' class names (``class_names``) when their metadata has them."""
        rng_states = comm.all_gather(capture_rng_state())
        names = dataset_class_names(self.cfg.DATASETS.TRAIN)
        extra = {"class_names": names} if names is not None else {}
        return self.checkpointer.save(name, iteration=self.iter + 1, rng_states=rng_states, seed=int(self.cfg.SEED),
                                      **extra)

    # ------------------------------------------------------------------ loop
    def train(self) -> None:
        if self.start_iter >= self.max_iter:
            logger.info(f"Nothing to do: {self.start_iter} iterations done, SOLVER.MAX_ITER is {self.max_iter}")
            return
        self.data_loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)
        mean_image = getattr(self.data_loader, "pixel_mean_image", None)
        if mean_image is not None:  # a training-set statistic the classifier keeps as a checkpointed buffer
            unwrap_model(self.model).set_pixel_mean_image(mean_image)
        self._data_iter = iter(self.data_loader)  # draws from torch's RNG: before restoring the saved states
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None
        logger.info(f"Starting training from iteration {self.start_iter} to {self.max_iter}")
        self.model.train()
        start = time.perf_counter()
        with EventStorage(self.start_iter) as self.storage:
            try:
                for h in self.hooks:
                    h.before_train()
                for self.iter in range(self.start_iter, self.max_iter):
                    for h in self.hooks:
                        h.before_step()
                    self.run_step()
                    for h in self.hooks:
                        h.after_step()
                    self.storage.step()
            finally:
                for h in self.hooks:
                    h.after_train()
        logger.info(f"Training of {self.max_iter - self.start_iter} iterations took {time.perf_counter() - start:.1f} s")

    def run_step(self) -> None:
        start = time.perf_counter()
        data = next(self._data_iter)
        data_time = time.perf_counter() - start
        with autocast(self.amp_dtype, self.device):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        reduced = self._check_losses(loss_dict)
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(losses).backward()
        if self.cfg.SOLVER.CLIP_GRADIENTS > 0:
            self.grad_scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.SOLVER.CLIP_GRADIENTS)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        lr = self.cfg.SOLVER.BASE_LR * self.scheduler.multiplier()  # this iteration's scheduled BASE_LR
        self.scheduler.step()
        self.storage.put_scalars(total_loss=sum(reduced.values()), **reduced, lr=lr,
                                 data_time=data_time, time=time.perf_counter() - start)

    def _check_losses(self, loss_dict: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Losses averaged over processes; raise ``FloatingPointError`` naming the first non-finite one
        (every process sees the same values, so all stop together)."""
        names = sorted(loss_dict)
        values = comm.all_reduce_mean(torch.stack([loss_dict[n].detach().float() for n in names])).tolist()
        reduced = dict(zip(names, values))
        for name, value in reduced.items():
            if not math.isfinite(value):
                last = self.checkpointer.get_checkpoint_file() if comm.is_main_process() else None
                raise FloatingPointError(
                    f"loss '{name}' is {value} at iteration {self.iter} (0-based); training stopped without "
                    f"saving this state. Last good checkpoint: {last or 'none'}"
                )
        return reduced
