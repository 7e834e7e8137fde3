"""The synthetic shapes detection dataset: determinism, content, COCO size groups, orientation mix,
generation on first use through the catalog, and the CLI."""
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from detres.config import get_cfg
from detres.data.build import register_from_config
from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.data.detection.synthetic import (
    CLASSES,
    SyntheticDetectionSpec,
    ensure_synthetic_detection,
    generate_synthetic_detection,
    main,
    synthetic_detection_folder,
)

SMALL = SyntheticDetectionSpec(num_train=6, num_val=3, seed=1)


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_deterministic_by_seed(tmp_path):
    a = _files(generate_synthetic_detection(tmp_path / "a", SMALL))
    b = _files(generate_synthetic_detection(tmp_path / "b", SMALL))
    assert a == b and len(a) == 6 + 3 + 2 + 1
    c = _files(generate_synthetic_detection(tmp_path / "c", SyntheticDetectionSpec(num_train=6, num_val=3, seed=2)))
    assert c["train/000000.jpg"] != a["train/000000.jpg"]


def test_content_sizes_and_orientations(tmp_path):
    spec = SyntheticDetectionSpec(num_train=80, num_val=0, seed=0)
    out = generate_synthetic_detection(tmp_path, spec)
    data = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in data["categories"]] == list(CLASSES) == [
        "circle", "square", "triangle", "ellipse", "cross", "star"]
    images = {im["id"]: im for im in data["images"]}
    per_image = {}
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"] and w > 0 and h > 0
        visible = mask_utils.decode(ann["segmentation"])
        assert visible.shape == (im["height"], im["width"]) and visible.sum() == ann["area"]
        assert list(mask_utils.toBbox(ann["segmentation"])) == ann["bbox"]
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
    assert set(per_image) == set(images) and set(per_image.values()) <= {1, 2, 3, 4}
    assert max(per_image.values()) == 4
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 7))
    areas = np.array([a["area"] for a in data["annotations"]])
    small, large = (areas < 32**2).mean(), (areas > 96**2).mean()
    assert 0.05 < small < 0.4 and 0.03 < large < 0.3 and areas.min() >= 100  # COCO's three size groups
    assert all(176 <= im["height"] <= 256 and 176 <= im["width"] <= 256 for im in data["images"])
    orientations = {im["width"] >= im["height"] for im in data["images"]}
    assert orientations == {True, False}


def test_generated_on_first_use_through_the_catalog(tmp_path):
    cfg = get_cfg()
    cfg.DATASETS.ROOT = str(tmp_path)
    s = cfg.DATASETS.SYNTHETIC_DET
    s.NUM_TRAIN, s.NUM_VAL, s.SEED = 5, 2, 4
    register_from_config(cfg)
    meta = MetadataCatalog.get("synthetic_det_val")
    assert (meta.task, meta.evaluator_type, meta.thing_classes) == ("detection", "coco", list(CLASSES))
    spec = SyntheticDetectionSpec(5, 2, 4, (176, 256), (1, 4), (30, 180))
    folder = synthetic_detection_folder(tmp_path / "generated", spec)
    assert not folder.exists()
    records = DatasetCatalog.get("synthetic_det_val")
    assert len(records) == 2 and (folder / "spec.json").is_file()
    assert meta.json_file == str(folder / "annotations" / "instances_val.json")
    stamp = (folder / "val" / "000000.jpg").stat().st_mtime_ns
    assert len(DatasetCatalog.get("synthetic_det_train")) == 5
    assert (folder / "val" / "000000.jpg").stat().st_mtime_ns == stamp  # not generated twice
    assert all(0 <= a["category_id"] < 6 for r in records for a in r["annotations"])


def test_incomplete_folder_is_regenerated(tmp_path):
    folder = synthetic_detection_folder(tmp_path, SMALL)
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "000000.jpg").write_bytes(b"half written")
    assert ensure_synthetic_detection(tmp_path, SMALL) == folder
    assert (folder / "spec.json").is_file() and len(list((folder / "train").iterdir())) == 6
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no temporary folder left


def test_cli(tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--num-train", "3", "--num-val", "2", "--seed", "7"])
    assert "wrote 3 training and 2 validation images" in capsys.readouterr().out
    spec = json.loads((tmp_path / "cli" / "spec.json").read_text())
    assert (spec["num_train"], spec["num_val"], spec["seed"]) == (3, 2, 7)
    assert len(json.loads((tmp_path / "cli" / "annotations" / "instances_val.json").read_text())["images"]) == 2
    with pytest.raises(SystemExit):
        main(["--num-train", "3"])  # --out is required
