"""Detection data loaders yielding ``List[dict]`` batches of model inputs (see ``mapper``).

Training: records of ``DATASETS.TRAIN`` (images without non-crowd boxes removed when
``DATALOADER.FILTER_EMPTY_ANNOTATIONS``) -> ``TrainingSampler`` (infinite, seeded by ``SEED``,
sharded across processes) -> ``GroupedBatchSampler`` (with ``DATALOADER.ASPECT_RATIO_GROUPING`` a
batch holds only landscape (w >= h) or only portrait images) -> ``NUM_WORKERS`` worker processes
run the mapper. Each image's random resize/flip is seeded by ``(seed, global stream position)``, as in
the classification loader, so batches are identical for any number of workers and a run built with
``start_iter=i`` yields exactly the batches ``i, i+1, ...`` of an uninterrupted run (same seed,
``IMS_PER_BATCH`` and process count).

A missing or corrupt image in TRAINING is skipped and replaced by another image of the same aspect
group, drawn from the position's seeded generator (so the stream stays deterministic); each bad file is
warned about once per process, with the number of skips so far (a long run should not die on one bad
file among 118k; after 10 bad draws in a row the loader raises). In TESTING it raises
``ImageReadError`` naming the file, because evaluation must cover every image.

Images whose annotated size exceeds ``INPUT.MAX_IMAGE_PIXELS`` are treated alike, before any is
decoded: removed from the training records (counted, one warning), a ``DatasetFormatError`` in testing.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Sequence

import numpy as np
from torch.utils.data import DataLoader, Dataset

from detres.data.build import DatasetFormatError
from detres.data.catalog import load_task_datasets
from detres.data.detection.mapper import DetectionDatasetMapper, ImageReadError
from detres.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler, trivial_batch_collator
from detres.utils.env import resolve_seed

__all__ = ["check_image_sizes", "get_detection_records", "build_detection_train_loader", "build_detection_test_loader"]

logger = logging.getLogger(__name__)
_MAX_BAD_DRAWS = 10


def get_detection_records(names: Sequence[str], filter_empty: bool) -> List[dict]:
    """Records of the named datasets concatenated; with ``filter_empty`` only images that have at least
    one non-crowd box. The datasets must share ``thing_classes``."""
    records = [r for _, dataset in load_task_datasets(names, "detection") for r in dataset]
    if filter_empty:
        kept = [r for r in records if any(not a.get("iscrowd", 0) for a in r["annotations"])]
        logger.info("Removed %d images without non-crowd boxes; %d images left.", len(records) - len(kept), len(kept))
        records = kept
    if not records:
        raise ValueError(f"datasets {list(names)} have no usable images")
    return records


def check_image_sizes(records: List[dict], max_pixels: int, is_train: bool) -> List[dict]:
    """The records of at most ``max_pixels`` (height * width; 0: no limit). Larger ones are dropped
    with one warning in training (``is_train``) and raise ``DatasetFormatError`` in testing."""
    large = [r for r in records if max_pixels and r["height"] * r["width"] > max_pixels]
    if not large:
        return records
    r = large[0]
    what = (f"image {r['image_id']} ({r['file_name']}) is {r['height']}x{r['width']} (HxW), "
            f"over INPUT.MAX_IMAGE_PIXELS={max_pixels} (decoding costs 3 bytes a pixel)")
    if not is_train:
        raise DatasetFormatError(f"{what}; raise INPUT.MAX_IMAGE_PIXELS to evaluate it, or downscale the image")
    logger.warning("Skipped %d training images over INPUT.MAX_IMAGE_PIXELS, e.g. %s; raise the key to train on them.",
                   len(large), what)
    return [r for r in records if r["height"] * r["width"] <= max_pixels]


class _TrainDataset(Dataset):
    """Maps ``(index, position)`` to a model input, seeding the augmentation by ``(seed, position)``."""

    def __init__(self, records: List[dict], mapper: DetectionDatasetMapper, group_ids: np.ndarray, seed: int) -> None:
        self.records, self.mapper, self.group_ids, self.seed = records, mapper, group_ids, seed
        self.skipped: Dict[str, int] = {}  # file name -> times skipped, in this (worker) process

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
                file_name = self.records[index]["file_name"]
                if file_name not in self.skipped:
                    logger.warning("Skipping a training image (replaced by another; %d skips so far in this "
                                   "process): %s", sum(self.skipped.values()) + 1, e)
                self.skipped[file_name] = self.skipped.get(file_name, 0) + 1
                bad.append(file_name)
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
    records = check_image_sizes(records, cfg.INPUT.MAX_IMAGE_PIXELS, is_train=True)
    if not records:
        raise DatasetFormatError(f"datasets {list(names)} have no images within INPUT.MAX_IMAGE_PIXELS")
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
    records = check_image_sizes(get_detection_records([name], filter_empty=False), cfg.INPUT.MAX_IMAGE_PIXELS,
                                is_train=False)
    dataset = _TestDataset(records, DetectionDatasetMapper.from_config(cfg, is_train=False))
    return DataLoader(dataset, sampler=InferenceSampler(len(records)), batch_size=cfg.TEST.IMS_PER_BATCH,
                      num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator)
