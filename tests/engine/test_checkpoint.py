"""Atomic checkpoints survive a crash mid-save; a refused write is one clear error; partial files of a
killed save are removed by the next; RNG states round-trip through weights_only loads."""
import errno
import logging
import os
import random
import tempfile

import numpy as np
import pytest
import torch
from torch import nn

from detres.engine.checkpoint import Checkpointer
from detres.utils.env import capture_rng_state, restore_rng_state
from detres.utils.file_io import WriteError


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


def test_refused_write_is_one_line_naming_file_cause_and_last_checkpoint(tmp_path, monkeypatch):
    _, _, ckpt = make_checkpointer(tmp_path, 1.0)
    ckpt.save("model_a", iteration=1)

    def read_only_folder(*args, **kwargs):  # what a non-root user gets in a folder without write permission
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", read_only_folder)
    with pytest.raises(WriteError) as info:
        ckpt.save("model_b", iteration=2)
    monkeypatch.undo()
    assert str(info.value) == (f"cannot write {tmp_path / 'model_b.pth'}: Permission denied; "
                               f"the last checkpoint, {tmp_path / 'model_a.pth'}, is intact")
    assert info.value.errno == errno.EACCES
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_a.pth"]
    assert ckpt.load(ckpt.get_checkpoint_file())["iteration"] == 1


def test_first_save_into_an_impossible_folder_says_there_is_no_checkpoint(tmp_path):
    (tmp_path / "file").write_text("")
    _, _, ckpt = make_checkpointer(tmp_path / "file" / "out", 1.0)
    with pytest.raises(WriteError, match=r"cannot create the folder .*file/out: Not a directory; "
                                         r"there is no earlier checkpoint in .*file/out$"):
        ckpt.save("model_a", iteration=1)


def test_partial_files_of_a_killed_save_are_removed_by_the_next_save(tmp_path, caplog):
    _, _, ckpt = make_checkpointer(tmp_path, 1.0)
    ckpt.save("model_0000004", iteration=4)
    killed = [".model_0000008.pth.k1ll3d_0.tmp", ".last_checkpoint.k1ll3d_1.tmp"]  # as atomic_write names them
    for name in killed + [".notes.txt.other_0.tmp"]:
        (tmp_path / name).write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="detres.engine.checkpoint"):
        ckpt.save("model_0000008", iteration=8)
    assert caplog.messages == [f"Removed 2 partial file(s) of a checkpoint save that was interrupted (process killed): "
                               f"{', '.join(killed)}"]
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == [".notes.txt.other_0.tmp"]
    assert ckpt.load(ckpt.get_checkpoint_file())["iteration"] == 8


def test_class_names_are_read_back_by_resume_and_by_weights_loading(tmp_path, caplog):
    _, _, ckpt = make_checkpointer(tmp_path, 1.0)
    path = ckpt.save("model_final", iteration=5, class_names=["cat", "dog"])
    assert torch.load(path, weights_only=True)["class_names"] == ["cat", "dog"]
    _, _, resumed = make_checkpointer(tmp_path, 0.0)
    assert resumed.class_names is None
    assert resumed.resume_or_load("", resume=True)["iteration"] == 5 and resumed.class_names == ["cat", "dog"]
    fresh = Checkpointer(nn.Linear(3, 2), str(tmp_path / "elsewhere"))
    with caplog.at_level(logging.DEBUG, logger="detres"):
        assert fresh.resume_or_load(path, resume=True) == {}  # nothing to resume there: MODEL.WEIGHTS
    saved_weight = torch.load(path, weights_only=True)["model"]["weight"]
    assert fresh.class_names == ["cat", "dog"] and torch.equal(fresh.model.weight, saved_weight)
    reports = [r for r in caplog.records if "loaded 2 tensors" in r.getMessage()]
    assert len(reports) == 1  # what was loaded is logged once, by load_weights
