"""detres.create_detector and detres.Predictor: shipped config names, weights and recorded class names,
every kind of image input giving the test loader's detections in original pixels, test-time options."""
import logging

import cv2
import numpy as np
import pytest
import torch

import detres
from detres.config import ConfigError, load_config
from detres.data.detection.mapper import DetectionDatasetMapper
from detres.engine.checkpoint import Checkpointer
from detres.engine.predictor import CONFIG_DIR, find_config, resolve_class_names
from detres.modeling.meta_arch.build import build_model
from detres.modeling.meta_arch.faster_rcnn import FasterRCNN
from detres.modeling.test_time import build_test_time_model

BASE = str(CONFIG_DIR / "detection" / "Base-RCNN-C4.yaml")
# A narrow ResNet-18 C4 detector that keeps every detection: fast, and never empty.
SMALL = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
         "MODEL.RESNETS.RES2_OUT_CHANNELS", "16", "MODEL.RPN.POST_NMS_TOPK_TEST", "16",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
         "MODEL.ROI_HEADS.NUM_CLASSES", "3", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]
NAMES = ["ant", "bee", "cat"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random small detector saved as a detres checkpoint that records class names."""
    torch.manual_seed(0)
    model = build_model(load_config(BASE, SMALL))
    return Checkpointer(model, str(tmp_path_factory.mktemp("run"))).save("model_final", iteration=1, class_names=NAMES)


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    """A 96 x 120 BGR image (lossless PNG): the test size 128 scales it by 4/3 to 128 x 160."""
    path = tmp_path_factory.mktemp("images") / "a.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (96, 120, 3), dtype=np.uint8))
    return path


def assert_same(a, b):
    assert set(a) == {"boxes", "scores", "classes", "class_names"} and a["class_names"] == b["class_names"]
    assert all(torch.equal(a[k], b[k]) for k in ("boxes", "scores", "classes"))


def test_every_input_kind_gives_the_test_loaders_detections_in_original_pixels(checkpoint, image_file):
    predictor = detres.Predictor(BASE, weights=checkpoint, opts=SMALL)
    assert predictor.class_names == NAMES and not predictor.model.training
    out = predictor(str(image_file))
    d = len(out["scores"])
    assert d > 0 and out["boxes"].shape == (d, 4) and out["boxes"].dtype == torch.float32
    assert out["classes"].dtype == torch.int64 and out["class_names"] == [NAMES[c] for c in out["classes"]]
    assert (out["scores"][:-1] >= out["scores"][1:]).all()

    # the test loader's input for the same file, through the same model
    cfg = predictor.cfg
    inputs = DetectionDatasetMapper.from_config(cfg, is_train=False)(
        {"file_name": str(image_file), "height": 96, "width": 120, "image_id": 0})
    assert tuple(inputs["image"].shape) == (3, 128, 160)
    with torch.no_grad():
        expected = predictor.model([inputs])[0]
        resized = predictor.model([{"image": inputs["image"]}])[0]  # boxes in the 128 x 160 input's pixels
    assert torch.equal(out["boxes"], expected["boxes"]) and torch.equal(out["scores"], expected["scores"])
    assert torch.allclose(out["boxes"], resized["boxes"] * 0.75, atol=1e-4)
    assert out["boxes"][:, 2].max() <= 120 and out["boxes"][:, 3].max() <= 96

    bgr = cv2.imread(str(image_file))
    assert_same(predictor(bgr), out)
    assert_same(predictor(torch.from_numpy(bgr).permute(2, 0, 1)), out)
    rgb_predictor = detres.Predictor(BASE, opts=SMALL, model=predictor.model, class_names=NAMES, image_format="RGB")
    assert_same(rgb_predictor(np.ascontiguousarray(bgr[:, :, ::-1])), out)
    with pytest.raises(TypeError, match="uint8"):
        predictor(bgr.astype(np.float32))


def test_test_time_options_apply(checkpoint, image_file):
    predictor = detres.Predictor(BASE, weights=checkpoint, opts=SMALL + ["TEST.FLIP", "True"])
    inputs = DetectionDatasetMapper.from_config(predictor.cfg, is_train=False)(
        {"file_name": str(image_file), "height": 96, "width": 120, "image_id": 0})
    with torch.no_grad():
        flipped = build_test_time_model(predictor.cfg, predictor.model)([inputs])[0]
        plain = predictor.model([inputs])[0]
    out = predictor(str(image_file))
    assert torch.equal(out["boxes"], flipped["boxes"]) and torch.equal(out["scores"], flipped["scores"])
    assert not torch.equal(out["scores"], plain["scores"])


def test_create_detector_loads_the_weights_of_a_shipped_config(tmp_path):
    opts = ["MODEL.DEVICE", "cpu"]
    torch.manual_seed(1)
    trained = build_model(load_config(str(CONFIG_DIR / "quickstart.yaml"), opts))
    path = Checkpointer(trained, str(tmp_path)).save("model_final", iteration=1)
    detector = detres.create_detector("quickstart", weights=path, opts=opts)
    assert isinstance(detector, FasterRCNN) and not detector.training
    assert detector.roi_heads.num_classes == 6
    state, expected = detector.state_dict(), trained.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_config_names_resolve_to_shipped_files_or_a_clear_error(tmp_path):
    assert find_config("quickstart") == (CONFIG_DIR / "quickstart.yaml").resolve()
    assert find_config("faster_rcnn_R_50_C4_1x") == (CONFIG_DIR / "detection" / "faster_rcnn_R_50_C4_1x.yaml").resolve()
    assert find_config("frcnn_r50_coco.yaml") == (CONFIG_DIR / "frcnn_r50_coco.yaml").resolve()
    own = tmp_path / "mine.yaml"
    own.write_text('_BASE_: "%s"\n' % BASE)
    assert find_config(str(own)) == own
    with pytest.raises(ConfigError, match="neither a file nor a shipped config name.*quickstart"):
        find_config("faster_rcnn_R_9000")
    with pytest.raises(ConfigError, match="FasterRCNN.*ImageClassifier.*create_model"):
        detres.create_detector("quickstart_cls")


def test_class_names_fall_back_to_the_dataset_then_to_numbers(tmp_path, caplog):
    cfg = load_config(BASE, ["DATASETS.ROOT", str(tmp_path), "DATASETS.TRAIN", "('synthetic_det_train',)",
                             "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "6"])
    shapes = ["circle", "square", "triangle", "ellipse", "cross", "star"]
    assert resolve_class_names(cfg, ["a", "b", "c", "d", "e", "f"]) == ["a", "b", "c", "d", "e", "f"]
    assert resolve_class_names(cfg, ["a", "b"]) == shapes  # recorded names of another count are not used
    assert resolve_class_names(cfg, None) == shapes
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    assert resolve_class_names(cfg, None) is None

    with caplog.at_level(logging.WARNING, logger="detres"):
        predictor = detres.Predictor(BASE, opts=SMALL)  # random weights, no dataset: numbers
    assert "MODEL.WEIGHTS is empty" in caplog.text and "by class index" in caplog.text
    out = predictor(np.zeros((64, 80, 3), np.uint8))
    assert predictor.class_names is None and out["class_names"] == [f"class {c}" for c in out["classes"]]
