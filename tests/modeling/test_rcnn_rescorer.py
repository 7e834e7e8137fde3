"""RCNNRescorer (paper, Appendix C): crop + warp of regions, labels and sampling, losses on the
ground-truth class only, rescoring with known deltas, the frozen localizer kept out of the state dict,
and a classifier checkpoint filling the trunk."""
import math

import pytest
import torch
from torchvision.ops import box_iou

from detres.config import ConfigError, get_cfg
from detres.modeling.box_coder import BoxCoder
from detres.modeling.meta_arch.build import build_model
from detres.modeling.meta_arch.rcnn_rescorer import RCNNRescorer, context_boxes, warp_regions
from detres.modeling.weight_import import load_weights
from detres.utils.events import EventStorage

NUM_CLASSES = 3


def tiny_cfg(**rescorer):
    """A ResNet-18 trunk with 8 stem / res2 channels, 3 classes, 32-pixel regions, identity normalisation."""
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "RCNNRescorer"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    cfg.MODEL.RESNETS.merge_from_dict({"DEPTH": 18, "STEM_OUT_CHANNELS": 8, "RES2_OUT_CHANNELS": 8})
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = NUM_CLASSES
    cfg.INPUT.CLS.PER_PIXEL_MEAN = False
    cfg.MODEL.RESCORER.merge_from_dict({"INPUT_SIZE": 32, "BATCH_SIZE_PER_IMAGE": 16, **rescorer})
    return cfg


def tiny_model(**rescorer) -> RCNNRescorer:
    torch.manual_seed(0)
    return build_model(tiny_cfg(**rescorer))


def image(h=64, w=80, seed=0):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ---------------------------------------------------------------------------- crop + warp
def test_warping_the_box_of_a_uniform_rectangle_gives_its_colour_everywhere():
    img = torch.zeros(3, 60, 90)
    colour = torch.tensor([10.0, 200.0, 55.0])
    img[:, 12:44, 24:88] = colour[:, None, None]  # 64 x 32 pixels
    for size in (8, 16, 32):  # shrinking by integer factors: every sample lies inside the rectangle
        warped = warp_regions(img, torch.tensor([[24.0, 12.0, 88.0, 44.0]]), size)
        assert warped.shape == (1, 3, size, size)
        torch.testing.assert_close(warped[0], colour[:, None, None].expand(3, size, size), atol=1e-4, rtol=0)
    # Any box at least half a pixel inside the rectangle, at any size. (Bilinear samples closer than half
    # a pixel to the box's edge blend in the pixels just outside, as with any pixel-centred interpolation.)
    for box, size in (([24.5, 12.5, 87.5, 43.5], 100), ([30.2, 20.7, 51.9, 33.1], 7), ([40.0, 15.0, 41.0, 16.0], 5)):
        warped = warp_regions(img, torch.tensor([box]), size)
        torch.testing.assert_close(warped[0], colour[:, None, None].expand(3, size, size), atol=1e-4, rtol=0)
    # at scale 1, the box half a pixel to the left: its first column samples halfway between the centres of
    # the black pixel 23 and the coloured pixel 24, the others the colour
    warped = warp_regions(img, torch.tensor([[23.5, 12.0, 55.5, 44.0]]), 32)[0]
    torch.testing.assert_close(warped[:, :, 0], colour[:, None].expand(3, 32) / 2, atol=1e-4, rtol=0)
    torch.testing.assert_close(warped[:, :, 1:], colour[:, None, None].expand(3, 32, 31), atol=1e-4, rtol=0)


def test_a_box_of_input_size_at_scale_one_reproduces_the_pixels():
    img = image(40, 50).float()
    model = tiny_model()
    warped = model.warp(model.normalized_image({"image": img}), torch.tensor([[7.0, 5.0, 39.0, 37.0]]))
    assert warped.shape == (1, 3, 32, 32)
    assert (warped[0] - img[:, 5:37, 7:39]).abs().max().item() < 1e-5


