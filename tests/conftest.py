"""Shared test fixtures. ``shared_dir`` points at ``<repo>/../shared`` (golden checkpoints, coco128) and
skips the test with a clear reason when it is absent, as it is in a user's clone."""
import importlib.util
import logging
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


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
