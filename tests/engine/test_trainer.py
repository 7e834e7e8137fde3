"""The Trainer end to end on the toy task of ``toy.py``: exact resume, non-finite losses, learning,
writers and run bookkeeping."""
import argparse
import json
import logging

import pytest
import torch

from detres.config import load_config
from detres.engine.defaults import default_setup
from detres.engine.hooks import HookBase
from detres.utils.env import seed_all_rng

from tests.engine.toy import PlainToyTrainer, ToyTrainer, toy_cfg


class Crash(HookBase):
    """Kill the run after ``at`` completed iterations (after that iteration's checkpoint)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter + 1 == self.at:
            raise KeyboardInterrupt("simulated crash")


def run(cfg, trainer_cls=ToyTrainer, resume=False, crash_at=None, restore_rng=True):
    seed_all_rng(cfg.SEED)
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=resume)
    if not restore_rng:
        trainer._pending_rng = None
    if crash_at is not None:
        trainer.register_hooks([Crash(crash_at)])
    trainer.train()
    return trainer


def state(trainer):
    model = trainer.model.state_dict()
    opt = trainer.optimizer.state_dict()["state"]
    return model, {k: v["momentum_buffer"] for k, v in opt.items()}, trainer.scheduler.state_dict()


def assert_identical(a, b):
    for (name, x), y in zip(a[0].items(), b[0].values()):
        assert torch.equal(x, y), f"parameter {name} differs"
    assert all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert a[2] == b[2]


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    # dropout (torch RNG) + augmentation (numpy and python RNG) + warm-up + plateau + clipping,
    # evaluations every 4 iterations, checkpoint at 6, crash after 6, resume to 12
    solver = dict(LR_SCHEDULER="plateau", PLATEAU_PATIENCE=1, GAMMA=0.5, WARMUP_ITERS=8, CLIP_GRADIENTS=1.0)
    reference = run(toy_cfg(tmp_path / "a", **solver))
    with pytest.raises(KeyboardInterrupt):
        run(toy_cfg(tmp_path / "b", **solver), crash_at=6)
    assert (tmp_path / "b" / "last_checkpoint").read_text() == "model_0000006.pth"
    resumed = run(toy_cfg(tmp_path / "b", **solver), resume=True)
    assert resumed.start_iter == 6
    assert_identical(state(reference), state(resumed))
    final = torch.load(tmp_path / "b" / "model_final.pth", weights_only=True)
    assert final["iteration"] == 12
    assert all(torch.equal(v, final["model"][k]) for k, v in reference.model.state_dict().items())

    # control: the same resume without restoring the RNG states does not reproduce the weights
    (tmp_path / "b" / "last_checkpoint").write_text("model_0000006.pth")
    unrestored = run(toy_cfg(tmp_path / "b", **solver), resume=True, restore_rng=False)
    assert not torch.equal(unrestored.model.net[1].weight, reference.model.net[1].weight)


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    cfg = toy_cfg(tmp_path, CHECKPOINT_PERIOD=5, MAX_ITER=20)
    cfg.MODEL.META_ARCHITECTURE = "EngineToyNaN"  # NaN from iteration 7 (0-based) on
    with pytest.raises(FloatingPointError, match=r"loss 'loss_cls' is nan at iteration 7 .*model_0000005\.pth"):
        run(cfg)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000005.pth"]
    ckpt = torch.load(tmp_path / "model_0000005.pth", weights_only=True)
    assert ckpt["iteration"] == 5 and all(torch.isfinite(v).all() for v in ckpt["model"].values())
    lines = [json.loads(x) for x in (tmp_path / "metrics.json").read_text().splitlines()]
    with_loss = [x for x in lines if "loss_cls" in x]
    assert with_loss[-1]["iteration"] == 6  # losses of iterations 0..6 were logged, not the broken one
    assert all(torch.isfinite(torch.tensor(x["loss_cls"])) for x in with_loss)


def test_training_learns_and_writers_record_it(tmp_path, detres_logs):
    cfg = toy_cfg(tmp_path, BASE_LR=0.02, MAX_ITER=60, STEPS=(50,), CHECKPOINT_PERIOD=1000)
    cfg.MODEL.META_ARCHITECTURE = "EngineToyMLPNoDropout"
    cfg.TEST.EVAL_PERIOD = 20
    seed_all_rng(cfg.SEED)
    trainer = PlainToyTrainer(cfg)
    before = trainer.test(cfg, trainer.model)["engine_toy_val"]["top1_error"]
    trainer.train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.json").read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [19, 39, 59]
    after = lines[-1]["engine_toy_val/top1_error"]
    assert before > 0.5 and after < 0.05, (before, after)
    assert lines[0]["loss_cls"] > 3 * lines[-1]["loss_cls"]
    assert lines[0]["cls_error"] > 0.15 and lines[-1]["cls_error"] < 0.05
    assert lines[-1]["lr"] == pytest.approx(0.002) and lines[0]["lr"] == pytest.approx(0.02)
    printed = [r.getMessage() for r in detres_logs.records if r.getMessage().startswith("eta: ")]
    assert len(printed) == 3 and "iter: 59/60" in printed[-1]
    for field in ("loss_cls: ", "total_loss: ", "lr: ", "time: ", "data_time: ", "eta: 0:00:00"):
        assert field in printed[-1]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 500
    assert (tmp_path / "model_final.pth").is_file()


def test_tensorboard_gets_scalars_and_images(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class PutImage(HookBase):
        def after_step(self):
            self.trainer.storage.put_image("toy/pattern", (torch.arange(48, dtype=torch.uint8) * 5).view(3, 4, 4))

    cfg = toy_cfg(tmp_path, MAX_ITER=4)
    seed_all_rng(cfg.SEED)
    trainer = ToyTrainer(cfg)
    hook = PutImage()
    hook.trainer = trainer
    trainer.hooks.insert(0, hook)  # before the writers, like a model putting images during its step
    trainer.train()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"loss_cls", "total_loss", "lr", "cls_error", "engine_toy_val/top1_error"} <= set(tags["scalars"])
    assert "toy/pattern" in tags["images"] and len(acc.Images("toy/pattern")) == 4


def test_float16_amp_requested_on_cpu_warns_and_trains_in_float32(tmp_path, detres_logs):
    cfg = toy_cfg(tmp_path, MAX_ITER=2)
    cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE = True, "float16"
    trainer = run(cfg)
    warnings = [r.getMessage() for r in detres_logs.records if r.levelno == logging.WARNING]
    assert any("AMP" in w and "float32" in w for w in warnings), warnings
    assert trainer.amp_dtype is None and trainer.model.net[1].weight.dtype == torch.float32


def test_bfloat16_amp_trains_on_cpu(tmp_path):
    cfg = toy_cfg(tmp_path, MAX_ITER=2)
    cfg.SOLVER.AMP.ENABLED = True  # DTYPE bfloat16 (the default): CPUs run it
    trainer = run(cfg)
    assert trainer.amp_dtype == torch.bfloat16 and trainer.model.net[1].weight.dtype == torch.float32


def test_default_setup_writes_run_info_and_records_the_drawn_seed(tmp_path):
    cfg = toy_cfg(tmp_path)
    cfg.SEED = -1
    args = argparse.Namespace(resume=False, config_file="", opts=[])
    cfg = default_setup(cfg, args, argv=["tools/train_net.py", "SOLVER.BASE_LR", "0.05"])
    seed = cfg.SEED
    assert seed >= 0
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["seed"] == seed and info["command"] == "tools/train_net.py SOLVER.BASE_LR 0.05"
    assert info["detres_version"] and "git_hash" in info and info["world_size"] == 1
    assert "torch" in (tmp_path / "env.txt").read_text()
    assert "Full config" in (tmp_path / "log.txt").read_text()
    reloaded = load_config(str(tmp_path / "config.yaml"))
    assert reloaded.dump() == cfg.dump()
    # a resumed run with SEED -1 reuses the recorded seed (same data stream)
    again = toy_cfg(tmp_path)
    again.SEED = -1
    assert default_setup(again, argparse.Namespace(resume=True)).SEED == seed
    logging.getLogger("detres").handlers.clear()


def test_eval_hook_feeds_first_metric_to_plateau_schedule(tmp_path):
    errors = iter([50.0, 60.0, 40.0])  # evaluations after 4, 8, 12 iterations

    class Scripted(ToyTrainer):
        @classmethod
        def test(cls, cfg, model):
            return {"engine_toy_val": {"top1_error": next(errors), "top5_error": 0.0}}

    cfg = toy_cfg(tmp_path, LR_SCHEDULER="plateau", PLATEAU_PATIENCE=1, GAMMA=0.5, BASE_LR=0.05)
    trainer = run(cfg, trainer_cls=Scripted)
    lrs = [v for v, _ in trainer.storage.history("lr")]
    assert lrs == pytest.approx([0.05] * 8 + [0.025] * 4)  # 60 did not improve on 50: halved after 8
    assert trainer.scheduler.decay.best == 40.0
    assert [v for v, _ in trainer.storage.history("engine_toy_val/top1_error")] == [50.0, 60.0, 40.0]


def test_gradient_clipping_bounds_the_update(tmp_path):
    cfg = toy_cfg(tmp_path, MAX_ITER=1, BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0, CLIP_GRADIENTS=1e-3)
    cfg.DATASETS.TEST = ()
    seed_all_rng(cfg.SEED)
    trainer = PlainToyTrainer(cfg)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(trainer.model.parameters(), before)])
    assert step.norm().item() == pytest.approx(1e-3, rel=1e-3)  # lr * max_norm: the raw gradient is larger


def test_inference_on_dataset_restores_train_mode_and_runs_without_autograd():
    from detres.evaluation.evaluator import inference_on_dataset

    class Recorder:
        def reset(self):
            self.flags = []

        def process(self, inputs, outputs):
            self.flags.append((outputs.is_inference(), len(inputs)))
            if len(self.flags) == 2:
                raise ValueError("evaluator failure")

        def evaluate(self):
            return {"batches": len(self.flags)}

    model = torch.nn.Linear(2, 2).train()
    loader = [torch.zeros(3, 2), torch.zeros(1, 2)]
    rec = Recorder()
    assert inference_on_dataset(asserts_eval_mode(model), loader[:1], rec) == {"batches": 1}
    assert rec.flags == [(True, 3)] and model.training
    with pytest.raises(ValueError, match="evaluator failure"):
        inference_on_dataset(asserts_eval_mode(model), loader, rec)
    assert model.training  # restored after the exception too


def asserts_eval_mode(linear):
    """``linear`` inside a module that fails unless it is called in eval mode."""

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = linear

        def forward(self, x):
            assert not self.training
            return self.linear(x)

    return Wrapper().train()


def test_evaluations_do_not_change_the_training_trajectory(tmp_path):
    with_eval = run(toy_cfg(tmp_path / "a"))  # evaluations after 4, 8, 12 iterations (dropout model)
    cfg = toy_cfg(tmp_path / "b")
    cfg.DATASETS.TEST = ()
    without = run(cfg)
    assert_identical(state(with_eval), state(without))
