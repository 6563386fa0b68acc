"""The fused (torch.compile) block kernels on the inputs their compiled-only code paths handle.

The CPU kernels store the per-block scale in a loop of its own, test float32
saturation and put the overflow sign on with bit operations, and compute NVFP4's
dynamic per-tensor level inside the kernel. Each is checked here, compiled, against
independent references (PyTorch's float8 casts, a table rounding, NVIDIA's recipe
in plain torch) and, where no reference handles the input (NaN, Inf, products past
float32 max), against the eager kernel bit for bit: odd sizes (zero padding), all-zero
blocks, fp32 subnormals, blocks near float32 max, moved axes.
"""

from __future__ import annotations

import pytest
import torch

from qsim_hooks.formats import get, kernels
from qsim_hooks.formats.block import NAMED, BlockFormat, IntElement, mx, nvfp4
from qsim_hooks.formats.floating import E2M1, E4M3

from .test_block import (
    MX_ELEM,
    _bits_equal,
    _e2m1_rne,
    _frexp_floor_log2,
    _mx_fp8_reference,
    _nvfp4_reference,
)

F32_MAX = 3.4028234663852886e38
BLOCK_NAMES = [n for n, f in NAMED.items() if isinstance(f, BlockFormat)]
EXTRA = {"toward_zero": BlockFormat(E4M3, rounding="toward_zero"),
         "e8m0_ceil": BlockFormat(E2M1, scale_rounding="ceil"),
         "e8m0_nearest": BlockFormat(E2M1, scale_rounding="nearest"),
         "int4_b16": BlockFormat(IntElement(4), block_size=16),
         "qtorch": BlockFormat(IntElement(8), qtorch_compat=True), "nvfp4_ceil": nvfp4(scale_rounding="ceil"),
         "nearest_away": BlockFormat(E2M1, rounding="nearest_away"), "nvfp4_axis0": nvfp4(axis=0),
         "channel": BlockFormat(E4M3, grouping="channel", axis=0), "mx_axis0": mx("e4m3", axis=0)}


@pytest.fixture
def compiled(eager_kernels):
    """The fused kernels (``eager_kernels`` restores the backend afterwards)."""
    kernels.set_backend("compiled")
    yield
    assert not kernels._compile_failed, "torch.compile fell back to eager: nothing fused was tested"


