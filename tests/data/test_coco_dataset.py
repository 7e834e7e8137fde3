"""COCO-format loading with pycocotools: counts on coco128, id mapping, crowd boxes, empty images,
degenerate boxes, bad files, and registration by name / from the config."""
import json
import logging

import numpy as np
import pytest

from detres.config import get_cfg
from detres.data.build import register_from_config
from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.detection.builtin import COCO_CATEGORIES
from detres.data.detection.coco import load_coco_json, register_coco_instances, sanitize_box
from detres.data.detection.loader import build_detection_test_loader, get_detection_records
from detres.data.detection.mapper import DetectionDatasetMapper, ImageReadError
from detres.data.detection.transforms import DetectionAugmentation


@pytest.fixture
def coco128(coco128_dir):
    name = "test_coco128"
    DatasetCatalog.remove(name)
    register_coco_instances(name, str(coco128_dir / "annotations" / "instances_val2017.json"), str(coco128_dir / "val2017"))
    yield name
    DatasetCatalog.remove(name)


def _raw(coco128_dir):
    return json.loads((coco128_dir / "annotations" / "instances_val2017.json").read_text())


def test_coco128_counts(coco128, caplog):
    with caplog.at_level(logging.INFO, logger="detres.data.detection.coco"):
        records = DatasetCatalog.get(coco128)
    meta = MetadataCatalog.get(coco128)
    anns = [a for r in records for a in r["annotations"]]
    assert len(records) == 128
    assert len(anns) == 939
    assert sum(a["iscrowd"] for a in anns) == 10
    assert len(meta.thing_classes) == 80 and meta.thing_classes[0] == "person"
    assert sorted(r["image_id"] for r in records if not r["annotations"]) == [250, 508]
    assert meta.box_stats == {"clipped": 0, "dropped": 0, "crowd": 10}
    assert (meta.task, meta.evaluator_type) == ("detection", "coco")
    assert meta.json_file.endswith("instances_val2017.json") and meta.image_root.endswith("val2017")
    assert "939 boxes (10 crowd) in 80 categories" in caplog.text
    first = next(r for r in records if r["image_id"] == 9)
    assert (first["height"], first["width"]) == (480, 640) and first["file_name"].endswith("000000000009.jpg")


def test_contiguous_id_round_trip(coco128, coco128_dir):
    records = DatasetCatalog.get(coco128)
    id_map = MetadataCatalog.get(coco128).thing_dataset_id_to_contiguous_id
    raw = _raw(coco128_dir)
    assert sorted(id_map.values()) == list(range(80))
    assert list(id_map) == sorted(id_map)  # increasing ids -> increasing indices
    assert id_map[90] == 79 and id_map[13] == 11  # ids 12, 26, ... do not exist in COCO
    back = {v: k for k, v in id_map.items()}
    raw_by_image = {}
    for a in raw["annotations"]:
        raw_by_image.setdefault(a["image_id"], []).append(a)
    for r in records:
        originals = sorted((a["category_id"], round(a["bbox"][0], 3)) for a in raw_by_image.get(r["image_id"], []))
        mapped = sorted((back[a["category_id"]], round(a["bbox"][0], 3)) for a in r["annotations"])
        assert mapped == originals
    assert [(c["id"], c["name"]) for c in raw["categories"]] == list(COCO_CATEGORIES)


def test_crowd_boxes_kept_apart(coco128):
    record = next(r for r in DatasetCatalog.get(coco128) if r["image_id"] == 257)
    crowd = [a for a in record["annotations"] if a["iscrowd"]]
    assert crowd, "image 257 of coco128 has a crowd box"
    mapper = DetectionDatasetMapper(DetectionAugmentation((record["height"],), 10_000))  # identity resize
    out = mapper(record)
    assert out["gt_boxes"].shape == (len(record["annotations"]) - len(crowd), 4)
    assert out["gt_classes"].shape == (len(record["annotations"]) - len(crowd),)
    np.testing.assert_allclose(out["crowd_boxes"].numpy(), np.array([a["bbox"] for a in crowd]), atol=1e-4)


def test_empty_images_filtered_for_training_only(coco128):
    assert len(get_detection_records([coco128], filter_empty=True)) == 126
    assert len(get_detection_records([coco128], filter_empty=False)) == 128


def test_sanitize_box():
    assert sanitize_box([10, 20, 30, 40], 100, 100) == ([10.0, 20.0, 40.0, 60.0], "ok")
    assert sanitize_box([-5, 90, 20, 20], 100, 100) == ([0.0, 90.0, 15.0, 100.0], "clipped")
    assert sanitize_box([10, 10, 0, 5], 100, 100) == (None, "dropped")
    assert sanitize_box([10, 10, 5, -3], 100, 100) == (None, "dropped")
    assert sanitize_box([120, 10, 5, 5], 100, 100) == (None, "dropped")  # entirely outside
    assert sanitize_box([float("nan"), 10, 5, 5], 100, 100) == (None, "dropped")


