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


# ---------------------------------------------------------------------------- ResResNet, absent stages
_PROJ = lambda cin, cout: cin * cout + 2 * cout  # noqa: E731  (1x1 conv + BN scale/shift)


def test_resresnet_names_are_listed_and_parsed():
    from detres.modeling.backbone import list_backbones
    from detres.modeling.backbone.build import parse_backbone_name

    names = list_backbones()
    assert all(f"cifar_resresnet{d}" in names for d in (20, 32, 44, 56, 110))
    assert parse_backbone_name("cifar_resresnet32") == (True, False, 32, True)
    assert parse_backbone_name("cifar_resnet32").stage_shortcuts is False
    with pytest.raises(ValueError, match="CIFAR family"):
        parse_backbone_name("resresnet50")


@pytest.mark.parametrize("depth", [20, 32, 110])
def test_resresnet_parameter_counts(depth):
    n = (depth - 2) // 6
    resres_a = _cifar(f"cifar_resresnet{depth}")
    assert isinstance(resres_a.stage_shortcuts["res2"], nn.Identity)
    assert count_parameters(resres_a) == count_parameters(_cifar(f"cifar_resnet{depth}")) == _expected_params(n)
    # option B: the blocks' two projections plus the stage shortcuts' two (16->32, 32->64), 2 x 2,752
    resres_b = count_parameters(_cifar(f"cifar_resresnet{depth}", shortcut="B"))
    assert resres_b == _expected_params(n) + 2 * (_PROJ(16, 32) + _PROJ(32, 64))
    assert _PROJ(16, 32) + _PROJ(32, 64) == 2_752
    if depth == 20:
        assert resres_b == 275_226
    # option C: every block projects too; the stage shortcuts still only where the shape changes
    resres_c = count_parameters(_cifar(f"cifar_resresnet{depth}", shortcut="C"))
    assert resres_c - count_parameters(_cifar(f"cifar_resnet{depth}", shortcut="C")) == 2_752


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resresnet_forward_adds_the_stage_shortcut(shortcut):
    torch.manual_seed(0)
    model = _cifar("cifar_resresnet20", shortcut=shortcut, widths=[4, 8, 16]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for module in model.modules():  # non-trivial BN statistics and affine parameters
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.2, 0.2)
        h = model.stem(x)
        for name in ("res2", "res3", "res4"):
            stage_in = h
            h = getattr(model, name)(stage_in)
            if name == "res2":
                skip = stage_in
            elif shortcut == "A":
                skip = torch.cat([stage_in[:, :, ::2, ::2], torch.zeros_like(stage_in[:, :, ::2, ::2])], dim=1)
            else:
                proj = getattr(model.stage_shortcuts, name)
                skip = proj.norm(proj.conv(stage_in))
            h = torch.relu(h + skip)
        expected = model.linear(h.mean(dim=(2, 3)))
        assert torch.allclose(model(x)["linear"], expected, atol=1e-5)
        plain_forward = model.linear(model.res4(model.res3(model.res2(model.stem(x)))).mean(dim=(2, 3)))
        assert not torch.allclose(plain_forward, expected, atol=1e-3)


def test_resresnet_checkpoint_loads_into_resnet_with_option_a():
    resres, res = _cifar("cifar_resresnet20"), _cifar("cifar_resnet20")
    assert list(resres.state_dict()) == list(res.state_dict())  # same names: weights carry over both ways
    res_b = _cifar("cifar_resresnet20", shortcut="B")
    assert {k for k in res_b.state_dict() if k.startswith("stage_shortcuts.")} >= {
        "stage_shortcuts.res3.conv.weight", "stage_shortcuts.res4.norm.running_var"}


def test_freeze_covers_the_stage_shortcuts_of_frozen_stages():
    model = _cifar("cifar_resresnet20", shortcut="B", freeze_at=3)
    assert not any(p.requires_grad for p in model.stage_shortcuts["res3"].parameters())
    assert all(p.requires_grad for p in model.stage_shortcuts["res4"].parameters())


def test_absent_stages_use_option_a_and_are_not_trained():
    torch.manual_seed(0)
    model = _cifar("cifar_resnet20", absent_stages=["res3", "res4"]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = model.res2(model.stem(x))  # (2, 16, 32, 32) -> res3 absent: (2, 32, 16, 16) -> res4 absent: (2, 64, 8, 8)
        adapted = torch.cat([h[:, :, ::4, ::4], torch.zeros(2, 48, 8, 8)], dim=1)
        assert torch.allclose(model(x)["linear"], model.linear(adapted.mean(dim=(2, 3))), atol=1e-6)
    trainable = count_parameters(model, trainable_only=True)
    assert trainable == count_parameters(model) - count_parameters(model.res3) - count_parameters(model.res4)
    assert count_parameters(model) == _expected_params(3)  # the absent weights stay (for the next phase)
    with pytest.raises(ValueError, match="absent stages"):
        _cifar("cifar_resnet20", absent_stages=["res5"])
