"""Exported TorchScript and ONNX files against the eager models, run on inputs of another size (and
batch) than the export example: classifier and backbone within 1e-4, the detector's detections the
same (count and classes) with boxes and scores within 1e-3."""
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from torch import nn

import detres
from detres.config import load_config
from detres.export import (
    FORMATS,
    ExportTarget,
    ExportableDetector,
    backbone_target,
    classifier_target,
    detector_target,
    max_abs_difference,
    onnxruntime_available,
    run_exported,
)
from detres.modeling.meta_arch.build import build_model
from tests.conftest import REPO_ROOT

NARROW = dict(stem_out_channels=16, res2_out_channels=16)  # ResNet-18 at quarter width: res4 64 channels
FORMAT_PARAMS = [
    "torchscript",
    pytest.param("onnx", marks=pytest.mark.skipif(
        not onnxruntime_available(), reason="onnxruntime is not installed (test dependency: pip install -e .[dev])")),
]


def _save(target: ExportTarget, fmt: str, example, tmp_path: Path) -> Path:
    path = target.save(fmt, example, tmp_path / f"{target.kind}{FORMATS[fmt]}")
    assert path.is_file()
    if fmt == "onnx":
        onnx = pytest.importorskip("onnx", reason="onnx is not installed (test dependency: pip install -e .[dev])")
        onnx.checker.check_model(str(path), full_check=True)
    return path


def _export_and_run(target: ExportTarget, fmt: str, example, inputs, tmp_path: Path) -> Tuple[List, List]:
    path = _save(target, fmt, example, tmp_path)
    return target.reference(inputs), run_exported(path, inputs)


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_classifier_matches_eager_at_another_size(fmt, tmp_path):
    torch.manual_seed(0)
    model = detres.create_model("resnet18", num_classes=10, **NARROW)
    g = torch.Generator().manual_seed(0)
    example, inputs = (torch.randn(2, 3, 160, 128, generator=g),), (torch.randn(3, 3, 224, 192, generator=g),)
    expected, actual = _export_and_run(classifier_target(model), fmt, example, inputs, tmp_path)
    assert actual[0].shape == (3, 10)
    assert expected[0].abs().max() > 0.5  # logits of a useful scale for an absolute tolerance
    assert max_abs_difference(expected, actual) <= 1e-4


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_backbone_matches_eager_at_another_size(fmt, tmp_path):
    torch.manual_seed(0)
    backbone = detres.create_backbone("resnet18", ["res4"], **NARROW)
    g = torch.Generator().manual_seed(0)
    example, inputs = (torch.randn(2, 3, 128, 160, generator=g),), (torch.randn(1, 3, 224, 192, generator=g),)
    expected, actual = _export_and_run(backbone_target(backbone), fmt, example, inputs, tmp_path)
    assert [tuple(t.shape) for t in actual] == [(1, 64, 14, 12)]
    assert expected[0].abs().max() > 1.0
    assert max_abs_difference(expected, actual) <= 1e-4


def _tiny_detector(*opts) -> nn.Module:
    """A random narrow R18 C4 detector with widened RPN objectness and class-score weights: its 50-70
    detections per image (above SCORE_THRESH_TEST, fewer than DETECTIONS_PER_IMAGE) have scores at
    least 2e-5 apart, so float rounding does not reorder them. 15 anchors per res4 cell: a 128 x 160
    image has 1200, more than PRE_NMS_TOPK_TEST, a 96 x 128 one 720, fewer (the trace must not
    freeze the top-k size)."""
    cfg = load_config(str(REPO_ROOT / "configs/detection/Base-RCNN-C4.yaml"), [
        "MODEL.DEVICE", "cpu", "MODEL.PIXEL_STD", [57.375, 57.12, 58.395],  # unit-scale inputs, identity frozen BN
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
        "MODEL.ROI_HEADS.NUM_CLASSES", 3, "MODEL.RPN.PRE_NMS_TOPK_TEST", 1000, "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.3, "INPUT.SIZE_DIVISIBILITY", 32, *opts])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        nn.init.normal_(model.proposal_generator.rpn_head.objectness_logits.weight, std=0.5)
        nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.02)
    return model


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("fmt", FORMAT_PARAMS)
def test_detector_matches_eager_at_other_sizes(fmt, tmp_path):
    target = detector_target(_tiny_detector())
    example = (_image(128, 160, seed=0), torch.tensor([256, 320]))
    others = [(_image(96, 128, seed=1), torch.tensor([120, 160])), (_image(160, 96, seed=2), torch.tensor([480, 288]))]
    path = _save(target, fmt, example, tmp_path)
    counts = []
    for inputs in [example, *others]:
        (boxes, scores, classes), actual = target.reference(inputs), run_exported(path, inputs)
        assert len(actual[0]) == len(boxes) > 0
        counts.append(len(boxes))
        assert torch.equal(actual[2], classes)
        assert (actual[0] - boxes).abs().max() <= 1e-3 and (actual[1] - scores).abs().max() <= 1e-3
        height, width = inputs[1].tolist()  # boxes in original pixels, inside the original image
        assert boxes[:, 2].max() <= width and boxes[:, 3].max() <= height and boxes.min() >= 0
    assert len(set(counts)) > 1, counts  # the number of detections is not fixed by the trace


@pytest.mark.parametrize("option", ["MODEL.ROI_BOX_HEAD.GLOBAL_CONTEXT", "MODEL.ROI_HEADS.BOX_REFINEMENT.ENABLED"])
def test_detector_extras_are_refused_by_name(option):
    with pytest.raises(ValueError, match=option.replace(".", r"\.")):
        ExportableDetector(_tiny_detector(option, True))
