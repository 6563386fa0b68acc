"""IntFormat against PyTorch's fake-quantize ops, numpy percentiles and hand loops.

``torch.fake_quantize_per_tensor_affine`` / ``_per_channel_affine`` with
``scale = amax / qmax`` (computed in float32, as the format does), zero point 0
and ``[qmin, qmax]`` are the reference: bit for bit, except that PyTorch adds
the zero point back and so turns a -0.0 result into +0.0 (we keep the sign of
a negative input that rounds to zero), so zeros are compared by value.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qsim_hooks.formats import IntFormat, Scaling, get, names
from qsim_hooks.formats.base import Rounding

from ._reference import assert_same_bits

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

RANGES = {"narrow": dict(narrow=True), "full": dict(narrow=False), "unsigned": dict(signed=False)}


pytestmark = pytest.mark.usefixtures("eager_kernels")


def _sample(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    flat = x.view(-1)
    n = min(64, flat.numel())
    flat[:n] = torch.linspace(-2, 2, n)  # exact ties at many scales
    return x


def _fq_tensor(x: torch.Tensor, fmt: IntFormat, amax: torch.Tensor) -> torch.Tensor:
    scale = (amax.float() / fmt.qmax).item()
    return torch.fake_quantize_per_tensor_affine(x, scale, 0, fmt.qmin, fmt.qmax)


@pytest.mark.parametrize("amax_kind", ["dynamic", "static-call", "static-format"])
@pytest.mark.parametrize("rng", list(RANGES))
@pytest.mark.parametrize("bits", list(range(2, 17)))
def test_per_tensor_matches_fake_quantize(bits: int, rng: str, amax_kind: str) -> None:
    x = _sample((4096,), seed=bits)
    if amax_kind == "dynamic":
        fmt = IntFormat(bits, **RANGES[rng])
        y, amax = fmt(x), x.abs().max()
    elif amax_kind == "static-call":
        fmt = IntFormat(bits, **RANGES[rng])
        amax = torch.tensor(1.7)
        y = fmt(x, amax=amax)
    else:
        fmt = IntFormat(bits, **RANGES[rng], scaling=Scaling(amax=1.7))
        assert fmt.scaling.mode == "static"
        amax = torch.tensor(1.7)
        y = fmt(x)
    assert_same_bits(y, _fq_tensor(x, fmt, amax), zero_sign=False, inputs=x, what=fmt.name)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("rng", list(RANGES))
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_per_channel_matches_fake_quantize(bits: int, rng: str, axis: int) -> None:
    x = _sample((6, 7, 5), seed=100 + bits)
    x[:, 2, :] *= 50  # channels with very different ranges
    fmt = IntFormat(bits, **RANGES[rng], scaling=Scaling("channel", axis=axis))
    ax = axis % x.dim()
    amax = x.abs().amax(dim=[d for d in range(x.dim()) if d != ax])
    scale = amax / fmt.qmax
    zp = torch.zeros(x.shape[ax], dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(x, scale, zp, ax, fmt.qmin, fmt.qmax)
    assert_same_bits(fmt(x), expected, zero_sign=False, inputs=x, what=f"{fmt.name} axis {axis}")
    # static per-channel amax given per call (half the range: clipping happens)
    half = amax / 2
    expected = torch.fake_quantize_per_channel_affine(x, half / fmt.qmax, zp, ax, fmt.qmin, fmt.qmax)
    assert_same_bits(fmt(x, amax=half), expected, zero_sign=False, inputs=x, what=f"{fmt.name} static")


def test_default_axis_and_with_axis() -> None:
    fmt = IntFormat(8, scaling=Scaling("channel"))
    x = _sample((4, 9), seed=3)
    zp = torch.zeros(4, dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(x, x.abs().amax(1) / 127, zp, 0, -127, 127)
    assert_same_bits(fmt(x), expected, zero_sign=False, what="default axis 0")
    f1 = fmt.with_axis(1)
    assert f1.scaling.axis == 1 and f1.with_axis(0) is f1  # an explicit axis is kept
    zp = torch.zeros(9, dtype=torch.int32)
    expected = torch.fake_quantize_per_channel_affine(x, x.abs().amax(0) / 127, zp, 1, -127, 127)
    assert_same_bits(f1(x), expected, zero_sign=False, what="with_axis(1)")
    assert IntFormat(8).with_axis(1) == IntFormat(8)  # per tensor: nothing to choose


# ---------------------------------------------------------------------------
# Hand-computed values (amax = qmax, so the scale is exactly 1)
# ---------------------------------------------------------------------------
ROUNDING_CASES = {
    "nearest_even": ([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 2.6, -2.6], [0.0, 2.0, 2.0, -0.0, -2.0, 0.0, 3.0, -3.0]),
    "nearest_away": ([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -0.49999997, 2.4],
                     [1.0, 2.0, 3.0, -1.0, -3.0, 0.0, -0.0, 2.0]),
    "toward_zero": ([0.5, 1.9, 2.9, -0.5, -2.9, 126.99], [0.0, 1.0, 2.0, -0.0, -2.0, 126.0]),
}


@pytest.mark.parametrize("mode", list(ROUNDING_CASES))
def test_rounding_modes(mode: str) -> None:
    fmt = IntFormat(8, rounding=mode, scaling=Scaling(amax=127.0))
    xs, expected = ROUNDING_CASES[mode]
    assert_same_bits(fmt(torch.tensor(xs)), torch.tensor(expected), inputs=torch.tensor(xs), what=mode)


@pytest.mark.parametrize(("kw", "lo", "hi"), [
    (dict(), -127.0, 127.0), (dict(narrow=False), -128.0, 127.0), (dict(signed=False), 0.0, 255.0),
])
def test_clamping(kw: dict, lo: float, hi: float) -> None:
    fmt = IntFormat(8, **kw, scaling=Scaling(amax=127.0 if kw.get("signed", True) else 255.0))
    assert (fmt.qmin, fmt.qmax) == (lo, hi)
    assert fmt(torch.tensor([-1000.0, 1000.0, -0.2])).tolist() == [lo, hi, 0.0]


def test_grid_of_int4() -> None:
    fmt = IntFormat(4)  # narrow: 15 levels of amax/7
    x = torch.linspace(-3, 3, 10_001)
    y = fmt(x)
    levels = sorted(set((y * 7 / 3).round().tolist()))
    assert levels == [float(k) for k in range(-7, 8)]
    assert_same_bits(y, (y * 7 / 3).round() * (3 / 7), zero_sign=False, what="int4 grid")


def test_zero_nan_inf() -> None:
    fmt = IntFormat(8)
    assert fmt(torch.zeros(5)).tolist() == [0.0] * 5  # amax 0: no division by zero
    y = fmt(torch.tensor([1.0, float("nan"), -0.5]))
    assert torch.isnan(y[1]) and y[0].item() == 1.0
    y = fmt(torch.tensor([1.0, float("inf"), -float("inf"), -0.5]))  # amax ignores +-Inf, which clip
    assert y[:3].tolist() == [1.0, 1.0, -1.0]


# ---------------------------------------------------------------------------
# Percentile and block scaling
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 7, 1000, 10_000, 12_345])
@pytest.mark.parametrize("p", [50.0, 99.0, 99.9, 99.99, 100.0])
def test_percentile_matches_numpy_nearest_rank(p: float, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * torch.rand(n, generator=g) ** 4 * 10
    fmt = IntFormat(8, scaling=Scaling(method="percentile", percentile=p))
    amax = np.percentile(x.abs().numpy(), p, method="inverted_cdf")  # nearest rank
    assert_same_bits(fmt(x), _fq_tensor(x, fmt, torch.tensor(amax)), zero_sign=False, what=f"p{p} n{n}")


def test_percentile_per_channel() -> None:
    x = _sample((5, 300), seed=11)
    fmt = IntFormat(6, scaling=Scaling("channel", axis=0, method="percentile", percentile=99.0))
    y = fmt(x)
    for c in range(5):
        amax = np.percentile(x[c].abs().numpy(), 99.0, method="inverted_cdf")
        assert_same_bits(y[c], _fq_tensor(x[c], fmt, torch.tensor(amax)), zero_sign=False, what=f"ch {c}")


@pytest.mark.parametrize(("shape", "axis", "block"), [((3, 10, 5), 1, 4), ((4, 33), -1, 8), ((64,), 0, 32),
                                                      ((2, 7), 1, 16)],
                         ids=["ragged-mid-axis", "ragged-last", "exact", "one-short-block"])
@pytest.mark.parametrize("bits", [4, 8])
def test_block_scaling_matches_hand_loop(bits: int, shape: tuple[int, ...], axis: int, block: int) -> None:
    x = _sample(shape, seed=sum(shape))
    fmt = IntFormat(bits, scaling=Scaling("block", block_size=block, axis=axis))
    y = fmt(x)
    xm, ym = x.movedim(axis, -1), y.movedim(axis, -1)
    ref = torch.empty_like(xm)
    n = xm.shape[-1]
    for idx in np.ndindex(*xm.shape[:-1]):
        for start in range(0, n, block):
            blk = xm[idx][start:start + block]  # the last block may be shorter
            ref[idx][start:start + block] = _fq_tensor(blk, fmt, blk.abs().max())
    assert_same_bits(ym, ref, zero_sign=False, what=f"block {block} axis {axis}")


def test_static_block_amax() -> None:
    x = _sample((3, 10), seed=5)
    fmt = IntFormat(8, scaling=Scaling("block", block_size=4, axis=1))
    amax = torch.tensor([[1.0, 2.0, 0.5], [3.0, 0.25, 1.5], [0.75, 1.0, 2.0]])
    y = fmt(x, amax=amax.reshape(-1))
    for r in range(3):
        for b, start in enumerate(range(0, 10, 4)):
            blk = x[r, start:start + 4]
            assert_same_bits(y[r, start:start + 4], _fq_tensor(blk, fmt, amax[r, b]), zero_sign=False,
                             what=f"row {r} block {b}")


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("bits", list(range(2, 17)))
def test_named_int_formats(bits: int) -> None:
    name = f"int{bits}"
    assert name in names()
    fmt = get(name)
    assert fmt == IntFormat(bits)
    assert (fmt.qmin, fmt.qmax, fmt.bits, fmt.name) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1, bits, name)
    assert fmt.scaling == Scaling() and fmt.rounding == Rounding.NEAREST_EVEN and fmt.is_scaled


def test_named_unsigned() -> None:
    assert "uint8" in names()
    u8 = get("uint8")
    assert (u8.signed, u8.qmin, u8.qmax) == (False, 0, 255)
    assert get("uint4") == IntFormat(4, signed=False, name="uint4")
    assert get("INT8") == get("int8")


# ---------------------------------------------------------------------------
# Stochastic rounding, dtypes, layouts
# ---------------------------------------------------------------------------
def test_stochastic_int_repeats_and_is_unbiased() -> None:
    fmt = IntFormat(4, rounding="stochastic", scaling=Scaling(amax=7.0))
    xs = torch.tensor([0.3, -0.3, 2.5, 6.9, -6.01, 1.0, 0.05])
    n = 40_000
    x = xs.expand(n, -1)
    a = fmt(x, generator=torch.Generator().manual_seed(1))
    b = fmt(x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, fmt(x, generator=torch.Generator().manual_seed(2)))
    lo, hi = xs.floor(), xs.floor() + 1
    assert bool(((a == lo) | (a == hi)).all())
    p = (xs - lo).double()
    sigma = torch.sqrt(p * (1 - p) / n)
    err = (a.double().mean(0) - xs.double()).abs()
    assert bool((err <= 5 * sigma + 1e-9).all()), (err, sigma)
    assert bool((a[:, 5] == 1.0).all()), "values on the grid never move"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_dtypes_and_layout(dtype: torch.dtype, granularity: str) -> None:
    fmt = IntFormat(8, scaling=Scaling(granularity, axis=1))
    base = (torch.randn(16, 24) * 4).to(dtype)
    for x in (base, base.t(), base[::2, 3:]):
        y = fmt(x)
        assert y.dtype == dtype and y.shape == x.shape
        assert_same_bits(y.float(), fmt(x.float().contiguous()).to(dtype).float(), what=f"{dtype}")


@requires_cuda
@pytest.mark.parametrize("mode", ["nearest_even", "nearest_away", "toward_zero"])
def test_cuda_matches_cpu(mode: str) -> None:
    for scaling in (Scaling(), Scaling("channel", axis=1), Scaling("block", block_size=8, axis=-1)):
        fmt = IntFormat(6, rounding=mode, scaling=scaling)
        x = _sample((32, 20), seed=1)
        assert_same_bits(fmt(x.cuda()).cpu(), fmt(x), what=f"{mode} {scaling}")


@pytest.mark.parametrize("amax", [1e-30, 1e-37, 1e-40, 1e-45])
def test_tiny_amax_keeps_zeros_finite(amax: float) -> None:
    # a scale below float32's smallest normal would make 1/scale infinite and 0 * inf NaN
    x = torch.tensor([0.0, -0.0, amax, -amax, 1.0])
    for y in (IntFormat(8)(x, amax=amax), IntFormat(8)(x[:4])):
        assert torch.isfinite(y).all()
        assert y[0].item() == 0.0 and y[1].item() == 0.0
    if amax >= 1e-30:  # scale still normal: the usual grid
        assert IntFormat(8)(x, amax=amax)[2:].tolist() == pytest.approx([amax, -amax, amax], rel=1e-6)
