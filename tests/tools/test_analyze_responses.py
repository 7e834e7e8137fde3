"""Layer responses (paper, Fig. 7): ``detres.utils.analysis.layer_responses`` on models whose response
stds are known exactly, and ``tools/analyze_responses.py`` end to end on a tiny classifier."""
import json
import math

import pytest
import torch
from torch import nn

from detres.modeling.backbone.build import backbone_cfg, build_backbone
from detres.modeling.backbone.blocks import ConvNorm
from detres.utils.analysis import layer_responses, response_layers

EPS = 1e-5  # nn.BatchNorm2d's default


def _dirac_conv_norm(channels: int, kernel: int, gamma: float, beta: float) -> ConvNorm:
    """conv = identity (a centred Dirac kernel), BN in eval mode with mean 0, variance 1:
    ``y = gamma * x / sqrt(1 + eps) + beta``."""
    layer = ConvNorm(channels, channels, kernel, padding=kernel // 2)
    with torch.no_grad():
        nn.init.dirac_(layer.conv.weight)
        layer.norm.weight.fill_(gamma), layer.norm.bias.fill_(beta)
    return layer


def _checkerboard(value_shift: float = 0.0) -> torch.Tensor:
    """(2, 2, 8, 8) of +-1 (mean 0, population std exactly 1), shifted by ``value_shift``."""
    idx = torch.arange(8)
    board = ((idx[:, None] + idx[None, :]) % 2 * 2 - 1).float()
    return board.expand(2, 2, 8, 8).clone() + value_shift


def test_known_stds_pooled_over_all_inputs():
    model = nn.Sequential(_dirac_conv_norm(2, 3, 2.0, 0.5), _dirac_conv_norm(2, 1, 5.0, 0.0),
                          _dirac_conv_norm(2, 3, 3.0, 0.0))
    model.train()
    assert [name for name, _ in response_layers(model)] == ["0", "2"]  # 1x1 layers are not 3x3 layers
    s = math.sqrt(1 + EPS)
    one_batch = dict(layer_responses(model, [_checkerboard()]))
    # layer 0: 2x/s + 0.5 -> std 2/s; layer 2 sees 1x1's 5(...)/s -> 3 * 5 * 2 / s^3
    assert one_batch["0"] == pytest.approx(2 / s, rel=1e-6)  # the model computes in float32
    assert one_batch["2"] == pytest.approx(30 / s**3, rel=1e-6)
    # two batches with means 0 and 2: pooled values {-1, 1, 1, 3}: std sqrt(2), not the mean of per-batch stds (1)
    pooled = dict(layer_responses(model, [_checkerboard(), _checkerboard(2.0)]))
    assert pooled["0"] == pytest.approx(2 * math.sqrt(2) / s, rel=1e-6)
    assert model.training and not model[0]._forward_hooks  # mode restored, hooks removed


def test_cifar_resnet_layer_order_and_values_match_a_manual_forward():
    torch.manual_seed(0)
    cfg = backbone_cfg("cifar_resnet8", shortcut="B", widths=[4, 8, 16])
    model = build_backbone(cfg)
    x = torch.randn(6, 3, 32, 32)
    model(x)  # one training step's worth of BN statistics, so eval-mode BN is not the identity
    responses = layer_responses(model, [x[:4], x[4:]])
    assert [name for name, _ in responses] == [  # 6n + 1 = 7 3x3 layers in network order; projections excluded
        "stem.conv1", "res2.0.conv1", "res2.0.conv2", "res3.0.conv1", "res3.0.conv2", "res4.0.conv1", "res4.0.conv2"]
    model.eval()
    with torch.no_grad():
        stem = model.stem.conv1(x)
        block = model.res2[0]
        conv2 = block.conv2(torch.relu(block.conv1(torch.relu(stem))))
    got = dict(responses)
    assert got["stem.conv1"] == pytest.approx(stem.double().std(unbiased=False).item(), rel=1e-6)
    assert got["res2.0.conv2"] == pytest.approx(conv2.double().std(unbiased=False).item(), rel=1e-6)
    with pytest.raises(ValueError, match="no 3x3"):
        layer_responses(nn.Linear(2, 2), [torch.zeros(1, 2)])


TINY = """\
MODEL:
  META_ARCHITECTURE: ImageClassifier
  DEVICE: cpu
  BACKBONE: {{NAME: cifar_resnet}}
  CIFAR_RESNETS: {{DEPTH: 8, WIDTHS: [4, 8, 16], PLAIN: {plain}}}
  CLASSIFIER: {{NUM_CLASSES: 10}}
  PIXEL_STD: [64.0, 64.0, 64.0]
INPUT:
  CLS: {{AUGMENTATION: cifar, CROP_SIZE: 32, PAD: 4, PER_PIXEL_MEAN: True}}
DATASETS:
  ROOT: {root}
  SYNTHETIC: {{NUM_TRAIN: 20, NUM_VAL: 40}}
DATALOADER: {{NUM_WORKERS: 0}}
TEST: {{IMS_PER_BATCH: 16}}
"""


def test_tool_writes_png_and_json(tmp_path, load_tool, capsys):
    from detres.config import load_config
    from detres.engine.checkpoint import Checkpointer
    from detres.modeling.meta_arch.build import build_model

    tool = load_tool("analyze_responses")
    models = []
    for kind, plain in (("plain", True), ("resnet", False)):
        cfg_path = tmp_path / f"{kind}8.yaml"
        cfg_path.write_text(TINY.format(plain=plain, root=tmp_path / "data"))
        torch.manual_seed(1)
        model = build_model(load_config(str(cfg_path)))
        Checkpointer(model, str(tmp_path / kind)).save("model_final")
        models += [str(cfg_path), str(tmp_path / kind / "model_final.pth")]
    out = tmp_path / "responses"
    tool.main(["--models", *models, "--dataset", "synthetic_cls_val", "--images", "25", "--output", str(out)])
    assert "plain8" in capsys.readouterr().out
    data = json.loads((out / "responses.json").read_text())
    assert list(data) == ["plain8", "resnet8"] and all(len(v) == 7 for v in data.values())
    # the same weights and init seed: the two nets differ only in the shortcuts, so the first
    # two layers (before any addition) respond identically and later ones do not
    for (n1, s1), (n2, s2) in zip(data["plain8"][:2], data["resnet8"][:2]):
        assert n1 == n2 and s1 == pytest.approx(s2, rel=1e-9)
    assert data["plain8"][3][1] != pytest.approx(data["resnet8"][3][1], rel=1e-6)
    # 25 images = 16 + 9: equal to layer_responses over exactly those batches
    model = build_model(load_config(models[2]))
    Checkpointer(model, str(tmp_path), save_to_disk=False).load(models[3])
    cfg = load_config(models[2])
    direct = layer_responses(model, tool._image_batches(cfg, "synthetic_cls_val", 25))
    assert [s for _, s in direct] == pytest.approx([s for _, s in data["resnet8"]], rel=1e-9)
    assert sum(len(b) for b in tool._image_batches(cfg, "synthetic_cls_val", 25)) == 25
    assert (out / "responses.png").read_bytes()[:4] == b"\x89PNG" and (out / "responses.png").stat().st_size > 20_000
    with pytest.raises(SystemExit):
        tool.main(["--models", models[0], "--dataset", "synthetic_cls_val", "--output", str(out)])
