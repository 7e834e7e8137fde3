"""Overfitting check on real COCO images: a C4 Faster R-CNN from random initialisation (no ImageNet
weights) trained on a handful of coco128 images learns them: the losses fall and AP50 on those same
images, measured with pycocotools, rises well above zero."""
import time

import pytest
import torch

from detres.config import load_config
from detres.data.build import register_from_config
from detres.data.detection.loader import get_detection_records
from detres.data.detection.mapper import DetectionDatasetMapper
from detres.evaluation.coco_evaluation import COCOEvaluator
from detres.modeling.meta_arch.build import build_model
from detres.utils.events import EventStorage

# The first four coco128 images (by id) with at most three boxes, none crowd, each of area > 5000 px:
# 2 + 1 + 2 + 1 objects of 5 categories (dining table, vase, giraffe, umbrella, person, bear).
IMAGE_IDS = [30, 34, 36, 42]
ITERATIONS = 120


@pytest.fixture
def coco128_cfg(coco128_dir):
    cfg = load_config("configs/detection/Base-RCNN-C4.yaml", [
        "MODEL.DEVICE", "cpu",
        "MODEL.PIXEL_STD", [57.375, 57.12, 58.395],  # unit-scale inputs for the randomly initialised trunk
        "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.RESNETS.DEPTH", 18,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 500,
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 128,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 500,
        "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 6,
        "INPUT.MIN_SIZE_TEST", 160,
        "INPUT.MAX_SIZE_TEST", 240,
        "DATASETS.REGISTER", [["coco128", str(coco128_dir / "annotations" / "instances_val2017.json"),
                               str(coco128_dir / "val2017")]],
    ])
    register_from_config(cfg)
    return cfg


def test_random_init_detector_overfits_four_coco_images(coco128_cfg):
    cfg = coco128_cfg
    records = [r for r in get_detection_records(["coco128"], filter_empty=True) if r["image_id"] in IMAGE_IDS]
    assert sorted(r["image_id"] for r in records) == IMAGE_IDS
    mapper = DetectionDatasetMapper.from_config(cfg, is_train=False)  # fixed size, no flip: memorise exactly
    inputs = [mapper(r) for r in records]
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start, history = time.perf_counter(), []
    with EventStorage():
        for _ in range(ITERATIONS):
            losses = model(inputs)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            history.append({k: v.item() for k, v in losses.items()})

    model.eval()
    evaluator = COCOEvaluator(None, "coco128")
    with torch.inference_mode():
        evaluator.process(inputs, model(inputs))
    ap50 = evaluator.evaluate()["bbox"]["AP50"]

    def mean(key, part):
        return sum(h[key] for h in part) / len(part)
    first, last = history[:10], history[-10:]
    print({k: f"{mean(k, first):.3f} -> {mean(k, last):.3f}" for k in history[0]},
          f"AP50 {ap50:.1f}, {time.perf_counter() - start:.1f} s")
    for key in ("loss_rpn_cls", "loss_cls"):
        assert mean(key, last) < 0.5 * mean(key, first), key
    total = [sum(h.values()) for h in history]
    assert sum(total[-10:]) < 0.5 * sum(total[:10])
    assert ap50 > 50.0  # percent; 100.0 measured (19 s), ~0 untrained
