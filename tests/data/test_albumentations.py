"""INPUT.ALBUMENTATIONS: boxes follow a flip and a crop exactly (boxes that leave the image dropped and
counted), photometric transforms leave boxes untouched, channel order, seeding from the mapper's rng,
config errors, and an empty key leaving the mapper's output as it was."""
import logging
import random

import cv2
import numpy as np
import pytest
import torch

from detres.config import ConfigError, get_cfg, load_config
from detres.data.detection.albumentations_pipeline import AlbumentationsPipeline, parse_transform_list
from detres.data.detection.mapper import DetectionDatasetMapper
from detres.data.detection.transforms import DetectionAugmentation

pytest.importorskip("albumentations")  # a declared dependency; the pipeline imports it on first use


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_flip_maps_boxes_exactly():
    # power-of-two sides and dyadic coordinates: albumentations' normalized float32 arithmetic is exact
    image = _image(256, 512)
    boxes = np.array([[10.5, 20.25, 110.75, 200.0], [0.0, 0.0, 512.0, 256.0], [300.0, 4.0, 301.0, 5.0]])
    out_image, out_boxes, kept = AlbumentationsPipeline([["HorizontalFlip", {"p": 1.0}]])(
        image, boxes, np.random.default_rng(0))
    np.testing.assert_array_equal(out_boxes, np.stack([512 - boxes[:, 2], boxes[:, 1], 512 - boxes[:, 0], boxes[:, 3]], 1))
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(kept, [0, 1, 2])
    # any other size: the same mapping up to float32 rounding of normalized coordinates
    image = _image(375, 500)
    boxes = np.array([[3.3, 4.7, 9.1, 11.3], [450.0, 300.0, 499.9, 374.1]])
    _, out_boxes, _ = AlbumentationsPipeline(["VerticalFlip"], "RGB")(image, boxes, np.random.default_rng(0))
    np.testing.assert_allclose(out_boxes, np.stack([boxes[:, 0], 375 - boxes[:, 3], boxes[:, 2], 375 - boxes[:, 1]], 1),
                               rtol=0, atol=1e-4)


def test_crop_shifts_clips_and_drops_boxes(caplog):
    image = _image(375, 500)
    boxes = np.array([
        [60.0, 40.0, 160.0, 140.0],  # inside: shifted by (-50, -30)
        [10.0, 10.0, 100.0, 100.0],  # across the top-left corner: clipped
        [3.3, 4.7, 9.1, 11.3],  # entirely outside: dropped
        [450.0, 300.0, 499.9, 374.1],  # touches the crop's right edge only: zero width, dropped
        [400.0, 200.0, 480.0, 340.0],  # across the bottom-right corner: clipped
    ])
    pipeline = AlbumentationsPipeline([["Crop", {"x_min": 50, "y_min": 30, "x_max": 450, "y_max": 330}]])
    with caplog.at_level(logging.WARNING, logger="detres"):
        out_image, out_boxes, kept = pipeline(image, boxes, np.random.default_rng(0))
        pipeline(image, boxes, np.random.default_rng(1))
    np.testing.assert_array_equal(out_image, image[30:330, 50:450])
    np.testing.assert_array_equal(kept, [0, 1, 4])
    np.testing.assert_allclose(out_boxes, [[10, 10, 110, 110], [0, 0, 50, 70], [350, 170, 400, 300]], rtol=0, atol=1e-4)
    assert pipeline.dropped_boxes == 4  # 2 per call
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 1 and "dropped 2 of 5 boxes" in drops[0]  # logged once, with the count


def test_photometric_leaves_boxes_untouched_and_follows_channel_order():
    image = _image(64, 96)
    boxes = np.array([[1.25, 2.5, 40.125, 50.0], [10.1, 20.2, 30.3, 40.4]])
    spec = [["RandomBrightnessContrast", {"brightness_limit": (0.3, 0.3), "contrast_limit": (0.0, 0.0), "p": 1.0}]]
    out_image, out_boxes, kept = AlbumentationsPipeline(spec)(image, boxes, np.random.default_rng(0))
    assert out_boxes.dtype == np.float64 and (out_boxes == boxes).all() and kept.tolist() == [0, 1]
    assert out_image.shape == image.shape and out_image.dtype == np.uint8
    assert (out_image.astype(int) - image).mean() > 40  # brighter by ~0.3 * 255 where not saturated

    # photometric transforms see RGB: pure blue becomes 0.114 * 255 grey from BGR and from RGB input
    blue_bgr = np.zeros((8, 8, 3), np.uint8)
    blue_bgr[..., 0] = 255
    gray = ["ToGray"]
    assert (AlbumentationsPipeline(gray, "BGR")(blue_bgr, boxes[:0], np.random.default_rng(0))[0] == 29).all()
    assert (AlbumentationsPipeline(gray, "RGB")(blue_bgr[..., ::-1], boxes[:0], np.random.default_rng(0))[0] == 29).all()


def test_same_seed_same_output_whatever_the_global_random_state():
    spec = [["RandomSizedBBoxSafeCrop", {"height": 48, "width": 64}], ["HorizontalFlip", {"p": 0.5}],
            ["RandomBrightnessContrast", {"p": 0.5}]]
    pipeline = AlbumentationsPipeline(spec)
    image, boxes = _image(120, 160), np.array([[20.0, 30.0, 70.0, 90.0], [100.0, 10.0, 150.0, 50.0]])
    outputs = []
    for global_seed in (0, 1):
        random.seed(global_seed)
        np.random.seed(global_seed)
        outputs.append([pipeline(image, boxes, np.random.default_rng([7, k])) for k in range(6)])
    for (im_a, b_a, k_a), (im_b, b_b, k_b) in zip(*outputs):
        assert (im_a == im_b).all() and (b_a == b_b).all() and (k_a == k_b).all()
    assert len({o[0].tobytes() for o in outputs[0]}) > 1  # different positions, different crops


