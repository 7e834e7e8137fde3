"""Localization transforms (boxes follow resize / crop / flip exactly) and the train / test loaders."""
import cv2
import numpy as np
import pytest
import torch

from detres.config import get_cfg
from detres.data.build import DatasetFormatError, build_test_loader, build_train_loader
from detres.data.localization.loader import LocalizationDataset
from detres.data.localization.transforms import LocGeometry, LocTestViews, LocTrainAugmentation, clip_boxes


# ---------------------------------------------------------------------------- geometry
def test_geometry_maps_boxes_with_the_pixel_affine_map_and_back_through_crop_box():
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = (int(v) for v in rng.integers(20, 300, size=2))
        new_h, new_w = (int(v) for v in rng.integers(30, 400, size=2))
        top, left = int(rng.integers(0, new_h // 2)), int(rng.integers(0, new_w // 2))
        out_h, out_w = int(rng.integers(1, new_h - top + 1)), int(rng.integers(1, new_w - left + 1))
        g = LocGeometry(h, w, new_h, new_w, top, left, out_h, out_w)
        boxes = np.sort(rng.uniform(0, [w, h, w, h], size=(6, 4)).reshape(6, 2, 2), axis=1).transpose(0, 2, 1)
        boxes = boxes.reshape(6, 4)  # x1 <= x2, y1 <= y2
        out = g.apply_boxes(boxes)
        expected = boxes * np.array([new_w / w, new_h / h] * 2) - np.array([left, top] * 2)
        assert np.allclose(out, expected, atol=1e-9)
        x0, y0, x1, y1 = g.crop_box()
        back = np.stack([x0 + out[:, 0] * (x1 - x0) / out_w, y0 + out[:, 1] * (y1 - y0) / out_h,
                         x0 + out[:, 2] * (x1 - x0) / out_w, y0 + out[:, 3] * (y1 - y0) / out_h], 1)
        assert np.allclose(back, boxes, atol=1e-5)
        flipped = LocGeometry(h, w, new_h, new_w, top, left, out_h, out_w, flip=True).apply_boxes(boxes)
        assert np.allclose(flipped, np.stack([out_w - out[:, 2], out[:, 1], out_w - out[:, 0], out[:, 3]], 1))


def test_geometry_moves_pixels_like_boxes():
    image = torch.arange(4 * 6, dtype=torch.uint8).view(1, 4, 6)
    g = LocGeometry(4, 6, 4, 6, top=1, left=2, out_h=2, out_w=3, flip=True)
    assert g.apply_image(image).tolist() == [[[10, 9, 8], [16, 15, 14]]]
    # pixel (row 1, col 3) = 9 spans [3, 4) x [1, 2); it lands in column 1 of the flipped crop
    assert g.apply_boxes(np.array([[3.0, 1.0, 4.0, 2.0]])).tolist() == [[1.0, 0.0, 2.0, 1.0]]


def test_clip_boxes_drops_boxes_under_one_pixel_inside():
    boxes = np.array([[-5, -5, 10, 10], [50, 0, 70, 5], [99.5, 0, 120, 10], [0, 10, 100, 10.9]], np.float64)
    assert clip_boxes(boxes, 60, 100).tolist() == [[0, 0, 10, 10], [50, 0, 70, 5]]
    assert clip_boxes(np.zeros((0, 4)), 5, 5).shape == (0, 4)


def _bright_box(image: torch.Tensor):
    ys, xs = np.nonzero(image[0].numpy() > 127)
    return None if len(xs) == 0 else [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("mode", ["crop", "image"])
def test_random_transform_keeps_a_drawn_rectangle_under_its_box(mode):
    aug = LocTrainAugmentation(mode, short_range=(48, 90), crop_size=40, max_size=120, flip_prob=0.5)
    checked = flips = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        h, w = (int(v) for v in rng.integers(30, 130, size=2))
        x1, x2 = np.sort(rng.choice(w + 1, 2, replace=False))
        y1, y2 = np.sort(rng.choice(h + 1, 2, replace=False))
        image = np.zeros((h, w, 3), np.uint8)
        image[y1:y2, x1:x2] = 255  # the rectangle covers the continuous box [x1, x2) x [y1, y2)
        out, boxes = aug(torch.from_numpy(image).permute(2, 0, 1), np.array([[x1, y1, x2, y2]], float),
                         np.random.default_rng([seed, 1]))
        assert out.dtype == torch.uint8 and boxes.dtype == np.float32
        if mode == "crop":
            assert out.shape == (3, 40, 40)
        else:
            short, long = min(out.shape[1:]), max(out.shape[1:])
            assert long <= 120 and (48 <= short <= 90 or long == 120)
        seen = _bright_box(out)
        if len(boxes) == 0:  # dropped: less than one pixel of it left inside the input
            assert seen is None or min(seen[2] - seen[0], seen[3] - seen[1]) <= 2
            continue
        assert seen is not None and np.abs(np.array(seen) - boxes[0]).max() <= 1.0, (seed, seen, boxes)
        checked += 1
        flips += aug.sample(h, w, np.random.default_rng([seed, 1])).flip  # the draws of the call above
    assert checked > 100 and 0 < flips < checked


def test_train_augmentation_is_a_function_of_the_generator_and_lighting_stays_uint8():
    aug = LocTrainAugmentation("crop", (40, 60), 32, lighting_std=0.1)
    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 50, 70), dtype=np.uint8))
    box = np.array([[5.0, 5.0, 60.0, 45.0]])
    a, ba = aug(image, box, np.random.default_rng(3))
    b, bb = aug(image, box, np.random.default_rng(3))
    assert a.dtype == torch.uint8 and torch.equal(a, b) and np.array_equal(ba, bb)
    plain = LocTrainAugmentation("crop", (40, 60), 32)(image, box, np.random.default_rng(3))[0]
    assert not torch.equal(a, plain) and (a.int() - plain.int()).abs().max() < 40


