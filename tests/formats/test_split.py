"""The split kernel (formats/_split.py) rounds exactly as the bit kernel does, on every float32 region.

The split is scale-invariant inside a binade: testing every mantissa of the binades where
something changes (the target's subnormals, its smallest normal binade, its largest, the
overflow binade) and random mantissas of all 256 exponent fields, both signs, covers every
path. Boundaries (ties between grid values, max and the overflow midpoint, the smallest
subnormal and half of it, fp32 subnormals, ±0, ±Inf, NaN payloads) are listed explicitly and
also checked against independent oracles: the numpy reference and PyTorch's float8 casts
(ml_dtypes is not installed here; for the formats PyTorch has no cast, the numpy reference).
"""

from __future__ import annotations

import math

import pytest
import torch

from qsim_hooks.formats import E2M1, E2M3, E3M2, E3M4, E4M3, E5M2, FP16, FloatFormat, _split, kernels
from qsim_hooks.formats._exmy import NEAREST_EVEN, float_round_impl

from ._reference import assert_same_bits, ref_round, ties_and_neighbours

NAMED = [E4M3, E5M2, E3M4, E3M2, E2M3, E2M1, FP16]
VARIANTS = [FloatFormat(4, 3, specials="fn", overflow="special"), FloatFormat(5, 2, overflow="special"),
            FloatFormat(4, 3, subnormals=False), FloatFormat(3, 2, specials="none", subnormals=False),
            FloatFormat(7, 5, bias=90), FloatFormat(5, 1), FloatFormat(5, 22), FloatFormat(6, 12, bias=20)]
NATIVE = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _consts(f: FloatFormat) -> _split.SplitConsts:
    k = f._params.split
    assert k is not None, f"{f.name}: the split kernel should apply"
    return k


def _bit(f: FloatFormat, x: torch.Tensor) -> torch.Tensor:
    (p,) = f._params.on(x.device)
    return float_round_impl(x, p, NEAREST_EVEN, None)


def _grid(f: FloatFormat) -> torch.Tensor:
    """Non-negative finite values of ``f`` from its fields (E, M, bias): all of them for M <= 6, else the
    first and last 64 mantissas of every exponent field (consecutive runs: their midpoints are ties)."""
    ms = range(2**f.man_bits) if f.man_bits <= 6 else [*range(64), *range(2**f.man_bits - 64, 2**f.man_bits)]
    vals = {math.ldexp(m, 1 - f.bias - f.man_bits) for m in ms}  # subnormals, 0
    for e in range(1, 2**f.exp_bits):
        vals |= {math.ldexp(2**f.man_bits + m, e - f.bias - f.man_bits) for m in ms}
    return torch.tensor(sorted(v for v in vals if v <= f.max), dtype=torch.float32)


def _regions(f: FloatFormat, seed: int, every: int = 1) -> torch.Tensor:
    """Both signs of: every (``every``-th) mantissa of the binades around the target's smallest normal (its
    subnormal step changes there), every 7th of those around max and the overflow, random ones elsewhere."""
    g = torch.Generator().manual_seed(seed)
    top = math.frexp(f.max)[1] + 126  # the exponent field of max
    parts = []
    for ef in range(256):
        if ef in (f.emin + 126, f.emin + 127):
            m = torch.arange(ef % every, 1 << 23, every, dtype=torch.int32)
        elif ef in (0, top, top + 1, 255):
            m = torch.arange(ef % 7, 1 << 23, 7, dtype=torch.int32)
        else:
            m = torch.randint(0, 1 << 23, (2000,), generator=g, dtype=torch.int32)
        parts.append((ef << 23) | m)
    bits = torch.cat(parts)
    return torch.cat([bits, bits | -(2**31)]).view(torch.float32)


def _boundaries(f: FloatFormat) -> torch.Tensor:
    grid = _grid(f)
    nxt = math.ldexp(1.0, math.frexp(f.max)[1])  # the power of two above max (a grid point of the exponent range)
    x = ties_and_neighbours(grid, beyond=2 * f.max - grid[-2].item())  # the midpoint above max: overflow starts
    special = torch.tensor([0x7FC00000, 0x7F800001, 0x7FBFFFFF, 0xFFC00001 - 2**32, 0x7F800000, 0xFF800000 - 2**32,
                            0x00000001, 0x807FFFFF - 2**32, 0x00400000, 0x7F7FFFFF, 0xFF7FFFFF - 2**32],
                           dtype=torch.int32).view(torch.float32)
    k = _consts(f)
    edges = torch.tensor([nxt, 2 * nxt, f.max * 2, k.min_normal, k.min_normal / 2, f.info.min_subnormal,
                          f.info.min_subnormal / 2, f.info.min_subnormal * 0.75, f.info.min_subnormal / 4])
    edges = torch.cat([edges, torch.nextafter(edges, torch.zeros(())), torch.nextafter(edges, edges * 4)])
    return torch.cat([x, special, edges, -edges])


