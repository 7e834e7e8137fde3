"""ILSVRC localization errors on hand-made cases with exact numbers: the devkit's +1 IoU, the first five
guesses only, several ground-truth boxes, missing images, the CSV files (round trip and malformed
rows) and LocalizationEvaluator on a tiny registered dataset."""
import logging

import pytest
import torch

from detres.data.catalog import DatasetCatalog, MetadataCatalog
from detres.evaluation.build import build_evaluator
from detres.evaluation.localization_evaluation import (
    LocalizationEvaluator,
    format_localization_table,
    inclusive_iou,
    localization_errors,
    read_gt_class_submission,
    read_solution,
    read_submission,
    write_submission,
)

BOX = [0, 0, 9, 9]  # 10 x 10 pixels, inclusive
HALF = [0, 0, 9, 4]  # 10 x 5 pixels: inclusive IoU with BOX exactly 50 / 100 (continuous: 36 / 81)
JUST_BELOW = [0, 0, 9, 3.999]  # inclusive IoU 49.99 / 100
FAR = [50, 50, 60, 60]
WRONG = ["n2", "n3", "n4", "n5", "n6"]


def test_inclusive_iou_counts_pixels():
    iou = inclusive_iou(BOX, [HALF, JUST_BELOW, [9, 9, 20, 20], FAR, BOX])
    assert iou.tolist()[0] == 0.5  # exactly, not 0.4444 as without the +1
    assert iou[1] == pytest.approx(0.4999, abs=1e-12)
    assert iou[2] == pytest.approx(1 / 243)  # one shared pixel: 1 / (100 + 144 - 1)
    assert iou[3] == 0.0 and iou[4] == 1.0
    assert inclusive_iou([5, 5, 3, 3], [[5, 5, 3, 3]]).tolist() == [0.0]  # empty boxes: IoU 0, no division by 0


# image -> (its ground truth, its guesses, its GT-class box or None); one n1 object unless stated
CASES = {
    "right_class_wrong_box": ([("n1", BOX)], [("n1", FAR)], ("n1", BOX)),
    "right_box_wrong_class": ([("n1", BOX)], [("n2", BOX)], ("n1", BOX)),
    "right_at_fifth": ([("n1", BOX)], [(c, BOX) for c in WRONG[:4]] + [("n1", BOX)], None),
    "right_at_sixth": ([("n1", BOX)], [(c, BOX) for c in WRONG] + [("n1", BOX)], None),
    "second_gt_box": ([("n1", BOX), ("n1", [20, 20, 39, 39])], [("n1", [20, 20, 39, 39])], ("n1", BOX)),
    "iou_exactly_half": ([("n1", BOX)], [("n1", HALF)], ("n1", JUST_BELOW)),
    "iou_just_below_half": ([("n1", BOX)], [("n1", JUST_BELOW)], ("n2", BOX)),  # GT-class box of another class
    "missing": ([("n1", BOX)], None, None),
}
# per case: which of top1_cls, top5_cls, gt_loc, top1_loc, top5_loc are right
RIGHT = {
    "right_class_wrong_box": (1, 1, 1, 0, 0),
    "right_box_wrong_class": (0, 0, 1, 0, 0),
    "right_at_fifth": (0, 1, 0, 0, 1),
    "right_at_sixth": (0, 0, 0, 0, 0),
    "second_gt_box": (1, 1, 1, 1, 1),
    "iou_exactly_half": (1, 1, 0, 1, 1),
    "iou_just_below_half": (1, 1, 0, 0, 0),
    "missing": (0, 0, 0, 0, 0),
}
ORDER = ("top1_cls_error", "top5_cls_error", "gt_loc_error", "top1_loc_error", "top5_loc_error")


def _split(cases):
    truth = {i: t for i, (t, _, _) in cases.items()}
    guesses = {i: g for i, (_, g, _) in cases.items() if g is not None}
    gt_boxes = {i: b for i, (_, _, b) in cases.items() if b is not None}
    return truth, guesses, gt_boxes


@pytest.mark.parametrize("name", list(CASES))
def test_each_case_alone(name):
    truth, guesses, gt_boxes = _split({name: CASES[name]})
    metrics = localization_errors(truth, guesses, gt_boxes)
    assert [metrics[k] for k in ORDER] == [0.0 if right else 100.0 for right in RIGHT[name]]
    assert metrics["num_images"] == 1