def test_context_pad_counts_pixels_of_the_warped_region():
    # p = 8 of 32 output pixels: the box fills the central 16, so it is grown by 32 / 16 = 2 about its centre
    boxes = torch.tensor([[10.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(context_boxes(boxes, 32, 8), torch.tensor([[0.0, 15.0, 40.0, 35.0]]))
    torch.testing.assert_close(context_boxes(boxes, 32, 0), boxes)
    # a 16-pixel box with p = 8 at 32 pixels: the warp is the 32-pixel crop around it, at scale 1
    img = image(50, 50, seed=1).float()
    warped = warp_regions(img, torch.tensor([[20.0, 12.0, 36.0, 28.0]]), 32, context_pad=8)
    assert (warped[0] - img[:, 4:36, 12:44]).abs().max().item() < 1e-5
    # more than a pixel outside the image the samples are 0 (the mean colour once normalised); within
    # one pixel roi_align repeats the border pixel
    warped = warp_regions(img, torch.tensor([[0.0, 0.0, 16.0, 16.0]]), 32, context_pad=8)
    assert warped[0, :, :7, :].abs().max().item() == 0.0 and warped[0, :, :, :7].abs().max().item() == 0.0
    assert (warped[0, :, 8:, 8:] - img[:, :24, :24]).abs().max().item() < 1e-5
    assert (warped[0, :, 7, 8:] - img[:, 0, :24]).abs().max().item() < 1e-5


def test_bad_context_pad_is_a_config_error():
    with pytest.raises(ValueError, match="CONTEXT_PAD"):
        tiny_model(CONTEXT_PAD=16)


# ---------------------------------------------------------------------------- labels and sampling
def test_regions_with_iou_at_least_half_are_the_class_and_sampling_keeps_a_quarter_positive():
    model = tiny_model()
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    near = torch.tensor([[0.0, 0.0, 50.0, 100.0]] * 4 + [[0.0, 0.0, 100.0, 60.0]] * 5)  # IoU 0.5 and 0.6
    just_below = torch.tensor([[0.0, 0.0, 49.0, 100.0]] * 3)  # IoU 0.49
    far = torch.tensor([[150.0, 150.0, 190.0, 190.0]] * 40)
    proposals = torch.cat([near, just_below, far])
    torch.manual_seed(1)
    boxes, classes, matched = model.label_and_sample({"label": 2, "gt_boxes": gt}, proposals)
    iou = box_iou(boxes, gt)[:, 0]
    assert len(boxes) == 16 and (classes == 2).sum() == 4 and (classes == NUM_CLASSES).sum() == 12
    assert (iou[classes == 2] >= 0.5).all() and (iou[classes == NUM_CLASSES] < 0.5).all()
    torch.testing.assert_close(matched[classes == 2], gt.expand(4, 4))
    # 10 candidates: the 9 near proposals and the appended ground truth
    counts = torch.zeros(len(proposals) + 1)
    for seed in range(40):
        torch.manual_seed(seed)
        b, c, _ = model.label_and_sample({"label": 2, "gt_boxes": gt}, proposals)
        assert (c == 2).sum() == 4
        counts += (box_iou(torch.cat([proposals, gt]), b[c == 2]) == 1).any(dim=1)
    assert counts[:9].min() > 0 and counts[-1] > 0 and counts[9:-1].sum() == 0


def test_few_positives_leave_room_for_negatives_and_no_ground_truth_means_background():
    model = tiny_model()
    proposals = torch.tensor([[150.0, 150.0, 190.0, 190.0]] * 30)
    boxes, classes, _ = model.label_and_sample({"label": 0, "gt_boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0]])},
                                               proposals)
    assert classes.tolist() == [0] + [NUM_CLASSES] * 15  # only the ground truth itself is positive
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 50.0, 50.0]))
    boxes, classes, matched = model.label_and_sample({"label": 0, "gt_boxes": torch.zeros(0, 4)}, proposals[:5])
    assert classes.tolist() == [NUM_CLASSES] * 5 and matched.abs().sum() == 0


@pytest.mark.parametrize("x, message", [
    ({"label": 3, "gt_boxes": torch.zeros(0, 4)}, r"img7: label 3 outside \[0, 3\)"),
    ({"label": 1}, "img7: training inputs need 'gt_boxes'"),
    ({"label": 1, "gt_boxes": torch.zeros(2, 5)}, r"img7: gt_boxes must be \(K, 4\)"),
])
def test_bad_training_inputs_name_the_image(x, message):
    with pytest.raises(ValueError, match=message):
        tiny_model().label_and_sample({"image_id": "img7", **x}, torch.zeros(0, 4))


# ---------------------------------------------------------------------------- losses
def training_inputs():
    gt = [torch.tensor([[8.0, 6.0, 50.0, 40.0]]), torch.tensor([[20.0, 10.0, 70.0, 60.0], [0.0, 0.0, 30.0, 30.0]])]
    jitter = torch.tensor([[2.0, -1.0, 3.0, 2.0], [-3.0, 2.0, -2.0, -4.0], [1.0, 1.0, -1.0, 1.0]])
    background = torch.tensor([[60.0, 44.0, 79.0, 63.0], [0.0, 40.0, 20.0, 63.0]]).repeat(4, 1)
    return [
        {"image": image(seed=i), "label": 1, "gt_boxes": g, "image_id": f"im{i}",
         "proposals": torch.cat([g[:1] + jitter, background])}
        for i, g in enumerate(gt)
    ]


def test_losses_match_a_manual_computation_and_touch_only_the_ground_truth_class():
    model = tiny_model(BATCH_SIZE_PER_IMAGE=8)
    model.backbone.eval()  # batch-independent norms, so that the regions can be recomputed one by one
    inputs = training_inputs()
    torch.manual_seed(3)
    with EventStorage() as storage:
        losses = model(inputs)
    assert set(losses) == {"loss_rescore_cls", "loss_rescore_reg"}
    assert storage.latest()["rescorer/num_fg_samples"][0] == 2.0  # 8 * 0.25 per image
    torch.manual_seed(3)
    samples = [model.label_and_sample(x, x["proposals"]) for x in inputs]
    logits, deltas = model.predict(torch.cat([model.warp(model.normalized_image(x), s[0])
                                              for x, s in zip(inputs, samples)]))
    boxes, classes, matched = (torch.cat(t) for t in zip(*samples))
    assert len(classes) == 16 and (classes == 1).sum() == 4
    expected_cls = torch.nn.functional.cross_entropy(logits, classes)
    fg = classes == 1
    target = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(boxes[fg], matched[fg])
    pred = deltas.view(-1, NUM_CLASSES, 4)[fg, 1]
    expected_reg = torch.nn.functional.smooth_l1_loss(pred, target, beta=1.0, reduction="sum") / 16
    assert expected_reg.item() > 0.01
    torch.testing.assert_close(losses["loss_rescore_cls"], expected_cls)
    torch.testing.assert_close(losses["loss_rescore_reg"], expected_reg)

    losses["loss_rescore_reg"].backward()
    grad = model.box_predictor.bbox_pred.weight.grad.view(NUM_CLASSES, 4, -1)
    assert grad[1].abs().sum() > 0
    assert grad[0].abs().max().item() == 0.0 and grad[2].abs().max().item() == 0.0
    assert model.box_predictor.cls_score.weight.grad is None


def test_training_needs_proposals_or_a_localizer():
    x = training_inputs()[0]
    del x["proposals"]
    with pytest.raises(ValueError, match="im0: no 'proposals' in the input and no localizer"):
        tiny_model()([x])


# ---------------------------------------------------------------------------- rescoring
def model_with_known_outputs() -> RCNNRescorer:
    """cls logits (0, log 2, log 3, 0) -> probabilities (1, 2, 3, 1) / 7; class deltas: 0 none,
    1 dx = 1 (x shifted by w / 10), 2 dw = 5 log 2 (width doubled)."""
    model = tiny_model(TEST_CHUNK=2).eval()
    with torch.no_grad():
        model.box_predictor.cls_score.weight.zero_()
        model.box_predictor.cls_score.bias.copy_(torch.tensor([0.0, math.log(2), math.log(3), 0.0]))
        model.box_predictor.bbox_pred.weight.zero_()
        bias = torch.zeros(NUM_CLASSES, 4)
        bias[1, 0], bias[2, 2] = 1.0, 5 * math.log(2)
        model.box_predictor.bbox_pred.bias.copy_(bias.flatten())
    return model


def test_rescore_gives_the_class_probability_and_the_box_refined_by_that_class():
    model = model_with_known_outputs()
    inputs = [{"image": image(64, 64)}, {"image": image(32, 48, seed=2)}]
    proposals = [torch.tensor([[10.0, 10.0, 30.0, 30.0]] * 3 + [[40.0, 40.0, 60.0, 60.0]]), torch.zeros(0, 4)]
    classes = [torch.tensor([0, 1, 2, 2]), torch.zeros(0, dtype=torch.int64)]
    scores, boxes = model.rescore(inputs, proposals, classes)
    torch.testing.assert_close(scores[0], torch.tensor([1.0, 2.0, 3.0, 3.0]) / 7)
    expected = torch.tensor([[10.0, 10.0, 30.0, 30.0],
                             [12.0, 10.0, 32.0, 30.0],
                             [0.0, 10.0, 40.0, 30.0],
                             [30.0, 40.0, 64.0, 60.0]])  # (30, 40, 70, 60) clipped to the 64-pixel image
    torch.testing.assert_close(boxes[0], expected)
    assert scores[1].shape == (0,) and boxes[1].shape == (0, 4)
    # the eval-mode forward is rescore per input
    outputs = model([{**x, "proposals": p, "proposal_classes": c} for x, p, c in zip(inputs, proposals, classes)])
    torch.testing.assert_close(outputs[0]["scores"], scores[0])
    torch.testing.assert_close(outputs[0]["boxes"], boxes[0])


def test_rescore_is_the_same_in_chunks_and_checks_its_classes():
    model = tiny_model(TEST_CHUNK=3).eval()
    x = {"image": image(), "image_id": "val5"}
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [10.0, 0.0, 79.0, 63.0], [30.0, 20.0, 50.0, 30.0]] * 3)
    classes = torch.tensor([0, 1, 2] * 3)
    chunked = model.rescore([x], [boxes], [classes])
    model.test_chunk = 100
    whole = model.rescore([x], [boxes], [classes])
    torch.testing.assert_close(chunked, whole)
    with pytest.raises(ValueError, match=r"val5: rescore needs one class in \[0, 3\)"):
        model.rescore([x], [boxes], [classes + 1])
    with pytest.raises(ValueError, match="val5: RCNNRescorer evaluates given proposals"):
        model([x])


