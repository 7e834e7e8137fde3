"""The per-class RPN of the paper's ImageNet localization (Appendix C): per-class outputs, losses that
touch only the ground-truth class, the 8-anchor 1:1 sampling, and per-class box inference."""
import math

import pytest
import torch

from detres.config import get_cfg
from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY
from detres.modeling.proposal_generator.per_class_rpn import PerClassRPN, select_per_class
from detres.utils.events import EventStorage

NUM_CLASSES = 4


def _rpn(channels: int = 8, stride: int = 32, **overrides) -> PerClassRPN:
    cfg = get_cfg()
    cfg.merge_from_dict({"MODEL": {"CLASSIFIER": {"NUM_CLASSES": NUM_CLASSES},
                                   "PER_CLASS_RPN": {"HEAD_CHANNELS": 16, **overrides}}})
    torch.manual_seed(0)
    return PerClassRPN(cfg, {"res5": ShapeSpec(channels, stride)})


def _zero_head(rpn: PerClassRPN) -> None:
    for p in rpn.head.parameters():
        torch.nn.init.zeros_(p)


def test_registered_and_per_class_output_layout():
    assert PROPOSAL_GENERATOR_REGISTRY.get("PerClassRPN") is PerClassRPN
    rpn = _rpn()
    assert rpn.head.cls.out_channels == 9 * NUM_CLASSES and rpn.head.reg.out_channels == 9 * NUM_CLASSES * 4
    logits, deltas, anchors = rpn.predictions({"res5": torch.randn(2, 8, 3, 5)})
    assert logits.shape == (2, NUM_CLASSES, 9, 3, 5) and deltas.shape == (2, NUM_CLASSES, 9, 4, 3, 5)
    assert anchors.shape == (3 * 5 * 9, 4)
    # class-major channels: cls channel c * A + a is class c, anchor a
    raw = rpn.head.cls(torch.relu(rpn.head.conv(torch.ones(1, 8, 1, 1))))[0, :, 0, 0]
    torch.testing.assert_close(rpn.head(torch.ones(1, 8, 1, 1))[0][0, 2, 7, 0, 0], raw[2 * 9 + 7])
    # anchors centred in their cells (offset 0.5): cell (0, 0) of stride 32 is centred at (16, 16)
    torch.testing.assert_close(anchors[4], torch.tensor([-48.0, -48.0, 80.0, 80.0]))  # size 128, ratio 1
    without_conv = _rpn(HEAD_CONV=False)
    assert without_conv.head.conv is None and without_conv.head.cls.in_channels == 8


def test_losses_touch_only_the_ground_truth_class():
    rpn = _rpn().train()
    features = {"res5": torch.randn(2, 8, 7, 7, requires_grad=True)}
    labels = torch.tensor([1, 3])
    gt_boxes = [torch.tensor([[20.0, 30.0, 180.0, 200.0]]), torch.tensor([[0.0, 0.0, 100.0, 120.0],
                                                                            [120.0, 100.0, 224.0, 224.0]])]
    with EventStorage() as storage:
        losses = rpn.losses(features, labels, gt_boxes)
    assert set(losses) == {"loss_loc_cls", "loss_loc_reg"}
    latest = storage.latest()
    assert latest["loc/num_pos_anchors"][0] + latest["loc/num_neg_anchors"][0] == 8.0  # 8 sampled per image
    (losses["loss_loc_cls"] + losses["loss_loc_reg"]).backward()
    cls_grad = rpn.head.cls.weight.grad.view(NUM_CLASSES, 9, -1)
    reg_grad = rpn.head.reg.weight.grad.view(NUM_CLASSES, 9, 4, -1)
    for c in range(NUM_CLASSES):
        touched = c in labels.tolist()
        assert (cls_grad[c].abs().sum() > 0) == touched and (reg_grad[c].abs().sum() > 0) == touched
        if not touched:  # exactly zero, biases included
            assert cls_grad[c].abs().max() == 0 and reg_grad[c].abs().max() == 0
            assert rpn.head.cls.bias.grad.view(NUM_CLASSES, 9)[c].abs().max() == 0
            assert rpn.head.reg.bias.grad.view(NUM_CLASSES, 9, 4)[c].abs().max() == 0
    assert rpn.head.conv.weight.grad.abs().sum() > 0 and features["res5"].grad.abs().sum() > 0


