"""tools/benchmark.py: times detres and torchvision's fasterrcnn_resnet50_fpn on the same images and
reports their ratio (figures, not a timed test: it only checks that they are measured and consistent)."""
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def benchmark_tool(load_tool):
    return load_tool("benchmark")


def test_benchmark_measures_both_models_on_the_quickstart_images(tmp_path, benchmark_tool, capsys):
    benchmark_tool.main([
        "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--images", "2", "--warmup", "0",
        "--repeats", "1", "--json", "DATASETS.ROOT", str(tmp_path),
        "DATASETS.SYNTHETIC_DET.NUM_TRAIN", "2", "DATASETS.SYNTHETIC_DET.NUM_VAL", "4", "SOLVER.IMS_PER_BATCH", "2",
    ])
    out = capsys.readouterr().out
    assert "2 test images of synthetic_det_val" in out
    results = json.loads(out[out.index("{"):])
    assert set(results) == {"inference s/image", "training s/iter"}
    for r in results.values():
        assert r["detres"] > 0 and r["torchvision_fasterrcnn_resnet50_fpn"] > 0
        assert r["ratio"] == pytest.approx(r["torchvision_fasterrcnn_resnet50_fpn"] / r["detres"])


def test_benchmark_refuses_a_classifier_config(benchmark_tool, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_tool.main(["--config", str(REPO_ROOT / "configs" / "quickstart_cls.yaml")])
    assert exit_info.value.code == 2 and "compares detectors" in capsys.readouterr().err


def test_norm_statistics_are_calibrated_layer_by_layer(benchmark_tool):
    import torch
    from torch import nn

    from detres.modeling.norm import FrozenBatchNorm2d

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), FrozenBatchNorm2d(8))
    x = 50 * torch.rand(4, 3, 16, 16) + 100  # far from unit scale, as raw pixels are
    benchmark_tool.calibrate_norm_statistics(model, (x,))
    assert not model.training
    with torch.no_grad():
        for end in (2, 5):  # the outputs of both norm layers, with the statistics set on this input
            y = model[:end](x)
            assert y.mean((0, 2, 3)).abs().max() < 1e-3
            assert (y.var((0, 2, 3)) - 1).abs().max() < 1e-2


def test_benchmark_times_the_test_time_extras_against_the_plain_model(tmp_path, benchmark_tool, capsys):
    benchmark_tool.main([
        "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--extras", "--images", "2", "--warmup", "0",
        "--repeats", "1", "--json", "DATASETS.ROOT", str(tmp_path), "DATASETS.SYNTHETIC_DET.NUM_TRAIN", "2",
        "DATASETS.SYNTHETIC_DET.NUM_VAL", "4", "TEST.MULTI_SCALE.SIZES", "(120, 160, 200)",
        "TEST.MULTI_SCALE.TARGET_SIZE", "60",
    ])
    out = capsys.readouterr().out
    results = json.loads(out[out.index("{"):])
    assert list(results) == ["plain", "+ box refinement", "+ multi-scale testing", "+ flip testing", "all of them"]
    assert results["plain"]["ratio"] == 1.0
    for r in results.values():
        assert r["s/image"] > 0 and r["ratio"] == pytest.approx(r["s/image"] / results["plain"]["s/image"])


def test_calibration_reaches_norms_folded_into_their_convolutions(benchmark_tool):
    """A ConvNorm folds its norm (MODEL.FOLD_NORM): the norm never runs, yet calibration must set it."""
    import torch

    from detres.modeling.backbone.blocks import ConvNorm

    layer = ConvNorm(3, 8, 3, norm="FrozenBN")
    assert layer.fold_norm
    benchmark_tool.calibrate_norm_statistics(layer, (50 * torch.rand(2, 3, 12, 12) + 100,))
    assert layer.fold_norm and layer.norm.running_var.min() > 1  # set from the raw-pixel-scale conv output


def test_benchmark_options_times_each_speed_option_with_the_same_detections(tmp_path, benchmark_tool, capsys):
    benchmark_tool.main([
        "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--options", "--skip-compile", "--images", "2",
        "--warmup", "0",
        "--repeats", "1", "--json", "DATASETS.ROOT", str(tmp_path), "DATASETS.SYNTHETIC_DET.NUM_TRAIN", "2",
        "DATASETS.SYNTHETIC_DET.NUM_VAL", "4", "SOLVER.IMS_PER_BATCH", "2",
    ])
    out = capsys.readouterr().out
    results = json.loads(out[out.index("{"):])
    assert list(results) == [n for n in benchmark_tool.SPEED_OPTIONS if "compile" not in n]  # tested elsewhere
    plain = results["plain (no option)"]
    assert plain["inference s/image ratio"] == 1.0 and plain["matched"] == 1.0
    for name, r in results.items():
        assert r["inference s/image"] > 0 and r["training s/iter"] > 0
        assert r["training s/iter ratio"] == pytest.approx(r["training s/iter"] / plain["training s/iter"])
        if "bf16" not in name:  # float32 options reproduce the plain detections
            assert r["matched"] >= 0.95, name


def test_benchmark_data_reports_loader_and_model_throughput(tmp_path, benchmark_tool, capsys):
    benchmark_tool.main([
        "--config", str(REPO_ROOT / "configs" / "quickstart.yaml"), "--data", "--batches", "3", "--warmup", "1",
        "--repeats", "1", "--json", "DATASETS.ROOT", str(tmp_path), "DATASETS.SYNTHETIC_DET.NUM_TRAIN", "8",
        "DATASETS.SYNTHETIC_DET.NUM_VAL", "2", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "1",
    ])
    out = capsys.readouterr().out
    results = json.loads(out[out.index("{"):])
    assert set(results) == {"loader, 1 workers", "loader, main process (one worker)", "model training"}
    assert all(v > 0 for v in results.values())
