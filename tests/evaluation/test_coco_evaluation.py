"""COCOEvaluator and evaluate_coco: ground truth scores 100 AP on coco128, shifted boxes lose the
expected AP, a hand-computed case, the results json format, errors, tools/evaluate.py, and the images-only
test-dev case."""
import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detres.config import get_cfg
from detres.data.build import register_from_config
from detres.data.catalog import DatasetCatalog
from detres.data.detection.coco import load_coco_api, register_coco_instances
from detres.evaluation.build import build_evaluator
from detres.evaluation.coco_evaluation import COCO_METRICS, COCOEvaluator, evaluate_coco
from detres.utils.events import EventStorage

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def coco128(coco128_dir):
    name = "eval_coco128"
    DatasetCatalog.remove(name)
    register_coco_instances(name, str(coco128_dir / "annotations" / "instances_val2017.json"), str(coco128_dir / "val2017"))
    yield name, DatasetCatalog.get(name)
    DatasetCatalog.remove(name)


def _ground_truth_outputs(records, shift=0.0):
    """(inputs, outputs) as a model would give them: the non-crowd boxes, x shifted by ``shift`` * width."""
    inputs, outputs = [], []
    for r in records:
        anns = [a for a in r["annotations"] if not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, [0, 2]] += shift * (boxes[:, 2:3] - boxes[:, 0:1])
        inputs.append({"image_id": r["image_id"], "height": r["height"], "width": r["width"]})
        outputs.append({"boxes": boxes, "scores": torch.linspace(1.0, 0.5, len(anns)),
                        "classes": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)})
    return inputs, outputs


def _evaluate(name, records, output_dir, shift=0.0):
    evaluator = build_evaluator(get_cfg(), name, str(output_dir))
    assert isinstance(evaluator, COCOEvaluator)
    inputs, outputs = _ground_truth_outputs(records, shift)
    for i in range(0, len(inputs), 16):
        evaluator.process(inputs[i:i + 16], outputs[i:i + 16])
    return evaluator.evaluate()["bbox"]


@pytest.fixture(scope="module")
def shifted(coco128, tmp_path_factory):
    """Metrics and results folder of the ground truth shifted by 20% of each box's width."""
    out = tmp_path_factory.mktemp("shifted")
    return _evaluate(*coco128, out, shift=0.2), out


def test_ground_truth_as_detections_scores_100(coco128, coco128_dir, tmp_path):
    name, records = coco128
    metrics = _evaluate(name, records, tmp_path)
    assert list(metrics)[:12] == list(COCO_METRICS)
    assert metrics["AP"] > 99 and metrics["AP50"] == pytest.approx(100.0) and metrics["AP75"] == pytest.approx(100.0)
    assert metrics["AR100"] == pytest.approx(100.0)
    per_class = {k: v for k, v in metrics.items() if k.startswith("AP-")}
    assert len(per_class) == 80
    assert per_class["AP-person"] == pytest.approx(100.0) and math.isnan(per_class["AP-toaster"])  # no toaster in coco128

    # the results file is the official format: XYWH boxes and the dataset's own category ids (up to 90)
    results = json.loads((tmp_path / "coco_instances_results.json").read_text())
    raw = json.loads((coco128_dir / "annotations" / "instances_val2017.json").read_text())
    expected = sorted((a["image_id"], a["category_id"], *[round(v, 2) for v in a["bbox"]])
                      for a in raw["annotations"] if not a["iscrowd"])
    got = sorted((r["image_id"], r["category_id"], *[round(v, 2) for v in r["bbox"]]) for r in results)
    assert got == expected
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    assert max(r["category_id"] for r in results) == 90


def test_shifted_boxes_lose_the_expected_ap(shifted):
    # shifting x by 20% of the width gives IoU (1 - 0.2) / (1 + 0.2) = 0.667: a match at IoU thresholds
    # 0.50 .. 0.65 (4 of 10) and none above, so AP ~= 40, AP50 ~= 100, AP75 ~= 0
    metrics, _ = shifted
    assert metrics["AP"] == pytest.approx(40.0, abs=1.0)
    assert metrics["AP50"] > 99 and metrics["AP75"] < 1