def test_loss_values_of_a_known_match():
    # a 2x2 map of stride 32, one anchor per cell: [0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64], [32, 32, 64, 64]
    rpn = _rpn(ANCHOR_SIZES=[32], ANCHOR_ASPECT_RATIOS=[1.0]).train()
    _zero_head(rpn)
    features = {"res5": torch.randn(1, 8, 2, 2)}
    # IoU 2/3 with anchor 0 (positive as the box's best anchor), 1/4 with anchor 2 and 0 with the others
    losses = rpn.losses(features, torch.tensor([2]), [torch.tensor([[0.0, 0.0, 32.0, 48.0]])])
    # 1 positive + 3 negatives sampled, every logit 0: 4 log(2) / 8
    assert losses["loss_loc_cls"].item() == pytest.approx(4 * math.log(2) / 8, rel=1e-6)
    # target deltas (0, 0.25, 0, log 1.5) against 0, smooth L1 with beta 1/9, divided by 8
    beta = 0.1111
    expected = ((0.25 - beta / 2) + (math.log(1.5) - beta / 2)) / 8
    assert losses["loss_loc_reg"].item() == pytest.approx(expected, rel=1e-5)
    # an image without a box in its crop: negatives only, no regression
    losses = rpn.losses(features, torch.tensor([2]), [torch.zeros(0, 4)])
    assert losses["loss_loc_cls"].item() == pytest.approx(4 * math.log(2) / 8, rel=1e-6)
    assert losses["loss_loc_reg"].item() == 0.0


def test_eight_anchors_sampled_one_to_one_when_possible():
    rpn = _rpn()
    anchors = rpn.anchor_generator([torch.zeros(1, 8, 7, 7)])[0]  # 441 anchors on a 224 crop
    torch.manual_seed(1)
    many = torch.tensor([[16.0, 16.0, 208.0, 208.0]])  # several anchors with IoU >= 0.7
    one = torch.tensor([[100.0, 100.0, 140.0, 150.0]])  # only its best anchor is positive
    labels, matched = rpn.label_and_sample_anchors(anchors, [many, one, torch.zeros(0, 4)])
    counts = [((row == 1).sum().item(), (row == 0).sum().item()) for row in labels]
    assert counts == [(4, 4), (1, 7), (0, 8)]
    torch.testing.assert_close(matched[0][labels[0] == 1], many.expand(4, 4))
    assert matched[2].abs().max() == 0


def test_inference_decodes_the_best_anchor_of_the_requested_class():
    rpn = _rpn(channels=1, HEAD_CONV=False, ANCHOR_SIZES=[64], ANCHOR_ASPECT_RATIOS=[1.0], POST_NMS_TOPK_TEST=3).eval()
    _zero_head(rpn)
    with torch.no_grad():
        # class 2: logit 5 at the one active cell; deltas (0.5, 0, log 2, 0) there: shift right by half a
        # width and double the width
        rpn.head.cls.weight[2, 0, 0, 0] = 5.0
        rpn.head.reg.weight[2 * 4: 2 * 4 + 4, 0, 0, 0] = torch.tensor([0.5, 0.0, math.log(2.0), 0.0])
    feature = torch.zeros(1, 1, 4, 5)
    feature[0, 0, 1, 3] = 1.0  # cell (row 1, column 3): anchor centre (112, 48), box [80, 16, 144, 80]
    results = rpn.inference({"res5": feature}, [(128, 150)], [torch.tensor([2, 0])])
    boxes, scores, classes = results[0]["boxes"], results[0]["scores"], results[0]["classes"]
    assert classes.tolist() == [0, 0, 0, 2, 2, 2]  # grouped by class, at most POST_NMS_TOPK_TEST each
    # centre 112 + 32 = 144, width 128: [80, 16, 208, 80] clipped to the 150-pixel-wide input
    torch.testing.assert_close(boxes[3], torch.tensor([80.0, 16.0, 150.0, 80.0]))
    assert scores[3].item() == pytest.approx(1 / (1 + math.exp(-5.0)), rel=1e-6)
    assert scores[4].item() == pytest.approx(0.5) and scores[0].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"classes to localize must lie in \[0, 4\), got \[7\]"):
        rpn.inference({"res5": feature}, [(128, 150)], [torch.tensor([7])])


def test_select_per_class_keeps_at_most_the_limit_per_class_best_first():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95, 0.1])
    classes = torch.tensor([3, 3, 3, 3, 1])
    keep = select_per_class(boxes, scores, classes, nms_thresh=0.7, limit=2)
    # class 1 first; in class 3 box 1 is suppressed by box 0 (IoU 0.91), then the two best of 3, 0, 2
    assert keep.tolist() == [4, 3, 0]
    assert select_per_class(boxes[:0], scores[:0], classes[:0], 0.7, 2).numel() == 0
