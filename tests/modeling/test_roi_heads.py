import math

import pytest
import torch
from torch.nn import functional as F

from detres.config import get_cfg
from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.backbone.blocks import BasicBlock, BottleneckBlock
from detres.modeling.box_coder import BoxCoder
from detres.modeling.roi_heads import build_roi_heads
from detres.modeling.roi_heads.box_predictor import BoxPredictor
from detres.utils.events import EventStorage

IMAGE_SIZES = [(128, 192), (256, 160)]
NUM_CLASSES = 5


def _cfg(depth: int, res2_out: int = 64):
    cfg = get_cfg()
    cfg.merge_from_file("configs/detection/Base-RCNN-C4.yaml")
    cfg.merge_from_dict(
        {
            "MODEL": {
                "RESNETS": {"DEPTH": depth, "WIDTH_PER_GROUP": 16, "RES2_OUT_CHANNELS": res2_out},
                "ROI_HEADS": {"NUM_CLASSES": NUM_CLASSES, "BATCH_SIZE_PER_IMAGE": 16, "SCORE_THRESH_TEST": 0.0},
            }
        }
    )
    return cfg


def _inputs(channels: int = 256):
    g = torch.Generator().manual_seed(0)
    features = {"res4": torch.rand(2, channels, 16, 16, generator=g)}
    proposals = []
    for h, w in IMAGE_SIZES:
        xy = torch.rand(12, 2, generator=g) * torch.tensor([w / 2, h / 2])
        wh = torch.rand(12, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 8
        proposals.append({"boxes": torch.cat([xy, xy + wh], 1), "logits": torch.zeros(12)})
    targets = [
        {
            "gt_boxes": torch.tensor([[10.0, 10.0, 90.0, 100.0], [100.0, 20.0, 180.0, 60.0]]),
            "gt_classes": torch.tensor([1, 4]),
        },
        {"gt_boxes": torch.zeros(0, 4), "gt_classes": torch.zeros(0, dtype=torch.int64)},
    ]
    return features, proposals, targets


# Narrow widths keep the CPU test fast: R18 with res2 32 channels (res4 128, res5 256); R50 with
# bottleneck width 16 (res4 256, res5 512 = 8 x RES2_OUT_CHANNELS).
@pytest.mark.parametrize("depth,res2_out,block,channels", [(18, 32, BasicBlock, 256), (50, 64, BottleneckBlock, 512)])
def test_res5_head_train_and_inference(depth, res2_out, block, channels):
    torch.manual_seed(0)
    heads = build_roi_heads(_cfg(depth, res2_out), {"res4": ShapeSpec(channels // 2, 16)})
    assert len(heads.res5) == (2 if depth == 18 else 3)
    assert all(isinstance(b, block) for b in heads.res5) and heads.res5[0].stride == 2
    assert heads.box_predictor.cls_score.out_features == NUM_CLASSES + 1
    assert heads.box_predictor.bbox_pred.out_features == NUM_CLASSES * 4
    assert heads.box_predictor.cls_score.in_features == channels
    features, proposals, targets = _inputs(channels // 2)

    heads.train()
    torch.manual_seed(1)
    with EventStorage() as storage:
        results, losses = heads(IMAGE_SIZES, features, proposals, targets)
    assert results == [] and set(losses) == {"loss_cls", "loss_box_reg"}
    # The same sampling, redone by hand: loss_cls is the mean cross-entropy over all sampled regions.
    torch.manual_seed(1)
    boxes, classes, _ = heads.label_and_sample_proposals(proposals, targets)
    with torch.no_grad():
        logits = heads.box_predictor.cls_score(heads.box_features(features["res4"], boxes))
    expected = F.cross_entropy(logits, torch.cat(classes))
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0.5 < losses["loss_cls"].item() / math.log(NUM_CLASSES + 1) < 1.5  # near-uniform at init
    assert torch.isfinite(losses["loss_box_reg"]) and losses["loss_box_reg"].item() > 0
    num_fg, num_bg = storage.latest()["roi_head/num_fg_samples"][0], storage.latest()["roi_head/num_bg_samples"][0]
    assert 0 < num_fg <= 16 * 0.25 and num_fg + num_bg <= 16
    assert num_bg >= 6  # the image without ground truth alone gives 12 background regions (mean over 2 images)
    sum(losses.values()).backward()
    assert heads.res5[0].conv1.conv.weight.grad.abs().sum() > 0

    heads.eval()
    with torch.no_grad():
        results, losses = heads(IMAGE_SIZES, features, proposals)
    assert losses == {} and len(results) == 2
    for r, (h, w) in zip(results, IMAGE_SIZES):
        assert 0 < len(r["boxes"]) <= 100
        assert r["classes"].dtype == torch.int64 and r["classes"].min() >= 0 and r["classes"].max() < NUM_CLASSES
        assert (r["scores"][:-1] >= r["scores"][1:]).all()
        assert (r["boxes"][:, 2] <= w).all() and (r["boxes"][:, 3] <= h).all() and (r["boxes"] >= 0).all()


def test_label_and_sample_appends_gt_and_ignores_crowd():
    cfg = _cfg(18)
    heads = build_roi_heads(cfg, {"res4": ShapeSpec(256, 16)}).train()
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    proposal_boxes = torch.tensor([[12.0, 10.0, 50.0, 50.0], [100.0, 100.0, 120.0, 120.0], [60.0, 60.0, 80.0, 80.0]])
    proposals = [{"boxes": proposal_boxes}]
    crowd = torch.tensor([[95.0, 95.0, 125.0, 125.0]])
    targets = [{"gt_boxes": gt, "gt_classes": torch.tensor([3]), "crowd_boxes": crowd}]
    boxes, classes, matched = heads.label_and_sample_proposals(proposals, targets)
    # 2 foreground (the overlapping proposal and the appended gt), 1 background; the crowd one is ignored
    assert sorted(classes[0].tolist()) == [3, 3, NUM_CLASSES]
    fg = classes[0] == 3
    assert any(torch.equal(b, gt[0]) for b in boxes[0][fg])
    assert torch.equal(matched[0][fg], gt.expand(2, 4))
    assert not any(torch.equal(b, proposals[0]["boxes"][1]) for b in boxes[0])


def test_box_predictor_inference_rules():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    predictor = BoxPredictor(4, 3, coder, score_thresh=0.2, nms_thresh=0.5, detections_per_image=2)
    # logits favour class 0 for region 0 and class 2 for region 1 (region 1 duplicates region 0's box)
    scores = torch.tensor([[4.0, 0.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]]).log_softmax(1)
    deltas = torch.zeros(3, 12)
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0], [1.0, 1.0, 21.0, 21.0]])]
    (out,) = predictor.inference((scores, deltas), proposals, [(30, 30)])
    # region 2 (class 0) is suppressed by region 0; classes 0 and 2 are kept, at most 2 detections
    assert out["classes"].tolist() == [0, 2]
    assert out["boxes"].tolist() == [[0.0, 0.0, 20.0, 20.0], [0.0, 0.0, 20.0, 20.0]]
    assert out["scores"][0].item() == pytest.approx(torch.tensor([4.0, 0, 0, 0]).softmax(0)[0].item())


def test_class_agnostic_regression():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    predictor = BoxPredictor(4, 3, coder, cls_agnostic_bbox_reg=True, score_thresh=0.1)
    assert predictor.bbox_pred.out_features == 4
    scores = torch.tensor([[2.0, 2.0, 0.0, 0.0]])  # two classes above threshold share one box
    deltas = torch.tensor([[10.0, 0.0, 0.0, 0.0]])  # shift right by one box width
    (out,) = predictor.inference((scores, deltas), [torch.tensor([[0.0, 0.0, 10.0, 10.0]])], [(50, 50)])
    assert sorted(out["classes"].tolist()) == [0, 1]
    assert out["boxes"].tolist() == [[10.0, 0.0, 20.0, 10.0]] * 2
    losses = predictor.losses(
        (scores, deltas), torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1]), torch.tensor([[10.0, 0.0, 20.0, 10.0]])
    )
    assert losses["loss_box_reg"].item() == pytest.approx(0.0, abs=1e-6)  # the deltas hit the target exactly
    assert losses["loss_cls"].item() == pytest.approx(-torch.tensor([2.0, 2.0, 0.0, 0.0]).log_softmax(0)[1].item())


@pytest.mark.parametrize("options", [{}, {"BOX_REFINEMENT": {"ENABLED": True}}])
def test_a_batch_without_proposals_gives_empty_detections(options):
    cfg = _cfg(18, 32)
    cfg.merge_from_dict({"MODEL": {"ROI_HEADS": options}})
    heads = build_roi_heads(cfg, {"res4": ShapeSpec(128, 16)}).eval()
    features, _, _ = _inputs(128)
    empty = [{"boxes": torch.zeros(0, 4), "logits": torch.zeros(0)} for _ in IMAGE_SIZES]
    with torch.no_grad():
        detections, _ = heads(IMAGE_SIZES, features, empty)
    assert [len(d["boxes"]) for d in detections] == [0, 0]
    assert detections[0]["boxes"].shape == (0, 4) and detections[0]["classes"].dtype == torch.int64
