"""tools/demo.py (over detres.Predictor) on the golden Detectron2 C4 checkpoint and on a checkpoint that
records class names, and the visualizer it draws with."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detres.engine.checkpoint import Checkpointer
from detres.engine.predictor import Predictor
from detres.modeling.meta_arch.build import build_model
from detres.utils.visualizer import class_colour, draw_instances

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

    predictor = Predictor(str(config), opts=opts)
    output = predictor(str(image_dir / "000000000009.jpg"))
    keep = output["scores"] >= 0.5
    assert int(lines[0].split(": ")[1].split()[0]) == int(keep.sum()) > 0
    kept_names = [name for name, kept in zip(output["class_names"], keep) if kept]
    assert lines[0].endswith("(" + ", ".join(f"{n} {s:.2f}" for n, s in zip(kept_names, output["scores"][keep])) + ")")
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


R18_OPTS = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
            "MODEL.RESNETS.RES2_OUT_CHANNELS", "16", "MODEL.RPN.POST_NMS_TOPK_TEST", "16",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"]


def test_demo_labels_with_the_checkpoint_class_names_without_a_dataset(tmp_path, load_tool, monkeypatch):
    demo = load_tool("demo")
    config = str(REPO_ROOT / "configs" / "detection" / "Base-RCNN-C4.yaml")
    opts = R18_OPTS + ["MODEL.ROI_HEADS.NUM_CLASSES", "3", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
    torch.manual_seed(0)
    model = build_model(demo.load_config(config, opts))
    path = Checkpointer(model, str(tmp_path / "run")).save("model_final", iteration=1, class_names=["ant", "bee", "cat"])
    cv2.imwrite(str(tmp_path / "a.jpg"), np.random.default_rng(0).integers(0, 255, (128, 160, 3), dtype=np.uint8))
    drawn = []
    monkeypatch.setattr(demo, "draw_instances", lambda image, boxes, classes, scores, names: drawn.append(names) or image)
    demo.run(demo.parse_args(["--config", config, "--input", str(tmp_path / "a.jpg"), "--output", str(tmp_path / "out"),
                              "--confidence", "0", "MODEL.WEIGHTS", path, *opts]))
    assert drawn == [["ant", "bee", "cat"]]