def test_all_cases_together(caplog):
    truth, guesses, gt_boxes = _split(CASES)
    with caplog.at_level(logging.WARNING, logger="detres.evaluation.localization_evaluation"):
        metrics = localization_errors(truth, guesses, gt_boxes, source="cases")
    # right per metric, of 8 images: top1_cls 4, top5_cls 5, gt_loc 3, top1_loc 2, top5_loc 3
    assert list(metrics) == list(ORDER) + ["num_images"]
    assert [metrics[k] for k in ORDER] == [50.0, 37.5, 62.5, 75.0, 62.5]
    assert metrics["num_images"] == 8
    warnings = [r.getMessage() for r in caplog.records if "more than 5 guesses" in r.getMessage()]
    assert warnings == ["cases: 1 images have more than 5 guesses; only the first 5 count"]
    table = format_localization_table(metrics)
    assert [line.split() for line in table.splitlines()[1:]] == [
        ["top1_cls_error", "50.00"], ["top5_cls_error", "37.50"], ["gt_loc_error", "62.50"],
        ["top1_loc_error", "75.00"], ["top5_loc_error", "62.50"], ["(8", "images)"]]


def test_more_than_five_guesses_warns_once(caplog):
    truth = {"a": [("n1", BOX)], "b": [("n1", BOX)]}
    six = [(c, BOX) for c in WRONG] + [("n1", BOX)]
    with caplog.at_level(logging.WARNING, logger="detres.evaluation.localization_evaluation"):
        metrics = localization_errors(truth, {"a": six, "b": six}, image_sizes={"a": (10, 10), "b": (10, 10)})
    assert metrics["top5_loc_error"] == 100.0 and metrics["baseline_top5_loc_error"] == 100.0
    assert [r.getMessage() for r in caplog.records] == [
        "predictions: 2 images have more than 5 guesses; only the first 5 count"]


def test_whole_image_baseline():
    """"big" is 10 x 10 with a box covering it: the whole image is right; "small" (40 x 40) has a
    10 x 10 box: the whole image has IoU 100 / 1600."""
    truth = {"big": [("n1", BOX)], "small": [("n1", BOX)]}
    guesses = {"big": [("n2", FAR), ("n1", FAR)], "small": [("n1", BOX)]}
    gt_boxes = {"big": ("n1", FAR), "small": ("n1", BOX)}
    metrics = localization_errors(truth, guesses, gt_boxes, image_sizes={"big": (10, 10), "small": (40, 40)})
    assert [metrics[k] for k in ORDER] == [50.0, 0.0, 50.0, 50.0, 50.0]
    assert metrics["baseline_gt_loc_error"] == 50.0  # big right, small wrong
    assert metrics["baseline_top1_loc_error"] == 100.0  # big's first class is wrong
    assert metrics["baseline_top5_loc_error"] == 50.0
    assert format_localization_table(metrics).splitlines()[3].split() == ["gt_loc_error", "50.00", "50.00"]


def test_partial_inputs_and_errors():
    truth = {"a": [("n1", BOX)], "b": [("n1", BOX)]}
    only_gt = localization_errors(truth, gt_class_boxes={"a": ("n1", HALF)})
    assert dict(only_gt) == {"gt_loc_error": 50.0, "num_images": 2}
    no_gt = localization_errors(truth, {"a": [("n1", BOX)]})
    assert "gt_loc_error" not in no_gt and no_gt["top1_loc_error"] == 50.0
    with pytest.raises(ValueError, match=r"sub\.csv: guesses for 1 image ids not in the ground truth, e\.g\. \['zz'\]"):
        localization_errors(truth, {"zz": []}, source="sub.csv")
    with pytest.raises(ValueError, match="neither guesses nor"):
        localization_errors(truth)
    with pytest.raises(ValueError, match="no images"):
        localization_errors({}, {})


def test_submission_round_trip(tmp_path):
    path = tmp_path / "sub.csv"
    write_submission(str(path), {"b": [("n2", [0.4, 1.5, 2.5, 9.49])],
                                 "a": [("n1", [1, 2, 3, 4]), ("n3", [-0.5, 0, 5, 6])], "c": []})
    assert path.read_text() == "ImageId,PredictionString\na,n1 1 2 3 4 n3 0 0 5 6\nb,n2 0 2 3 9\nc,\n"
    assert read_submission(str(path)) == {"a": [("n1", [1.0, 2.0, 3.0, 4.0]), ("n3", [0.0, 0.0, 5.0, 6.0])],
                                          "b": [("n2", [0.0, 2.0, 3.0, 9.0])], "c": []}
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_read_solution_and_gt_class_files(tmp_path):
    solution = tmp_path / "LOC_val_solution.csv"
    solution.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 111 108 365 331 \n\n"
                        "ILSVRC2012_val_00000002,n09193705 0 0 499 374 n09193705 10.5 20 30 40\n")
    assert read_solution(str(solution)) == {
        "ILSVRC2012_val_00000001": [("n01751748", [111.0, 108.0, 365.0, 331.0])],
        "ILSVRC2012_val_00000002": [("n09193705", [0.0, 0.0, 499.0, 374.0]), ("n09193705", [10.5, 20.0, 30.0, 40.0])]}
    gt = tmp_path / "gt.csv"
    gt.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1 2 3 4\nILSVRC2012_val_00000002,\n")
    assert read_gt_class_submission(str(gt)) == {"ILSVRC2012_val_00000001": ("n01751748", [1.0, 2.0, 3.0, 4.0])}
    # a wnid that is no class of the image (or of the dataset) is just a wrong guess
    sub = tmp_path / "sub.csv"
    sub.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,nXXX 111 108 365 331 n01751748 111 108 365 331\n")
    metrics = localization_errors(read_solution(str(solution)), read_submission(str(sub)))
    assert [metrics[k] for k in ("top1_cls_error", "top5_loc_error")] == [100.0, 50.0]