def test_train_and_test_settings_are_checked():
    with pytest.raises(ValueError, match=r"TRAIN_SHORT_RANGE \[200, 300\] must not go below INPUT.LOC.CROP_SIZE 224"):
        LocTrainAugmentation("crop", (200, 300), 224)
    with pytest.raises(ValueError, match=r"INPUT.LOC.TRAIN_MODE must be one of \('crop', 'image'\), got 'whole'"):
        LocTrainAugmentation("whole")
    with pytest.raises(ValueError, match=r"TEST.LOC_MODE must be one of \('center', 'dense'\), got 'ten_crop'"):
        LocTestViews("ten_crop")


def test_test_views_and_their_crop_boxes():
    center = LocTestViews("center", crop_size=40, short_size=50)
    (g,) = center.geometries(100, 200)  # resized to 50 x 100, centre 40 x 40 at top 5, left 30
    assert (g.new_h, g.new_w, g.size) == (50, 100, (40, 40)) and g.crop_box() == [60.0, 10.0, 140.0, 90.0]
    (d,) = LocTestViews("dense", short_size=50, max_size=80).geometries(100, 200)  # 50 x 100 capped to 40 x 80
    assert (d.size, d.crop_box()) == ((40, 80), [0.0, 0.0, 200.0, 100.0])
    multi = LocTestViews("dense", short_size=50, dense_sizes=(30, 60), max_size=1000)
    assert multi.multi_scale and [g.size for g in multi.geometries(100, 200)] == [(30, 60), (60, 120)]


# ---------------------------------------------------------------------------- loaders
@pytest.fixture()
def loc_cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("DETRES_DATASETS", str(tmp_path))
    monkeypatch.setenv("DETRES_CACHE", str(tmp_path / "cache"))
    cfg = get_cfg()
    cfg.SEED, cfg.DATALOADER.NUM_WORKERS, cfg.SOLVER.IMS_PER_BATCH, cfg.TEST.IMS_PER_BATCH = 5, 0, 6, 4
    cfg.DATASETS.SYNTHETIC_LOC.NUM_TRAIN, cfg.DATASETS.SYNTHETIC_LOC.NUM_VAL = 16, 6
    cfg.DATASETS.SYNTHETIC_LOC.NUM_CLASSES = 4
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("synthetic_loc_train",), ("synthetic_loc_val",)
    cfg.INPUT.LOC.CROP_SIZE, cfg.INPUT.LOC.TRAIN_SHORT_RANGE, cfg.INPUT.LOC.TEST_SHORT_SIZE = 64, (72, 96), 80
    return cfg


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(torch.equal(x["image"], y["image"]) and torch.equal(x["gt_boxes"], y["gt_boxes"])
               and x["image_id"] == y["image_id"] for x, y in zip(a, b))


