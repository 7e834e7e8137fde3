import torch

from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.roi_heads import build_roi_heads
from detres.modeling.roi_heads.box_refinement import BoxRefinement, box_voting, top_class_boxes
from tests.modeling.test_faster_rcnn import _r18_model, _synthetic_input
from tests.modeling.test_roi_heads import IMAGE_SIZES, NUM_CLASSES, _cfg, _inputs


def test_box_voting_hand_computed_averages():
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    kept_classes = torch.tensor([0, 1, 2])
    voters = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],  # class 0, 0.9: the kept box itself (IoU 1)
        [1.0, 1.0, 11.0, 11.0],  # class 0, 0.6: IoU 81 / 119 = 0.68
        [0.0, 0.0, 10.0, 20.0],  # class 0, 0.5: IoU 100 / 200 = 0.5 exactly, votes (>=)
        [5.0, 5.0, 15.0, 15.0],  # class 0, 0.8: IoU 25 / 175 = 0.14, does not vote
        [0.0, 0.0, 10.0, 10.0],  # class 1, 0.7: votes only for the class-1 box
        [2.0, 0.0, 10.0, 10.0],  # class 1, 0.1: IoU 0.8
    ])
    scores = torch.tensor([0.9, 0.6, 0.5, 0.8, 0.7, 0.1])
    classes = torch.tensor([0, 0, 0, 0, 1, 1])
    voted = box_voting(kept, kept_classes, voters, scores, classes, iou_thresh=0.5)
    # class 0: weights 0.9, 0.6, 0.5 (sum 2.0) -> x1 = 0.6 / 2, x2 = (9 + 6.6 + 5) / 2, y2 = (9 + 6.6 + 10) / 2
    # class 1: weights 0.7, 0.1 (sum 0.8) -> x1 = 0.2 / 0.8
    # class 2: no voter, the box stays
    expected = torch.tensor([[0.3, 0.3, 10.3, 12.8], [0.25, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    assert torch.allclose(voted, expected, atol=1e-6)
    # a stricter threshold leaves the 0.5-IoU box out: weights 0.9, 0.6 (sum 1.5)
    strict = box_voting(kept[:1], kept_classes[:1], voters, scores, classes, iou_thresh=0.6)
    assert torch.allclose(strict, torch.tensor([[0.4, 0.4, 10.4, 10.4]]), atol=1e-6)
    assert box_voting(kept, kept_classes, voters[:0], scores[:0], classes[:0]).equal(kept)


def test_top_class_boxes_ignore_background_and_clip():
    boxes = torch.tensor([
        [[0.0, 0.0, 5.0, 5.0], [1.0, 1.0, 300.0, 6.0]],
        [[-4.0, 2.0, 8.0, 9.0], [3.0, 3.0, 7.0, 7.0]],
    ])  # (R=2, K=2, 4)
    probs = torch.tensor([[0.1, 0.3, 0.6], [0.5, 0.2, 0.3]])  # background (last) highest for region 0
    assert top_class_boxes(boxes, probs, (100, 200)).tolist() == [[1.0, 1.0, 200.0, 6.0], [0.0, 2.0, 8.0, 9.0]]


def _refining_heads(voting_iou_thresh: float = 0.5):
    cfg = _cfg(18, 32)
    cfg.merge_from_dict({"MODEL": {"ROI_HEADS": {"BOX_REFINEMENT": {
        "ENABLED": True, "VOTING_IOU_THRESH": voting_iou_thresh}}}})
    torch.manual_seed(0)
    heads = build_roi_heads(cfg, {"res4": ShapeSpec(128, 16)}).eval()
    with torch.no_grad():  # confident, spread-out predictions so that refinement moves boxes
        heads.box_predictor.cls_score.weight.normal_(std=0.5)
        heads.box_predictor.bbox_pred.weight.normal_(std=0.05)
    return heads


class _Recorder:
    """A region-feature function that records the box lists it is asked for."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, boxes):
        self.calls.append([b.clone() for b in boxes])
        return self.fn(boxes)


def test_refinement_pools_again_exactly_the_top_class_boxes():
    heads = _refining_heads()
    assert isinstance(heads.refinement, BoxRefinement) and heads.refinement.nms_thresh == 0.3
    features, proposals, _ = _inputs(128)
    boxes = [p["boxes"] for p in proposals]
    region_features = _Recorder(heads.region_features_fn(features, IMAGE_SIZES))
    detections = heads.inference(region_features, boxes, IMAGE_SIZES)
    assert len(region_features.calls) == 2 and all(a.equal(b) for a, b in zip(region_features.calls[0], boxes))
    # the decoded box of each proposal's most probable non-background class, clipped to its image
    scores, deltas = heads.box_predictor(heads.region_features_fn(features, IMAGE_SIZES)(boxes))
    decoded = heads.box_predictor.box_coder.decode(deltas, torch.cat(boxes)).view(-1, NUM_CLASSES, 4)
    top = scores[:, :NUM_CLASSES].argmax(dim=1)
    expected = decoded[torch.arange(len(top)), top].split([len(b) for b in boxes])
    clipped = 0
    for repooled, exp, (h, w), props in zip(region_features.calls[1], expected, IMAGE_SIZES, boxes):
        unclipped, exp = exp, exp.clone()
        exp[:, 0::2], exp[:, 1::2] = exp[:, 0::2].clamp(0, w), exp[:, 1::2].clamp(0, h)
        assert repooled.shape == (12, 4) and repooled.equal(exp)
        assert (repooled - props).abs().max() > 1.0  # regression moved them
        clipped += int((unclipped != exp).any(dim=1).sum())
    assert clipped > 0  # some regressed boxes left their image and were clipped before pooling
    assert [len(d["boxes"]) for d in detections] == [len(d["scores"]) for d in detections]
    assert all(0 < len(d["boxes"]) <= 100 for d in detections)


def test_refinement_is_nms_on_the_union_then_voting():
    features, proposals, _ = _inputs(128)
    boxes = [p["boxes"] for p in proposals]
    unvoted = _refining_heads(voting_iou_thresh=1.5)  # no IoU reaches 1.5: voting changes nothing
    voted = _refining_heads()
    fn = unvoted.region_features_fn(features, IMAGE_SIZES)
    plain = unvoted.inference(fn, boxes, IMAGE_SIZES)
    refined = voted.inference(voted.region_features_fn(features, IMAGE_SIZES), boxes, IMAGE_SIZES)

    predictor = unvoted.box_predictor
    first, first_probs = predictor.boxes_and_probs(predictor(fn(boxes)), boxes)
    tops = [top_class_boxes(b, p, s) for b, p, s in zip(first, first_probs, IMAGE_SIZES)]
    second, second_probs = predictor.boxes_and_probs(predictor(fn(tops)), tops)
    moved = 0
    for i, size in enumerate(IMAGE_SIZES):
        union_boxes, union_probs = torch.cat([first[i], second[i]]), torch.cat([first_probs[i], second_probs[i]])
        expected = predictor.select(union_boxes, union_probs, size, nms_thresh=0.3)
        assert len(expected["boxes"]) > 1
        for key in ("boxes", "scores", "classes"):
            assert torch.allclose(plain[i][key].float(), expected[key].float(), atol=1e-5)
        # voting moves boxes only: same scores and classes, boxes the voted averages of the candidates
        assert torch.allclose(refined[i]["scores"], expected["scores"], atol=1e-6)
        assert refined[i]["classes"].equal(expected["classes"])
        voters = predictor.candidates(union_boxes, union_probs, size)
        voted_boxes = box_voting(expected["boxes"], expected["classes"], voters["boxes"], voters["scores"],
                                 voters["classes"], 0.5)
        assert torch.allclose(refined[i]["boxes"], voted_boxes, atol=1e-4)
        moved += int(((refined[i]["boxes"] - expected["boxes"]).abs().amax(dim=1) > 1e-3).sum())
    assert moved > 0


def test_tiny_detector_with_refinement():
    plain = _r18_model(SCORE_THRESH_TEST=0.0).eval()
    refining = _r18_model(SCORE_THRESH_TEST=0.0, **{"BOX_REFINEMENT.ENABLED": True}).eval()
    assert plain.roi_heads.refinement is None and refining.roi_heads.refinement is not None
    inputs = [_synthetic_input()]
    a, b = plain(inputs)[0], refining(inputs)[0]
    assert 0 < len(b["boxes"]) <= 100 and b["classes"].dtype == torch.int64
    assert (b["boxes"] >= 0).all() and (b["boxes"][:, 2] <= 160).all() and (b["boxes"][:, 3] <= 128).all()
    assert bool((b["scores"][:-1] >= b["scores"][1:]).all())
    # NMS at 0.3 on 2 x 32 predictions instead of 0.5 on 32: another set of detections
    assert len(a["boxes"]) != len(b["boxes"]) or not torch.allclose(a["boxes"], b["boxes"])
