"""VOC evaluation: every devkit convention on hand-computed cases (11-point vs area, difficult objects
ignored, duplicates, strict IoU > 0.5 in "+1" pixels, no detections), AP over IoU 0.5:0.95, the comp4
result files, the evaluator end to end (string image ids through the test loader) and tools/evaluate.py."""
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detres.config import get_cfg
from detres.data.build import build_test_loader, register_from_config
from detres.data.catalog import DatasetCatalog
from detres.data.detection.voc import VOC_CLASSES
from detres.evaluation.build import build_evaluator
from detres.evaluation.voc_evaluation import (
    ClassDetections,
    VOCEvaluator,
    evaluate_voc,
    read_voc_results,
    voc_ap,
    write_voc_results,
)
from tests.data.test_voc_dataset import IMAGES, write_voc_devkit

REPO_ROOT = Path(__file__).resolve().parents[2]


def _record(image_id, boxes, classes, difficult=None):
    difficult = difficult or [False] * len(boxes)
    return {"image_id": image_id, "annotations": [{"bbox": b, "category_id": c, "iscrowd": 0, "difficult": d}
                                                  for b, c, d in zip(boxes, classes, difficult)]}


def _dets(*rows):
    """``ClassDetections`` of ``(image_id, score, box)`` rows."""
    return ClassDetections([r[0] for r in rows], np.array([r[1] for r in rows], dtype=float),
                           np.array([r[2] for r in rows], dtype=float).reshape(-1, 4))


SQUARE = [0.0, 0.0, 10.0, 10.0]
FAR = [50.0, 50.0, 60.0, 60.0]
# class "a": 4 objects in 2 images; detections ranked TP, FP, TP, FP, TP: recall 1/4 1/4 2/4 2/4 3/4,
# precision 1 1/2 2/3 1/2 3/5.
PR_RECORDS = [_record("i1", [SQUARE, [20, 0, 30, 10]], [0, 0]), _record("i2", [SQUARE, [20, 0, 30, 10]], [0, 0])]
PR_DETS = _dets(("i1", 0.9, SQUARE), ("i1", 0.8, FAR), ("i2", 0.7, SQUARE), ("i2", 0.6, FAR),
                ("i1", 0.5, [20, 0, 30, 10]))
# area: 1/4 * 1 + 1/4 * 2/3 + 1/4 * 3/5 = 17/30; 11 points: t = 0, .1, .2 -> 1; .3, .4, .5 -> 2/3;
# .6, .7 -> 3/5; .8, .9, 1 -> 0: (3 + 2 + 1.2) / 11 = 31/55
AREA_AP, ELEVEN_POINT_AP = 100 * 17 / 30, 100 * 31 / 55


def test_11point_and_area_metrics_on_a_hand_computed_ranking():
    metrics = evaluate_voc(PR_RECORDS, [PR_DETS], ["a"])
    assert list(metrics)[:4] == ["mAP_11point", "mAP_area", "AP", "AP75"]
    assert metrics["mAP_11point"] == pytest.approx(ELEVEN_POINT_AP)
    assert metrics["AP_11point-a"] == pytest.approx(ELEVEN_POINT_AP)
    assert metrics["mAP_area"] == pytest.approx(AREA_AP) and metrics["AP_area-a"] == pytest.approx(AREA_AP)
    # every match is exact, so every IoU threshold gives the same AP
    assert metrics["AP"] == pytest.approx(AREA_AP) and metrics["AP75"] == pytest.approx(AREA_AP)
    first = evaluate_voc(PR_RECORDS, [PR_DETS], ["a"], primary="area")
    assert list(first)[:2] == ["mAP_area", "mAP_11point"] and list(first)[4:] == ["AP_area-a", "AP_11point-a"]


def test_voc_ap_directly():
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(recall, precision, "area") == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert voc_ap(recall, precision, "11point") == pytest.approx((6 + 5 * 2 / 3) / 11)  # t <= .5: 1; t >= .6: 2/3
    assert voc_ap(np.zeros(0), np.zeros(0), "area") == 0.0 and voc_ap(np.zeros(0), np.zeros(0), "11point") == 0.0
    with pytest.raises(ValueError, match="11point"):
        voc_ap(recall, precision, "12point")