# ---------------------------------------------------------------------------- the localizer
class FakeLocalizer(torch.nn.Module):
    """Gives the boxes it was made with for any class; records what it was asked."""

    def __init__(self, boxes: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(7))
        self.boxes = boxes
        self.calls = []

    def class_proposals(self, batched_inputs, classes, topk):
        self.calls.append(([x["image_id"] for x in batched_inputs], [c.tolist() for c in classes], topk,
                           self.training, torch.is_grad_enabled()))
        return [self.boxes[:topk] for _ in batched_inputs], [torch.zeros(topk) for _ in batched_inputs]


def test_the_attached_localizer_gives_training_proposals_and_is_not_part_of_the_model():
    model = tiny_model(PROPOSALS_PER_CLASS=2)
    keys, num_params = set(model.state_dict()), len(list(model.parameters()))
    localizer = FakeLocalizer(torch.tensor([[8.0, 6.0, 50.0, 40.0], [60.0, 44.0, 79.0, 63.0], [0.0, 0.0, 9.0, 9.0]]))
    model.attach_localizer(localizer)
    model.train()
    assert set(model.state_dict()) == keys and len(list(model.parameters())) == num_params
    assert not any("localizer" in name for name, _ in model.named_modules())
    inputs = training_inputs()
    del inputs[1]["proposals"]
    proposals = model.training_proposals(inputs)
    assert localizer.calls == [(["im1"], [[1]], 2, False, False)]  # eval mode, no gradients, the GT class
    torch.testing.assert_close(proposals[1], localizer.boxes[:2])
    torch.testing.assert_close(proposals[0], inputs[0]["proposals"])
    assert not localizer.weight.requires_grad
    losses = model(inputs)
    assert torch.isfinite(losses["loss_rescore_cls"]) and len(localizer.calls) == 2