def _tiny_gt(tmp_path):
    data = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
                            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0}],
            "categories": [{"id": 3, "name": "thing"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    return load_coco_api(str(path))


def test_hand_computed_ap(tmp_path):
    gt = _tiny_gt(tmp_path)
    # a false positive ranked first, then one of the two objects: precision 1/2 at recall 1/2, so the
    # interpolated precision is 0.5 at the 51 recall points 0.00 .. 0.50 of 101: AP = 0.5 * 51 / 101
    results = [{"image_id": 1, "category_id": 3, "bbox": [60, 0, 10, 10], "score": 0.95},
               {"image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "score": 0.9}]
    metrics = evaluate_coco(gt, results)
    assert metrics["AP"] == pytest.approx(100 * 0.5 * 51 / 101, abs=1e-6)
    assert metrics["AR100"] == pytest.approx(50.0) and metrics["AR1"] == pytest.approx(0.0)
    assert math.isnan(metrics["APl"])  # no large object in the ground truth
    assert metrics["AP-thing"] == pytest.approx(metrics["AP"])


def test_bad_results_are_reported(tmp_path):
    gt = _tiny_gt(tmp_path)
    with pytest.raises(ValueError, match="image ids not in the ground truth"):
        evaluate_coco(gt, [{"image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 1.0}])
    with pytest.raises(ValueError, match="contiguous"):
        evaluate_coco(gt, [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 1.0}])
    with pytest.raises(ValueError, match="'score'"):
        evaluate_coco(gt, [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5]}])
    empty = evaluate_coco(gt, [])
    assert empty["AP"] == 0.0 and empty["AR100"] == 0.0


def test_vis_images_go_to_the_event_storage(coco128):
    name, records = coco128
    cfg = get_cfg()
    cfg.TEST.VIS_IMAGES = 2
    evaluator = COCOEvaluator(cfg, name)
    inputs, outputs = _ground_truth_outputs(records[:3])
    for inp, r in zip(inputs, records[:3]):
        inp["image"] = torch.zeros(3, r["height"] // 2, r["width"] // 2, dtype=torch.uint8)
        inp["file_name"] = r["file_name"]
        inp["gt_boxes"] = torch.zeros(0, 4)
        inp["gt_classes"] = torch.zeros(0, dtype=torch.int64)
    evaluator.process(inputs, outputs)
    with EventStorage() as storage:
        evaluator.evaluate()
    assert [tag for tag, _, _ in storage.images] == [f"{name}/gt_vs_pred_0", f"{name}/gt_vs_pred_1"]
    picture = storage.images[0][1]
    assert picture.dtype == np.uint8 and picture.shape == (3, records[0]["height"], 2 * records[0]["width"] + 4)
    assert picture[:, :, picture.shape[2] // 2 + 2:].max() > 0  # the detections are drawn on the right half


def test_evaluate_tool_on_a_saved_results_file(coco128_dir, shifted, tmp_path, capsys, load_tool):
    metrics, out_dir = shifted
    tool = load_tool("evaluate")
    json_file = str(coco128_dir / "annotations" / "instances_val2017.json")
    results = str(out_dir / "coco_instances_results.json")
    tool.main(["--dataset-json", json_file, "--results", results, "--output", str(tmp_path / "m.json")])
    out = capsys.readouterr().out
    assert "AP50" in out and "person" in out
    saved = json.loads((tmp_path / "m.json").read_text())["bbox"]
    assert saved["AP"] == pytest.approx(metrics["AP"]) and saved["AP75"] == pytest.approx(metrics["AP75"])
    with pytest.raises(SystemExit, match="results file not found"):
        tool.main(["--dataset-json", json_file, "--results", str(tmp_path / "nope.json")])


def test_evaluate_tool_with_a_config_and_dataset_name(tmp_path, capsys, load_tool):
    _tiny_gt(tmp_path)
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": 1, "category_id": 3, "bbox": [10, 10, 30, 30], "score": 0.9}]))
    tool = load_tool("evaluate")
    config = str(REPO_ROOT / "configs" / "detection" / "Base-RCNN-C4.yaml")
    try:
        tool.main(["--config", config, "--dataset", "tiny_cfg", "--results", str(results), "--output", str(tmp_path / "m.json"),
                   "DATASETS.REGISTER", f"[['tiny_cfg', '{tmp_path / 'gt.json'}', '{tmp_path}']]"])
    finally:
        DatasetCatalog.remove("tiny_cfg")
    out = capsys.readouterr().out
    assert "thing" in out and "AP-thing" not in out  # per-category rows show the class names
    saved = json.loads((tmp_path / "m.json").read_text())["bbox"]
    assert saved["AP"] == pytest.approx(100 * 51 / 101, abs=1e-6) and saved["AP-thing"] == pytest.approx(saved["AP"])


def test_pictures_are_drawn_on_the_original_image(tmp_path):
    from detres.data.build import build_test_loader
    from detres.utils.visualizer import class_colour

    cfg = get_cfg()
    cfg.DATASETS.ROOT = str(tmp_path / "data")
    cfg.DATASETS.SYNTHETIC_DET.NUM_TRAIN, cfg.DATASETS.SYNTHETIC_DET.NUM_VAL = 1, 3
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 88, 128  # half the original 176 x 256 (or 256 x 176)
    cfg.TEST.VIS_IMAGES, cfg.TEST.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 2, 2, 0
    loader = build_test_loader(cfg, "synthetic_det_val")
    records = {r["image_id"]: r for r in DatasetCatalog.get("synthetic_det_val")}
    evaluator = build_evaluator(cfg, "synthetic_det_val", str(tmp_path / "inference"))
    seen = []
    with EventStorage() as storage:
        for inputs in loader:
            seen += inputs
            evaluator.process(inputs, [_ground_truth_outputs([records[x["image_id"]]])[1][0] for x in inputs])
        metrics = evaluator.evaluate()["bbox"]
    assert metrics["AP50"] == pytest.approx(100.0)
    assert len(storage.images) == 2 and storage.images[0][0] == "synthetic_det_val/gt_vs_pred_0"
    pictures = sorted((tmp_path / "inference" / "pictures").glob("gt_vs_pred_*.jpg"))
    assert [p.name for p in pictures] == ["gt_vs_pred_0.jpg", "gt_vs_pred_1.jpg"]
    assert min(seen[0]["image"].shape[1:]) == 88
    first = records[seen[0]["image_id"]]
    h, w = first["height"], first["width"]
    picture = cv2.imread(str(pictures[0]))
    assert picture.shape == (h, 2 * w + 4, 3) and min(h, w) > 150  # the original size, not the test size
    for side in (0, w + 4):  # ground truth (rescaled from the model input) and detections, same place
        for a in first["annotations"]:
            x1, y1, x2, y2 = (int(round(v)) for v in a["bbox"])
            column = picture[y1 + 2:y2 - 1, side + min(x1, w - 1)].astype(int)  # the box's left edge
            matches = (np.abs(column - np.array(class_colour(a["category_id"]))).max(axis=1) < 60).mean()
            assert matches > 0.5, (side, a)


def test_images_only_test_dev_writes_the_submission_and_skips_evaluation(tmp_path, caplog):
    """coco_2017_test-dev: an image-info json (images and categories, no annotations) under DATASETS.ROOT."""
    info = {"images": [{"id": 5, "file_name": "000000000005.jpg", "height": 40, "width": 60}],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]}
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "test2017").mkdir()
    (tmp_path / "coco" / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(info))
    cfg = get_cfg()
    cfg.DATASETS.ROOT = str(tmp_path)
    register_from_config(cfg)
    records = DatasetCatalog.get("coco_2017_test-dev")
    assert records == [{"file_name": str(tmp_path / "coco" / "test2017" / "000000000005.jpg"), "image_id": 5,
                        "height": 40, "width": 60, "annotations": []}]
    evaluator = build_evaluator(cfg, "coco_2017_test-dev", str(tmp_path / "inference"))
    evaluator.process([{"image_id": 5}], [{"boxes": torch.tensor([[1.0, 2.0, 4.0, 6.0]]), "scores": torch.tensor([0.5]),
                                           "classes": torch.tensor([1])}])
    with caplog.at_level(logging.WARNING):
        assert evaluator.evaluate() == {}
    path = tmp_path / "inference" / "coco_instances_results.json"
    assert f"no annotations: evaluation skipped; submit {path} to the evaluation server" in caplog.text
    results = json.loads(path.read_text())
    assert results == [{"image_id": 5, "category_id": 2, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.5}]
