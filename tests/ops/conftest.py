import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """The op tests run tiny tensors, where thread-pool hand-offs cost more than the work: on a busy
    2-core machine one small matmul can wait a whole scheduler slice (~30 ms) for the second thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
