"""Complexity analysis: the paper's FLOP / parameter table, the counting conventions and the CLI."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from detres.config import load_config
from detres.utils.analysis import (
    PAPER_CIFAR_MPARAMS,
    PAPER_IMAGENET_GFLOPS,
    analyze_backbone,
    analyze_config,
    count_flops,
    format_paper_table,
    paper_table,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_paper_table_within_two_percent():
    rows = paper_table()
    assert [r["model"] for r in rows] == [f"resnet{d}" for d in PAPER_IMAGENET_GFLOPS] + [
        f"cifar_resnet{d}" for d in PAPER_CIFAR_MPARAMS
    ]
    for r in rows:
        assert abs(r["rel_error"]) < 0.02, format_paper_table([r])
    measured = {r["model"]: r["measured"] for r in rows}
    # GFLOPs grow with depth as in Table 1; ResNet-50 costs about as much as ResNet-34.
    assert measured["resnet18"] < measured["resnet34"] < measured["resnet50"] < measured["resnet101"]
    assert measured["resnet50"] / measured["resnet34"] == pytest.approx(1.05, abs=0.03)
    assert "resnet152" in format_paper_table(rows)


def test_flops_count_conv_and_fc_multiply_adds():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 10 * 10, 5)).eval()
    x = torch.zeros(1, 3, 10, 10)
    conv_macs, fc_macs = 8 * 10 * 10 * 3 * 9, 800 * 5
    assert count_flops(model, (x,)).total() == conv_macs + fc_macs
    assert count_flops(model, (x,), conv_fc_only=False).total() > conv_macs + fc_macs  # adds batch_norm


def test_analyze_backbone_breakdown():
    result = analyze_backbone("resnet18", input_size=128)
    assert result["params"] == result["trainable_params"] == 11_689_512
    assert set(result["gflops_by_module"]) == {"stem", "res2", "res3", "res4", "res5", "linear"}
    assert sum(result["gflops_by_module"].values()) == pytest.approx(result["gflops"])
    # conv cost scales with the number of pixels: 224^2 / 128^2
    full = analyze_backbone("resnet18")
    conv_ratio = (full["gflops"] - 0.000512) / (result["gflops"] - 0.000512)
    assert conv_ratio == pytest.approx((224 / 128) ** 2, rel=1e-3)


def test_analyze_config(tmp_path):
    path = tmp_path / "cifar56.yaml"
    path.write_text("MODEL:\n  BACKBONE:\n    NAME: cifar_resnet\n  CIFAR_RESNETS:\n    DEPTH: 56\n")
    result = analyze_config(load_config(str(path), ["MODEL.CLASSIFIER.NUM_CLASSES", "10"]))
    assert result["input_size"] == 32
    assert result["params"] == 853_018  # 0.85M in the paper's Table 6
    assert result["gflops"] == pytest.approx(0.125, rel=0.01)


def test_tool_json_and_errors(run_tool):
    proc = run_tool("analyze_model", "--backbone", "cifar_resnet20", "--json",
                    env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "2"}, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == "cifar_resnet20" and result["input_size"] == 32
    assert result["params"] == 269_722
    assert result["gflops"] == pytest.approx(analyze_backbone("cifar_resnet20")["gflops"])
    assert result["gflops"] == pytest.approx(0.0406, rel=0.01)


def test_tool_errors_and_text_output(capsys, load_tool):
    tool = load_tool("analyze_model")
    with pytest.raises(SystemExit, match="depth must be one of"):
        tool.main(["--backbone", "resnet17"])
    with pytest.raises(SystemExit, match="config file not found"):
        tool.main(["--config", "/nonexistent/x.yaml"])
    with pytest.raises(SystemExit):
        tool.main(["--backbone", "resnet18", "MODEL.RESNETS.DEPTH", "50"])  # overrides need --config
    assert "overrides need --config" in capsys.readouterr().err
    tool.main(["--backbone", "cifar_plain20"])
    out = capsys.readouterr().out
    assert "parameters: 269,722" in out and "res4" in out
