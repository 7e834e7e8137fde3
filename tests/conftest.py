"""Shared test fixtures. ``shared_dir`` points at ``<repo>/../shared`` (golden checkpoints, coco128) and
skips the test with a clear reason when it is absent, as it is in a user's clone."""
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, Optional

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"
# A net against hung subprocesses only, of the order of CI's own 20-minute limit: a correct run on a
# slow, busy machine never reaches it (tests must not fail because a machine is slow).
SAFETY_TIMEOUT_S = 1200


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent (golden checkpoints and coco128 ship only with the project's CI machines)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def coco128_dir(shared_dir: Path) -> Path:
    path = shared_dir / "data" / "coco128"
    if not (path / "annotations" / "instances_val2017.json").is_file():
        pytest.skip(f"{path} lacks annotations/instances_val2017.json")
    return path


@pytest.fixture(autouse=True)
def _few_threads():
    # Helpers and CI share 2 cores; keep intra-op threads bounded and deterministic.
    torch.set_num_threads(2)
    yield


@pytest.fixture(autouse=True)
def _restore_detres_logger():
    # ``setup_logger`` (called by train_net and the engine) stops the "detres" logger's propagation and
    # installs handlers; undo that after each test so later tests' ``caplog`` sees every record.
    logger = logging.getLogger("detres")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    for handler in list(logger.handlers):
        if handler not in handlers:
            logger.removeHandler(handler)
            handler.close()
    logger.setLevel(level)
    logger.propagate = propagate


def _load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` (the tools are scripts, not a package) as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"detres_tool_{name}", REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_tool() -> Callable[[str], ModuleType]:
    """``load_tool("train_net")`` imports ``tools/train_net.py``."""
    return _load_tool


def _run_tool(name: str, *args: str, env: Optional[Dict[str, str]] = None,
              cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO_ROOT / "tools" / f"{name}.py"), *map(str, args)],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd,
                          timeout=SAFETY_TIMEOUT_S)


@pytest.fixture(scope="session")
def run_tool() -> Callable[..., subprocess.CompletedProcess]:
    """``run_tool("train_net", "--config", path, ..., env={...}, cwd=...)`` runs ``tools/train_net.py`` in
    a new Python process, as a user would, and returns the ``CompletedProcess`` (text stdout/stderr)."""
    return _run_tool


# configs/quickstart.yaml on a shortened schedule: a fifth of the images, 200 of the 1400 iterations
QUICKSTART_SHORT = ("DATASETS.SYNTHETIC_DET.NUM_TRAIN", "300", "DATASETS.SYNTHETIC_DET.NUM_VAL", "60",
                    "SOLVER.MAX_ITER", "200", "SOLVER.STEPS", "(160,)", "SOLVER.WARMUP_ITERS", "50",
                    "SOLVER.CHECKPOINT_PERIOD", "1000",
                    # Single-scale testing: the shortened model's figures below were measured that way
                    # (multi-scale + flip testing has its own tests).
                    "TEST.MULTI_SCALE.ENABLED", "False", "TEST.FLIP", "False")


@dataclass
class QuickstartRun:
    """A finished ``tools/train_net.py --config configs/quickstart.yaml`` run (shortened)."""

    out: Path  # OUTPUT_DIR: log.txt, metrics.json, model_final.pth, inference/...
    data_root: Path  # DATASETS.ROOT, holding the generated dataset
    proc: subprocess.CompletedProcess  # its console output


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory, run_tool) -> QuickstartRun:
    """The README's main command on the shortened schedule, run once per test session in a new process;
    the tests that need a trained detector share its model and output folder (read-only)."""
    root = tmp_path_factory.mktemp("quickstart")
    proc = run_tool("train_net", "--config", REPO_ROOT / "configs" / "quickstart.yaml", "DATASETS.ROOT", root / "data",
                    "OUTPUT_DIR", root / "out", *QUICKSTART_SHORT, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return QuickstartRun(root / "out", root / "data", proc)
