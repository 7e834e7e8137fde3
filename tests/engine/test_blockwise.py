"""Block-wise ("partial") training: phases from the config, weights carried over between phases,
the new stage scaled by LAMBDA, absent stages untouched, and a tiny run end to end."""
import pytest
import torch

from detres.config import ConfigError, get_cfg
from detres.engine.blockwise import Phase, blockwise_phases, phase_config, scale_residual_branches, train_blockwise
from detres.engine.trainer import Trainer
from detres.modeling.backbone.build import create_backbone


def tiny_cfg(tmp_path, order="top_down", lam=0.25):
    cfg = get_cfg()
    cfg.merge_from_dict({
        "MODEL": {"META_ARCHITECTURE": "ImageClassifier", "DEVICE": "cpu", "BACKBONE": {"NAME": "cifar_resnet"},
                  "CIFAR_RESNETS": {"DEPTH": 8, "WIDTHS": [4, 8, 16]}, "CLASSIFIER": {"NUM_CLASSES": 10},
                  "PIXEL_STD": [64.0, 64.0, 64.0]},
        "INPUT": {"CLS": {"AUGMENTATION": "cifar", "CROP_SIZE": 32, "PAD": 4}},
        "DATASETS": {"ROOT": str(tmp_path / "data"), "TRAIN": ["synthetic_cls_train"], "TEST": ["synthetic_cls_val"],
                     "SYNTHETIC": {"NUM_TRAIN": 48, "NUM_VAL": 20}},
        "DATALOADER": {"NUM_WORKERS": 0},
        "SOLVER": {"IMS_PER_BATCH": 8, "BASE_LR": 0.02, "MAX_ITER": 3, "STEPS": [2], "CHECKPOINT_PERIOD": 100,
                   "BLOCKWISE": {"ENABLED": True, "ORDER": order, "PHASE_ITERS": [2, 3], "PHASE_LRS": [0.05, 0.1],
                                 "LAMBDA": lam}},
        "TEST": {"IMS_PER_BATCH": 10},
        "OUTPUT_DIR": str(tmp_path / "out"),
        "SEED": 0,
    })
    return cfg


def test_phases_of_both_orders(tmp_path):
    top_down = blockwise_phases(tiny_cfg(tmp_path))
    assert top_down == [Phase(1, ("res2",), "res2", 2, 0.05), Phase(2, ("res2", "res3"), "res3", 3, 0.1),
                        Phase(3, ("res2", "res3", "res4"), "res4", 3, None)]
    bottom_up = blockwise_phases(tiny_cfg(tmp_path, "bottom_up"))
    assert [(p.present, p.new_stage) for p in bottom_up] == [
        (("res4",), "res4"), (("res3", "res4"), "res3"), (("res2", "res3", "res4"), "res2")]
    cfg = phase_config(tiny_cfg(tmp_path, "bottom_up"), bottom_up[0], "")
    assert cfg.MODEL.CIFAR_RESNETS.ABSENT_STAGES == ["res2", "res3"] and cfg.OUTPUT_DIR.endswith("phase1")
    assert (cfg.SOLVER.MAX_ITER, cfg.SOLVER.BASE_LR, list(cfg.SOLVER.STEPS)) == (2, 0.05, [])
    last = phase_config(tiny_cfg(tmp_path), top_down[2], "w.pth")
    schedule = (last.SOLVER.MAX_ITER, last.SOLVER.BASE_LR, list(last.SOLVER.STEPS), last.MODEL.WEIGHTS)
    assert schedule == (3, 0.02, [2], "w.pth")
    assert last.MODEL.CIFAR_RESNETS.ABSENT_STAGES == []
    bad = tiny_cfg(tmp_path)
    bad.SOLVER.BLOCKWISE.PHASE_LRS = [0.1]
    with pytest.raises(ConfigError, match="PHASE_ITERS and PHASE_LRS need 2"):
        blockwise_phases(bad)
    bad.SOLVER.BLOCKWISE.ORDER = "sideways"
    with pytest.raises(ConfigError, match="ORDER"):
        blockwise_phases(bad)