def test_difficult_objects_are_neither_true_nor_false_positives():
    records = [_record("i1", [SQUARE, FAR], [0, 0], difficult=[False, True])]
    # two detections on the difficult object (ranked first) count for nothing, and the difficult object
    # is not in the recall's denominator: one TP over one object, AP 100
    dets = _dets(("i1", 0.95, FAR), ("i1", 0.9, FAR), ("i1", 0.8, SQUARE))
    metrics = evaluate_voc(records, [dets], ["a"])
    assert metrics["mAP_11point"] == pytest.approx(100.0) and metrics["mAP_area"] == pytest.approx(100.0)
    # a detection near the difficult object but with IoU <= 0.5 (here 50/150) is a false positive:
    # FP then TP: precision 1/2 at recall 1
    dets = _dets(("i1", 0.95, [55.0, 50.0, 65.0, 60.0]), ("i1", 0.8, SQUARE))
    assert evaluate_voc(records, [dets], ["a"])["mAP_area"] == pytest.approx(50.0)


def test_duplicates_are_false_positives_even_next_to_an_unmatched_object():
    # A and B overlap (IoU 100/120); the second detection of A has IoU 0.83 with the unmatched B too,
    # but the devkit matches it to A (its best overlap), already taken: a false positive.
    a, b = SQUARE, [0.0, 0.0, 10.0, 12.0]
    records = [_record("i1", [a, b], [0, 0])]
    dets = _dets(("i1", 0.9, a), ("i1", 0.8, a), ("i1", 0.7, b))  # TP, FP, TP
    metrics = evaluate_voc(records, [dets], ["a"])
    assert metrics["mAP_area"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    assert metrics["mAP_11point"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)


def test_iou_must_exceed_the_threshold():
    records = [_record("i1", [SQUARE], [0])]
    exactly_half = evaluate_voc(records, [_dets(("i1", 0.9, [0.0, 0.0, 10.0, 20.0]))], ["a"])  # IoU 100/200
    assert exactly_half["mAP_area"] == 0.0
    # IoU 0.8: a match at 0.50 .. 0.75 (6 of the 10 thresholds), not at 0.80 and above
    metrics = evaluate_voc(records, [_dets(("i1", 0.9, [0.0, 0.0, 10.0, 8.0]))], ["a"])
    assert metrics["mAP_area"] == pytest.approx(100.0) and metrics["AP75"] == pytest.approx(100.0)
    assert metrics["AP"] == pytest.approx(60.0)


def test_no_detections_is_ap_0_and_no_ground_truth_is_left_out():
    records = PR_RECORDS + [_record("i3", [SQUARE], [1])]
    metrics = evaluate_voc(records, [PR_DETS, ClassDetections.empty(), ClassDetections.empty()], ["a", "b", "c"])
    assert metrics["AP_area-b"] == 0.0 and metrics["AP_11point-b"] == 0.0  # objects, no detections
    assert math.isnan(metrics["AP_area-c"])  # no objects at all: not part of the mean
    assert metrics["mAP_area"] == pytest.approx(AREA_AP / 2)
    assert metrics["mAP_11point"] == pytest.approx(ELEVEN_POINT_AP / 2)


def test_detections_of_unknown_images_are_an_error():
    with pytest.raises(ValueError, match="image ids not in the ground truth.*'i9'"):
        evaluate_voc(PR_RECORDS, [_dets(("i9", 0.5, SQUARE))], ["a"])


def test_result_files_round_trip(tmp_path):
    dets = [PR_DETS, ClassDetections.empty()]
    write_voc_results(str(tmp_path), dets, ["a", "b"], split="test")
    lines = (tmp_path / "comp4_det_test_a.txt").read_text().splitlines()
    assert lines[0] == "i1 0.900000 1.00 1.00 10.00 10.00"  # 1-based pixels
    assert (tmp_path / "comp4_det_test_b.txt").read_text() == ""
    back = read_voc_results(str(tmp_path), ["a", "b"], split="test")
    assert back[0].image_ids == PR_DETS.image_ids
    np.testing.assert_array_equal(back[0].boxes, PR_DETS.boxes)
    np.testing.assert_array_equal(back[0].scores, PR_DETS.scores)
    assert len(back[1].image_ids) == 0
    (tmp_path / "comp4_det_test_b.txt").write_text("i1 0.5 1 2 3\n")
    with pytest.raises(ValueError, match=r"comp4_det_test_b\.txt: line 1: expected"):
        read_voc_results(str(tmp_path), ["a", "b"], split="test")


def _voc_cfg(root: Path, metric: str = "11point"):
    cfg = get_cfg()
    cfg.DATASETS.ROOT = str(root)
    cfg.TEST.VOC_METRIC = metric
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 60, 100
    cfg.TEST.IMS_PER_BATCH, cfg.DATALOADER.NUM_WORKERS = 2, 0
    return cfg


def _gt_outputs(inputs, records, score=0.9):
    """The non-difficult ground truth of each input's record as the model's output."""
    outputs = []
    for inp in inputs:
        anns = [a for a in records[inp["image_id"]]["annotations"] if not a["difficult"]]
        outputs.append({"boxes": torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.full((len(anns),), score),
                        "classes": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)})
    return outputs