MALFORMED = [
    ("solution", "n1 0 0 1 1\n", r"line 1: expected the header 'ImageId,PredictionString'"),
    ("solution", "", r"line 1: expected the header"),
    ("solution", "ImageId,PredictionString\n", r"no rows after the header line"),
    ("solution", "ImageId,PredictionString\na,n1 0 0 1 1,x\n", r"line 2: expected 2 comma-separated fields"),
    ("solution", "ImageId,PredictionString\na,n1 0 0 one 1\n", r"line 2: non-numeric box coordinates '0 0 one 1'"),
    ("solution", "ImageId,PredictionString\na,n1 0 0 nan 1\n", r"line 2: non-finite box coordinates"),
    ("solution", "ImageId,PredictionString\na,n1 0 0 1\n", r"line 2: expected groups of 5 fields .* got 4 fields"),
    ("solution", "ImageId,PredictionString\na,n1 0 0 1 1\n\nb,n1 0 0 1 1\na,n2 0 0 1 1\n",
     r"line 5: ImageId 'a' again \(first on line 2\)"),
    ("solution", "ImageId,PredictionString\na,n1 0 0 1 1\nb,\n", r"line 3: ImageId 'b' has no 'wnid x1 y1 x2 y2' box"),
    ("submission", "ImageId,PredictionString\n,n1 0 0 1 1\n", r"line 2: empty ImageId"),
    ("submission", "ImageId,PredictionString\na,n1 0 0 1 1\nb,n1 0 0 1 1\n",
     r"line 3: ImageId 'b' is not in the ground truth"),
    ("gt", "ImageId,PredictionString\na,n1 0 0 1 1 n1 0 0 2 2\n", r"line 2: ImageId 'a' has 2 boxes"),
]


@pytest.mark.parametrize("kind,text,message", MALFORMED)
def test_malformed_files_name_file_and_line(tmp_path, kind, text, message):
    path = tmp_path / "file.csv"
    path.write_text(text)
    read = {"solution": read_solution, "gt": lambda p: read_gt_class_submission(p, {"a"})}.get(
        kind, lambda p: read_submission(p, known_ids={"a"}))
    with pytest.raises(ValueError, match=f"^{str(path)}: {message}"):
        read(str(path))


def test_unreadable_files(tmp_path):
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=f"^{binary}: not a UTF-8 text file"):
        read_submission(str(binary))
    with pytest.raises(FileNotFoundError, match=f"submission file not found: {tmp_path / 'nope.csv'}"):
        read_submission(str(tmp_path / "nope.csv"))


@pytest.fixture
def tiny_dataset():
    """3 images; classes n01, n02, n03. img3 has no box."""
    name = "loc_eval_tiny"
    records = [
        {"file_name": "/x/img1.JPEG", "image_id": "img1", "height": 100, "width": 200, "label": 0,
         "annotations": [{"bbox": [10.0, 10.0, 59.0, 59.0], "category_id": 0}]},
        {"file_name": "/x/img2.JPEG", "image_id": "img2", "height": 50, "width": 50, "label": 1,
         "annotations": [{"bbox": [0.0, 0.0, 49.0, 49.0], "category_id": 1}]},
        {"file_name": "/x/img3.JPEG", "image_id": "img3", "height": 80, "width": 60, "label": 2, "annotations": []},
    ]
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.set(name, task="localization", evaluator_type="localization", thing_classes=["n01", "n02", "n03"],
                        class_descriptions=["a", "b", "c"], root="/x")
    yield name
    DatasetCatalog.remove(name)


def _inputs(*ids):
    return [{"image_id": i, "label": {"img1": 0, "img2": 1, "img3": 2}[i]} for i in ids]


def _output(classes, boxes, gt_box):
    out = {"pred_classes": torch.tensor(classes, dtype=torch.int64), "pred_boxes": torch.tensor(boxes),
           "scores": torch.linspace(0.9, 0.5, len(classes))}
    if gt_box is not None:
        out["gt_class_box"] = torch.tensor(gt_box)
    return out