@pytest.mark.parametrize("f", NAMED + VARIANTS, ids=lambda f: f.name + ("_" + f.overflow if f.overflow != "saturate"
                                                                    else "") + ("" if f.subnormals else "_flush"))
def test_split_equals_bit_kernel_on_every_region(f: FloatFormat) -> None:
    x = _regions(f, seed=f.exp_bits * 31 + f.man_bits, every=1 if f in NAMED else 5)
    assert_same_bits(_split.split_round(x, _consts(f)), _bit(f, x), inputs=x, what=f"{f.name} regions")


@pytest.mark.parametrize("f", NAMED + VARIANTS, ids=lambda f: f.name)
def test_split_boundaries_against_bit_kernel_and_reference(f: FloatFormat) -> None:
    x = _boundaries(f)
    got = _split.split_round(x, _consts(f))
    assert_same_bits(got, _bit(f, x), inputs=x, what=f"{f.name} boundaries vs bit kernel")
    ovf = f.overflow
    ref = torch.from_numpy(ref_round(x, f.exp_bits, f.man_bits, f.bias, f.specials, f.subnormals,
                                     "saturate" if ovf == "saturate" else "special"))
    nan = torch.isnan(x)
    assert_same_bits(got[~nan], ref[~nan], inputs=x[~nan], what=f"{f.name} boundaries vs numpy reference")
    assert_same_bits(got[nan], x[nan], what=f"{f.name}: NaN payloads given back")  # bit for bit, sNaN too


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_split_against_pytorch_float8_casts(name: str) -> None:
    f = {"e4m3": E4M3, "e5m2": E5M2}[name]
    x = torch.cat([_boundaries(f), _regions(f, seed=7)[::97]])
    x = x[torch.isfinite(x)]
    want = x.clamp(-f.max, f.max).to(NATIVE[name]).float()  # saturating cast: clamp first, then PyTorch's RNE
    assert_same_bits(_split.split_round(x, _consts(f)), want, inputs=x, what=f"{name} vs torch.{NATIVE[name]}")


def test_split_applies_where_exact_and_not_elsewhere() -> None:
    assert all(f._params.split is not None for f in NAMED + VARIANTS)
    from qsim_hooks.formats import BF16, TF32
    # M = 0 and M = 23 keep the other kernels, as do grids whose c = x * (2^s + 1) could overflow (bf16, tf32)
    # and grids whose half-step is below fp32's smallest normal
    for f in [FloatFormat(5, 0), BF16, TF32, FloatFormat(8, 10, bias=135)]:
        assert f._params.split is None, f.name


def test_eager_float_round_uses_split_and_fast_false_does_not(monkeypatch, eager_kernels) -> None:
    calls = []
    real = kernels.split_round

    def spy(x, k):
        calls.append(k)
        return real(x, k)

    monkeypatch.setattr(kernels, "split_round", spy)
    x = torch.randn(4096) * 10
    f = FloatFormat(3, 2, specials="none", overflow="saturate")
    # functools.partial binds kernels.split_round when float_round is called: the spy is seen
    y = f(x)
    assert len(calls) == 1
    bits = kernels.float_round(x, f._params, NEAREST_EVEN, fast=False)
    assert len(calls) == 1
    assert_same_bits(y, bits, inputs=x, what="public path vs fast=False")
    away = FloatFormat(3, 2, specials="none", rounding="nearest_away")
    away(x)
    assert len(calls) == 1, "the split only does round to nearest even"


def test_block_formats_eager_split_equals_their_kernel_without_it(monkeypatch, eager_kernels) -> None:
    """Every named block format with float elements, one after another (formats sharing a kernel structure
    must not share the split's constants), against the same kernel with the split off."""
    import dataclasses

    from qsim_hooks.formats import _block_kernels, block, get

    calls = []
    real = _block_kernels.split_round
    monkeypatch.setattr(_block_kernels, "split_round", lambda t, k: calls.append(k) or real(t, k))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(256, 128, generator=g) * torch.logspace(-30, 30, 128)
    x[0, 0], x[1, 3], x[2] = float("nan"), float("inf"), 0.0
    x[3] = torch.cat([torch.full((64,), 1e-41), torch.full((64,), -3e-39)])  # fp32 subnormal blocks
    used = []
    for name in block.NAMED:
        f = get(name)
        k = f._kernel
        if k.split is None:
            continue
        n = len(calls)
        got, _ = k.quantize(x, None, None, False)
        assert len(calls) > n, f"{name}: the split was not used"
        want, _ = dataclasses.replace(k, split=None).quantize(x, None, None, False)
        assert_same_bits(got, want, inputs=x, what=name)
        used.append(name)
    assert {"mxfp8_e4m3", "mxfp8_e5m2", "mxfp4"} <= set(used)
