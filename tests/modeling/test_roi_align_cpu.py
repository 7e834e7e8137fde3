"""RoIAlign as weighted row sums (``MODEL.CPU_ROI_ALIGN embedding_bag``) gives torchvision's values and
gradients, for every bin or every other one, and a C4 head that pools only the bins res5 reads gives
the region features of the full 14x14 grid."""
from typing import Optional

import pytest
import torch
from torchvision.ops import roi_align, roi_pool

from detres.config import get_cfg
from detres.modeling.backbone.backbone import ShapeSpec
from detres.modeling.backbone.blocks import BottleneckBlock
from detres.modeling.poolers import RoIPooler
from detres.modeling.roi_align_cpu import roi_align_embedding_bag
from detres.modeling.roi_heads import build_roi_heads
from detres.modeling.roi_heads.res5_roi_heads import Res5ROIHeads

SCALE = 1 / 16  # feature maps of (N, 8, 12, 20) cover images of 192 x 320


def _boxes(n: int, seed: int) -> torch.Tensor:
    """``(n, 4)`` XYXY boxes of every kind: small and large, on and across the map's edges, past it,
    empty, of zero width, inverted."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([360.0, 230.0]) - 20
    wh = torch.rand(n, 2, generator=g) ** 2 * torch.tensor([400.0, 250.0])
    boxes = torch.cat([xy, xy + wh], dim=1)
    special = torch.tensor([
        [0.0, 0.0, 320.0, 192.0],      # the whole image
        [300.0, 170.0, 340.0, 200.0],  # across the bottom-right edge
        [330.0, 10.0, 400.0, 50.0],    # right of the map
        [50.0, 50.0, 50.0, 90.0],      # zero width
        [80.0, 60.0, 40.0, 20.0],      # inverted
        [0.0, 0.0, 3.0, 3.0],          # smaller than a cell
    ])
    return torch.cat([boxes, special])


def _features(n: int, channels_last: bool, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(n, 8, 12, 20, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
@pytest.mark.parametrize("step", [1, 2])
def test_embedding_bag_roi_align_equals_torchvision(aligned, sampling_ratio, step):
    features = _features(2, channels_last=True)
    boxes = [_boxes(40, seed=2), _boxes(25, seed=3)]
    expected = roi_align(features, boxes, 14, SCALE, sampling_ratio, aligned)[:, :, ::step, ::step]
    actual = roi_align_embedding_bag(features, boxes, 14, SCALE, sampling_ratio, aligned, step)
    assert actual.shape == expected.shape == (2 * 6 + 65, 8, 14 // step, 14 // step)
    assert actual.is_contiguous(memory_format=torch.channels_last)
    assert expected.abs().amax(dim=(1, 2, 3)).gt(0.1).sum() >= 60  # most regions sample real values
    zero_width = expected[40 + 3]  # image 0's zero-width box: no adaptive samples when aligned
    assert (zero_width == 0).all() if aligned and sampling_ratio == 0 else zero_width.abs().sum() > 0
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_embedding_bag_roi_align_backpropagates_like_torchvision():
    boxes = [_boxes(30, seed=4).double(), _boxes(30, seed=5).double()]
    grad = torch.randn(72, 8, 7, 7, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    x_ref = _features(2, channels_last=False, dtype=torch.float64).requires_grad_()
    x = x_ref.detach().clone().requires_grad_()
    (roi_align(x_ref, boxes, 14, SCALE, 0, True)[:, :, ::2, ::2] * grad).sum().backward()
    (roi_align_embedding_bag(x, boxes, 14, SCALE, 0, True, step=2) * grad).sum().backward()
    assert x_ref.grad.abs().sum() > 100
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-9)


def test_embedding_bag_roi_align_without_boxes():
    out = roi_align_embedding_bag(_features(2, True), [torch.zeros(0, 4), torch.zeros(0, 4)], 14, SCALE, step=2)
    assert out.shape == (0, 8, 7, 7)


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIPool"])
def test_pooler_step_keeps_every_other_bin_with_either_implementation(pooler_type):
    features, boxes = _features(2, True), [_boxes(10, seed=7), _boxes(10, seed=8)]
    if pooler_type == "ROIPool":
        full = roi_pool(features, boxes, 14, SCALE)
    else:
        full = roi_align(features, boxes, 14, SCALE, 0, aligned=True)
    for impl in ("torchvision", "embedding_bag"):
        pooled = RoIPooler(pooler_type, 14, SCALE, step=2, cpu_impl=impl)(features, boxes)
        torch.testing.assert_close(pooled, full[:, :, ::2, ::2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown CPU RoIAlign 'fast'"):
        RoIPooler(pooler_type, 14, SCALE, cpu_impl="fast")


def test_pooler_under_bf16_autocast_pools_in_float32():
    features, boxes = _features(1, True), [_boxes(10, seed=9)]
    pooler = RoIPooler("ROIAlignV2", 14, SCALE, step=2, cpu_impl="embedding_bag")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = pooler(features.bfloat16(), boxes)
    assert pooled.dtype == torch.float32
    expected = roi_align(features.bfloat16().float(), boxes, 14, SCALE, 0, aligned=True)[:, :, ::2, ::2]
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


def narrow_r50_c4_heads(resnets: Optional[dict] = None, **model) -> Res5ROIHeads:
    """The eval-mode C4 head of a narrow ResNet-50 (res5: 64 -> 128 channels) on a res4 map of 64
    channels at stride 16; ``resnets`` and ``model`` override ``MODEL.RESNETS`` and other ``MODEL`` keys."""
    cfg = get_cfg()
    cfg.merge_from_file("configs/detection/Base-RCNN-C4.yaml")
    cfg.merge_from_dict({"MODEL": {**model, "RESNETS": {"DEPTH": 50, "WIDTH_PER_GROUP": 4, "RES2_OUT_CHANNELS": 16,
                                                        **(resnets or {})}}})
    torch.manual_seed(0)
    return build_roi_heads(cfg, {"res4": ShapeSpec(64, 16)}).eval()


@pytest.mark.parametrize("style,step", [("msra", 2), ("pytorch", 1)])
def test_c4_head_pools_only_the_bins_res5_reads(style, step):
    """An msra res5 (stride 2 in its first 1x1 convs) reads every other bin of the 14x14 grid: its
    head pools those 7x7 and gives the features of the full grid through an unchanged res5."""
    heads = narrow_r50_c4_heads(resnets={"STYLE": style})
    assert isinstance(heads.res5[0], BottleneckBlock) and heads.pooler.step == step
    reference = BottleneckBlock(64, 128, bottleneck_channels=heads.res5[0].conv1.conv.out_channels, stride=2,
                                norm="FrozenBN", stride_in_1x1=style == "msra")
    reference.load_state_dict(heads.res5[0].state_dict())  # a first block that takes the full grid
    features = torch.rand(2, 64, 12, 20, generator=torch.Generator().manual_seed(1))
    boxes = [_boxes(10, seed=10), _boxes(10, seed=11)]
    with torch.no_grad():
        full = roi_align(features, boxes, 14, SCALE, 0, aligned=True)
        expected = heads.res5[1:](reference(full)).mean(dim=(2, 3))
        actual = heads.box_features(features, boxes)
    assert expected.abs().sum() > 1
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
