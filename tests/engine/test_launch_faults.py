"""A spawned gloo run where one process fails while the other waits in a collective: ``launch`` stops
the survivor and raises ``WorkerFailedError`` naming the failed rank and its error; it never hangs."""
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# Runs in a fresh interpreter, so that a hang would hit the subprocess safety net instead of the suite.
_SCRIPT = """
import sys
from detres.engine.launch import WorkerFailedError, launch
from tests.engine.faulty_workers import fail_on_rank
try:
    launch(fail_on_rank, 2, args=(int(sys.argv[1]), sys.argv[2]), backend="gloo")
except WorkerFailedError as e:
    print(f"rank={e.rank} exit_code={e.exit_code}\\n{e}")
    sys.exit(1)
"""


def _launch(*args):
    return subprocess.run([sys.executable, "-c", _SCRIPT, *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)  # safety net only: a correct run takes seconds


@pytest.mark.parametrize("failing_rank, how, expected", [
    (1, "raise", ["rank=1 exit_code=1", "process of rank 1 (of 2", "ValueError: rank 1 failed on purpose"]),
    (0, "exit", ["rank=0 exit_code=3", "process of rank 0 (of 2", "exited with code 3"]),
    (1, "kill", ["rank=1 exit_code=-9", "process of rank 1 (of 2", "was killed by signal SIGKILL"]),
])
def test_failed_worker_stops_the_others_and_names_its_rank(failing_rank, how, expected):
    result = _launch(failing_rank, how)
    assert result.returncode == 1, result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout
    assert "the other processes were stopped" in result.stdout
    assert result.stdout.count("Traceback") == (1 if how == "raise" else 0)  # the failed rank's own, once

