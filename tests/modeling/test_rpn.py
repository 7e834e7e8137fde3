import math

import pytest
import torch
from torchvision.ops import box_iou

from detres.config import get_cfg
from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.proposal_generator import build_proposal_generator
from detres.utils.events import EventStorage

IMAGE_SIZES = [(128, 160), (112, 150)]
SHAPE = {"res4": ShapeSpec(32, 16)}


def _rpn(**rpn_overrides):
    cfg = get_cfg()
    cfg.merge_from_dict({"MODEL": {"RPN": {"POST_NMS_TOPK_TRAIN": 50, "POST_NMS_TOPK_TEST": 40, **rpn_overrides}}})
    torch.manual_seed(0)
    return build_proposal_generator(cfg, SHAPE)


def _features():
    return {"res4": torch.randn(2, 32, 8, 10, generator=torch.Generator().manual_seed(0))}


def _targets():
    return [
        {"gt_boxes": torch.tensor([[10.0, 20.0, 90.0, 100.0], [100.0, 30.0, 150.0, 60.0]])},
        {"gt_boxes": torch.tensor([[40.0, 40.0, 72.0, 72.0]])},
    ]


def test_parameter_names():
    assert sorted(_rpn().state_dict()) == [
        f"rpn_head.{layer}.{p}" for layer in ("anchor_deltas", "conv", "objectness_logits") for p in ("bias", "weight")
    ]
    assert _rpn().rpn_head.anchor_deltas.out_channels == 60


def test_training_losses_finite_and_normalised():
    rpn = _rpn().train()
    with EventStorage() as storage:
        proposals, losses = rpn(IMAGE_SIZES, _features(), _targets())
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) and v.item() > 0 for v in losses.values())
    assert storage.latest()["rpn/num_pos_anchors"][0] > 0
    assert [len(p["boxes"]) for p in proposals] == [50, 50]
    losses["loss_rpn_cls"].backward()
    assert rpn.rpn_head.conv.weight.grad.abs().sum() > 0

    # All-zero head: every logit is 0, so each of the 256 sampled anchors per image costs log(2).
    for p in rpn.rpn_head.parameters():
        torch.nn.init.zeros_(p)
    _, losses = rpn(IMAGE_SIZES, _features(), _targets())
    assert losses["loss_rpn_cls"].item() == pytest.approx(math.log(2), rel=1e-5)


def test_anchor_labels_respect_boundary_and_crowd():
    rpn = _rpn(BOUNDARY_THRESH=0).train()
    anchors = torch.cat(rpn.anchor_generator([_features()["res4"]]))
    targets = _targets()
    targets[1]["crowd_boxes"] = torch.tensor([[0.0, 0.0, 150.0, 112.0]])  # the whole second image
    labels, matched = rpn.label_and_sample_anchors(anchors, IMAGE_SIZES, targets)
    assert labels.shape == (2, 8 * 10 * 15) and matched.shape == (2, 8 * 10 * 15, 4)
    used = labels[0] >= 0
    inside = (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] < 160) & (anchors[:, 3] < 128)
    assert used.sum() > 0 and inside[used].all()
    assert (labels[0] == 1).sum() <= 128 and used.sum() <= 256
    pos = labels[0] == 1
    iou = box_iou(anchors[pos], targets[0]["gt_boxes"]).max(dim=1).values
    assert iou.min() > 0.3  # positives are >= 0.7 or best-for-a-gt matches
    # second image: every in-image anchor lies inside the crowd region -> nothing is sampled
    assert (labels[1] >= 0).sum() == 0


def test_inference_proposals():
    rpn = _rpn().eval()
    proposals, losses = rpn(IMAGE_SIZES, _features())
    assert losses == {}
    for props, (h, w) in zip(proposals, IMAGE_SIZES):
        boxes, logits = props["boxes"], props["logits"]
        assert len(boxes) == 40 and logits.shape == (40,)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()
        assert (logits[:-1] >= logits[1:]).all()  # best first
        iou = box_iou(boxes, boxes).fill_diagonal_(0)
        assert iou.max() <= 0.7 + 1e-6  # NMS at 0.7


def test_pre_nms_topk_limits_candidates():
    proposals, _ = _rpn(PRE_NMS_TOPK_TEST=5).eval()(IMAGE_SIZES, _features())
    assert all(len(p["boxes"]) <= 5 for p in proposals)


def test_l1_loss_type_and_errors():
    rpn = _rpn(BBOX_REG_LOSS_TYPE="l1", SMOOTH_L1_BETA=0.5).train()
    _, losses = rpn(IMAGE_SIZES, _features(), _targets())
    assert torch.isfinite(losses["loss_rpn_loc"])
    with pytest.raises(ValueError, match="needs targets"):
        rpn(IMAGE_SIZES, _features())
    cfg = get_cfg()
    cfg.MODEL.RPN.IN_FEATURES = ["res5"]
    with pytest.raises(ValueError, match="res5"):
        build_proposal_generator(cfg, SHAPE)
