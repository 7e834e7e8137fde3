import pytest
import torch

from detres.modeling.matcher import Matcher, ignore_crowd_overlaps

# 2 ground-truth boxes x 5 predictions.
IOU = torch.tensor(
    [
        [0.90, 0.50, 0.10, 0.20, 0.30],
        [0.10, 0.65, 0.25, 0.00, 0.70],
    ]
)


def test_rpn_thresholds_without_low_quality():
    matches, labels = Matcher([0.3, 0.7], [0, -1, 1])(IOU)
    assert matches.tolist() == [0, 1, 1, 0, 1]
    # 0.9 pos; 0.65 ignore; 0.25 neg; 0.2 neg; 0.7 exactly -> positive (intervals are [low, high)).
    assert labels.tolist() == [1, -1, 0, 0, 1]
    assert labels.dtype == torch.int8


def test_low_quality_matches():
    iou = IOU.clone()
    iou[1, 4] = 0.65  # gt 1 now has two best predictions (ties) with IoU 0.65 < 0.7
    _, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [1, 1, 0, 0, 1]
    _, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=False)(iou)
    assert labels.tolist() == [1, -1, 0, 0, -1]


def test_low_quality_ignores_gt_without_overlap():
    iou = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.8, 0.2]])
    _, labels = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [0, 1, 0]


def test_roi_thresholds_and_empty_gt():
    matches, labels = Matcher([0.5], [0, 1])(IOU)
    assert labels.tolist() == [1, 1, 0, 0, 1]
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(0, 7))
    assert matches.tolist() == [0] * 7 and labels.tolist() == [0] * 7


def test_invalid_matcher_config():
    with pytest.raises(ValueError, match="sorted"):
        Matcher([0.7, 0.3], [0, -1, 1])
    with pytest.raises(ValueError, match="one label per IoU interval"):
        Matcher([0.3, 0.7], [0, 1])


def test_ignore_crowd_overlaps():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    crowd = torch.tensor([[2.0, 0.0, 12.0, 10.0]])  # covers 80% of the first two boxes
    labels = torch.tensor([1, 0, 0], dtype=torch.int8)
    assert ignore_crowd_overlaps(labels.clone(), boxes, crowd, 0.7).tolist() == [-1, -1, 0]
    assert ignore_crowd_overlaps(labels.clone(), boxes, crowd, 0.85).tolist() == [1, 0, 0]
    assert ignore_crowd_overlaps(labels.clone(), boxes, torch.zeros(0, 4), 0.7).tolist() == [1, 0, 0]
