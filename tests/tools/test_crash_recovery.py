"""Crash survival of real tools/train_net.py processes on the detection quickstart, heavily shortened.

A process is SIGKILL-ed in the middle of training and in the middle of writing a checkpoint; ``--resume``
then reaches final weights bit-identical to an uninterrupted run. A disk that fills and an output folder
that cannot be made end the run with one ``error:`` line, the last checkpoint intact.

Faults come from a small wrapper script (written here, never part of detres) that patches the process
from outside and then runs the real tools/train_net.py with ``runpy``: it parks the process before a
given iteration, or halfway through a checkpoint's bytes, and creates a marker file for the test to
kill it; or it puts checkpoint files on ``/dev/full`` (the kernel answers ENOSPC), or sets
``RLIMIT_FSIZE`` (the kernel answers EFBIG).
"""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TRAIN_NET = REPO / "tools" / "train_net.py"
SAFETY_NET_S = 900  # against a hung process only; a correct run takes seconds

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not hasattr(signal, "SIGKILL") or not os.path.exists("/dev/full"),
                                                   reason="needs POSIX signals and /dev/full")]

SHORT = ["DATASETS.SYNTHETIC_DET.NUM_TRAIN", "32", "DATASETS.SYNTHETIC_DET.NUM_VAL", "8", "DATASETS.TEST", "()",
         "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "12", "SOLVER.STEPS", "(10,)", "SOLVER.WARMUP_ITERS", "2",
         "SOLVER.CHECKPOINT_PERIOD", "4", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "SEED", "7"]

