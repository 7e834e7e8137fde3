"""ClassificationEvaluator: exact top-1 / top-5 errors from known scores, and end to end with the
ten-crop and multi-scale test views of a tiny model."""
import json

import pytest
import torch

from detres.config import get_cfg
from detres.data.build import build_test_loader, register_from_config
from detres.evaluation.build import build_evaluator
from detres.evaluation.classification import ClassificationEvaluator, topk_correct
from detres.evaluation.evaluator import inference_on_dataset
from detres.modeling.meta_arch.build import build_model


def _inputs(labels):
    return [{"label": label} for label in labels]


def test_known_scores_give_exact_errors(tmp_path):
    # 7 classes; the label's rank in each row: 1st, 3rd, 6th, 1st | 2nd, 7th, 5th, 5th
    scores = torch.tensor(
        [
            [0.90, 0.05, 0.02, 0.01, 0.01, 0.005, 0.005],  # label 0: rank 1
            [0.30, 0.25, 0.20, 0.10, 0.08, 0.04, 0.03],  # label 2: rank 3
            [0.30, 0.25, 0.20, 0.10, 0.08, 0.04, 0.03],  # label 5: rank 6
            [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.79],  # label 6: rank 1
        ]
    )
    more = torch.tensor(
        [
            [0.10, 0.50, 0.20, 0.05, 0.05, 0.05, 0.05],  # label 0: rank 3 (0.20, 0.50 above)
            [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.79],  # label 0: rank 7
            [0.30, 0.25, 0.20, 0.10, 0.08, 0.04, 0.03],  # label 4: rank 5
            [0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.67],  # label 2: rank 5
        ]
    )
    assert topk_correct(scores, torch.tensor([0, 2, 5, 6])) == [2, 3]
    evaluator = ClassificationEvaluator(get_cfg(), "toy", str(tmp_path))
    evaluator.process(_inputs([0, 2, 5, 6]), scores)
    evaluator.process(_inputs([0, 0, 4, 2]), more)
    results = evaluator.evaluate()
    # top-1 right: 2 of 8; top-5 right: ranks 1,3,1,3,5,5 -> 6 of 8
    assert results == {"top1_error": 75.0, "top5_error": 25.0}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["num_images"] == 8 and saved["top1_error"] == 75.0
    evaluator.reset()
    evaluator.process(_inputs([1, 1]), torch.tensor([[0.2, 0.8], [0.6, 0.4]]))  # fewer classes than 5
    assert evaluator.evaluate() == {"top1_error": 50.0, "top5_error": 0.0}
    evaluator.reset()
    with pytest.raises(RuntimeError, match="no images"):
        evaluator.evaluate()
    with pytest.raises(ValueError, match="score rows"):
        evaluator.process(_inputs([0, 1]), scores)


def _tiny_setup(mode):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "cifar_resnet"
    cfg.MODEL.CIFAR_RESNETS.DEPTH = 8
    cfg.MODEL.CIFAR_RESNETS.WIDTHS = [8, 16, 32]
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 10
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 12
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.TEST.IMS_PER_BATCH = 5
    cfg.TEST.CLS_MODE = mode
    cfg.TEST.MULTI_SCALE_SIZES = (24, 32, 40)
    torch.manual_seed(0)
    model = build_model(cfg)
    for m in model.modules():  # BN statistics of the data, and a classifier wide enough for distinct scores
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    register_from_config(cfg)
    calibration = cfg.clone()
    calibration.TEST.CLS_MODE = "center"
    with torch.no_grad():
        batch = next(iter(build_test_loader(calibration, "synthetic_cls_val")))
        model.backbone(model.normalize(torch.stack([x["image"] for x in batch])))
        model.backbone.linear.weight.normal_(0, 1.0)
    return cfg, model.eval()


@pytest.mark.parametrize("mode", ["center", "ten_crop", "multi_scale"])
def test_views_end_to_end(mode):
    cfg, model = _tiny_setup(mode)
    loader = build_test_loader(cfg, "synthetic_cls_val")
    evaluator = build_evaluator(cfg, "synthetic_cls_val")
    assert isinstance(evaluator, ClassificationEvaluator)
    results = inference_on_dataset(model, loader, evaluator)
    # the same numbers by hand: softmax of every view separately, averaged per image
    scores, labels = [], []
    with torch.no_grad():
        for batch in loader:
            for x in batch:
                views = list(x["image"]) if mode != "center" else [x["image"]]
                expected_views = {"center": 1, "ten_crop": 10, "multi_scale": 3}[mode]
                assert len(views) == expected_views
                probs = [torch.softmax(model.backbone(model.normalize(v[None]))["linear"], 1) for v in views]
                scores.append(torch.cat(probs).mean(0))
                labels.append(x["label"])
    top1, top5 = topk_correct(torch.stack(scores), torch.tensor(labels))
    assert results["top1_error"] == pytest.approx(100 * (1 - top1 / 12))
    assert results["top5_error"] == pytest.approx(100 * (1 - top5 / 12))
    assert 0 < results["top5_error"] < results["top1_error"] < 100
