"""The per-class RPN localizer (paper, Appendix C): a classifier checkpoint fills its backbone, attached
classifiers and rescorer stay out of its state dict, boxes come back in original-image pixels through
``crop_box``, views of a dense multi-scale input are merged, and the outputs follow the shared design."""
from typing import Dict, List

import pytest
import torch

from detres.config import ConfigError, get_cfg
from detres.modeling.meta_arch.build import build_model
from detres.modeling.meta_arch.localizer import PerClassRPNLocalizer, boxes_to_original
from detres.modeling.weight_import import load_weights

NUM_CLASSES = 6
TINY = {
    "DEVICE": "cpu",
    "RESNETS": {"DEPTH": 18, "STEM_OUT_CHANNELS": 8, "RES2_OUT_CHANNELS": 8},
    "CLASSIFIER": {"NUM_CLASSES": NUM_CLASSES},
}


def tiny_cfg(arch: str = "PerClassRPNLocalizer", **localizer):
    cfg = get_cfg()
    cfg.merge_from_dict({"MODEL": {**TINY, "META_ARCHITECTURE": arch,
                                   "PER_CLASS_RPN": {"HEAD_CHANNELS": 16, "ANCHOR_SIZES": [16, 32, 64]},
                                   "LOCALIZER": localizer},
                         "INPUT": {"CLS": {"PER_PIXEL_MEAN": False}}})
    return cfg


def save_classifier(tmp_path, seed: int = 3, input_format: str = "BGR") -> Dict[str, str]:
    """A tiny classifier's config file and checkpoint (as the trainer writes it)."""
    cfg = tiny_cfg("ImageClassifier")
    cfg.INPUT.FORMAT = input_format
    torch.manual_seed(seed)
    classifier = build_model(cfg)
    config, weights = tmp_path / f"cls{seed}.yaml", tmp_path / f"cls{seed}.pth"
    config.write_text(cfg.dump())
    torch.save({"model": classifier.state_dict(), "iteration": 10}, weights)
    return {"config": str(config), "weights": str(weights), "model": classifier}


def test_boxes_to_original_through_the_crop_box():
    # a 100 x 50 input (W' x H') covering [20, 10, 220, 110] of the original: 2 original pixels per input pixel
    boxes = torch.tensor([[0.0, 0.0, 100.0, 50.0], [10.0, 5.0, 30.0, 25.0]])
    torch.testing.assert_close(boxes_to_original(boxes, (50, 100), [20, 10, 220, 110]),
                               torch.tensor([[20.0, 10.0, 220.0, 110.0], [40.0, 20.0, 80.0, 60.0]]))


def test_a_classifier_checkpoint_fills_the_backbone_and_its_linear_layer_is_ignored(tmp_path):
    saved = save_classifier(tmp_path)
    localizer = build_model(tiny_cfg())
    assert not any("linear" in k for k in localizer.state_dict())
    report = load_weights(localizer, saved["weights"], require_class_layers=True)
    assert sorted(report.unexpected) == ["backbone.linear.bias", "backbone.linear.weight"]
    assert report.missing and all(k.startswith("per_class_rpn.") for k in report.missing)
    classifier_state = saved["model"].state_dict()
    for name, value in localizer.backbone.state_dict().items():
        torch.testing.assert_close(value, classifier_state[f"backbone.{name}"])


def test_attached_classifiers_and_rescorer_are_not_in_the_state_dict(tmp_path):
    first, second = save_classifier(tmp_path, 3), save_classifier(tmp_path, 4, input_format="RGB")
    plain = build_model(tiny_cfg())
    attached = build_model(tiny_cfg(CLASSIFIER_CONFIGS=[first["config"], second["config"]],
                                    CLASSIFIER_WEIGHTS=[first["weights"], second["weights"]]))
    assert list(attached.state_dict()) == list(plain.state_dict())
    assert len(list(attached.parameters())) == len(list(plain.parameters()))
    assert all("classifier" not in name for name, _ in attached.named_modules())
    attached.train()
    models = attached.classifiers.models
    assert len(models) == 2 and not any(m.training for m in models)
    assert not any(p.requires_grad for m in models for p in m.parameters())
    # the second classifier's weights were loaded
    torch.testing.assert_close(models[1].backbone.linear.weight, second["model"].backbone.linear.weight)


def test_an_attached_rcnn_rescorer_rescores_and_stays_out_of_the_state_dict(tmp_path):
    cfg = tiny_cfg("RCNNRescorer")
    cfg.MODEL.RESCORER.INPUT_SIZE = 32
    torch.manual_seed(5)
    rescorer = build_model(cfg)
    (tmp_path / "rescorer.yaml").write_text(cfg.dump())
    torch.save({"model": rescorer.state_dict()}, tmp_path / "rescorer.pth")
    plain = build_model(tiny_cfg())
    localizer = build_model(tiny_cfg(RESCORER_CONFIG=str(tmp_path / "rescorer.yaml"),
                                     RESCORER_WEIGHTS=str(tmp_path / "rescorer.pth"))).eval()
    assert list(localizer.state_dict()) == list(plain.state_dict())
    assert not localizer.rescorer.training
    torch.testing.assert_close(localizer.rescorer.box_predictor.cls_score.weight,
                               rescorer.box_predictor.cls_score.weight)
    x = {"image": torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8), "label": 2, "height": 96, "width": 128}
    proposals = localizer.propose([x], [torch.tensor([2])], localizer.proposals_per_class)[0]
    scores, boxes = rescorer.eval().rescore([x], [proposals["boxes"]], [proposals["classes"]])
    # the rescorer's best box, at twice the input's resolution
    torch.testing.assert_close(localizer([x])[0]["gt_class_box"], boxes[0][scores[0].argmax()] * 2)


