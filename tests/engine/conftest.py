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
    level, propagate = logger.level, logger.propagate
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # each record reaches caplog once
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
    logger.propagate = propagate
