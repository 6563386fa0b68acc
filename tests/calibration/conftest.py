import pytest

from qsim_hooks.formats import get_backend, set_backend


@pytest.fixture(autouse=True)
def _eager_kernels():
    """Calibration tests score thousands of candidate rows: eager kernels spare them the first-use
    compilation (compiled == eager bit for bit is tested in tests/formats)."""
    before = get_backend()
    set_backend("eager")
    yield
    set_backend(before)