def _write_coco(tmp_path, boxes, image_size=(60, 80)):
    h, w = image_size
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "height": h, "width": w}],
        "annotations": [{"id": i + 1, "image_id": 7, "category_id": 5, "bbox": b, "iscrowd": 0, "area": 1.0}
                        for i, b in enumerate(boxes)],
        "categories": [{"id": 5, "name": "thing"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_degenerate_boxes_clipped_or_dropped(tmp_path, caplog):
    boxes = [[1, 2, 10, 10], [70, 50, 20, 20], [5, 5, 0, 4], [5, 5, 4, -1], [200, 5, 4, 4], [-10, -10, 5, 5]]
    path = _write_coco(tmp_path, boxes)
    with caplog.at_level(logging.INFO, logger="detres.data.detection.coco"):
        records = load_coco_json(str(path), str(tmp_path), dataset_name="test_degenerate")
    try:
        assert [a["bbox"] for a in records[0]["annotations"]] == [[1.0, 2.0, 11.0, 12.0], [70.0, 50.0, 80.0, 60.0]]
        assert [a["category_id"] for a in records[0]["annotations"]] == [0, 0]
        assert MetadataCatalog.get("test_degenerate").box_stats == {"clipped": 1, "dropped": 4, "crowd": 0}
        assert "clipped 1 boxes" in caplog.text and "dropped 4 degenerate boxes" in caplog.text
    finally:
        MetadataCatalog.remove("test_degenerate")


def test_bad_annotation_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_json(str(tmp_path / "missing.json"), str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not a valid json"):
        load_coco_json(str(bad), str(tmp_path))
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="missing keys"):
        load_coco_json(str(bad), str(tmp_path))
    path = _write_coco(tmp_path, [[1, 1, 5, 5]])
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="category_id 99"):
        load_coco_json(str(path), str(tmp_path))


def test_corrupt_and_missing_images(tmp_path):
    path = _write_coco(tmp_path, [[1, 1, 5, 5]])
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg" * 10)
    record = load_coco_json(str(path), str(tmp_path))[0]
    mapper = DetectionDatasetMapper(DetectionAugmentation((60,), 100))
    with pytest.raises(ImageReadError, match=r"cannot decode image .*a\.jpg"):
        mapper(record)
    record["file_name"] = str(tmp_path / "gone.jpg")
    with pytest.raises(ImageReadError, match=r"not found: .*gone\.jpg"):
        mapper(record)


def test_image_size_mismatch(tmp_path, coco128_dir):
    path = _write_coco(tmp_path, [[1, 1, 5, 5]])
    record = load_coco_json(str(path), str(coco128_dir / "val2017"))[0]
    record["file_name"] = str(coco128_dir / "val2017" / "000000000009.jpg")
    with pytest.raises(ValueError, match="480x640 .* 60x80"):
        DetectionDatasetMapper(DetectionAugmentation((60,), 100))(record)


def test_test_loader_reports_corrupt_image(tmp_path):
    path = _write_coco(tmp_path, [[1, 1, 5, 5]])
    (tmp_path / "a.jpg").write_bytes(b"garbage")
    cfg = get_cfg()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATASETS.REGISTER = [["test_corrupt", str(path), str(tmp_path)]]
    register_from_config(cfg)
    try:
        with pytest.raises(ImageReadError, match="a.jpg"):
            next(iter(build_detection_test_loader(cfg, "test_corrupt")))
    finally:
        DatasetCatalog.remove("test_corrupt")


def test_register_from_config(tmp_path, coco128_dir):
    cfg = get_cfg()
    cfg.DATASETS.ROOT = str(tmp_path)
    cfg.DATASETS.REGISTER = [["test_c128", str(coco128_dir / "annotations" / "instances_val2017.json"),
                              str(coco128_dir / "val2017")]]
    register_from_config(cfg)
    register_from_config(cfg)  # idempotent
    try:
        assert len(DatasetCatalog.get("test_c128")) == 128
        assert MetadataCatalog.get("test_c128").evaluator_type == "coco"
        # built-in COCO names exist without the files and explain how to get them
        assert len(MetadataCatalog.get("coco_2017_val").thing_classes) == 80
        with pytest.raises(FileNotFoundError) as info:
            DatasetCatalog.get("coco_2017_train")
        message = str(info.value)
        assert str(tmp_path / "coco" / "annotations" / "instances_train2017.json") in message
        assert "datasets/COCO.md" in message and "configs/quickstart.yaml" in message
        cfg.DATASETS.REGISTER = [["only_two", "x.json"]]
        with pytest.raises(ValueError, match=r"\[name, json_file, image_root\]"):
            register_from_config(cfg)
    finally:
        DatasetCatalog.remove("test_c128")
