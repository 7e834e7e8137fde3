"""tools/demo.py on the golden Detectron2 C4 checkpoint, and the visualizer it draws with."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detres.data.detection.mapper import read_image
from detres.utils.visualizer import class_colour, draw_instances, gt_vs_pred_picture

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_draw_instances_boxes_and_labels():
    image = np.zeros((120, 160, 3), np.uint8)
    out = draw_instances(image, np.array([[20, 30, 100, 90]]), [2], [0.87], ["a", "b", "car"])
    assert image.max() == 0  # input untouched
    colour = np.array(class_colour(2))
    assert (out[60, 20] == colour).all() and (out[90, 60] == colour).all()  # left and bottom edges
    assert (out[60, 60] == 0).all()  # inside stays empty
    assert (out[10:30, 20:100] != 0).any()  # the label above the box
    assert class_colour(2) != class_colour(3)
    unnamed = draw_instances(image, np.array([[20, 30, 100, 90]]), [7], None, ["a"])  # index beyond the names
    assert (unnamed[60, 20] == np.array(class_colour(7))).all()


def test_gt_vs_pred_picture_rescales_detections():
    inputs = {"image": torch.zeros(3, 50, 100, dtype=torch.uint8), "height": 100, "width": 200,
              "gt_boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0]]), "gt_classes": torch.tensor([0])}
    outputs = {"boxes": torch.tensor([[20.0, 20.0, 80.0, 80.0], [0.0, 0.0, 10.0, 10.0]]),
               "scores": torch.tensor([0.9, 0.1]), "classes": torch.tensor([1, 1])}
    picture = gt_vs_pred_picture(inputs, outputs, ["x", "y"])
    assert picture.shape == (3, 50, 204) and picture.dtype == np.uint8
    right = picture[:, :, 104:].transpose(1, 2, 0)[:, :, ::-1]  # back to BGR
    colour = np.array(class_colour(1))
    assert (right[25, 10] == colour).all() and (right[40, 25] == colour).all()  # box halved: [10, 10, 40, 40]
    assert (right[2, 2] == 0).all()  # the 0.1-score box is not drawn


def test_demo_on_the_golden_detector(shared_dir, coco128_dir, tmp_path, capsys, load_tool):
    demo = load_tool("demo")
    weights = shared_dir / "golden" / "detectron2_r50_c4_w16" / "model_final.pkl"
    config = REPO_ROOT / "configs" / "detection" / "d2_R50_C4_golden.yaml"
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    (image_dir / "000000000009.jpg").write_bytes((coco128_dir / "val2017" / "000000000009.jpg").read_bytes())
    (image_dir / "notes.txt").write_text("not an image: skipped")
    opts = ["MODEL.WEIGHTS", str(weights), "INPUT.MIN_SIZE_TEST", "320", "INPUT.MAX_SIZE_TEST", "480",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "30"]  # few proposals: the res5 head per region dominates on CPU
    written = demo.run(demo.parse_args(["--config", str(config), "--input", str(image_dir), "--output",
                                        str(tmp_path / "out"), "--confidence", "0.5", *opts]))
    assert [p.name for p in written] == ["000000000009.jpg"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "detections with score >= 0.5" in lines[0]

    cfg = demo.load_config(str(config), opts)
    model = demo.build_predictor(cfg)
    output = demo.predict(model, cfg, read_image(str(image_dir / "000000000009.jpg")))
    keep = output["scores"] >= 0.5
    assert int(lines[0].split(": ")[1].split()[0]) == int(keep.sum()) > 0
    original = cv2.imread(str(image_dir / "000000000009.jpg"))
    drawn = cv2.imread(str(written[0]))
    assert drawn.shape == original.shape == (480, 640, 3)
    assert output["boxes"][keep].max() <= 640 and output["boxes"].dtype == torch.float32
    x1, y1, x2, y2 = (int(round(v)) for v in output["boxes"][keep][0].tolist())
    cls = int(output["classes"][keep][0])
    edge = drawn[(y1 + y2) // 2, min(x1, 639)].astype(int)  # left edge of the best box (JPEG-compressed)
    assert np.abs(edge - np.array(class_colour(cls))).max() < 60


def test_demo_reports_bad_input(tmp_path, load_tool):
    demo = load_tool("demo")
    config = REPO_ROOT / "configs" / "detection" / "d2_R50_C4_golden.yaml"
    with pytest.raises(SystemExit, match="input not found"):
        demo.main(["--config", str(config), "--input", str(tmp_path / "missing.jpg"), "--output", str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        demo.main(["--config", str(config), "--input", str(tmp_path / "empty"), "--output", str(tmp_path)])