def _finite_edges(rows: int = 40, cols: int = 96, seed: int = 0) -> torch.Tensor:
    """Blocks at every scale: zeros, fp32 subnormals, tiny normals, ordinary, near float32 max; ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.exp2(torch.randint(-40, 40, (rows, 1), generator=g).float())
    x[0] = 0.0
    x[1] = -0.0
    x[2] = torch.randn(cols, generator=g) * 1e-41  # fp32 subnormals only
    x[3, ::2] = 1e-44
    x[4] *= 1e-37
    x[5] = torch.randn(cols, generator=g) * 1e37
    x[6, :8] = torch.tensor([6.0, 5.0, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25])  # E2M1 ties
    x[7] = 448.0 * torch.arange(cols) / (cols - 1)
    return x


def _with_specials(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[8, 3] = float("nan")
    x[9, 40] = float("inf")
    x[10, 70] = -float("inf")
    x[11, :4] = torch.tensor([F32_MAX, -F32_MAX, 3.0e38, -1.0])  # products can round past float32 max
    x[12] = -F32_MAX * torch.rand(x.shape[1], generator=torch.Generator().manual_seed(5))
    return x


@pytest.mark.parametrize("name,dtype", [("mxfp8_e4m3", torch.float8_e4m3fn), ("mxfp8_e5m2", torch.float8_e5m2)])
@pytest.mark.parametrize("shape", [(40, 96), (40 * 96,)])
def test_fused_mxfp8_matches_torch_float8_casts(compiled, name, dtype, shape):
    x = _finite_edges().reshape(shape)
    elem_max, emax, _ = MX_ELEM[name]
    assert _bits_equal(get(name)(x), _mx_fp8_reference(x, dtype, elem_max, emax, 32))


def test_fused_mxfp4_matches_table_rounding(compiled):
    x = _finite_edges()
    xb = x.reshape(-1, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    e = torch.where(amax == 0, -127.0, torch.clamp(_frexp_floor_log2(amax) - 2, min=-127))
    scale = torch.pow(2.0, e.double()).float()
    want = (_e2m1_rne(xb / scale) * scale).reshape(x.shape)
    assert _bits_equal(get("mxfp4")(x), torch.copysign(want, x))  # the table loses the sign of a zero


@pytest.mark.parametrize("scale", [1.0, 1e-30, 3.0])
def test_fused_nvfp4_matches_two_level_recipe(compiled, scale):
    x = _finite_edges() * scale
    x[0, :16] = 0.0  # an all-zero block next to the others
    assert _bits_equal(get("nvfp4")(x), torch.copysign(_nvfp4_reference(x), x))  # the table loses a zero's sign


@pytest.mark.parametrize("name", BLOCK_NAMES + list(EXTRA))
@pytest.mark.parametrize("shape", [(40, 96), (8, 5, 96), (7, 37 * 11)], ids=["2d", "3d", "ragged"])
def test_fused_equals_eager_with_nan_inf_and_overflow(eager_kernels, name, shape):
    fmt = EXTRA.get(name) or get(name)
    base = _with_specials(_finite_edges())
    x = torch.cat([base.flatten(), base.flatten()])[: torch.Size(shape).numel()].reshape(shape)
    ye, me = fmt._forward(x, None, None, True)
    kernels.set_backend("compiled")
    yc, mc = fmt._forward(x, None, None, True)
    assert not kernels._compile_failed
    assert _bits_equal(yc, ye), f"{name}: fused and eager results differ"
    assert torch.equal(mc, me), f"{name}: fused and eager clipping masks differ"
    assert not torch.isinf(yc).any(), f"{name}: block formats saturate (a block holding Inf/NaN is NaN)"
    assert torch.isnan(yc).any(), "the blocks holding Inf/NaN are NaN"


def test_fused_nvfp4_saturates_a_product_past_float32_max(eager_kernels):
    # the tensor amax at float32 max: its block's E4M3 scale rounds to 448 * level and 6 * S rounds past max
    x = torch.zeros(4, 16)
    x[0, 0] = F32_MAX
    x[1, :3] = torch.tensor([-F32_MAX, F32_MAX * 0.99, 1.0])
    ye = get("nvfp4")(x)
    kernels.set_backend("compiled")
    yc = get("nvfp4")(x)
    assert _bits_equal(yc, ye)
    assert yc[0, 0] == F32_MAX and yc[1, 0] == -F32_MAX  # saturated, not Inf
    assert torch.isfinite(yc).all()


@pytest.mark.parametrize("backend", ["eager", "compiled"])
@pytest.mark.parametrize("fmt", [nvfp4(), nvfp4(axis=0), nvfp4(scale_rounding="ceil")], ids=["last", "axis0", "ceil"])
def test_in_kernel_tensor_level_equals_the_given_amax(eager_kernels, backend, fmt):
    kernels.set_backend(backend)
    x = _with_specials(_finite_edges(40, 37 * 3))  # 111 columns: a ragged, zero-padded last block
    fin = x[torch.isfinite(x)].abs().max()  # the level ignores Inf/NaN elements (their blocks are NaN)
    assert _bits_equal(fmt(x), fmt(x, amax=fin))
    y = _finite_edges(8, 48)
    assert _bits_equal(fmt(y), fmt(y, amax=y.abs().max()))
    z = torch.zeros(3, 32)
    assert _bits_equal(fmt(z), z)  # an all-zero tensor: level 1, every scale 0, every value 0
