"""Detection transforms: shortest-edge sizes, exact box arithmetic under resize and flip, channel
order, and bit-exact agreement with Detectron2's test-time preprocessing (golden input)."""
import json

import cv2
import numpy as np
import pytest
import torch

from detres.config import get_cfg
from detres.data.detection.mapper import DetectionDatasetMapper, read_image
from detres.data.detection.transforms import DetectionAugmentation, ResizeFlip, shortest_edge_size


def test_shortest_edge_size():
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert shortest_edge_size(640, 480, 800, 1333) == (1067, 800)
    assert shortest_edge_size(300, 1200, 800, 1333) == (333, 1333)  # capped by the longer side
    assert shortest_edge_size(100, 150, 50, 0) == (50, 75)  # no cap


def test_sizes_match_detectron2_golden(shared_dir):
    meta = json.loads((shared_dir / "golden" / "detectron2_r50_c4_w16" / "meta.json").read_text())
    for image in meta["images"]:
        assert list(shortest_edge_size(image["height"], image["width"], 600, 1000)) == image["resized_hw"]


def test_flip_boxes_exact():
    t = ResizeFlip(h=50, w=100, new_h=50, new_w=100, flip=True)
    boxes = np.array([[10.5, 5.0, 30.25, 20.0], [0.0, 0.0, 100.0, 50.0]])
    np.testing.assert_array_equal(t.apply_boxes(boxes), [[100 - 30.25, 5.0, 100 - 10.5, 20.0], [0, 0, 100, 50]])


def test_flip_image_and_boxes_stay_aligned():
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:20, 5:25] = 255  # box [5, 10, 25, 20] in XYXY (pixel edges)
    t = ResizeFlip(40, 60, 40, 60, flip=True)
    out = t.apply_image(image)
    (x1, y1, x2, y2), = t.apply_boxes(np.array([[5, 10, 25, 20]]))
    assert (x1, y1, x2, y2) == (35, 10, 55, 20)
    ys, xs = np.nonzero(out[:, :, 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (x1, x2, y1, y2)


def test_resize_scales_boxes_with_pixels():
    image = np.zeros((100, 200, 3), np.uint8)
    image[20:60, 40:120] = 255  # box [40, 20, 120, 60]
    t = ResizeFlip(100, 200, 50, 100)
    out = t.apply_image(image)
    assert out.shape == (50, 100, 3)
    box = t.apply_boxes(np.array([[40, 20, 120, 60]]))[0]
    np.testing.assert_allclose(box, [20, 10, 60, 30])
    ys, xs = np.nonzero(out[:, :, 0] > 127)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (20, 60, 10, 30)


def test_sampling_choice_and_range():
    rng = np.random.default_rng(0)
    choice = DetectionAugmentation((100, 120, 140), 1000, "choice", flip_prob=0.5)
    samples = [choice.sample(200, 300, rng) for _ in range(200)]
    assert {s.new_h for s in samples} == {100, 120, 140}
    flips = sum(s.flip for s in samples)
    assert 70 < flips < 130
    ranged = DetectionAugmentation((100, 140), 1000, "range")
    shorts = {ranged.sample(300, 200, rng).new_w for _ in range(300)}
    assert min(shorts) >= 100 and max(shorts) <= 140 and len(shorts) > 30
    with pytest.raises(ValueError, match="range"):
        DetectionAugmentation((100, 120, 140), 1000, "range")
    with pytest.raises(ValueError, match="MIN_SIZE_TRAIN_SAMPLING"):
        DetectionAugmentation((100,), 1000, "uniform")


def test_test_time_is_deterministic_without_flip():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 320, 500
    aug = DetectionAugmentation.from_config(cfg, is_train=False)
    samples = {aug.sample(480, 640, np.random.default_rng(s)) for s in range(20)}
    assert samples == {ResizeFlip(480, 640, 320, 427, False)}


def test_mapper_matches_detectron2_preprocessing(coco128_dir, shared_dir):
    golden = np.load(shared_dir / "golden" / "detectron2_r50_c4_w16" / "outputs.npz")["input_0"]
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 600, 1000
    record = {"file_name": str(coco128_dir / "val2017" / "000000000009.jpg"), "image_id": 9, "height": 480,
              "width": 640, "annotations": [{"bbox": [10.0, 20.0, 110.0, 220.0], "category_id": 3, "iscrowd": 0}]}
    out = DetectionDatasetMapper.from_config(cfg, is_train=False)(record)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == (3, 600, 800)
    assert torch.equal(out["image"], torch.from_numpy(golden))  # BGR, PIL bilinear: bit for bit
    np.testing.assert_allclose(out["gt_boxes"].numpy(), [[12.5, 25.0, 137.5, 275.0]])
    assert out["gt_classes"].tolist() == [3] and out["gt_classes"].dtype == torch.int64
    assert out["crowd_boxes"].shape == (0, 4)
    assert (out["height"], out["width"], out["image_id"]) == (480, 640, 9)
    cfg.INPUT.FORMAT = "RGB"
    rgb = DetectionDatasetMapper.from_config(cfg, is_train=False)(record)["image"]
    assert torch.equal(rgb, out["image"].flip(0))


def test_read_image_formats(tmp_path):
    image = np.zeros((4, 5, 3), np.uint8)
    image[..., 0] = 200  # blue in BGR
    cv2.imwrite(str(tmp_path / "x.png"), image)
    assert read_image(str(tmp_path / "x.png"), "BGR")[0, 0].tolist() == [200, 0, 0]
    assert read_image(str(tmp_path / "x.png"), "RGB")[0, 0].tolist() == [0, 0, 200]
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        read_image(str(tmp_path / "x.png"), "YUV")


def test_training_mapper_flips_boxes_with_the_image(coco128_dir):
    record = {"file_name": str(coco128_dir / "val2017" / "000000000009.jpg"), "image_id": 9, "height": 480,
              "width": 640, "annotations": [{"bbox": [10.0, 20.0, 110.0, 220.0], "category_id": 3, "iscrowd": 0}]}
    mapper = DetectionDatasetMapper(DetectionAugmentation((240,), 1000, flip_prob=1.0))
    out = mapper(record, np.random.default_rng(0))
    assert out["image"].shape == (3, 240, 320)
    np.testing.assert_allclose(out["gt_boxes"].numpy(), [[320 - 55.0, 10.0, 320 - 5.0, 110.0]])
    plain = DetectionDatasetMapper(DetectionAugmentation((240,), 1000))(record)
    assert torch.equal(out["image"], plain["image"].flip(-1))
