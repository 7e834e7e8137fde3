"""ImageNet ResNet backbone: shapes, styles, freezing, plain nets, shortcut options, widths, norms."""
import pytest
import torch
import torchvision
from torch import nn

import detres
from detres.config import get_cfg
from detres.modeling.backbone import ShapeSpec, create_backbone
from detres.modeling.backbone.build import backbone_cfg
from detres.modeling.backbone.blocks import BasicBlock, BottleneckBlock, make_stage
from detres.modeling.backbone.resnet import build_res5_stage
from detres.modeling.norm import FrozenBatchNorm2d
from detres.utils.analysis import count_flops, count_parameters

ALL = ["stem", "res2", "res3", "res4", "res5", "linear"]
STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}
CHANNELS = {
    18: {"stem": 64, "res2": 64, "res3": 128, "res4": 256, "res5": 512},
    50: {"stem": 64, "res2": 256, "res3": 512, "res4": 1024, "res5": 2048},
}


def _proj(cin: int, cout: int) -> int:
    """Parameters of a 1x1 projection shortcut: conv weight + BN scale and shift."""
    return cin * cout + 2 * cout


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("style", ["msra", "pytorch"])
def test_output_shapes_strides_channels(depth, style):
    model = create_backbone(f"resnet{depth}", out_features=ALL, style=style).eval()
    shapes = model.output_shape()
    assert list(shapes) == ALL
    for name in STRIDES:
        assert shapes[name] == ShapeSpec(CHANNELS[depth][name], STRIDES[name])
    assert shapes["linear"].channels == 1000
    h, w = 128, 192
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    for name, s in STRIDES.items():
        assert out[name].shape == (2, CHANNELS[depth][name], h // s, w // s), name
    assert out["linear"].shape == (2, 1000)


@pytest.mark.parametrize("depth", [18, 50])
def test_style_puts_stride_in_1x1_or_3x3(depth):
    msra = create_backbone(f"resnet{depth}", out_features=["res5"], style="msra")
    torch_style = create_backbone(f"resnet{depth}", out_features=["res5"], style="pytorch")
    for stage in ("res3", "res4", "res5"):
        for model in (msra, torch_style):
            block = getattr(model, stage)[0]
            assert block.input_stride * block.shortcut.conv.stride[0] == 2  # msra bottlenecks subsample first
            assert all(b.conv1.conv.stride == (1, 1) and b.conv2.conv.stride == (1, 1) for b in getattr(model, stage)[1:])
        if depth == 18:  # BasicBlock: the first 3x3 carries the stride in both styles
            assert getattr(msra, stage)[0].conv1.conv.stride == getattr(torch_style, stage)[0].conv1.conv.stride == (2, 2)
        else:
            # The stride of the msra 1x1 conv1 (and 1x1 shortcut) is applied once to the block's input.
            assert getattr(msra, stage)[0].input_stride == 2
            assert getattr(msra, stage)[0].conv1.conv.stride == (1, 1)
            assert getattr(msra, stage)[0].conv2.conv.stride == (1, 1)
            assert getattr(torch_style, stage)[0].input_stride == 1
            assert getattr(torch_style, stage)[0].conv1.conv.stride == (1, 1)
            assert getattr(torch_style, stage)[0].conv2.conv.stride == (2, 2)
    assert msra.res2[0].conv1.conv.stride == (1, 1)
    if depth == 50:  # 64 -> 256 channels at stride 1
        assert msra.res2[0].shortcut.conv.stride == (1, 1)
    else:
        assert msra.res2[0].shortcut is None
    assert count_parameters(msra) == count_parameters(torch_style)


def test_pytorch_style_matches_torchvision_exactly():
    """The same layers as torchvision's resnet50: identical parameter count and conv+fc FLOPs (4.09 G)."""
    ours = create_backbone("resnet50", out_features=["linear"], style="pytorch").eval()
    ref = torchvision.models.resnet50().eval()
    assert count_parameters(ours) == count_parameters(ref) == 25_557_032
    x = torch.zeros(1, 3, 224, 224)
    with torch.no_grad():
        ours_flops, ref_flops = count_flops(ours, (x,)).total(), count_flops(ref, (x,)).total()
        msra_flops = count_flops(create_backbone("resnet50", out_features=["linear"]).eval(), (x,)).total()
    assert ours_flops == ref_flops
    assert ours_flops / 1e9 == pytest.approx(4.09, rel=0.005)
    assert msra_flops < ours_flops  # the stride in the 1x1 shrinks conv2's input


def test_stages_after_last_feature_are_not_built():
    c4 = create_backbone("resnet50", out_features=["res4"])
    children = dict(c4.named_children())
    assert "res4" in children and "res5" not in children and "linear" not in children
    assert not any(k.startswith("res5") for k in c4.state_dict())
    stem_only = create_backbone("resnet18", out_features=["stem"])
    assert [n for n, _ in stem_only.named_children()] == ["stem"]
    assert stem_only(torch.randn(1, 3, 128, 128))["stem"].shape == (1, 64, 32, 32)


def test_parameter_names_follow_the_checkpoint_contract():
    keys = set(create_backbone("resnet50", out_features=["linear"]).state_dict())
    for k in [
        "stem.conv1.conv.weight",
        "stem.conv1.norm.running_var",
        "res2.0.conv1.conv.weight",
        "res2.0.conv3.norm.bias",
        "res2.0.shortcut.conv.weight",
        "res5.2.conv2.norm.weight",
        "linear.weight",
        "linear.bias",
    ]:
        assert k in keys, k
    assert "res2.1.shortcut.conv.weight" not in keys
    assert not any(k.endswith(".bias") and ".conv." in k for k in keys)


def test_freeze_at_freezes_params_and_bn():
    model = create_backbone("resnet18", out_features=["res4"], freeze_at=0)
    model.res2[0].conv1.norm.running_mean.fill_(0.5)
    model.res2[0].conv1.norm.weight.data.fill_(2.0)
    model.freeze(2)
    for name in ("stem", "res2"):
        part = getattr(model, name)
        assert all(not p.requires_grad for p in part.parameters())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in part.modules())
    frozen = model.res2[0].conv1.norm
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert torch.all(frozen.running_mean == 0.5) and torch.all(frozen.weight == 2.0)
    assert all(p.requires_grad for p in model.res3.parameters())
    assert isinstance(model.res3[0].conv1.norm, nn.BatchNorm2d)

    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("stem", "res2"))}
    model.train()
    model(torch.randn(2, 3, 128, 128))["res4"].sum().backward()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.stem.conv1.conv.weight.grad is None and model.res3[0].conv1.conv.weight.grad is not None

    via_cfg = create_backbone("resnet18", out_features=["res5"], freeze_at=5)
    assert sum(p.numel() for p in via_cfg.parameters() if p.requires_grad) == 0
    unfrozen = create_backbone("resnet18", out_features=["res5"], freeze_at=0)
    assert all(p.requires_grad for p in unfrozen.parameters())
    with pytest.raises(ValueError, match="freeze_at"):
        create_backbone("resnet18", out_features=["res3"], freeze_at=4)


