import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # The engine tests train tiny models: one intra-op thread is fastest and avoids oversubscribing
    # the shared cores (runs after the repository-wide fixture that sets two).
    torch.set_num_threads(1)
    yield
