import os
import types

import pytest
import torch

from qsim_hooks.formats import kernels

# Keep the suite deterministic and small on 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def eager_kernels():
    """Eager kernels: the fused path has its own tests (tests/formats/test_kernels.py); no compiling."""
    old = kernels.get_backend()
    kernels.set_backend("eager")
    yield
    kernels.set_backend(old)


@pytest.fixture(scope="session")
def qtorch() -> types.SimpleNamespace:
    """qtorch, imported on first use (it compiles its C++ extension then)."""
    import qtorch as qt
    import qtorch.quant as qq

    return types.SimpleNamespace(FloatingPoint=qt.FloatingPoint, FixedPoint=qt.FixedPoint,
                                 BlockFloatingPoint=qt.BlockFloatingPoint, quantizer=qq.quantizer,
                                 float_quantize=qq.float_quantize, fixed_point_quantize=qq.fixed_point_quantize,
                                 block_quantize=qq.block_quantize)