@pytest.mark.parametrize("block_kwargs", [dict(block_class=BasicBlock), dict(block_class=BottleneckBlock, bottleneck_channels=16)])
def test_plain_block_has_no_shortcut_effect(block_kwargs):
    torch.manual_seed(0)
    kwargs = dict(block_kwargs, num_blocks=1, in_channels=32, out_channels=64, stride=2)
    plain = make_stage(plain=True, **kwargs)[0].eval()
    residual = make_stage(plain=False, shortcut="A", **kwargs)[0].eval()
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(2, 32, 15, 15)
    with torch.no_grad():
        branch = plain.residual(x)
        padded = torch.cat([x[:, :, ::2, ::2], torch.zeros(2, 32, 8, 8)], dim=1)
        assert torch.allclose(plain(x), torch.relu(branch))
        assert torch.allclose(residual(x), torch.relu(branch + padded), atol=1e-6)
    assert plain.shortcut is None and not plain(x).equal(residual(x))


def test_plain_nets_have_no_shortcuts():
    plain = create_backbone("plain34", out_features=["linear"])
    assert not any("shortcut" in k for k in plain.state_dict())
    assert count_parameters(plain) == count_parameters(create_backbone("resnet34", out_features=["linear"], shortcut="A"))


def test_shortcut_option_parameter_counts():
    counts = {s: count_parameters(create_backbone("resnet18", out_features=["res5"], shortcut=s)) for s in "ABC"}
    plain = count_parameters(create_backbone("plain18", out_features=["res5"]))
    assert counts["A"] == plain  # option A is parameter-free
    downsampling = _proj(64, 128) + _proj(128, 256) + _proj(256, 512)
    assert counts["B"] - counts["A"] == downsampling
    same_shape = 2 * _proj(64, 64) + _proj(128, 128) + _proj(256, 256) + _proj(512, 512)
    assert counts["C"] - counts["B"] == same_shape

    # Bottleneck: res2's first block grows 64 -> 256 channels at stride 1; option A zero-pads it.
    r50 = {s: create_backbone("resnet50", out_features=["res3"], shortcut=s) for s in "AB"}
    assert count_parameters(r50["B"]) - count_parameters(r50["A"]) == _proj(64, 256) + _proj(256, 512)
    assert r50["A"](torch.randn(1, 3, 128, 128))["res3"].shape == (1, 512, 16, 16)