FAULTY = '''\
import io, os, resource, runpy, signal, sys, tempfile, time
import torch
from detres.engine.trainer import Trainer

kind, _, arg = os.environ["FAULT"].partition(":")


def wait_to_be_killed():
    open(os.environ["FAULT_MARKER"], "w").close()
    time.sleep(600)
    sys.exit("fault wrapper: not killed within 600 s")


if kind == "pause_before_iter":  # park the training loop before iteration <arg> runs
    run_step = Trainer.run_step

    def parked_run_step(self):
        if self.iter == int(arg):
            wait_to_be_killed()
        run_step(self)

    Trainer.run_step = parked_run_step
elif kind == "pause_in_save":  # the <arg>-th torch.save puts half of its bytes on disk, then waits
    save, calls = torch.save, []

    def half_save(obj, f, *args, **kwargs):
        calls.append(obj)
        if len(calls) != int(arg):
            return save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        os.fsync(f.fileno())
        wait_to_be_killed()

    torch.save = half_save
elif kind == "full_disk_after":  # after <arg> checkpoint files, new ones are created on /dev/full
    mkstemp, made = tempfile.mkstemp, []

    def mkstemp_on_full_disk(*args, **kwargs):
        fd, path = mkstemp(*args, **kwargs)
        if os.path.basename(path).startswith(".model_"):
            made.append(path)
            if len(made) > int(arg):
                full = os.open("/dev/full", os.O_WRONLY)
                os.dup2(full, fd)
                os.close(full)
        return fd, path

    tempfile.mkstemp = mkstemp_on_full_disk
elif kind == "file_size_limit":  # no file may grow beyond <arg> bytes
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(arg), resource.RLIM_INFINITY))
else:
    sys.exit(f"fault wrapper: unknown fault {kind!r}")
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''


class Runs:
    """Launches train_net (plain or under the fault wrapper) on the shared dataset."""

    def __init__(self, root: Path) -> None:
        self.root, self.wrapper = root, root / "faulty_train_net.py"
        self.wrapper.write_text(FAULTY)

    def command(self, out: Path, *extra: str, fault: str = "") -> list:
        prefix = [str(self.wrapper)] if fault else []
        return [sys.executable, *prefix, str(TRAIN_NET), "--config", str(REPO / "configs" / "quickstart.yaml"),
                *extra, "DATASETS.ROOT", str(self.root / "data"), "OUTPUT_DIR", str(out), *SHORT]

    def env(self, fault: str = "", marker: Optional[Path] = None) -> dict:
        return {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": fault, "FAULT_MARKER": str(marker)}

    def run(self, out: Path, *extra: str, fault: str = "") -> subprocess.CompletedProcess:
        return subprocess.run(self.command(out, *extra, fault=fault), env=self.env(fault), cwd=self.root,
                              capture_output=True, text=True, timeout=SAFETY_NET_S)

    def kill_at(self, out: Path, fault: str, check_before_kill=lambda: None) -> None:
        """Run under ``fault`` until it reports the moment (marker file), call ``check_before_kill``, then
        SIGKILL the process."""
        marker, log = self.root / f"{out.name}.marker", self.root / f"{out.name}.console"
        with open(log, "w") as console:
            proc = subprocess.Popen(self.command(out, fault=fault), env=self.env(fault, marker), cwd=self.root,
                                    stdout=console, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + SAFETY_NET_S
            while not marker.exists():
                assert proc.poll() is None, f"train_net ended (rc {proc.returncode}) before the fault:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the fault was not reached"
                time.sleep(0.05)
            check_before_kill()
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        assert proc.returncode == -signal.SIGKILL


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def pointer(out: Path) -> str:
    return (out / "last_checkpoint").read_text()


def partial_files(out: Path) -> list:
    return sorted(p.name for p in out.glob(".*.tmp"))


def assert_same_training_state(got: dict, expected: dict) -> None:
    assert got["iteration"] == expected["iteration"]
    assert got["model"].keys() == expected["model"].keys()
    differ = [k for k, v in got["model"].items() if not torch.equal(v, expected["model"][k])]
    assert differ == [], f"{len(differ)} of {len(got['model'])} model tensors differ, e.g. {differ[:3]}"
    for index, state in expected["optimizer"]["state"].items():
        assert torch.equal(got["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])
    assert got["scheduler"] == expected["scheduler"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("crash"))


@pytest.fixture(scope="module")
def reference(runs) -> Path:
    """The uninterrupted run (it also generates the shared dataset)."""
    out = runs.root / "reference"
    proc = runs.run(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in sorted(out.glob("*.pth"))] == ["model_0000004.pth", "model_0000008.pth", "model_final.pth"]
    assert load(out / "model_final.pth")["iteration"] == 12
    return out


def test_kill_9_mid_training_then_resume_is_bit_identical(runs, reference):
    out = runs.root / "killed_training"

    def between_checkpoints():
        assert pointer(out) == "model_0000004.pth" and not (out / "model_0000008.pth").exists()

    runs.kill_at(out, "pause_before_iter:6", between_checkpoints)  # 6 of 12 iterations done
    assert not (out / "model_final.pth").exists()

    proc = runs.run(out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting training from iteration 4 to 12" in proc.stdout
    assert_same_training_state(load(out / "model_final.pth"), load(reference / "model_final.pth"))
    assert_same_training_state(load(out / "model_0000008.pth"), load(reference / "model_0000008.pth"))


def test_kill_9_mid_checkpoint_write_keeps_last_checkpoint_and_resumes_bit_identical(runs, reference):
    out = runs.root / "killed_saving"
    full_size = (reference / "model_0000008.pth").stat().st_size

    def half_written():
        (tmp,) = out.glob(".model_0000008.pth.*.tmp")  # the write in progress: half of the bytes on disk
        assert 0 < tmp.stat().st_size < full_size

    runs.kill_at(out, "pause_in_save:2", half_written)  # the 1st save is model_0000004, the 2nd model_0000008
    (stray,) = out.glob(".model_0000008.pth.*.tmp")
    assert not (out / "model_0000008.pth").exists()
    with pytest.raises(RuntimeError, match="failed reading zip archive"):
        load(stray)  # really a partial file, and nothing took it for a checkpoint
    assert pointer(out) == "model_0000004.pth"
    assert_same_training_state(load(out / "model_0000004.pth"), load(reference / "model_0000004.pth"))

    proc = runs.run(out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting training from iteration 4 to 12" in proc.stdout
    assert f"Removed 1 partial file(s) of a checkpoint save that was interrupted (process killed): {stray.name}" in proc.stdout
    assert partial_files(out) == []
    assert_same_training_state(load(out / "model_final.pth"), load(reference / "model_final.pth"))


def assert_one_error_line(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {expected}"]


def test_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_last_one(runs, reference):
    out = runs.root / "full_disk"
    proc = runs.run(out, fault="full_disk_after:1")  # model_0000004 is written, model_0000008 hits ENOSPC
    assert_one_error_line(proc, f"cannot write {out / 'model_0000008.pth'}: No space left on device; "
                                f"the last checkpoint, {out / 'model_0000004.pth'}, is intact")
    assert partial_files(out) == [] and not (out / "model_0000008.pth").exists()
    assert pointer(out) == "model_0000004.pth"
    assert_same_training_state(load(out / "model_0000004.pth"), load(reference / "model_0000004.pth"))


def test_file_size_limit_on_resume_is_one_line_and_keeps_the_last_checkpoint(runs, reference):
    out = runs.root / "size_limit"
    out.mkdir()
    shutil.copy(reference / "model_0000004.pth", out)
    (out / "last_checkpoint").write_text("model_0000004.pth")
    before = (out / "model_0000004.pth").read_bytes()
    # a checkpoint is ~6 MB; the log and run files stay far below 1 MB
    proc = runs.run(out, "--resume", fault=f"file_size_limit:{1 << 20}")
    assert_one_error_line(proc, f"cannot write {out / 'model_0000008.pth'}: File too large; "
                                f"the last checkpoint, {out / 'model_0000004.pth'}, is intact")
    assert "Starting training from iteration 4 to 12" in proc.stdout
    assert partial_files(out) == [] and pointer(out) == "model_0000004.pth"
    assert (out / "model_0000004.pth").read_bytes() == before


def test_output_dir_that_cannot_be_made_fails_before_training(runs):
    (runs.root / "a_file").write_text("not a folder")
    out = runs.root / "a_file" / "out"
    proc = runs.run(out)
    assert_one_error_line(proc, f"cannot create the folder {out}: Not a directory")
    assert "Starting training" not in proc.stdout
