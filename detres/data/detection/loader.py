"""Detection data loaders yielding ``List[dict]`` batches of model inputs (see ``mapper``).

Training: records of ``DATASETS.TRAIN`` (images without non-crowd boxes removed when
``DATALOADER.FILTER_EMPTY_ANNOTATIONS``) -> ``TrainingSampler`` (infinite, seeded by ``SEED``,
sharded across processes) -> ``GroupedBatchSampler`` (with ``DATALOADER.ASPECT_RATIO_GROUPING`` a
batch holds only landscape (w >= h) or only portrait images) -> ``NUM_WORKERS`` worker processes
run the mapper. Each image's random resize/flip is seeded by ``(seed, global stream position)``, as in
the classification loader, so batches are identical for any number of workers and a run built with
``start_iter=i`` yields exactly the batches ``i, i+1, ...`` of an uninterrupted run (same seed,
``IMS_PER_BATCH`` and process count).

A missing or corrupt image in TRAINING is skipped with a warning naming the file and replaced by
another image of the same aspect group (a long run should not die on one bad file among 118k; after
10 bad draws in a row the loader raises). In TESTING it raises ``ImageReadError`` naming the file,
because evaluation must cover every image.
"""
from __future__ import annotations

import logging
from typing import List, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.detection.mapper import DetectionDatasetMapper, ImageReadError
from detres.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler, trivial_batch_collator
from detres.utils.env import resolve_seed

__all__ = ["get_detection_records", "build_detection_train_loader", "build_detection_test_loader"]

logger = logging.getLogger(__name__)
_MAX_BAD_DRAWS = 10


def get_detection_records(names: Sequence[str], filter_empty: bool) -> List[dict]:
    """Records of the named datasets concatenated; with ``filter_empty`` only images that have at least
    one non-crowd box. The datasets must share ``thing_classes``."""
    records, classes = [], None
    for name in names:
        dataset = DatasetCatalog.get(name)
        meta = MetadataCatalog.get(name)
        if getattr(meta, "task", None) != "detection":
            raise ValueError(f"dataset {name!r} is not a detection dataset (task={getattr(meta, 'task', None)!r})")
        if classes is not None and getattr(meta, "thing_classes", None) != classes:
            raise ValueError(f"datasets {list(names)} do not share the same thing_classes; cannot train on them together")
        classes = getattr(meta, "thing_classes", None)
        records.extend(dataset)
    if filter_empty:
        kept = [r for r in records if any(not a.get("iscrowd", 0) for a in r["annotations"])]
        logger.info("Removed %d images without non-crowd boxes; %d images left.", len(records) - len(kept), len(kept))
        records = kept
    if not records:
        raise ValueError(f"datasets {list(names)} have no usable images")
    return records


class _TrainDataset(Dataset):
    """Maps ``(index, position)`` to a model input, seeding the augmentation by ``(seed, position)``."""

    def __init__(self, records: List[dict], mapper: DetectionDatasetMapper, group_ids: np.ndarray, seed: int) -> None:
        self.records, self.mapper, self.group_ids, self.seed = records, mapper, group_ids, seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key):
        index, position = key
        rng = np.random.default_rng([self.seed, position])
        bad = []
        while len(bad) < _MAX_BAD_DRAWS:
            try:
                return self.mapper(self.records[index], rng)
            except ImageReadError as e:
                logger.warning("Skipping a training image: %s", e)
                bad.append(self.records[index]["file_name"])
                same_group = np.flatnonzero(self.group_ids == self.group_ids[index])
                index = int(rng.choice(same_group))
        raise ImageReadError(f"{_MAX_BAD_DRAWS} unreadable training images in a row, e.g. {bad[:3]}; check the dataset")


class _TestDataset(Dataset):
    def __init__(self, records: List[dict], mapper: DetectionDatasetMapper) -> None:
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.records[index])


def build_detection_train_loader(cfg, names: Sequence[str], start_iter: int = 0) -> DataLoader:
    """An infinite loader of ``SOLVER.IMS_PER_BATCH / world_size`` images per batch for this process,
    starting at batch ``start_iter`` of the seeded stream."""
    from detres.utils import comm

    world, rank = comm.get_world_size(), comm.get_rank()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by the {world} processes")
    records = get_detection_records(names, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        group_ids = np.array([int(r["width"] >= r["height"]) for r in records])
    else:
        group_ids = np.zeros(len(records), dtype=np.int64)
    seed = resolve_seed(cfg.SEED)
    if seed != cfg.SEED:
        logger.info("SEED < 0: the training loader uses the drawn seed %d", seed)
    sampler = TrainingSampler(len(records), shuffle=True, seed=seed, rank=rank, world_size=world)
    batch_sampler = GroupedBatchSampler(sampler, group_ids, cfg.SOLVER.IMS_PER_BATCH // world, start_iter=start_iter)
    dataset = _TrainDataset(records, DetectionDatasetMapper.from_config(cfg, is_train=True), group_ids, seed)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                      collate_fn=trivial_batch_collator)


def build_detection_test_loader(cfg, name: str) -> DataLoader:
    """A finite, ordered loader over this process's shard of ``name`` (all images, empty ones included),
    ``TEST.IMS_PER_BATCH`` images per batch, test-time resize, no flip."""
    records = get_detection_records([name], filter_empty=False)
    dataset = _TestDataset(records, DetectionDatasetMapper.from_config(cfg, is_train=False))
    return DataLoader(dataset, sampler=InferenceSampler(len(records)), batch_size=cfg.TEST.IMS_PER_BATCH,
                      num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator)