def test_scale_residual_branches_scales_the_branch_output():
    torch.manual_seed(0)
    stage = create_backbone("cifar_resnet8", widths=[4, 8, 16]).res3.eval()
    x = torch.randn(2, 4, 16, 16)
    block = stage[0]
    with torch.no_grad():
        block.conv2.norm.bias.fill_(0.3)
        before = block.residual(x)
        scale_residual_branches(stage, 0.1)
        assert torch.allclose(block.residual(x), 0.1 * before, atol=1e-6)
    assert block.conv2.norm.weight[0].item() == pytest.approx(0.1) and block.conv1.norm.weight[0].item() == 1.0


class RecordingTrainer(Trainer):
    """Records the backbone's weights when each phase starts training and when it ends."""

    starts, ends = [], []

    def train(self):
        backbone = self.model.backbone
        RecordingTrainer.starts.append({k: v.clone() for k, v in backbone.state_dict().items()})
        super().train()
        RecordingTrainer.ends.append({k: v.clone() for k, v in backbone.state_dict().items()})


def test_top_down_run_carries_weights_over_and_scales_the_new_stage(tmp_path):
    RecordingTrainer.starts, RecordingTrainer.ends = [], []
    folders = train_blockwise(tiny_cfg(tmp_path, lam=0.25), trainer_class=RecordingTrainer)
    assert [f.rsplit("/", 1)[-1] for f in folders] == ["phase1", "phase2", "phase3"]
    assert all((tmp_path / "out" / f"phase{k}" / "model_final.pth").is_file() for k in (1, 2, 3))
    starts, ends = RecordingTrainer.starts, RecordingTrainer.ends
    changed = lambda a, b, prefix: any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))  # noqa: E731
    # phase 1 trains the stem, res2 and the head; the absent res3/res4 keep their init exactly
    assert changed(starts[0], ends[0], "res2.") and changed(starts[0], ends[0], "linear.")
    assert not changed(starts[0], ends[0], "res3.") and not changed(starts[0], ends[0], "res4.")
    for k in (1, 2):  # phase k + 1 starts from phase k's final weights, except the new stage's scaled norm
        new = ("res3", "res4")[k - 1]
        scaled = {f"{new}.0.conv2.norm.weight", f"{new}.0.conv2.norm.bias"}
        for key, value in starts[k].items():
            if key in scaled:
                assert torch.allclose(value, 0.25 * ends[k - 1][key]), key
            else:
                assert torch.equal(value, ends[k - 1][key]), key
        assert torch.all(starts[k][f"{new}.0.conv2.norm.weight"] == 0.25)  # init (1) times lambda
    assert changed(starts[1], ends[1], "res3.") and not changed(starts[1], ends[1], "res4.")
    assert changed(starts[2], ends[2], "res4.")


def test_resume_skips_finished_phases(tmp_path):
    cfg = tiny_cfg(tmp_path, "bottom_up", lam=1.0)
    cfg.DATASETS.TEST = []
    train_blockwise(cfg)
    final = torch.load(tmp_path / "out" / "phase3" / "model_final.pth", weights_only=True)["model"]
    RecordingTrainer.starts, RecordingTrainer.ends = [], []
    train_blockwise(cfg, resume=True, trainer_class=RecordingTrainer)
    assert len(RecordingTrainer.starts) == 3 and all(  # every phase resumed from its final state: nothing trained
        torch.equal(a[k], b[k]) for a, b in zip(RecordingTrainer.starts, RecordingTrainer.ends) for k in a)
    again = torch.load(tmp_path / "out" / "phase3" / "model_final.pth", weights_only=True)["model"]
    assert all(torch.equal(final[k], again[k]) for k in final)
