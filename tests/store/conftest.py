"""Store tests train tiny models: one torch thread is as fast, and immune to a busy machine (with two
threads, an oversubscribed 2-core box slows these small steps down many times)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
