"""Atomic checkpoints survive a crash mid-save; RNG states round-trip through weights_only loads."""
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from detres.engine.checkpoint import Checkpointer
from detres.utils.env import capture_rng_state, restore_rng_state


def make_checkpointer(tmp_path, value):
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(value)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # creates momentum buffers
    return model, opt, Checkpointer(model, str(tmp_path), save_to_disk=True, optimizer=opt)


def test_crash_during_save_keeps_last_checkpoint_loadable(tmp_path, monkeypatch):
    model, opt, ckpt = make_checkpointer(tmp_path, 1.0)
    good = ckpt.save("model_0000010", iteration=10, rng_states=[capture_rng_state()])
    assert ckpt.get_checkpoint_file() == good

    real_save = torch.save

    def dies_halfway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half of the bytes are on disk ...
        raise OSError("simulated crash during the save")  # ... when the process dies

    with torch.no_grad():
        model.weight.fill_(2.0)
    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save("model_0000020", iteration=20)
    monkeypatch.undo()

    assert not (tmp_path / "model_0000020.pth").exists()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000010.pth"
    fresh_model, fresh_opt, fresh = make_checkpointer(tmp_path, 5.0)
    extra = fresh.load(fresh.get_checkpoint_file())
    assert extra["iteration"] == 10
    assert torch.equal(fresh_model.weight, torch.full((2, 3), 1.0) - 0.1 * 1.0)  # 1 - lr * grad(=1)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["momentum_buffer"], torch.ones(2, 3))


def test_crash_between_file_and_pointer_keeps_previous_pointer(tmp_path, monkeypatch):
    _, _, ckpt = make_checkpointer(tmp_path, 1.0)
    ckpt.save("model_a", iteration=1)
    import detres.engine.checkpoint as module

    real = module.atomic_write

    def pointer_fails(path, write):
        if os.path.basename(path) == "last_checkpoint":
            raise KeyboardInterrupt  # killed right after the checkpoint file itself was moved into place
        real(path, write)

    monkeypatch.setattr(module, "atomic_write", pointer_fails)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_b", iteration=2)
    monkeypatch.undo()
    assert ckpt.get_checkpoint_file().endswith("model_a.pth")
    assert ckpt.load(ckpt.get_checkpoint_file())["iteration"] == 1


def test_corrupt_or_missing_checkpoint_errors_name_the_file(tmp_path):
    _, _, ckpt = make_checkpointer(tmp_path, 1.0)
    bad = tmp_path / "model_bad.pth"
    bad.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    with pytest.raises(RuntimeError, match="model_bad.pth"):
        ckpt.load(str(bad))
    (tmp_path / "last_checkpoint").write_text("model_gone.pth")
    with pytest.raises(FileNotFoundError, match="model_gone.pth"):
        ckpt.get_checkpoint_file()


def test_rng_states_round_trip_through_weights_only_checkpoint(tmp_path):
    _, _, ckpt = make_checkpointer(tmp_path, 1.0)
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    np.random.randn()  # a cached gaussian is part of NumPy's state
    path = ckpt.save("model_rng", iteration=0, rng_states=[capture_rng_state()])
    expected = (torch.rand(4), np.random.randn(4), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    state = torch.load(path, weights_only=True)["rng_states"][0]
    restore_rng_state(state)
    got = (torch.rand(4), np.random.randn(4), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