def test_train_loader_inputs_stream_and_resume(loc_cfg):
    run = _batches(build_train_loader(loc_cfg), 5)  # 30 samples: crosses the 16-image epoch boundary
    x = run[0][0]
    assert len(run[0]) == 6 and set(x) == {"image", "label", "gt_boxes", "image_id"}
    assert x["image"].shape == (3, 64, 64) and x["image"].dtype == torch.uint8 and isinstance(x["label"], int)
    assert x["gt_boxes"].dtype == torch.float32 and x["gt_boxes"].shape[1] == 4 and isinstance(x["image_id"], str)
    boxes = torch.cat([s["gt_boxes"] for b in run for s in b])
    assert len(boxes) > 20 and boxes.min() >= 0 and boxes.max() <= 64
    assert (boxes[:, 2:] - boxes[:, :2]).min() >= 1
    assert _same(run[3], _batches(build_train_loader(loc_cfg, start_iter=3), 1)[0])
    loc_cfg.INPUT.FORMAT = "RGB"
    assert torch.equal(_batches(build_train_loader(loc_cfg), 1)[0][0]["image"], x["image"].flip(0))
    loc_cfg.INPUT.LOC.TRAIN_MODE = "image"
    whole = _batches(build_train_loader(loc_cfg), 1)[0][0]
    assert 72 <= min(whole["image"].shape[1:]) <= 96


def test_test_loader_center_and_dense_inputs(loc_cfg):
    (batch, *rest) = list(build_test_loader(loc_cfg, "synthetic_loc_val"))
    x = batch[0]
    assert len(batch) == 4 and len(rest) == 1 and len(rest[0]) == 2
    assert set(x) == {"image", "label", "image_id", "height", "width", "crop_box"}
    assert x["image"].shape == (3, 64, 64) and x["image"].dtype == torch.uint8
    h, w = x["height"], x["width"]
    scale = 80 / min(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    top, left = (new_h - 64) // 2, (new_w - 64) // 2
    assert x["crop_box"] == pytest.approx([left * w / new_w, top * h / new_h, (left + 64) * w / new_w,
                                           (top + 64) * h / new_h], abs=1e-9)
    loc_cfg.TEST.LOC_MODE = "dense"
    x = next(iter(build_test_loader(loc_cfg, "synthetic_loc_val")))[0]
    assert min(x["image"].shape[1:]) == 80 and x["crop_box"] == [0.0, 0.0, float(w), float(h)]
    loc_cfg.TEST.LOC_DENSE_SIZES = [48, 96]
    x = next(iter(build_test_loader(loc_cfg, "synthetic_loc_val")))[0]
    assert [min(v.shape[1:]) for v in x["image"]] == [48, 96]


def test_gt_boxes_are_the_label_class_boxes_and_sizes_are_checked(tmp_path):
    path = tmp_path / "im.png"
    cv2.imwrite(str(path), np.zeros((50, 60, 3), np.uint8))
    record = {"file_name": str(path), "image_id": "im", "height": 50, "width": 60, "label": 1,
              "annotations": [{"bbox": [0, 0, 30, 20], "category_id": 0}, {"bbox": [10, 5, 50, 45], "category_id": 1}]}
    aug = LocTrainAugmentation("image", (50, 50), 50, max_size=100, flip_prob=0.0)
    out = LocalizationDataset([record], aug, "BGR", seed=0)[(0, 0)]
    assert out["gt_boxes"].tolist() == [[10.0, 5.0, 50.0, 45.0]] and out["label"] == 1
    with pytest.raises(DatasetFormatError, match=r"im\.png: image is 50x60 \(HxW\) but its annotations say 40x60"):
        LocalizationDataset([{**record, "height": 40}], aug, "BGR")[(0, 0)]
