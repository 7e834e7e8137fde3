"""CIFAR ResNets (6n+2 layers): shapes, layer counts, exact parameter counts, shortcut options, plain nets."""
import pytest
import torch
from torch import nn

from detres.config import get_cfg
from detres.modeling.backbone import ShapeSpec, build_backbone, create_backbone
from detres.modeling.backbone.build import backbone_cfg
from detres.utils.analysis import count_parameters


def _cifar(name: str, num_classes: int = 10, **overrides):
    cfg = backbone_cfg(name, **overrides)
    cfg.MODEL.CLASSIFIER.NUM_CLASSES = num_classes
    return build_backbone(cfg)


def _expected_params(n: int, widths=(16, 32, 64), num_classes: int = 10) -> int:
    """Option A / plain: 3x3 convs and BN (scale, shift) only, plus the fc layer."""
    conv_bn = lambda cin, cout: 9 * cin * cout + 2 * cout  # noqa: E731
    total = conv_bn(3, widths[0])
    cin = widths[0]
    for w in widths:
        total += conv_bn(cin, w) + (2 * n - 1) * conv_bn(w, w)
        cin = w
    return total + widths[-1] * num_classes + num_classes


def test_default_config_is_option_a_with_linear():
    cfg = get_cfg()
    assert cfg.MODEL.CIFAR_RESNETS.SHORTCUT == "A" and cfg.MODEL.CIFAR_RESNETS.OUT_FEATURES == ["linear"]


def test_shapes_and_strides():
    model = _cifar("cifar_resnet20", out_features=["stem", "res2", "res3", "res4", "linear"]).eval()
    assert model.output_shape() == {
        "stem": ShapeSpec(16, 1),
        "res2": ShapeSpec(16, 1),
        "res3": ShapeSpec(32, 2),
        "res4": ShapeSpec(64, 4),
        "linear": ShapeSpec(10, 0),
    }
    with torch.no_grad():
        out = model(torch.randn(4, 3, 32, 32))
    assert out["stem"].shape == out["res2"].shape == (4, 16, 32, 32)
    assert out["res3"].shape == (4, 32, 16, 16) and out["res4"].shape == (4, 64, 8, 8)
    assert out["linear"].shape == (4, 10)
    assert torch.allclose(out["linear"], model.linear(out["res4"].mean(dim=(2, 3))), atol=1e-6)
    assert [n for n, _ in _cifar("cifar_resnet20", out_features=["res3"]).named_children()] == ["stem", "res2", "res3"]


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_weighted_layers_and_exact_parameter_count(depth):
    n = (depth - 2) // 6
    for name in (f"cifar_resnet{depth}", f"cifar_plain{depth}"):
        model = _cifar(name)
        assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules()) == depth
        assert all(len(getattr(model, s)) == n for s in ("res2", "res3", "res4"))
        assert count_parameters(model) == _expected_params(n)
    assert _expected_params(3) == 269_722  # ResNet-20: "0.27M" in the paper's Table 6


def test_resnet1202_builds():
    model = _cifar("cifar_resnet1202")
    assert count_parameters(model) == _expected_params(200)
    assert count_parameters(model) / 1e6 == pytest.approx(19.4, rel=0.02)


def test_shortcut_options_b_and_c():
    n = 3
    a, b, c = (count_parameters(_cifar("cifar_resnet20", shortcut=s)) for s in "ABC")
    proj = lambda cin, cout: cin * cout + 2 * cout  # noqa: E731
    assert a == _expected_params(n)
    assert b - a == proj(16, 32) + proj(32, 64)
    assert c - b == n * proj(16, 16) + (n - 1) * (proj(32, 32) + proj(64, 64))
    model_b = _cifar("cifar_resnet20", shortcut="B")
    assert model_b.res3[0].shortcut.conv.stride == (2, 2) and model_b.res3[1].shortcut is None


def test_option_a_identity_pads_with_zeros():
    block = _cifar("cifar_resnet20").res3[0]
    assert block.shortcut is None
    x = torch.randn(2, 16, 32, 32)
    ident = block.identity(x)
    assert ident.shape == (2, 32, 16, 16)
    assert torch.equal(ident[:, :16], x[:, :, ::2, ::2]) and torch.all(ident[:, 16:] == 0)


def test_plain_has_no_shortcut_effect():
    torch.manual_seed(0)
    plain = _cifar("cifar_plain20").eval()
    residual = _cifar("cifar_resnet20").eval()
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = plain.stem(x)
        block = plain.res2[0]
        assert torch.allclose(block(h), torch.relu(block.residual(h)))
        assert torch.allclose(residual.res2[0](h), torch.relu(block.residual(h) + h))
        assert not torch.allclose(plain(x)["linear"], residual(x)["linear"])


def test_train_step_and_freeze():
    model = create_backbone("cifar_resnet20", freeze_at=2)
    assert all(not p.requires_grad for p in model.res2.parameters())
    assert all(p.requires_grad for p in model.res3.parameters())
    model.train()
    logits = model(torch.randn(8, 3, 32, 32))["linear"]
    nn.functional.cross_entropy(logits, torch.randint(0, logits.shape[1], (8,))).backward()
    assert model.linear.weight.grad.abs().sum() > 0 and model.res3[0].conv1.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["GN", "FrozenBN", "SyncBN"])
def test_norms(norm):
    model = _cifar("cifar_resnet20", out_features=["res4"], norm=norm)
    assert model(torch.randn(2, 3, 32, 32))["res4"].shape == (2, 64, 8, 8)


def test_bad_depth_and_widths():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "cifar_resnet"
    cfg.MODEL.CIFAR_RESNETS.DEPTH = 21
    with pytest.raises(ValueError, match="6n\\+2"):
        build_backbone(cfg)
    with pytest.raises(ValueError, match="6n\\+2"):
        create_backbone("cifar_resnet21")
    cfg.MODEL.CIFAR_RESNETS.DEPTH = 20
    cfg.MODEL.CIFAR_RESNETS.WIDTHS = [16, 32]
    with pytest.raises(ValueError, match="WIDTHS"):
        build_backbone(cfg)
