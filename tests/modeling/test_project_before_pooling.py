"""``MODEL.PROJECT_BEFORE_POOLING``: the 1x1 convolutions that open an "msra" res5 (conv1 and the
projection shortcut, frozen BN folded in) run on the res4 map before RoIAlign instead of on every
pooled region, with the same values and gradients; blocks and poolers where that would not be exact
keep the plain path."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from detres.modeling.backbone.blocks import BasicBlock, BottleneckBlock
from detres.modeling.norm import FrozenBatchNorm2d
from detres.modeling.poolers import RoIPooler
from tests.modeling.test_roi_align_cpu import SCALE, _boxes, narrow_r50_c4_heads
from tests.modeling.test_speed_options import _random_statistics


def _block(norm: str = "FrozenBN", plain: bool = False, **kwargs) -> BottleneckBlock:
    torch.manual_seed(0)
    block = BottleneckBlock(8, 32, bottleneck_channels=4, stride=2, norm=norm, plain=plain, **kwargs)
    g = torch.Generator().manual_seed(1)
    for module in block.modules():  # non-trivial statistics: scales and shifts matter
        if isinstance(module, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            _random_statistics(module, g)
    return block


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_projected_block_gives_the_values_and_gradients_of_the_pooled_block(plain, sampling_ratio):
    """``block(pool(x)) == block.forward_projected(pool(conv2d(x, weight)), bias)``, forwards and
    backwards, with boxes of every kind (across and past the map's edges, empty, inverted): bins whose
    samples fall off the map pool zero projected values and still get the convolutions' bias."""
    block = _block(plain=plain).double()
    pooler = RoIPooler("ROIAlignV2", 14, SCALE, sampling_ratio, step=block.expect_subsampled_input(),
                       cpu_impl="embedding_bag")
    features = torch.randn(2, 8, 12, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    features = features.contiguous(memory_format=torch.channels_last).requires_grad_()
    boxes = [_boxes(12, seed=3).double(), _boxes(7, seed=4).double()]
    assert pooler.can_pool_projection(features)

    expected = block(pooler(features, boxes))
    expected.square().sum().backward()
    weights = [m.weight for m in block.modules() if isinstance(m, nn.Conv2d)]
    expected_grads = [features.grad.clone()] + [w.grad.clone() for w in weights]
    features.grad = None
    block.zero_grad()

    weight, bias = block.input_projection()
    assert weight.shape == (4 if plain else 36, 8, 1, 1) and bias.shape == (weight.shape[0],)
    actual = block.forward_projected(pooler(F.conv2d(features, weight), boxes), bias)
    actual.square().sum().backward()
    assert expected.shape == (31, 32, 7, 7) and expected.abs().sum() > 100
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    assert len(weights) == (3 if plain else 4)  # the shortcut's weight too
    for actual_grad, expected_grad in zip([features.grad] + [w.grad for w in weights], expected_grads):
        assert expected_grad.abs().sum() > 0
        torch.testing.assert_close(actual_grad, expected_grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("make", [
    lambda: _block("BN").train(),                       # batch statistics: not a fixed affine map
    lambda: _block("GN"),
    lambda: _block(stride_in_1x1=False),                # "pytorch": the shortcut subsamples, conv1 does not
    lambda: _block(shortcut="A"),                       # parameter-free shortcut: nothing to project
    lambda: BasicBlock(8, 32, stride=2, norm="FrozenBN"),  # opens with a 3x3 convolution
])
def test_blocks_without_an_exact_projection_have_none(make):
    assert make().input_projection() is None


def test_eval_mode_batch_norm_projects():
    weight, bias = _block("BN").eval().input_projection()
    assert weight.shape == (36, 8, 1, 1) and bias.shape == (36,)


def test_only_linear_pooling_of_the_kept_bins_takes_projections():
    x = torch.zeros(1, 8, 4, 4)
    assert RoIPooler("ROIAlignV2", 14, SCALE, step=2, cpu_impl="embedding_bag").can_pool_projection(x)
    assert RoIPooler("ROIAlign", 14, SCALE, step=1).can_pool_projection(x)
    # torchvision's kernel computes all 14x14 bins before the step keeps 7x7: more channels cost 4x.
    assert not RoIPooler("ROIAlignV2", 14, SCALE, step=2).can_pool_projection(x)
    assert not RoIPooler("ROIPool", 14, SCALE, step=1).can_pool_projection(x)  # max pooling is not linear


def _heads(project: bool, cpu_impl: str = "embedding_bag", norm: str = "FrozenBN"):
    return narrow_r50_c4_heads(resnets={"NORM": norm}, PROJECT_BEFORE_POOLING=project, CPU_ROI_ALIGN=cpu_impl)


def _count_calls(module: nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("num_boxes,projects", [(10, True), (1, False)])
def test_c4_head_projects_when_the_map_is_smaller_than_the_pooled_regions(num_boxes, projects):
    """Region features are the same either way; the head projects when the (2, 64, 12, 20) map's 480
    cells are fewer than the regions' bins (7x7 each), and runs conv1 on the regions otherwise."""
    plain, fast = _heads(False), _heads(True)
    fast.load_state_dict(plain.state_dict())
    features = torch.rand(2, 64, 12, 20, generator=torch.Generator().manual_seed(1))
    boxes = [_boxes(num_boxes, seed=10)[-num_boxes:], _boxes(num_boxes, seed=11)[:num_boxes]]
    conv1_calls = _count_calls(fast.res5[0].conv1)
    with torch.no_grad():
        expected = plain.box_features(features, boxes)
        actual = fast.box_features(features, boxes)
    assert expected.shape == (2 * num_boxes, 128) and expected.abs().sum() > 1
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert len(conv1_calls) == (0 if projects else 1)


@pytest.mark.parametrize("cpu_impl,norm,training", [("torchvision", "FrozenBN", False), ("embedding_bag", "BN", True)])
def test_c4_head_keeps_the_plain_path_where_projecting_is_not_exact_or_cheap(cpu_impl, norm, training):
    heads = _heads(True, cpu_impl, norm).train(training)
    conv1_calls = _count_calls(heads.res5[0].conv1)
    heads.box_features(torch.rand(1, 64, 12, 20), [_boxes(20, seed=10)])
    assert len(conv1_calls) == 1


def test_c4_head_projects_under_bf16_autocast_within_bf16_precision():
    plain, fast = _heads(False), _heads(True)
    fast.load_state_dict(plain.state_dict())
    features = torch.rand(2, 64, 12, 20, generator=torch.Generator().manual_seed(1))
    boxes = [_boxes(10, seed=10), _boxes(10, seed=11)]
    with torch.no_grad():
        expected = plain.box_features(features, boxes)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = fast.box_features(features, boxes)
    assert actual.dtype == torch.bfloat16
    assert (actual.float() - expected).norm() / expected.norm() < 2e-2  # 8-bit mantissas through res5