def test_evaluator_end_to_end_with_string_image_ids(tmp_path):
    folder = write_voc_devkit(tmp_path / "data")
    (folder / "JPEGImages").mkdir()
    for image_id, ((w, h), _) in IMAGES.items():
        cv2.imwrite(str(folder / "JPEGImages" / f"{image_id}.jpg"), np.full((h, w, 3), 128, np.uint8))
    cfg = _voc_cfg(tmp_path / "data", metric="area")
    loader = build_test_loader(cfg, "voc_2007_test")
    records = {r["image_id"]: r for r in DatasetCatalog.get("voc_2007_test")}
    evaluator = build_evaluator(cfg, "voc_2007_test", str(tmp_path / "inference"))
    assert isinstance(evaluator, VOCEvaluator)
    for inputs in loader:
        evaluator.process(inputs, _gt_outputs(inputs, records))
    metrics = evaluator.evaluate()["bbox"]
    assert list(metrics)[:2] == ["mAP_area", "mAP_11point"]  # TEST.VOC_METRIC first
    assert metrics["mAP_area"] == pytest.approx(100.0) and metrics["mAP_11point"] == pytest.approx(100.0)
    assert metrics["AP"] == pytest.approx(100.0) and metrics["AP_area-dog"] == pytest.approx(100.0)
    assert math.isnan(metrics["AP_area-person"])  # its only object is difficult
    # the result files hold the XML's own 1-based boxes
    dog = (tmp_path / "inference" / "comp4_det_test_dog.txt").read_text()
    assert dog == "000005 0.900000 48.00 240.00 195.00 371.00\n"
    assert len(list((tmp_path / "inference").glob("comp4_det_test_*.txt"))) == 20


def test_evaluate_tool_on_result_files(tmp_path, capsys, load_tool):
    """+1 pixels: VOC box [1, 1, 2, 2] (2 x 2 pixels) vs a detection [1, 1, 2, 3] (2 x 3): IoU 4/6, a match
    (without the +1 it would be 1/2, no match); aeroplane has no file and bird an empty one: AP 0."""
    images = {"000001": ((5, 5), [("cat", [1, 1, 2, 2], 0, 0), ("aeroplane", [3, 3, 5, 5], 0, 0)]),
              "000002": ((5, 5), [("bird", [1, 1, 5, 5], 0, 0), ("cat", [2, 2, 4, 4], 1, 0)])}
    folder = write_voc_devkit(tmp_path / "data", images=images, splits={"test": list(images), "val": ["000001"]})
    results = tmp_path / "results"
    results.mkdir()
    (results / "comp4_det_test_cat.txt").write_text("000001 0.9 1 1 2 3\n000002 0.8 2 2 4 4\n")
    (results / "comp4_det_test_bird.txt").write_text("")
    tool = load_tool("evaluate")
    out_json = tmp_path / "m.json"
    metrics = tool.run(tool.parse_args(["--voc-root", str(folder), "--image-set", "test", "--results", str(results),
                                        "--output", str(out_json)]))
    assert metrics["AP_11point-cat"] == pytest.approx(100.0)  # the second hits a difficult cat: ignored
    assert metrics["AP_11point-aeroplane"] == 0.0 and metrics["AP_area-bird"] == 0.0
    assert metrics["mAP_11point"] == pytest.approx(100 / 3)
    out = capsys.readouterr().out
    assert "mAP (11point) 33.33" in out and "aeroplane" in out
    assert '"mAP_11point"' in out_json.read_text()
    # the same through a config and the registered dataset name; --metric area first
    metrics = tool.run(tool.parse_args(["--config", str(REPO_ROOT / "configs" / "frcnn_r50_voc0712.yaml"),
                                        "--dataset", "voc_2007_test", "--results", str(results), "--metric", "area",
                                        "DATASETS.ROOT", str(tmp_path / "data")]))
    assert list(metrics)[0] == "mAP_area" and metrics["mAP_area"] == pytest.approx(100 / 3)
    with pytest.raises(SystemExit, match="results folder not found"):
        tool.main(["--voc-root", str(folder), "--results", str(tmp_path / "nope")])
    with pytest.raises(SystemExit, match=r"none of the result files comp4_det_val_<class>\.txt"):
        tool.main(["--voc-root", str(folder), "--image-set", "val", "--results", str(results)])
