import pytest
import torch

from qsim_hooks import formats


@pytest.fixture(autouse=True)
def _restore_globals():
    """The examples set torch's thread count and the kernel backend for their run; put them back."""
    threads, backend = torch.get_num_threads(), formats.get_backend()
    yield
    torch.set_num_threads(threads)
    formats.set_backend(backend)
