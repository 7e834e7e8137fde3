import logging

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The engine tests train tiny models: one intra-op thread is fastest and avoids oversubscribing
    # the shared cores (runs after the repository-wide fixture that sets two).
    torch.set_num_threads(1)
    yield


@pytest.fixture
def detres_logs(caplog):
    """``caplog`` that also sees the "detres" logger after ``setup_logger`` stopped its propagation."""
    logger = logging.getLogger("detres")
    logger.addHandler(caplog.handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