def test_config_errors():
    with pytest.raises(ConfigError, match=r"INPUT.ALBUMENTATIONS: 'HorizontalFlp' is not .*Did you mean: HorizontalFlip"):
        AlbumentationsPipeline([["HorizontalFlp", {"p": 0.5}]])
    with pytest.raises(ConfigError, match=r"INPUT.ALBUMENTATIONS: HorizontalFlip\(\{'prob': 1\}\) is invalid"):
        AlbumentationsPipeline([["HorizontalFlip", {"prob": 1}]])
    with pytest.raises(ConfigError, match=r"(?s)INPUT.ALBUMENTATIONS: Crop.*is invalid.*x_max must be greater"):
        AlbumentationsPipeline([["Crop", {"x_min": 10, "x_max": 5}]])
    with pytest.raises(ConfigError, match="cannot move bounding boxes"):
        AlbumentationsPipeline(["CubicSymmetry"])
    with pytest.raises(ConfigError, match="not an albumentations transform"):
        AlbumentationsPipeline(["ToTensorV2"])
    with pytest.raises(ConfigError, match="each entry must be"):
        parse_transform_list([["HorizontalFlip", 0.5]])
    assert parse_transform_list(["ToGray", ("HorizontalFlip",), ["Blur", {"p": 1}]]) == [
        ("ToGray", {}), ("HorizontalFlip", {}), ("Blur", {"p": 1})]


@pytest.fixture
def record(tmp_path):
    """A 60x80 image with two objects and a crowd region (XYXY pixels, contiguous classes)."""
    path = str(tmp_path / "image.png")
    cv2.imwrite(path, _image(60, 80))
    anns = [{"bbox": [4.0, 6.0, 30.0, 40.0], "category_id": 2, "iscrowd": 0},
            {"bbox": [50.0, 10.0, 79.0, 58.0], "category_id": 5, "iscrowd": 0},
            {"bbox": [20.0, 30.0, 45.0, 55.0], "category_id": 0, "iscrowd": 1}]
    return {"file_name": path, "height": 60, "width": 80, "image_id": 1, "annotations": anns}


def _cfg(albumentations):
    return load_config(None, ["INPUT.MIN_SIZE_TRAIN", "(40, 50)", "INPUT.MAX_SIZE_TRAIN", "100",
                              "INPUT.ALBUMENTATIONS", repr(albumentations)])


def test_empty_key_keeps_the_mapper_output(record):
    cfg = _cfg([])
    mapper = DetectionDatasetMapper.from_config(cfg, is_train=True)
    assert mapper.albumentations is None and get_cfg().INPUT.ALBUMENTATIONS == []
    assert DetectionDatasetMapper.from_config(_cfg(["ToGray"]), is_train=False).albumentations is None
    for position in range(4):
        out = mapper(record, np.random.default_rng([3, position]))
        transform = DetectionAugmentation.from_config(cfg, True).sample(60, 80, np.random.default_rng([3, position]))
        image = transform.apply_image(cv2.imread(record["file_name"]))
        boxes = transform.apply_boxes(np.array([a["bbox"] for a in record["annotations"]]))
        assert torch.equal(out["image"], torch.from_numpy(image.transpose(2, 0, 1).copy()))
        assert torch.equal(out["gt_boxes"], torch.from_numpy(boxes[:2])) and out["gt_classes"].tolist() == [2, 5]
        assert torch.equal(out["crowd_boxes"], torch.from_numpy(boxes[2:]))


def test_mapper_runs_the_pipeline_before_resize_and_flip(record):
    # crop x in [20, 80): the first object is clipped, the second shifted, the crowd region follows
    mapper = DetectionDatasetMapper.from_config(
        _cfg([["Crop", {"x_min": 20, "y_min": 0, "x_max": 80, "y_max": 60}]]), is_train=True)
    widths, flips = [], []
    for position in range(6):
        out = mapper(record, np.random.default_rng([3, position]))
        h, w = out["image"].shape[1:]
        assert min(h, w) in (40, 50) and w / h == pytest.approx(1.0, abs=0.02)  # the 60x60 crop, resized
        s = w / 60
        expected = np.array([[0.0, 6.0, 10.0, 40.0], [30.0, 10.0, 59.0, 58.0], [0.0, 30.0, 25.0, 55.0]]) * s
        flipped = bool(out["gt_boxes"][0, 0] > w / 2)
        if flipped:
            expected = np.stack([w - expected[:, 2], expected[:, 1], w - expected[:, 0], expected[:, 3]], 1)
        np.testing.assert_allclose(out["gt_boxes"].numpy(), expected[:2], atol=1e-3)
        np.testing.assert_allclose(out["crowd_boxes"].numpy(), expected[2:], atol=1e-3)
        assert out["gt_classes"].tolist() == [2, 5] and (out["height"], out["width"]) == (60, 80)
        widths.append(w)
        flips.append(flipped)
    assert set(widths) == {40, 50} and set(flips) == {False, True}  # detres's resize and flip still sample

    # an object cropped away is dropped with its class; the crowd region stays
    mapper = DetectionDatasetMapper.from_config(
        _cfg([["Crop", {"x_min": 35, "y_min": 0, "x_max": 80, "y_max": 60}]]), is_train=True)
    out = mapper(record, np.random.default_rng(0))
    assert out["gt_classes"].tolist() == [5] and out["crowd_boxes"].shape == (1, 4)
    assert mapper.albumentations.dropped_boxes == 1
    again = mapper(record, np.random.default_rng(0))
    assert all(torch.equal(out[k], again[k]) for k in ("image", "gt_boxes", "crowd_boxes"))