def save_localizer(tmp_path, **overrides):
    """A tiny trained-looking PerClassRPNLocalizer: its config file and checkpoint."""
    cfg = tiny_cfg()
    cfg.merge_from_dict({"MODEL": {"META_ARCHITECTURE": "PerClassRPNLocalizer",
                                   "PER_CLASS_RPN": {"HEAD_CHANNELS": 16, "ANCHOR_SIZES": [16, 32]}}, **overrides})
    torch.manual_seed(4)
    localizer = build_model(cfg)
    with torch.no_grad():
        localizer.per_class_rpn.head.cls.bias.fill_(0.25)
    config, weights = tmp_path / "localizer.yaml", tmp_path / "localizer.pth"
    config.write_text(cfg.dump())
    torch.save({"model": localizer.state_dict()}, weights)
    return str(config), str(weights)


def test_the_localizer_is_loaded_from_its_config_and_weights_and_proposes_for_the_label(tmp_path):
    config, weights = save_localizer(tmp_path)
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=f"LOCALIZER_CONFIG: config file not found: {missing}"):
        tiny_model(LOCALIZER_CONFIG=str(missing), LOCALIZER_WEIGHTS=weights)
    with pytest.raises(ConfigError, match="LOCALIZER_CONFIG: .* is given without weights"):
        tiny_model(LOCALIZER_CONFIG=config)
    with pytest.raises(FileNotFoundError, match=f"LOCALIZER_CONFIG: weights file not found: {tmp_path / 'x.pth'}"):
        tiny_model(LOCALIZER_CONFIG=config, LOCALIZER_WEIGHTS=str(tmp_path / "x.pth"))

    model = tiny_model(LOCALIZER_CONFIG=config, LOCALIZER_WEIGHTS=weights, PROPOSALS_PER_CLASS=5)
    assert not model.localizer.training and all(not p.requires_grad for p in model.localizer.parameters())
    assert model.localizer.per_class_rpn.head.cls.bias.eq(0.25).all()  # the checkpoint, not a fresh init
    assert not any(k.startswith(("localizer", "per_class_rpn")) for k in model.state_dict())
    inputs = training_inputs()
    del inputs[0]["proposals"]
    proposals = model.training_proposals(inputs)
    expected = model.localizer.propose(inputs[:1], [torch.tensor([1])], 5)[0]
    assert 0 < len(proposals[0]) <= 5 and expected["classes"].eq(1).all()
    torch.testing.assert_close(proposals[0], expected["boxes"])
    losses = model(inputs)
    assert torch.isfinite(losses["loss_rescore_cls"]) and torch.isfinite(losses["loss_rescore_reg"])


