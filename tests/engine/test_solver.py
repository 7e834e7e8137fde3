"""Optimizer parameter groups and every learning-rate schedule, driven by scripted metrics."""
import pytest
import torch
from torch import nn

from detres.config import ConfigError, get_cfg
from detres.engine.solver import build_lr_scheduler, build_optimizer
from detres.utils.events import EventStorage


def solver_cfg(**kw):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.WARMUP_ITERS = 0
    for k, v in kw.items():
        cfg.SOLVER[k] = v
    return cfg


def tiny_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))


def lrs(cfg, steps, observe=None):
    """lr of the first group after 0..steps completed iterations."""
    opt = build_optimizer(cfg, nn.Linear(2, 2, bias=False))
    sched = build_lr_scheduler(cfg, opt)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_param_groups_weight_decay_norm_and_bias_lr_factor():
    cfg = solver_cfg(WEIGHT_DECAY=1e-4, WEIGHT_DECAY_NORM=0.0, BIAS_LR_FACTOR=2.0, NESTEROV=True, MOMENTUM=0.8)
    model = tiny_model()
    model[0].weight.requires_grad_(False)  # frozen parameters are left out
    opt = build_optimizer(cfg, model)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    conv, bn, fc = model
    assert id(conv.weight) not in by_param
    assert (by_param[id(conv.bias)]["lr"], by_param[id(conv.bias)]["weight_decay"]) == (0.2, 1e-4)
    assert (by_param[id(bn.weight)]["lr"], by_param[id(bn.weight)]["weight_decay"]) == (0.1, 0.0)
    assert (by_param[id(bn.bias)]["lr"], by_param[id(bn.bias)]["weight_decay"]) == (0.2, 0.0)
    assert (by_param[id(fc.weight)]["lr"], by_param[id(fc.weight)]["weight_decay"]) == (0.1, 1e-4)
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.8
    assert sum(len(g["params"]) for g in opt.param_groups) == 5


def test_multistep_with_linear_warmup():
    cfg = solver_cfg(STEPS=(50, 80), GAMMA=0.1, WARMUP_ITERS=10, WARMUP_FACTOR=0.01, WARMUP_METHOD="linear")
    lr = lrs(cfg, 100)
    assert lr[0] == pytest.approx(0.001)
    assert lr[5] == pytest.approx(0.1 * (0.01 + 0.99 * 0.5))
    assert lr[10] == pytest.approx(0.1) and lr[49] == pytest.approx(0.1)
    assert lr[50] == pytest.approx(0.01) and lr[79] == pytest.approx(0.01)
    assert lr[80] == pytest.approx(0.001) and lr[100] == pytest.approx(0.001)


def test_constant_warmup_cosine_and_steps_beyond_max_iter():
    cfg = solver_cfg(LR_SCHEDULER="cosine", WARMUP_ITERS=5, WARMUP_FACTOR=0.1, WARMUP_METHOD="constant")
    lr = lrs(cfg, 100)
    assert lr[:5] == pytest.approx([0.01 * (1 + torch.cos(torch.tensor(i / 100 * 3.14159265)).item()) / 2 * 1
                                     for i in range(5)], rel=1e-4)
    assert lr[50] == pytest.approx(0.05) and lr[100] == pytest.approx(0.0, abs=1e-12)
    lr = lrs(solver_cfg(STEPS=(60, 1000)), 100)  # a step beyond MAX_ITER is ignored
    assert lr[59] == pytest.approx(0.1) and lr[100] == pytest.approx(0.01)


def test_plateau_reduces_after_patience_and_state_round_trips():
    cfg = solver_cfg(LR_SCHEDULER="plateau", GAMMA=0.5, PLATEAU_PATIENCE=2)
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    sched = build_lr_scheduler(cfg, opt)
    seen = []
    for err in [0.9, 0.8, 0.85, 0.81, 0.79, 0.80, 0.79, 0.795, 0.9, 0.9]:
        sched.observe_validation_error(err)
        seen.append(opt.param_groups[0]["lr"])
    # no improvement on 0.8 twice -> halve; 0.79 improves; 0.80, 0.79 (not < best) -> halve; twice more -> halve
    assert seen == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125])
    state = sched.state_dict()
    fresh = build_lr_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and fresh.get_last_lr() == pytest.approx(sched.get_last_lr())
    # the restored one keeps counting: the last 0.9 was the first miss, so one more reduces, then two
    for expected in [0.00625, 0.00625, 0.003125]:
        fresh.observe_validation_error(0.9)
        assert fresh.get_last_lr()[0] == pytest.approx(expected)


def run_train_error_warmup(errors, sched_cfg, resume_at=None):
    cfg = solver_cfg(WARMUP_METHOD="until_train_error", WARMUP_FACTOR=0.1, WARMUP_TRAIN_ERROR=0.8, **sched_cfg)
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    sched = build_lr_scheduler(cfg, opt)
    used = []
    with EventStorage() as storage:
        for i, err in enumerate(errors):
            if i == resume_at:  # a new scheduler restored from the state: identical continuation
                state = sched.state_dict()
                sched = build_lr_scheduler(cfg, opt)
                sched.load_state_dict(state)
            used.append(opt.param_groups[0]["lr"])
            storage.put_scalar("cls_error", err)
            sched.step()
            storage.step()
    return used, sched


def test_until_train_error_warmup_ends_when_running_median_drops():
    # 25 iterations at 0.9, then 0.5: the median of the last 20 is (0.5 + 0.9) / 2 < 0.8 once 10 are 0.5
    errors = [0.9] * 25 + [0.5] * 30
    used, sched = run_train_error_warmup(errors, dict(STEPS=(40,), MAX_ITER=60))
    assert used[:35] == pytest.approx([0.01] * 35)  # warm-up lr during iterations 0..34
    assert used[35:40] == pytest.approx([0.1] * 5)  # then the normal schedule: base lr ...
    assert used[40:] == pytest.approx([0.01] * 15)  # ... and its steps (absolute iterations)
    assert sched.warmup.ended_at == 35
    # an outlier iteration does not end it (median, not latest value)
    used, _ = run_train_error_warmup([0.9] * 20 + [0.1] + [0.9] * 10, dict(MAX_ITER=60))
    assert used == pytest.approx([0.01] * 31)
    # resuming mid-window continues identically
    resumed, _ = run_train_error_warmup(errors, dict(STEPS=(40,), MAX_ITER=60), resume_at=30)
    assert resumed == run_train_error_warmup(errors, dict(STEPS=(40,), MAX_ITER=60))[0]


def test_until_train_error_needs_cls_error_and_bad_values_are_config_errors():
    cfg = solver_cfg(WARMUP_METHOD="until_train_error")
    sched = build_lr_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))
    with EventStorage(), pytest.raises(RuntimeError, match="cls_error"):
        sched.step()
    for key, value in [("LR_SCHEDULER", "poly"), ("WARMUP_METHOD", "exp"), ("OPTIMIZER", "Adam")]:
        cfg = solver_cfg(**{key: value})
        with pytest.raises(ConfigError, match=f"SOLVER.{key}"):
            build_lr_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))
