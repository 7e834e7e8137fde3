"""A tiny, self-contained task for the engine tests (no dependency on the real data/model code).

* Data: ``N`` "images" (3, 4, 4): a fixed random mean per class (4 classes) plus unit Gaussian
  noise, so a small MLP goes from chance (75% error) to a few percent. The train stream follows the loader contract: seeded, infinite,
  iteration ``t`` uses global positions ``[t*B, (t+1)*B)`` of per-epoch permutations, rank ``r`` takes
  the ``r``-th slice, and ``start_iter`` resumes. With ``augment`` each image gets a random sign flip
  drawn from NumPy's global RNG and noise from Python's ``random`` (so resuming must restore them).
* Models (registered in META_ARCH_REGISTRY): ``EngineToyMLP`` (dropout: uses torch's RNG),
  ``EngineToyMLPNoDropout`` and ``EngineToyNaN`` (its loss is NaN from iteration ``NAN_AT`` on).
"""
from __future__ import annotations

import random
from functools import lru_cache
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detres.config import get_cfg
from detres.engine.trainer import Trainer
from detres.modeling.meta_arch.build import META_ARCH_REGISTRY
from detres.utils import comm
from detres.utils.events import get_event_storage

NUM_CLASSES = 4
NUM_TRAIN, NUM_VAL = 1024, 128


def make_records(n: int, seed: int) -> List[dict]:
    means = 0.6 * torch.randn(NUM_CLASSES, 48, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    x = means[labels] + torch.randn(n, 48, generator=g)
    return [{"image": x[i].view(3, 4, 4), "label": int(labels[i])} for i in range(n)]


@lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


class ToyTrainLoader:
    def __init__(self, records: List[dict], batch_size: int, seed: int, start_iter: int, augment: bool):
        self.records, self.batch_size, self.seed = records, batch_size, seed
        self.start_iter, self.augment = start_iter, augment

    def __iter__(self):
        world, rank = comm.get_world_size(), comm.get_rank()
        local = self.batch_size // world
        t = self.start_iter
        while True:
            batch = []
            for pos in range(t * self.batch_size + rank * local, t * self.batch_size + (rank + 1) * local):
                epoch, offset = divmod(pos, len(self.records))
                index = int(_permutation(self.seed, epoch, len(self.records))[offset])
                rec = dict(self.records[index])
                if self.augment:
                    sign = float(np.random.choice([-1.0, 1.0]))
                    rec["image"] = rec["image"] * sign + random.gauss(0.0, 0.05)
                batch.append(rec)
            yield batch
            t += 1


class ToyEvaluator:
    def reset(self):
        self.correct, self.total = 0, 0

    def process(self, inputs, outputs):
        labels = torch.tensor([x["label"] for x in inputs])
        self.correct += int((outputs.argmax(1) == labels).sum())
        self.total += len(inputs)

    def evaluate(self):
        parts = comm.all_gather((self.correct, self.total))
        if not comm.is_main_process():
            return {}
        correct, total = map(sum, zip(*parts))
        return {"top1_error": 1.0 - correct / total, "num_images": total}


class ToyTrainer(Trainer):
    augment = True

    @classmethod
    def build_train_loader(cls, cfg, start_iter=0):
        return ToyTrainLoader(make_records(NUM_TRAIN, 0), cfg.SOLVER.IMS_PER_BATCH, cfg.SEED, start_iter, cls.augment)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        records = make_records(NUM_VAL, 1)
        world, rank = comm.get_world_size(), comm.get_rank()
        shard = records[rank::world]
        return [shard[i:i + 16] for i in range(0, len(shard), 16)]

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return ToyEvaluator()


class PlainToyTrainer(ToyTrainer):
    augment = False


@META_ARCH_REGISTRY.register()
class EngineToyMLP(nn.Module):
    dropout = 0.3

    def __init__(self, cfg):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, 64), nn.ReLU(), nn.Dropout(self.dropout),
                                 nn.Linear(64, cfg.MODEL.CLASSIFIER.NUM_CLASSES))

    def forward(self, batched_inputs):
        x = torch.stack([b["image"].float() for b in batched_inputs])
        logits = self.net(x)
        if not self.training:
            return logits.softmax(1)
        labels = torch.tensor([b["label"] for b in batched_inputs])
        storage = get_event_storage()
        if storage is not None:
            storage.put_scalar("cls_error", (logits.argmax(1) != labels).float().mean().item())
        return {"loss_cls": F.cross_entropy(logits, labels)}


@META_ARCH_REGISTRY.register()
class EngineToyMLPNoDropout(EngineToyMLP):
    dropout = 0.0


@META_ARCH_REGISTRY.register()
class EngineToyNaN(EngineToyMLPNoDropout):
    NAN_AT = 7

    def forward(self, batched_inputs):
        out = super().forward(batched_inputs)
        if self.training and get_event_storage().iter >= self.NAN_AT:
            out["loss_cls"] = out["loss_cls"] * float("nan")
        return out


def toy_cfg(output_dir, **solver):
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "EngineToyMLP"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = NUM_CLASSES
    cfg.DATASETS.TRAIN = ("engine_toy_train",)
    cfg.DATASETS.TEST = ("engine_toy_val",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = 7
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 12
    cfg.SOLVER.STEPS = (8,)
    cfg.SOLVER.CHECKPOINT_PERIOD = 6
    cfg.TEST.EVAL_PERIOD = 4
    for key, value in solver.items():
        cfg.SOLVER[key] = value
    return cfg


def ddp_main(cfg_yaml: str, trainer_name: str) -> None:
    """Entry point of each spawned process in the DDP test."""
    import torch as _torch

    from detres.config import CfgNode
    from detres.engine.defaults import default_setup

    _torch.set_num_threads(1)
    cfg = CfgNode.load_cfg(cfg_yaml)
    cfg = default_setup(cfg)
    trainer = {"ToyTrainer": ToyTrainer, "PlainToyTrainer": PlainToyTrainer}[trainer_name](cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