def test_a_localizer_of_another_kind_or_other_classes_is_a_config_error(tmp_path):
    config, weights = save_localizer(tmp_path, INPUT={"FORMAT": "RGB"})
    with pytest.raises(ConfigError, match="the localizer takes RGB images and has 3 classes; the rescorer BGR and 3"):
        tiny_model(LOCALIZER_CONFIG=config, LOCALIZER_WEIGHTS=weights)
    cfg = tiny_cfg()
    cfg.MODEL.META_ARCHITECTURE = "ImageClassifier"
    (tmp_path / "cls.yaml").write_text(cfg.dump())
    torch.save({"model": build_model(cfg).state_dict()}, tmp_path / "cls.pth")
    with pytest.raises(ConfigError, match="builds a ImageClassifier, which has no class_proposals"):
        tiny_model(LOCALIZER_CONFIG=str(tmp_path / "cls.yaml"), LOCALIZER_WEIGHTS=str(tmp_path / "cls.pth"))


# ---------------------------------------------------------------------------- weights
def test_a_classifier_checkpoint_fills_the_trunk(tmp_path):
    cfg = tiny_cfg()
    cfg.merge_from_dict({"MODEL": {"META_ARCHITECTURE": "ImageClassifier", "CLASSIFIER": {"NUM_CLASSES": 5}}})
    torch.manual_seed(5)
    classifier = build_model(cfg)
    path = tmp_path / "classifier.pth"
    torch.save({"model": classifier.state_dict()}, path)
    model = tiny_model()
    report = load_weights(model, str(path))
    assert sorted(report.unexpected) == ["backbone.linear.bias", "backbone.linear.weight"]
    assert sorted(report.missing) == sorted(f"box_predictor.{n}" for n in model.box_predictor.state_dict())
    trunk = model.backbone.state_dict()
    source = classifier.backbone.state_dict()
    assert set(source) - set(trunk) == {"linear.weight", "linear.bias"}
    for name, value in trunk.items():
        torch.testing.assert_close(value, source[name], rtol=0, atol=0)
    assert model.box_predictor.cls_score.weight.shape == (NUM_CLASSES + 1, 64)
    assert model.box_predictor.bbox_pred.weight.shape == (4 * NUM_CLASSES, 64)


def test_a_rescorer_checkpoint_for_other_classes_names_the_classifier_key(tmp_path):
    path = tmp_path / "rescorer.pth"
    torch.save({"model": tiny_model().state_dict()}, path)
    cfg = tiny_cfg()
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = 5
    report = load_weights(build_model(cfg), str(path))
    assert [str(m) for m in report.class_mismatch] == [
        "3 classes (+ background) in box_predictor.cls_score, box_predictor.bbox_pred but "
        "MODEL.CLASSIFIER.NUM_CLASSES is 5"]
    assert report.only_class_layers_differ and report.class_mismatch[0].fix == "set MODEL.CLASSIFIER.NUM_CLASSES 3"
