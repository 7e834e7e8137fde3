"""atomic_write tells the disk's errors (one-line WriteError naming the file) from the writer's own."""
import errno
import os
import tempfile

import pytest
import torch

from detres.utils.file_io import WriteError, atomic_write, make_dirs

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


@pytest.fixture
def full_disk(monkeypatch):
    """New temporary files are created on /dev/full: every write to them fails with ENOSPC."""
    real = tempfile.mkstemp

    def mkstemp_on_full_disk(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp_on_full_disk)


def test_full_disk_under_torch_save_is_a_write_error_naming_the_file(tmp_path, full_disk):
    target = tmp_path / "weights.pth"
    target.write_bytes(b"previous")
    with pytest.raises(WriteError) as info:  # torch.save itself reports the failed write as a RuntimeError
        atomic_write(str(target), lambda f: torch.save({"w": torch.zeros(1000, 100)}, f))
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert info.value.errno == errno.ENOSPC and isinstance(info.value.__cause__, OSError)
    assert os.listdir(tmp_path) == ["weights.pth"] and target.read_bytes() == b"previous"


def test_the_writers_own_os_errors_pass_through(tmp_path):
    target = tmp_path / "download.bin"

    def network_drops(f):  # e.g. a download: the network's errors are OSErrors too, not the disk's
        f.write(b"first bytes")
        raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")

    with pytest.raises(ConnectionResetError):
        atomic_write(str(target), network_drops)
    assert os.listdir(tmp_path) == []


def test_make_dirs_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(WriteError, match=r"^cannot create the folder .*file/out: Not a directory$"):
        make_dirs(str(tmp_path / "file" / "out"))
    make_dirs(str(tmp_path / "a" / "b"))
    make_dirs(str(tmp_path / "a" / "b"))  # exists: fine
    assert (tmp_path / "a" / "b").is_dir()
