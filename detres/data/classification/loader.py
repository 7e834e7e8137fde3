"""Classification data loaders: ``List[dict]`` batches of ``{"image", "label"}`` (see the BRIEF contract).

Training -- :func:`build_classification_train_loader` returns a :class:`ClassificationTrainLoader`:

* an **infinite** stream: ``it = iter(loader); batch = next(it)`` gives this process's share of one
  iteration, ``SOLVER.IMS_PER_BATCH // world_size`` samples (a ``List[dict]``);
* **seeded**: the global sample stream is the concatenation over epochs ``e = 0, 1, ...`` of
  ``np.random.default_rng([seed, e]).permutation(N)`` (:class:`detres.data.samplers.TrainingSampler`,
  ``seed`` = ``cfg.SEED``); the augmentation of global stream position ``k`` is drawn from
  ``np.random.default_rng([seed, k])`` -- independent of process count, workers and timing;
* **distributed-aware**: iteration ``t`` uses global stream positions ``[t*B, (t+1)*B)`` (``B`` =
  ``SOLVER.IMS_PER_BATCH``); rank ``r`` of ``W`` takes the positions ``= r (mod W)`` among them,
  so ranks are disjoint and together see exactly the single-process batch;
* **resumable**: ``build_classification_train_loader(cfg, names, start_iter=i)`` (what
  ``detres.data.build.build_train_loader(cfg, start_iter=i)`` calls), or ``loader.set_start_iter(i)``
  *before* ``iter(loader)``: the batches then equal those the uninterrupted run produced from
  iteration ``i`` on, bit for bit (same seed, same ``IMS_PER_BATCH``).
* ``loader.pixel_mean_image``: with ``INPUT.CLS.PER_PIXEL_MEAN``, the ``(3, H, W)`` per-pixel mean of
  the training images (``INPUT.FORMAT`` order, [0, 255]); else ``None``. The trainer hands it to the
  model once: ``model.set_pixel_mean_image(loader.pixel_mean_image)`` (it is then a buffer of the
  model and travels in checkpoints).

Testing -- :func:`build_classification_test_loader` returns a finite ``torch.utils.data.DataLoader``
over the dataset in order (each rank a contiguous shard), ``TEST.IMS_PER_BATCH`` images per batch;
an input's "image" holds the views of ``TEST.CLS_MODE`` (see :mod:`.transforms`).
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detres.data.catalog import DatasetCatalog
from detres.data.classification.datasets import compute_mean_image, read_image
from detres.data.classification.transforms import build_test_transform, build_train_transform
from detres.data.samplers import InferenceSampler, TrainingSampler, trivial_batch_collator
from detres.utils import comm
from detres.utils.env import resolve_seed

__all__ = [
    "ClassificationDataset",
    "ClassificationTrainLoader",
    "KeyedTrainingSampler",
    "build_classification_test_loader",
    "build_classification_train_loader",
]

logger = logging.getLogger(__name__)


class KeyedTrainingSampler(Sampler):
    """``(dataset_index, stream_position)`` pairs of a :class:`~detres.data.samplers.TrainingSampler`.

    The shared sampler gives process ``r`` of ``w`` the global stream positions ``r, r + w, ...``
    after skipping ``start`` of its own indices; the global position keys the sample's augmentation,
    so it does not depend on the number of processes, workers, or on resuming."""

    def __init__(self, sampler: TrainingSampler, batch_size: int):
        self.sampler, self.batch_size = sampler, batch_size

    def set_start_iter(self, start_iter: int) -> None:
        """The next ``iter()`` starts at iteration ``start_iter`` (``batch_size`` indices per iteration)."""
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        self.sampler.start = start_iter * self.batch_size

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        s = self.sampler
        first = s.start * s.world_size + s.rank
        for k, index in enumerate(s):
            yield int(index), first + k * s.world_size


class ClassificationDataset(Dataset):
    """Maps a key to a model input ``{"image": views, "label": int}`` (+ ``"file_name"`` if known).

    Training keys are ``(index, stream_position)`` from :class:`KeyedTrainingSampler` (the augmentation
    generator is seeded with ``[seed, stream_position]``); test keys are plain indices.
    ``image`` is in ``input_format`` channel order ("BGR" or "RGB")."""

    def __init__(self, records: Sequence[dict], transform: Any, input_format: str, seed: int = 0, is_train: bool = True):
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {input_format!r}")
        self.records, self.transform, self.input_format = records, transform, input_format
        self.seed, self.is_train = seed, is_train

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> dict:
        index, position = key if isinstance(key, tuple) else (key, key)
        record = self.records[index]
        image = record["image"] if "image" in record else read_image(record["file_name"])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            where = record.get("file_name", f"record {index}")
            raise ValueError(f"{where}: expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        tensor = torch.from_numpy(image if image.flags.writeable else image.copy()).permute(2, 0, 1)
        if self.is_train:
            views = self.transform(tensor, np.random.default_rng([self.seed, position]))
        else:
            views = self.transform(tensor)
        if self.input_format == "BGR":
            views = [v.flip(-3) for v in views] if isinstance(views, list) else views.flip(-3)
        out = {"image": views, "label": int(record["label"])}
        if "file_name" in record:
            out["file_name"] = record["file_name"]
        return out


def _load_records(names: Sequence[str]) -> List[dict]:
    records: List[dict] = []
    for name in names:
        loaded = DatasetCatalog.get(name)
        if not loaded:
            raise ValueError(f"dataset {name!r} has no images")
        records += loaded
    return records


class ClassificationTrainLoader:
    """Iterable over training batches; see the module docstring. Attributes: ``sampler``,
    ``data_loader``, ``batch_size`` (per process), ``pixel_mean_image`` (Tensor or None)."""

    def __init__(
        self, data_loader: DataLoader, sampler: KeyedTrainingSampler, pixel_mean_image: Optional[torch.Tensor]
    ):
        self.data_loader, self.sampler, self.pixel_mean_image = data_loader, sampler, pixel_mean_image
        self.batch_size = sampler.batch_size

    def set_start_iter(self, start_iter: int) -> None:
        """Resume: the next ``iter(loader)`` yields the batches of iterations ``start_iter, start_iter+1, ...``."""
        self.sampler.set_start_iter(start_iter)

    def __iter__(self) -> Iterator[List[dict]]:
        return iter(self.data_loader)


def _resolve_seed(cfg, seed: Optional[int]) -> int:
    requested = cfg.SEED if seed is None else seed
    seed = resolve_seed(requested)
    if seed != requested:
        logger.warning("SEED < 0: the training data stream uses the drawn seed %d (set SEED to reproduce it)", seed)
    return seed


def build_classification_train_loader(
    cfg, names: Sequence[str], start_iter: int = 0, seed: Optional[int] = None
) -> ClassificationTrainLoader:
    """The training loader over the union of the datasets ``names`` (see the module docstring).
    ``seed`` defaults to ``cfg.SEED``."""
    records = _load_records(names)
    seed = _resolve_seed(cfg, seed)
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
    batch_size = cfg.SOLVER.IMS_PER_BATCH // world
    sampler = KeyedTrainingSampler(TrainingSampler(len(records), shuffle=True, seed=seed), batch_size)
    sampler.set_start_iter(start_iter)
    dataset = ClassificationDataset(records, build_train_transform(cfg), cfg.INPUT.FORMAT, seed=seed, is_train=True)
    data_loader = DataLoader(
        dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
    )
    mean = compute_mean_image(records, cfg.INPUT.FORMAT) if cfg.INPUT.CLS.PER_PIXEL_MEAN else None
    logger.info("classification train loader: %d images from %s, %d per process", len(records), list(names), sampler.batch_size)
    return ClassificationTrainLoader(data_loader, sampler, mean)


def build_classification_test_loader(cfg, name: str) -> DataLoader:
    """A finite loader over ``name`` in dataset order (this rank's shard), views per ``TEST.CLS_MODE``."""
    records = _load_records([name])
    dataset = ClassificationDataset(records, build_test_transform(cfg), cfg.INPUT.FORMAT, is_train=False)
    return DataLoader(
        dataset,
        batch_size=cfg.TEST.IMS_PER_BATCH,
        sampler=InferenceSampler(len(records)),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=trivial_batch_collator,
    )
