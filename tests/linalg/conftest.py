import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    """Many tiny products: one thread avoids thread-pool overhead (restored after)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
