"""Detection loaders and the shared samplers: aspect-ratio grouping, seeded and resumable streams
independent of the worker count, distributed sharding, and skipping unreadable training images."""
import itertools
import json
import logging

import cv2
import numpy as np
import pytest
import torch

from detres.config import get_cfg
from detres.data.catalog import DatasetCatalog
from detres.data.detection.loader import build_detection_test_loader, build_detection_train_loader
from detres.data.detection.mapper import ImageReadError
from detres.data.samplers import GroupedBatchSampler, InferenceSampler, TrainingSampler


def _cfg(coco128_dir, **overrides):
    cfg = get_cfg()
    cfg.DATASETS.REGISTER = [["loader_coco128", str(coco128_dir / "annotations" / "instances_val2017.json"),
                              str(coco128_dir / "val2017")]]
    cfg.SEED, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 5, 4, 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (48, 64), 96
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    for key, value in overrides.items():
        setattr(cfg.DATALOADER, key, value)
    from detres.data.build import register_from_config

    register_from_config(cfg)
    return cfg


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _landscape(batch):
    return {x["width"] >= x["height"] for x in batch}


def test_aspect_ratio_grouping(coco128_dir):
    cfg = _cfg(coco128_dir)
    batches = _take(build_detection_train_loader(cfg, ["loader_coco128"]), 16)
    assert all(len(b) == 4 and len(_landscape(b)) == 1 for b in batches)
    assert {next(iter(_landscape(b))) for b in batches} == {True, False}  # both kinds occur
    for batch in batches:  # the resized images keep the orientation of their originals
        assert all((x["image"].shape[2] >= x["image"].shape[1]) == (x["width"] >= x["height"]) for x in batch)
        assert all(min(x["image"].shape[1:]) in (48, 64) or max(x["image"].shape[1:]) == 96 for x in batch)
        assert all(x["image_id"] not in (250, 508) for x in batch)  # empty images filtered
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = False
    ungrouped = _take(build_detection_train_loader(cfg, ["loader_coco128"]), 16)
    assert any(len(_landscape(b)) == 2 for b in ungrouped)


def _same(a, b):
    return all(
        x["image_id"] == y["image_id"] and torch.equal(x["image"], y["image"]) and torch.equal(x["gt_boxes"], y["gt_boxes"])
        for x, y in zip(a, b)
    )


def test_stream_is_seeded_resumable_and_worker_independent(coco128_dir):
    cfg = _cfg(coco128_dir)
    full = _take(build_detection_train_loader(cfg, ["loader_coco128"]), 6)
    resumed = _take(build_detection_train_loader(cfg, ["loader_coco128"], start_iter=4), 2)
    assert all(_same(a, b) for a, b in zip(full[4:], resumed))
    cfg.DATALOADER.NUM_WORKERS = 2
    workers = _take(build_detection_train_loader(cfg, ["loader_coco128"]), 6)
    assert all(_same(a, b) for a, b in zip(full, workers))
    cfg.SEED = 6
    other = _take(build_detection_train_loader(cfg, ["loader_coco128"]), 2)
    assert [x["image_id"] for x in other[0]] != [x["image_id"] for x in full[0]]


def test_test_loader_keeps_every_image_in_order(coco128_dir):
    cfg = _cfg(coco128_dir)
    cfg.TEST.IMS_PER_BATCH = 50
    batches = list(build_detection_test_loader(cfg, "loader_coco128"))
    ids = [x["image_id"] for b in batches for x in b]
    assert [len(b) for b in batches] == [50, 50, 28]
    assert ids == sorted(ids) and len(ids) == 128 and {250, 508} <= set(ids)


def test_training_sampler_sharding_and_start():
    single = list(itertools.islice(TrainingSampler(10, seed=3, rank=0, world_size=1), 40))
    assert sorted(single[:10]) == list(range(10)) and sorted(single[10:20]) == list(range(10))
    assert single[:10] != single[10:20]  # a new permutation each epoch
    ranks = [list(itertools.islice(TrainingSampler(10, seed=3, rank=r, world_size=2), 20)) for r in (0, 1)]
    assert ranks[0] == single[0::2] and ranks[1] == single[1::2]
    assert list(itertools.islice(TrainingSampler(10, seed=3, start=7, rank=1, world_size=2), 5)) == single[15::2][:5]
    positions = [p for _, p in itertools.islice(TrainingSampler(10, seed=3, rank=1, world_size=2).iter_with_positions(), 4)]
    assert positions == [1, 3, 5, 7]
    shards = [list(InferenceSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert shards == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_grouped_batch_sampler_never_mixes_groups():
    groups = np.array([0, 1] * 10 + [1] * 5)
    sampler = GroupedBatchSampler(TrainingSampler(25, seed=0, rank=0, world_size=1), groups, batch_size=3)
    batches = list(itertools.islice(iter(sampler), 30))
    assert all(len({groups[i] for i, _ in b}) == 1 for b in batches)
    positions = sorted(p for b in batches for _, p in b)
    assert len(positions) == len(set(positions)) == 90
    sampler.set_start_iter(10)
    assert list(itertools.islice(iter(sampler), 5)) == batches[10:15]


def _tiny_dataset(tmp_path, bad_names=("bad.jpg",)):
    images, anns = [], []
    for i, name in enumerate(["good0.jpg", "good1.jpg", *bad_names]):
        images.append({"id": i + 1, "file_name": name, "height": 32, "width": 48})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 10, 10], "iscrowd": 0, "area": 100})
        if name.startswith("good"):
            cv2.imwrite(str(tmp_path / name), np.full((32, 48, 3), 40 * i, np.uint8))
        else:
            (tmp_path / name).write_bytes(b"not an image")
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return str(tmp_path / "ann.json")


def test_training_skips_unreadable_images_with_a_warning(tmp_path, caplog):
    cfg = get_cfg()
    cfg.SEED, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 0, 3, 0
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (32,), 64
    DatasetCatalog.remove("tiny_bad")
    from detres.data.detection.coco import register_coco_instances

    register_coco_instances("tiny_bad", _tiny_dataset(tmp_path), str(tmp_path))
    try:
        with caplog.at_level(logging.WARNING, logger="detres.data.detection.loader"):
            batches = _take(build_detection_train_loader(cfg, ["tiny_bad"]), 4)
        names = {x["file_name"].rsplit("/", 1)[-1] for b in batches for x in b}
        assert names == {"good0.jpg", "good1.jpg"}
        assert "Skipping a training image" in caplog.text and "bad.jpg" in caplog.text
        cfg.INPUT.MIN_SIZE_TEST = 32
        with pytest.raises(ImageReadError, match="bad.jpg"):
            list(build_detection_test_loader(cfg, "tiny_bad"))
    finally:
        DatasetCatalog.remove("tiny_bad")


def test_training_gives_up_when_images_keep_failing(tmp_path):
    cfg = get_cfg()
    cfg.SEED, cfg.SOLVER.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 0, 1, 0
    from detres.data.detection.coco import register_coco_instances

    json_file = _tiny_dataset(tmp_path)
    for name in ("good0.jpg", "good1.jpg"):
        (tmp_path / name).write_bytes(b"broken too")
    DatasetCatalog.remove("tiny_all_bad")
    register_coco_instances("tiny_all_bad", json_file, str(tmp_path))
    try:
        with pytest.raises(ImageReadError, match="unreadable training images in a row"):
            _take(build_detection_train_loader(cfg, ["tiny_all_bad"]), 1)
    finally:
        DatasetCatalog.remove("tiny_all_bad")
