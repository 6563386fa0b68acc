import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as the golden data was made (the old tool's float32 log2 / pow and the model kernels follow
    the code path); the compat tensors are small, and a second thread only adds its start-up cost."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