OUTPUTS = {  # img1: right at once; img2: class right second, its box wrong; img3: no box to find
    "img1": _output([0, 2], [[10, 10, 59, 59.4], [0, 0, 5, 5]], [10, 10, 59, 59]),
    "img2": _output([2, 1], [[0, 0, 49, 49], [0, 0, 10, 10]], [0, 0, 24.4, 49]),  # gt box IoU 1270 / 2500
    "img3": _output([2], [[0, 0, 59, 79]], [5, 5, 20, 20]),
}


def test_evaluator_process_and_evaluate(tiny_dataset, tmp_path):
    evaluator = build_evaluator(None, tiny_dataset, str(tmp_path / "inference"))
    assert isinstance(evaluator, LocalizationEvaluator)
    evaluator.process(_inputs("img1", "img2"), [OUTPUTS["img1"], OUTPUTS["img2"]])
    evaluator.process(_inputs("img3"), [OUTPUTS["img3"]])
    metrics = evaluator.evaluate()["localization"]
    third, two_thirds = 100 / 3, 200 / 3
    assert metrics == pytest.approx({
        "top1_cls_error": third, "top5_cls_error": 0.0, "gt_loc_error": third, "top1_loc_error": two_thirds,
        "top5_loc_error": two_thirds, "baseline_gt_loc_error": two_thirds, "baseline_top1_loc_error": 100.0,
        "baseline_top5_loc_error": two_thirds, "num_images": 3})
    assert (tmp_path / "inference" / "loc_submission.csv").read_text() == (
        "ImageId,PredictionString\nimg1,n01 10 10 59 59 n03 0 0 5 5\nimg2,n03 0 0 49 49 n02 0 0 10 10\n"
        "img3,n03 0 0 59 79\n")
    assert (tmp_path / "inference" / "loc_gt_class_submission.csv").read_text() == (
        "ImageId,PredictionString\nimg1,n01 10 10 59 59\nimg2,n02 0 0 24 49\nimg3,n03 5 5 20 20\n")


def test_evaluator_without_classifier_or_gt_class_box(tiny_dataset, tmp_path):
    localizer = LocalizationEvaluator(None, tiny_dataset, str(tmp_path / "a"))
    localizer.process(_inputs("img1", "img2"), [{"gt_class_box": OUTPUTS[i]["gt_class_box"]} for i in ("img1", "img2")])
    assert localizer.evaluate() == {"localization": {"gt_loc_error": 0.0, "baseline_gt_loc_error": 50.0,
                                                     "num_images": 2}}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["loc_gt_class_submission.csv"]
    classifier = LocalizationEvaluator(None, tiny_dataset, None)
    classifier.process(_inputs("img1"), [_output([0], [[10, 10, 59, 59]], None)])
    metrics = classifier.evaluate()["localization"]
    assert "gt_loc_error" not in metrics and "baseline_gt_loc_error" not in metrics
    assert metrics["top1_loc_error"] == 0.0 and metrics["baseline_top1_loc_error"] == 100.0


def test_evaluator_errors(tiny_dataset, tmp_path):
    evaluator = LocalizationEvaluator(None, tiny_dataset, str(tmp_path))
    with pytest.raises(ValueError, match="image 'img9' is not in the dataset's records"):
        evaluator.process([{"image_id": "img9", "label": 0}], [OUTPUTS["img1"]])
    with pytest.raises(ValueError, match="has neither 'pred_classes'"):
        evaluator.process(_inputs("img1"), [{"scores": torch.zeros(1)}])
    with pytest.raises(RuntimeError, match="no images were processed"):
        evaluator.evaluate()
    evaluator.process(_inputs("img1"), [_output([7], [[0, 0, 1, 1]], None)])
    with pytest.raises(ValueError, match=r"loc_eval_tiny: predicted classes outside 0\.\.2: \[7\]"):
        evaluator.evaluate()


def test_records_that_are_not_localization_records():
    name = "loc_eval_bad_records"
    DatasetCatalog.register(name, lambda: [{"file_name": "/x/a.JPEG", "image_id": "a", "height": 5, "width": 5,
                                            "label": 0, "annotations": [{"bbox": [0, 0, 4], "category_id": 0}]}])
    MetadataCatalog.set(name, thing_classes=["n01"], evaluator_type="localization")
    try:
        with pytest.raises(ValueError, match=r"loc_eval_bad_records: record 'a' is not a localization record.*"
                                             r"a bbox without 4 numbers"):
            LocalizationEvaluator(None, name, None)
    finally:
        DatasetCatalog.remove(name)