def test_missing_attached_files_are_errors_at_set_up(tmp_path):
    saved = save_classifier(tmp_path)
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=r"CLASSIFIER_WEIGHTS\[0\]: weights file not found: .*nowhere.pth"):
        build_model(tiny_cfg(CLASSIFIER_CONFIGS=[saved["config"]], CLASSIFIER_WEIGHTS=[str(missing)]))
    with pytest.raises(ConfigError, match=r"CLASSIFIER_CONFIGS\[0\]: config file not found: .*nowhere.yaml"):
        build_model(tiny_cfg(CLASSIFIER_CONFIGS=[str(tmp_path / "nowhere.yaml")],
                             CLASSIFIER_WEIGHTS=[saved["weights"]]))
    with pytest.raises(ConfigError, match="CLASSIFIER_CONFIGS has 1 entries but CLASSIFIER_WEIGHTS 0"):
        build_model(tiny_cfg(CLASSIFIER_CONFIGS=[saved["config"]]))
    with pytest.raises(FileNotFoundError, match="RESCORER_WEIGHTS: weights file not found"):
        build_model(tiny_cfg(RESCORER_CONFIG=saved["config"], RESCORER_WEIGHTS=str(missing)))
    with pytest.raises(ConfigError, match="builds a ImageClassifier, which has no rescore"):
        build_model(tiny_cfg(RESCORER_CONFIG=saved["config"], RESCORER_WEIGHTS=saved["weights"]))


