"""The speed options give the plain path's outputs: batch norm folded into convolutions
(``MODEL.FOLD_NORM``), in-place residual additions, channels-last, ``MODEL.COMPILE`` and bf16 autocast
(``TEST.AMP``); folding never touches trainable batch norm in training mode."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from detres.config import load_config
from detres.modeling.backbone.blocks import BasicBlock, BottleneckBlock, ConvNorm
from detres.modeling.meta_arch.build import build_model
from detres.modeling.norm import FrozenBatchNorm2d, fixed_affine
from tests.conftest import REPO_ROOT
from tools.benchmark import NO_SPEED_OPTIONS

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart.yaml")


def _random_statistics(norm: nn.Module, generator: torch.Generator) -> None:
    c = norm.num_features
    with torch.no_grad():
        norm.weight.copy_(torch.rand(c, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(c, generator=generator))
        norm.running_mean.copy_(torch.randn(c, generator=generator))
        norm.running_var.copy_(torch.rand(c, generator=generator) + 0.5)


def _conv_norm(norm: str, folded: bool, seed: int = 0) -> ConvNorm:
    torch.manual_seed(seed)
    layer = ConvNorm(8, 16, 3, padding=1, norm=norm)
    _random_statistics(layer.norm, torch.Generator().manual_seed(seed))
    layer.fold_norm = folded
    return layer


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_folded_eval_norm_gives_the_same_output(norm):
    x = torch.randn(2, 8, 12, 10)
    plain, folded = _conv_norm(norm, False).eval(), _conv_norm(norm, True).eval()
    expected, actual = plain(x), folded(x)
    assert fixed_affine(folded.norm) is not None
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_fixed_affine_matches_the_norm_layer():
    generator = torch.Generator().manual_seed(3)
    for layer in (FrozenBatchNorm2d(6), nn.BatchNorm2d(6).eval()):
        _random_statistics(layer, generator)
        x = torch.randn(3, 6, 4, 4, generator=generator)
        scale, shift = fixed_affine(layer)
        torch.testing.assert_close(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), layer(x))
    assert fixed_affine(nn.BatchNorm2d(6).train()) is None
    assert fixed_affine(nn.GroupNorm(2, 6)) is None


def test_frozen_bn_training_gets_the_same_gradients_folded():
    x = torch.randn(2, 8, 9, 9)
    grads = []
    for folded in (False, True):
        layer = _conv_norm("FrozenBN", folded).train()
        layer(x).square().sum().backward()
        grads.append(layer.conv.weight.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-4)


def test_folding_leaves_trainable_bn_training_untouched():
    """In training mode BN normalises with batch statistics: the flag changes nothing, bit for bit
    (outputs, gradients, running statistics)."""
    x = torch.randn(4, 8, 7, 7)
    results = []
    for folded in (False, True):
        layer = _conv_norm("BN", folded).train()
        out = layer(x)
        out.square().sum().backward()
        results.append((out, layer.conv.weight.grad, layer.norm.weight.grad, layer.norm.running_mean.clone(),
                        layer.norm.running_var.clone()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("norm", ["BN", "FrozenBN", "GN"])
@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_in_place_residual_addition_backpropagates_like_the_formula(norm, block):
    torch.manual_seed(0)
    if block == "basic":
        module = BasicBlock(8, 16, stride=2, norm=norm)
    else:
        module = BottleneckBlock(8, 16, bottleneck_channels=4, stride=2, norm=norm)
    module.train()
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    out = module(x)
    out.sum().backward()
    reference = copy.deepcopy(module)
    x_ref = x.detach().clone().requires_grad_(True)
    expected = torch.relu(reference.residual(x_ref) + reference.identity(x_ref))
    expected.sum().backward()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(x.grad, x_ref.grad)


def _quickstart_model(opts=()):
    cfg = load_config(QUICKSTART, ["MODEL.DEVICE", "cpu", *opts])
    torch.manual_seed(0)
    return build_model(cfg), cfg


def _detector_inputs(n: int = 2):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 255, (3, 160, 224), generator=g, dtype=torch.uint8), "height": 160,
             "width": 224} for _ in range(n)]


def _eval_bn_statistics(model, inputs) -> None:
    """Train-mode forward passes give the BN layers non-trivial running statistics."""
    model.train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None  # cumulative average
        features = model.backbone(model.preprocess_image(inputs)[0])
        del features
    model.eval()


def _assert_same_detections(actual, expected) -> None:
    """Each expected detection has its own actual one of the same class, box within 1e-3 px and score
    within 1e-4 (the order may differ where two scores tie within float rounding)."""
    assert len(actual["boxes"]) == len(expected["boxes"])
    distance = (expected["boxes"][:, None] - actual["boxes"][None]).abs().amax(dim=2)
    distance[expected["classes"][:, None] != actual["classes"][None]] = float("inf")
    nearest = distance.argmin(dim=1)
    assert sorted(nearest.tolist()) == list(range(len(nearest)))  # one to one
    assert distance.min(dim=1).values.max() < 1e-3
    torch.testing.assert_close(actual["scores"][nearest], expected["scores"], rtol=1e-4, atol=1e-4)


_PROJECT = ["MODEL.CPU_ROI_ALIGN", "embedding_bag", "MODEL.PROJECT_BEFORE_POOLING", "True"]
_R50 = ["MODEL.RESNETS.DEPTH", "50"]  # bottleneck blocks: res5 opens with 1x1 convs that can project


@pytest.mark.parametrize("arch,opts", [
    ([], ["MODEL.FOLD_NORM", "True"]),
    ([], ["MODEL.CHANNELS_LAST", "True"]),
    ([], ["MODEL.CPU_ROI_ALIGN", "embedding_bag"]),
    (_R50, _PROJECT),
    (_R50, ["MODEL.FOLD_NORM", "True", "MODEL.CHANNELS_LAST", "True", *_PROJECT]),
])
def test_detector_speed_options_reproduce_the_plain_detections(arch, opts):
    """The quickstart detector (trainable BN, in eval mode; ResNet-18, or a narrow ResNet-50) with
    random weights: proposals and detections with each option equal those of the plain path within
    float tolerance."""
    inputs = _detector_inputs()
    plain, _ = _quickstart_model(NO_SPEED_OPTIONS + arch)
    _eval_bn_statistics(plain, inputs)
    fast, _ = _quickstart_model(NO_SPEED_OPTIONS + arch + opts)
    if "MODEL.PROJECT_BEFORE_POOLING" in opts:
        fast.roi_heads.res5[0].conv1.register_forward_hook(lambda *_: pytest.fail("res5 did not project"))
    fast.load_state_dict(plain.state_dict())
    fast.eval()
    with torch.no_grad():
        (expected,), (expected_props,) = plain.inference(inputs[:1], return_proposals=True)
        (actual,), (actual_props,) = fast.inference(inputs[:1], return_proposals=True)
    assert len(expected_props["boxes"]) > 10 and len(actual_props["boxes"]) == len(expected_props["boxes"])
    torch.testing.assert_close(actual_props["boxes"], expected_props["boxes"], rtol=1e-4, atol=1e-3)
    assert len(expected["boxes"]) > 10
    _assert_same_detections(actual, expected)


def test_bf16_autocast_stays_within_bf16_precision_of_float32():
    model, _ = _quickstart_model()
    inputs = _detector_inputs(1)
    _eval_bn_statistics(model, inputs)
    images = model.preprocess_image(inputs)[0]
    with torch.no_grad():
        expected = model.backbone(images)["res4"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = model.backbone(images)["res4"]
    assert actual.dtype == torch.bfloat16
    relative = ((actual.float() - expected).norm() / expected.norm()).item()
    assert relative < 6e-2  # bf16 keeps 8 significant bits: ~0.4% per op, a few % through 4 stages (3.3% seen)


def test_compile_keeps_names_and_outputs():
    """``MODEL.COMPILE`` compiles in place (state-dict names unchanged) and computes the same features."""
    opts = ["MODEL.FOLD_NORM", "True", "MODEL.CHANNELS_LAST", "False"]
    plain, _ = _quickstart_model(opts)
    compiled, _ = _quickstart_model([*opts, "MODEL.COMPILE", "default"])
    assert list(compiled.state_dict()) == list(plain.state_dict())
    compiled.load_state_dict(plain.state_dict())
    plain.eval(), compiled.eval()
    images = plain.preprocess_image(_detector_inputs(1))[0]
    with torch.no_grad():
        torch.testing.assert_close(compiled.backbone(images)["res4"], plain.backbone(images)["res4"],
                                   rtol=1e-4, atol=1e-4)