def test_width_overrides():
    model = create_backbone(
        "resnet50", out_features=ALL, stem_out_channels=32, res2_out_channels=128, width_per_group=32
    )
    assert {k: v.channels for k, v in model.output_shape().items()} == {
        "stem": 32, "res2": 128, "res3": 256, "res4": 512, "res5": 1024, "linear": 1000
    }
    assert model.res2[0].conv1.conv.in_channels == 32 and model.res2[0].conv1.conv.out_channels == 32
    assert model.res5[0].conv2.conv.out_channels == 256
    assert model(torch.randn(1, 3, 128, 128))["res5"].shape == (1, 1024, 4, 4)

    small18 = create_backbone("resnet18", out_features=["res5"], res2_out_channels=32)
    assert small18.output_shape()["res5"].channels == 256

    # ResNeXt-50 32x4d: the same layers as torchvision's.
    resnext = create_backbone("resnet50", out_features=["linear"], num_groups=32, width_per_group=4, style="pytorch")
    assert resnext.res2[0].conv2.conv.groups == 32 and resnext.res2[0].conv2.conv.out_channels == 128
    assert count_parameters(resnext) == count_parameters(torchvision.models.resnext50_32x4d())
    with pytest.raises(ValueError, match="NUM_GROUPS"):
        create_backbone("resnet18", num_groups=2)


def test_res5_dilation():
    model = create_backbone("resnet50", out_features=["res4", "res5"], res5_dilation=2)
    assert model.output_shape()["res5"] == ShapeSpec(2048, 16)
    assert model.res5[0].conv2.conv.dilation == (2, 2) and model.res5[0].conv1.conv.stride == (1, 1)
    out = model(torch.randn(1, 3, 128, 128))
    assert out["res5"].shape == (1, 2048, 8, 8) == (1, 2048, *out["res4"].shape[-2:])


@pytest.mark.parametrize("depth,in_ch,out_ch,block", [(18, 256, 512, BasicBlock), (50, 1024, 2048, BottleneckBlock)])
def test_build_res5_stage(depth, in_ch, out_ch, block):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    res5, channels = build_res5_stage(cfg)
    assert channels == out_ch and len(res5) == (2 if depth == 18 else 3)
    assert all(isinstance(b, block) for b in res5)
    full = create_backbone(f"resnet{depth}", out_features=["res5"])
    assert {k: v.shape for k, v in res5.state_dict().items()} == {
        k[len("res5."):]: v.shape for k, v in full.state_dict().items() if k.startswith("res5.")
    }
    assert res5(torch.randn(3, in_ch, 14, 14)).shape == (3, out_ch, 7, 7)
    cfg.MODEL.RESNETS.STYLE = "pytorch"
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    res5_torch, _ = build_res5_stage(cfg)
    if depth == 50:
        assert res5_torch[0].conv2.conv.stride == (2, 2)
    assert isinstance(res5_torch[0].conv1.norm, FrozenBatchNorm2d)


def test_kaiming_and_zero_residual_init():
    model = create_backbone("resnet18", out_features=["res5"])
    w = model.res5[1].conv2.conv.weight
    assert w.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    assert torch.all(model.res2[0].conv2.norm.weight == 1)

    zero = create_backbone("resnet18", out_features=["res5"], zero_init_residual=True).eval()
    assert torch.all(zero.res2[0].conv2.norm.weight == 0) and torch.all(zero.res2[0].conv1.norm.weight == 1)
    x = torch.relu(torch.randn(1, 128, 16, 16))
    with torch.no_grad():  # each block starts as its (projection) shortcut
        assert torch.allclose(zero.res4[0](x), torch.relu(zero.res4[0].shortcut(x)))
        assert torch.allclose(zero.res3[1](x), x)


@pytest.mark.parametrize("norm,cls", [("GN", nn.GroupNorm), ("FrozenBN", FrozenBatchNorm2d), ("SyncBN", nn.SyncBatchNorm)])
def test_norms_forward_on_cpu(norm, cls):
    model = detres.create_backbone("resnet18", out_features=["res3", "res5"], norm=norm)
    assert isinstance(model.stem.conv1.norm, cls) and isinstance(model.res5[1].conv2.norm, cls)
    for train in (True, False):
        out = model.train(train)(torch.randn(2, 3, 128, 128))
        assert out["res3"].shape == (2, 128, 16, 16) and out["res5"].shape == (2, 512, 4, 4)
        assert torch.isfinite(out["res5"]).all()
    if norm == "GN":
        assert model.stem.conv1.norm.num_groups == 32


def test_gn_num_groups_and_bad_options():
    cfg = backbone_cfg("resnet18", out_features=["res2"], norm="GN", gn_num_groups=8)
    from detres.modeling.backbone import build_backbone

    assert build_backbone(cfg).res2[0].conv1.norm.num_groups == 8
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        create_backbone("resnet18", out_features=["res6"])
    with pytest.raises(ValueError, match="shortcut option"):
        create_backbone("resnet18", shortcut="D")
    with pytest.raises(ValueError, match="STYLE"):
        create_backbone("resnet50", style="caffe")