def test_training_losses_and_input_errors():
    localizer = build_model(tiny_cfg()).train()
    inputs = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "label": label, "gt_boxes": boxes,
               "image_id": f"im{label}"}
              for label, boxes in ((1, torch.tensor([[4.0, 6.0, 40.0, 50.0]])), (5, torch.zeros(0, 4)))]
    losses = localizer(inputs)
    assert set(losses) == {"loss_loc_cls", "loss_loc_reg"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert localizer.backbone.stem.conv1.conv.weight.grad.abs().sum() > 0
    inputs[1]["label"] = NUM_CLASSES
    with pytest.raises(ValueError, match=r"im5: label 6 outside \[0, 6\)"):
        localizer(inputs)


def fixed_proposals(localizer: PerClassRPNLocalizer, per_class: Dict[int, List[List[float]]]):
    """Make the per-class RPN return ``per_class[c]`` (boxes in the input's pixels, best first) for class c."""
    def inference(features, image_sizes, classes, post_nms_topk=None):
        out = []
        for wanted in classes:
            boxes = [(c, b, 1.0 - 0.1 * j) for c in sorted(wanted.tolist()) for j, b in enumerate(per_class[c])]
            out.append({"boxes": torch.tensor([b for _, b, _ in boxes]), "scores": torch.tensor([s for *_, s in boxes]),
                        "classes": torch.tensor([c for c, _, _ in boxes])})
        return out
    localizer.per_class_rpn.inference = inference


def test_eval_outputs_with_attached_classifiers_in_original_pixels(tmp_path):
    first, second = save_classifier(tmp_path, 3), save_classifier(tmp_path, 4)
    localizer = build_model(tiny_cfg(CLASSIFIER_CONFIGS=[first["config"], second["config"]],
                                     CLASSIFIER_WEIGHTS=[first["weights"], second["weights"]])).eval()
    fixed_proposals(localizer, {c: [[8.0 + c, 4.0, 40.0, 30.0], [0.0, 0.0, 10.0, 10.0]] for c in range(NUM_CLASSES)})
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    # the input is the centre region [16, 8, 112, 72] of a 128 x 80 original, at half resolution
    x = {"image": image, "label": 2, "image_id": "a", "height": 80, "width": 128, "crop_box": [16.0, 8.0, 112.0, 72.0]}
    out = localizer([x])[0]
    assert set(out) == {"pred_classes", "pred_boxes", "scores", "gt_class_box"}
    expected = (first["model"].eval().inference([x]) + second["model"].eval().inference([x])) / 2
    top_scores, top_classes = expected[0].topk(5)
    assert out["pred_classes"].tolist() == top_classes.tolist() and out["pred_classes"].dtype == torch.int64
    torch.testing.assert_close(out["scores"], top_scores)
    # the best box [8 + c, 4, 40, 30] of each class, doubled and shifted by (16, 8)
    for c, box in zip(out["pred_classes"].tolist(), out["pred_boxes"]):
        torch.testing.assert_close(box, torch.tensor([16.0 + 2 * (8 + c), 16.0, 96.0, 68.0]))
    torch.testing.assert_close(out["gt_class_box"], torch.tensor([36.0, 16.0, 96.0, 68.0]))


def test_without_classifiers_only_the_ground_truth_class_box():
    localizer = build_model(tiny_cfg()).eval()
    x = {"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8), "label": 4, "image_id": "b"}
    out = localizer([x])[0]
    assert set(out) == {"gt_class_box"} and out["gt_class_box"].shape == (4,)
    assert (out["gt_class_box"] >= 0).all() and (out["gt_class_box"] <= 64).all()
    del x["label"]
    with pytest.raises(ValueError, match="b: nothing to localize"):
        localizer([x])


def test_dense_views_are_merged_in_the_first_views_pixels():
    localizer = build_model(tiny_cfg()).eval()
    calls = []

    def inference(features, image_sizes, classes, post_nms_topk=None):
        calls.append((image_sizes[0], post_nms_topk))
        h, w = image_sizes[0]
        score = 0.9 if h == 64 else 0.6  # the same box (the input's top-left quarter) in each view's pixels
        return [{"boxes": torch.tensor([[0.0, 0.0, w / 2, h / 2]]), "scores": torch.tensor([score]),
                 "classes": c.clone()} for c in classes]
    localizer.per_class_rpn.inference = inference
    views = [torch.zeros(3, 32, 48, dtype=torch.uint8), torch.zeros(3, 64, 96, dtype=torch.uint8)]
    merged = localizer.propose([{"image": views}], [torch.tensor([3])], topk=5)[0]
    assert sorted(calls) == [((32, 48), 5), ((64, 96), 5)]
    torch.testing.assert_close(merged["boxes"], torch.tensor([[0.0, 0.0, 24.0, 16.0]]))  # NMS kept one
    assert merged["scores"].tolist() == pytest.approx([0.9]) and merged["classes"].tolist() == [3]
    out = localizer([{"image": views, "label": 3, "height": 320, "width": 480}])[0]
    torch.testing.assert_close(out["gt_class_box"], torch.tensor([0.0, 0.0, 240.0, 160.0]))


class FakeRescorer:
    """Scores proposals by their x1 and moves them right by one pixel."""

    num_classes = NUM_CLASSES

    def __init__(self):
        self.calls = []

    def to(self, device):
        return self

    def rescore(self, batched_inputs, proposals, classes):
        self.calls.append(([tuple(x["image"].shape) for x in batched_inputs], [p.clone() for p in proposals],
                           [c.tolist() for c in classes]))
        return [p[:, 0].clone() for p in proposals], [p + torch.tensor([1.0, 0.0, 1.0, 0.0]) for p in proposals]


@pytest.mark.parametrize("rescored_score, best", [("rescorer", [10.0, 0.0, 31.0, 30.0]),
                                                   ("product", [9.5, 2.0, 21.0, 20.0])])
def test_the_rescored_score_ranks_the_refined_proposals(rescored_score, best):
    localizer = build_model(tiny_cfg(RESCORED_SCORE=rescored_score)).eval()
    # RPN scores 1.0, 0.9, 0.8; rescorer scores 8.5, 9, 5: products 8.5, 8.1, 4
    fixed_proposals(localizer, {1: [[8.5, 2.0, 20.0, 20.0], [9.0, 0.0, 30.0, 30.0], [5.0, 5.0, 12.0, 12.0]]})
    object.__setattr__(localizer, "rescorer", FakeRescorer())
    out = localizer([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "label": 1}])[0]
    torch.testing.assert_close(out["gt_class_box"], torch.tensor(best))


def test_an_unknown_rescored_score_is_a_config_error():
    with pytest.raises(ConfigError, match="RESCORED_SCORE must be one of .'rescorer', 'product'., got 'sum'"):
        build_model(tiny_cfg(RESCORED_SCORE="sum"))


def test_the_rescorer_chooses_among_the_proposals_of_each_class():
    localizer = build_model(tiny_cfg()).eval()
    fixed_proposals(localizer, {1: [[2.0, 2.0, 20.0, 20.0], [9.0, 0.0, 30.0, 30.0], [5.0, 5.0, 12.0, 12.0]]})
    rescorer = FakeRescorer()
    object.__setattr__(localizer, "rescorer", rescorer)
    out = localizer([{"image": torch.zeros(3, 32, 32, dtype=torch.uint8), "label": 1}])[0]
    (shapes, proposals, classes), = rescorer.calls
    assert shapes == [(3, 32, 32)] and classes == [[1, 1, 1]]  # one class per proposal
    assert len(proposals[0]) == 3
    # the RPN's first choice is [2, 2, 20, 20]; the rescorer prefers the largest x1, moved right by 1
    torch.testing.assert_close(out["gt_class_box"], torch.tensor([10.0, 0.0, 31.0, 30.0]))
