"""Localization data loaders: ``List[dict]`` batches of model inputs (one dict per image).

Training (:func:`build_localization_train_loader`), per image::

    {"image": uint8 (3, S, S) in INPUT.FORMAT order ("image" mode: (3, H', W')), "label": int,
     "gt_boxes": float32 (K, 4) XYXY in the input's pixels -- the label class's boxes keeping >= 1
     pixel of width and height inside the input, clipped to it (K may be 0), "image_id": str}

The stream is the classification loader's (:mod:`detres.data.classification.loader`): infinite,
seeded by ``SEED`` (each sample's augmentation drawn from ``np.random.default_rng([seed, stream
position])``), ``SOLVER.IMS_PER_BATCH // world_size`` images per process, resumable from
``start_iter`` bit for bit, independent of ``DATALOADER.NUM_WORKERS``.

Testing (:func:`build_localization_test_loader`): this process's ordered shard, ``TEST.IMS_PER_BATCH``
images per batch, per image::

    {"image": uint8 (3, H', W') (a list of them, one per TEST.LOC_DENSE_SIZES entry, in "dense" mode
     with that key set), "label": int, "image_id": str, "height": int, "width": int (original size),
     "crop_box": [x0, y0, x1, y1] float, the region of the original image the input covers}

A point ``(x, y)`` of an input image of size ``(H', W')`` is ``(x0 + x * (x1 - x0) / W', y0 + y *
(y1 - y0) / H')`` in the original image. An image whose decoded size differs from its record's is a
``DatasetFormatError`` naming the file; a missing or undecodable one an ``ImageReadError``.
"""
from __future__ import annotations

import logging
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from detres.data.build import DatasetFormatError
from detres.data.catalog import load_task_datasets
from detres.data.classification.loader import ClassificationTrainLoader, KeyedTrainingSampler, _resolve_seed
from detres.data.detection.mapper import read_image
from detres.data.localization.transforms import LocTestViews, LocTrainAugmentation
from detres.data.samplers import InferenceSampler, TrainingSampler, trivial_batch_collator
from detres.utils import comm

__all__ = [
    "LocalizationDataset",
    "build_localization_test_loader",
    "build_localization_train_loader",
    "get_localization_records",
]

logger = logging.getLogger(__name__)


def get_localization_records(names: Sequence[str]) -> List[dict]:
    """The records of the localization datasets ``names`` concatenated; they must share ``thing_classes``."""
    records: List[dict] = []
    for name, loaded in load_task_datasets(names, "localization"):
        if not loaded:
            raise ValueError(f"dataset {name!r} has no images")
        records += loaded
    return records


class LocalizationDataset(Dataset):
    """Maps a key to a model input (see the module docstring).

    Training keys are ``(index, stream_position)`` pairs of a :class:`KeyedTrainingSampler`, test keys
    plain indices. ``transform`` is a :class:`LocTrainAugmentation` (training) or :class:`LocTestViews`."""

    def __init__(self, records: Sequence[dict], transform: Union[LocTrainAugmentation, LocTestViews],
                 input_format: str, seed: int = 0) -> None:
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT must be 'BGR' or 'RGB', got {input_format!r}")
        self.records, self.transform, self.input_format, self.seed = records, transform, input_format, seed

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, record: dict) -> torch.Tensor:
        """The record's image as (3, H, W) uint8 RGB, its size checked against the record."""
        image = read_image(record["file_name"], "RGB")
        if image.shape[:2] != (record["height"], record["width"]):
            raise DatasetFormatError(
                f"{record['file_name']}: image is {image.shape[0]}x{image.shape[1]} (HxW) but its annotations say "
                f"{record['height']}x{record['width']}; the annotation file does not match the images")
        return torch.from_numpy(image).permute(2, 0, 1)

    def _to_format(self, image: torch.Tensor) -> torch.Tensor:
        return (image.flip(0) if self.input_format == "BGR" else image).contiguous()

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> dict:
        if isinstance(self.transform, LocTrainAugmentation):
            index, position = key
            return self._train_input(self.records[index], np.random.default_rng([self.seed, position]))
        return self._test_input(self.records[key])

    def _train_input(self, record: dict, rng: np.random.Generator) -> dict:
        label = int(record["label"])
        boxes = np.array([a["bbox"] for a in record["annotations"] if a["category_id"] == label],
                         dtype=np.float64).reshape(-1, 4)
        image, boxes = self.transform(self._image(record), boxes, rng)
        return {"image": self._to_format(image), "label": label, "gt_boxes": torch.from_numpy(boxes),
                "image_id": record["image_id"]}

    def _test_input(self, record: dict) -> dict:
        image = self._image(record)
        geometries = self.transform.geometries(*image.shape[-2:])
        views = [self._to_format(g.apply_image(image)) for g in geometries]
        return {"image": views if self.transform.multi_scale else views[0], "label": int(record["label"]),
                "image_id": record["image_id"], "height": record["height"], "width": record["width"],
                "crop_box": geometries[0].crop_box()}


def build_localization_train_loader(cfg, names: Sequence[str], start_iter: int = 0,
                                    seed: Optional[int] = None) -> ClassificationTrainLoader:
    """The infinite training loader over the union of ``names`` (see the module docstring); its
    ``pixel_mean_image`` is None (localization uses the per-channel mean). ``seed`` defaults to ``SEED``."""
    records = get_localization_records(names)
    seed = _resolve_seed(cfg, seed)  # the classification loader's: draws one (and says so) when SEED < 0
    world = comm.get_world_size()
    if cfg.SOLVER.IMS_PER_BATCH % world:
        raise ValueError(f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH} is not divisible by {world} processes")
    sampler = KeyedTrainingSampler(TrainingSampler(len(records), shuffle=True, seed=seed),
                                   cfg.SOLVER.IMS_PER_BATCH // world)
    sampler.set_start_iter(start_iter)
    dataset = LocalizationDataset(records, LocTrainAugmentation.from_config(cfg), cfg.INPUT.FORMAT, seed=seed)
    data_loader = DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler,
                             num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator)
    logger.info("localization train loader: %d images from %s, %d per process, %s mode",
                len(records), list(names), sampler.batch_size, cfg.INPUT.LOC.TRAIN_MODE)
    return ClassificationTrainLoader(data_loader, sampler, None)


def build_localization_test_loader(cfg, name: str) -> DataLoader:
    """A finite loader over this process's shard of ``name`` in dataset order, ``TEST.LOC_MODE`` inputs."""
    records = get_localization_records([name])
    dataset = LocalizationDataset(records, LocTestViews.from_config(cfg), cfg.INPUT.FORMAT)
    return DataLoader(dataset, batch_size=cfg.TEST.IMS_PER_BATCH, sampler=InferenceSampler(len(records)),
                      num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=trivial_batch_collator)
