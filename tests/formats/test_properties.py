"""Property tests (hypothesis) for the invariants every format must keep.

Idempotence, monotonicity, odd symmetry, outputs on the format's grid (checked
from the output's bits, not by the format itself), NaN in -> NaN out,
stochastic rounding unbiased in expectation, and agreement with the float64
reference for randomly drawn ExMy formats. Runs are derandomized and example
counts modest, so the file is fast and repeatable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qsim_hooks.formats import FloatFormat, IntFormat, Scaling

from ._reference import assert_same_bits, ref_round

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

DETERMINISTIC = ["nearest_even", "nearest_away", "toward_zero"]


pytestmark = pytest.mark.usefixtures("eager_kernels")


def _float_format(E: int, M: int, bias_shift: int, specials: str, subnormals: bool, overflow: str,
                  rounding: str) -> FloatFormat | None:
    try:
        return FloatFormat(E, M, bias=2 ** (E - 1) - 1 + bias_shift, specials=specials, subnormals=subnormals,
                           overflow=overflow, rounding=rounding)
    except ValueError:
        return None


def float_formats(roundings: list[str]) -> st.SearchStrategy[FloatFormat]:
    return st.builds(
        _float_format, st.integers(1, 8), st.integers(0, 23), st.integers(-6, 6),
        st.sampled_from(["ieee", "fn", "none"]), st.booleans(), st.sampled_from(["saturate", "special"]),
        st.sampled_from(roundings)).filter(lambda f: f is not None)


def float32_arrays(allow_nan: bool = True, max_size: int = 64) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float32, st.integers(1, max_size),
                  elements=st.floats(width=32, allow_nan=allow_nan, allow_infinity=True))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@SETTINGS
@given(fmt=float_formats(DETERMINISTIC + ["stochastic"]), x=float32_arrays())
def test_float_idempotent(fmt: FloatFormat, x: np.ndarray) -> None:
    y = fmt(_t(x), generator=_gen())
    assert_same_bits(fmt(y, generator=torch.Generator().manual_seed(1)), y, what=f"{fmt} q(q(x))")


@SETTINGS
@given(E=st.integers(2, 5), M=st.integers(0, 4), amax=st.floats(1e-3, 1e3),
       rounding=st.sampled_from(DETERMINISTIC + ["stochastic"]), granularity=st.sampled_from(["tensor", "block"]),
       x=arrays(np.float32, st.integers(1, 64), elements=st.floats(-1e4, 1e4, width=32)))
def test_scaled_float_idempotent(E: int, M: int, amax: float, rounding: str, granularity: str,
                                 x: np.ndarray) -> None:
    fmt = FloatFormat(E, M, specials="none", rounding=rounding,
                      scaling=Scaling(granularity, block_size=8, amax=amax))
    y = fmt(_t(x), generator=_gen())
    assert_same_bits(fmt(y, generator=torch.Generator().manual_seed(1)), y, what=f"{fmt} q(q(x))")


@SETTINGS
@given(fmt=float_formats(DETERMINISTIC), x=float32_arrays(allow_nan=False))
def test_float_monotone(fmt: FloatFormat, x: np.ndarray) -> None:
    xs = _t(np.sort(x))
    y = fmt(xs)
    finite = ~torch.isnan(y)  # 'fn' overflow='special' maps overflow to NaN
    yf = y[finite]
    assert bool((yf[1:] >= yf[:-1]).all()), f"{fmt}: {xs.tolist()} -> {y.tolist()}"


@SETTINGS
@given(fmt=float_formats(DETERMINISTIC), x=float32_arrays())
def test_float_odd_symmetric(fmt: FloatFormat, x: np.ndarray) -> None:
    xt = _t(x)
    assert_same_bits(fmt(-xt), -fmt(xt), what=f"{fmt} q(-x) == -q(x)")


@SETTINGS
@given(fmt=float_formats(DETERMINISTIC + ["stochastic"]), x=float32_arrays())
def test_float_outputs_on_grid(fmt: FloatFormat, x: np.ndarray) -> None:
    y = fmt(_t(x), generator=_gen()).numpy().astype(np.float64)
    fin = y[np.isfinite(y)]
    a = np.abs(fin)
    assert (a <= fmt.max).all()
    normal = a >= fmt.min_normal
    m, e = np.frexp(a[normal])  # a = m * 2^e, m in [0.5, 1)
    assert (np.ldexp(m, fmt.man_bits + 1) % 1 == 0).all(), "mantissa has at most M bits"
    assert (e - 1 >= fmt.emin).all()
    small = a[~normal]
    step = math.ldexp(1.0, fmt.emin - fmt.man_bits)
    assert ((small / step) % 1 == 0).all(), "subnormals are multiples of the smallest one"
    if not fmt.subnormals:
        assert (small == 0).all()
    # Inf only where the format has Inf codes and asked for them
    if np.isinf(y).any():
        assert fmt.specials == "ieee" and (fmt.overflow == "special" or np.isinf(x).any())


@SETTINGS
@given(fmt=float_formats(DETERMINISTIC + ["stochastic"]), x=float32_arrays(),
       where=st.lists(st.integers(0, 63), max_size=8))
def test_nan_stays_nan(fmt: FloatFormat, x: np.ndarray, where: list[int]) -> None:
    x = x.copy()
    idx = [i % x.size for i in where]
    x[idx] = np.nan
    y = fmt(_t(x), generator=_gen())
    assert torch.isnan(y[torch.from_numpy(np.isnan(x))]).all()
    if fmt.overflow == "saturate" or fmt.specials == "ieee":  # only fn+special turns numbers into NaN
        assert not torch.isnan(y[torch.from_numpy(~np.isnan(x))]).any()


@settings(max_examples=120, deadline=None, derandomize=True)
@given(fmt=float_formats(DETERMINISTIC), x=float32_arrays(max_size=128))
def test_random_formats_match_reference(fmt: FloatFormat, x: np.ndarray) -> None:
    expected = ref_round(x, fmt.exp_bits, fmt.man_bits, fmt.bias, fmt.specials, fmt.subnormals, fmt.overflow,
                         fmt.rounding.value)
    assert_same_bits(fmt(_t(x)), torch.from_numpy(expected), inputs=_t(x), what=str(fmt))


# ---------------------------------------------------------------------------
# Integers
# ---------------------------------------------------------------------------
def int_formats(roundings: list[str], narrow_only: bool = False) -> st.SearchStrategy[IntFormat]:
    return st.builds(lambda b, s, n, r, a: IntFormat(b, signed=s, narrow=n or narrow_only, rounding=r,
                                                     scaling=Scaling(amax=a)),
                     st.integers(2, 16), st.just(True) if narrow_only else st.booleans(), st.booleans(),
                     st.sampled_from(roundings), st.floats(1e-3, 1e3))


def finite_arrays() -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float32, st.integers(1, 64), elements=st.floats(-1e4, 1e4, width=32))


@SETTINGS
@given(fmt=int_formats(DETERMINISTIC + ["stochastic"]), x=finite_arrays())
def test_int_idempotent_and_on_grid(fmt: IntFormat, x: np.ndarray) -> None:
    y = fmt(_t(x), generator=_gen())
    assert_same_bits(fmt(y, generator=_gen()), y, zero_sign=False, what=f"{fmt.name} q(q(x))")
    scale = torch.tensor(fmt.scaling.amax, dtype=torch.float32) / fmt.qmax
    k = torch.round(y / scale)
    assert bool(((k >= fmt.qmin) & (k <= fmt.qmax)).all())
    assert_same_bits(k * scale, y, zero_sign=False, what="integer multiples of the scale")


@SETTINGS
@given(fmt=int_formats(DETERMINISTIC), x=finite_arrays())
def test_int_monotone(fmt: IntFormat, x: np.ndarray) -> None:
    y = fmt(_t(np.sort(x)))
    assert bool((y[1:] >= y[:-1]).all())


@SETTINGS
@given(fmt=int_formats(DETERMINISTIC, narrow_only=True), x=finite_arrays(), dynamic=st.booleans())
def test_int_odd_symmetric(fmt: IntFormat, x: np.ndarray, dynamic: bool) -> None:
    if dynamic:
        fmt = IntFormat(fmt.bits, rounding=fmt.rounding)
    xt = _t(x)
    assert_same_bits(fmt(-xt), -fmt(xt), zero_sign=False, what=f"{fmt.name} odd")


# ---------------------------------------------------------------------------
# Stochastic rounding is unbiased
# ---------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, derandomize=True)
@given(E=st.integers(2, 5), M=st.integers(0, 4), x=st.floats(-200, 200, width=32), seed=st.integers(0, 2**31))
def test_stochastic_float_unbiased(E: int, M: int, x: float, seed: int) -> None:
    fmt = FloatFormat(E, M, specials="none", rounding="stochastic")
    assume(abs(x) <= fmt.max)
    n = 20_000
    y = fmt(torch.full((n,), x), generator=torch.Generator().manual_seed(seed)).double()
    lo = float(ref_round(np.array([x], np.float32), E, M, specials="none", mode="toward_zero")[0])
    hi = lo + math.copysign(_ulp_at(abs(lo), fmt), x)  # the other neighbour on the grid
    assert set(torch.unique(y).tolist()) <= {lo, hi}
    p = 0.0 if lo == x else (x - lo) / (hi - lo)
    sigma = abs(hi - lo) * math.sqrt(p * (1 - p) / n)
    assert abs(y.mean().item() - x) <= 6 * sigma + 1e-12 * abs(x)


def _ulp_at(a: float, fmt: FloatFormat) -> float:
    e = max(math.frexp(a)[1] - 1, fmt.emin) if a > 0 else fmt.emin
    return math.ldexp(1.0, e - fmt.man_bits)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(bits=st.integers(2, 8), x=st.floats(-1, 1, width=32), seed=st.integers(0, 2**31))
def test_stochastic_int_unbiased(bits: int, x: float, seed: int) -> None:
    fmt = IntFormat(bits, rounding="stochastic", scaling=Scaling(amax=1.0))
    n = 20_000
    y = fmt(torch.full((n,), x), generator=torch.Generator().manual_seed(seed)).double()
    step = 1.0 / fmt.qmax
    q = x / step
    p = q - math.floor(q)
    sigma = step * math.sqrt(p * (1 - p) / n)
    assert abs(y.mean().item() - x) <= 6 * sigma + 1e-6 * step


# ---------------------------------------------------------------------------
# Every format family, values at float32's edges
# ---------------------------------------------------------------------------
# finite in -> finite out (saturating formats), q(q(x)) == q(x), monotone (deterministic modes),
# q(-x) == -q(x) (symmetric formats) and |q(x) - x| <= step / 2 for the nearest modes inside the
# range (step: the grid spacing at x, in x's units). Exact ("bit for bit") where the grid is fixed
# by the format or a static amax; where the scale is re-derived from the data (a dynamic amax, a
# float block scale) q(q(x)) may move by float32 ulps of that scale, and is checked to within them.
F32_MAX = 3.4028234663852886e38
EDGES = [F32_MAX, 3e38, 2.0**127, 2.0**126, 1e30, 65504.0, 448.0, 1.0, 0.0, 2.0**-126, 1e-38, 2.0**-133,
         2.0**-140, 2.0**-149]
_EDGE = st.sampled_from(EDGES + [-v for v in EDGES])
f32 = st.one_of(_EDGE, _EDGE, st.floats(width=32, allow_nan=False, allow_infinity=False),
                st.floats(-8.0, 8.0, width=32))
EDGE_SETTINGS = settings(max_examples=80, deadline=None, derandomize=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
AMAXES = st.sampled_from([None, None, None, F32_MAX, F32_MAX, 2.0**-149, 1e-40, 2.0**-126, 1e-3, 1.0, 7.5, 1e4,
                          1e37])  # None: dynamic


def edge_arrays(n: int = 64) -> st.SearchStrategy[np.ndarray]:
    return st.lists(f32, min_size=1, max_size=n).map(lambda v: np.array(v, dtype=np.float32))


def _scaling(granularity: str, amax: float | None) -> Scaling:
    return Scaling(granularity, axis=-1 if granularity != "tensor" else None, block_size=8, amax=amax)


def scaled_floats(roundings: list[str]) -> st.SearchStrategy[FloatFormat]:
    return st.builds(
        lambda E, M, sp, sub, r, g, a: _float_format(E, M, 0, sp, sub, "saturate", r) and
        FloatFormat(E, M, specials=sp, subnormals=sub, rounding=r, scaling=_scaling(g, a)),
        st.integers(2, 6), st.sampled_from([0, 1, 2, 3, 4, 7, 10, 20]), st.sampled_from(["ieee", "fn", "none"]),
        st.booleans(), st.sampled_from(roundings), st.sampled_from(["tensor", "block"]), AMAXES,
    ).filter(lambda f: f is not None)


def ints(roundings: list[str]) -> st.SearchStrategy[IntFormat]:
    return st.builds(lambda b, s, n, r, g, a: IntFormat(b, signed=s, narrow=n, rounding=r, scaling=_scaling(g, a)),
                     st.integers(2, 16), st.booleans(), st.booleans(), st.sampled_from(roundings),
                     st.sampled_from(["tensor", "block"]), AMAXES)


def _blocks(rounding: str) -> list:
    from qsim_hooks.formats.block import BlockFormat, IntElement, bfp, mx, nvfp4

    return [mx("e4m3", rounding=rounding), mx("e5m2", rounding=rounding), mx("e3m2", rounding=rounding),
            mx("e2m3", rounding=rounding), mx("e2m1", rounding=rounding), mx("int8", rounding=rounding),
            mx("e2m1", 16, scale_rounding="ceil", rounding=rounding), mx("e4m3", scale_rounding="nearest",
                                                                          rounding=rounding),
            nvfp4(rounding=rounding), bfp(8, block_size=32, rounding=rounding),
            BlockFormat(IntElement(8, per_unit=127.0), 32, scale=FloatFormat(8, 7), rounding=rounding),  # abfp8
            BlockFormat(IntElement(6, narrow=False), 32, rounding=rounding)]


def blocks(roundings: list[str]) -> st.SearchStrategy:
    return st.sampled_from([f for r in roundings for f in _blocks(r)])


def any_format(roundings: list[str]) -> st.SearchStrategy:
    return st.one_of(float_formats(roundings).filter(lambda f: f.overflow == "saturate"), scaled_floats(roundings),
                     ints(roundings), blocks(roundings))


def _is_block(fmt) -> bool:
    return hasattr(fmt, "block_size") and not hasattr(fmt, "exp_bits") and not hasattr(fmt, "qmax")


def _as_blocks(fmt, x: np.ndarray) -> torch.Tensor:
    """x as rows of one block each (block formats and block scaling run along the last axis)."""
    k = fmt.block_size if _is_block(fmt) else getattr(getattr(fmt, "scaling", None), "block_size", 8)
    t = _t(x)
    n = -(-t.numel() // k) * k
    return torch.cat([t, torch.zeros(n - t.numel())]).reshape(-1, k)


def _fixed_grid(fmt) -> bool:
    """Whether re-quantizing sees the same grid (no scale re-derived from data that moved)."""
    if _is_block(fmt):
        return fmt.scale == "e8m0"
    sc = getattr(fmt, "scaling", None)
    return sc is None or sc.amax is not None


@EDGE_SETTINGS
@given(fmt=any_format(DETERMINISTIC + ["stochastic"]), x=edge_arrays())
@example(fmt=IntFormat(8), x=np.array([F32_MAX, 1.0], np.float32))  # the cases issue 12 found
@example(fmt=IntFormat(16, scaling=Scaling(amax=F32_MAX)), x=np.array([-F32_MAX], np.float32))
@example(fmt=_blocks("nearest_even")[5], x=np.full(32, 2.0**123, np.float32))  # mxint8
@example(fmt=_blocks("nearest_even")[9], x=np.full(32, 1e37, np.float32))  # bfp8
@example(fmt=_blocks("nearest_even")[10], x=np.full(32, 1e37, np.float32))  # abfp8
@example(fmt=_blocks("toward_zero")[6], x=np.full(16, F32_MAX, np.float32))  # mx ceil
@example(fmt=FloatFormat(3, 2, bias=10, specials="none", scaling=Scaling()), x=np.array([3e38], np.float32))
def test_every_family_finite_in_finite_out(fmt, x: np.ndarray) -> None:
    xt = _as_blocks(fmt, x)
    y = fmt(xt, generator=_gen())
    assert torch.isfinite(y).all(), f"{fmt.name}: {xt[~torch.isfinite(y)][:4].tolist()} -> non-finite"


@EDGE_SETTINGS
@given(fmt=any_format(DETERMINISTIC + ["stochastic"]), x=edge_arrays())
def test_every_family_idempotent(fmt, x: np.ndarray) -> None:
    xt = _as_blocks(fmt, x)
    y = fmt(xt, generator=_gen())
    yy = fmt(y, generator=torch.Generator().manual_seed(1))
    if _fixed_grid(fmt):
        assert_same_bits(yy, y, zero_sign=False, what=f"{fmt.name} q(q(x))")
    else:  # the scale is re-derived from y: it may move by float32 ulps, never by a grid step
        moved = (yy - y).abs() > y.abs() * 2.0**-18 + 2.0**-140
        assert not moved.any(), f"{fmt.name}: {y[moved][:4].tolist()} -> {yy[moved][:4].tolist()}"


@EDGE_SETTINGS
@given(fmt=any_format(DETERMINISTIC), x=edge_arrays())
def test_every_family_monotone(fmt, x: np.ndarray) -> None:
    if _is_block(fmt) or getattr(getattr(fmt, "scaling", None), "granularity", "tensor") == "block":
        xt = _as_blocks(fmt, x).sort(dim=-1).values  # one scale per row: sorting a row keeps it
    else:
        xt = _t(np.sort(x))
    y = fmt(xt)
    assert (y[..., 1:] >= y[..., :-1]).all(), f"{fmt.name}: {xt.tolist()} -> {y.tolist()}"


def _symmetric(fmt) -> bool:
    if _is_block(fmt):
        el = fmt.element
        return not hasattr(el, "narrow") or el.narrow
    if hasattr(fmt, "qmax"):
        return fmt.signed and fmt.narrow
    return True


@EDGE_SETTINGS
@given(fmt=any_format(DETERMINISTIC).filter(_symmetric), x=edge_arrays())
def test_every_symmetric_family_odd(fmt, x: np.ndarray) -> None:
    xt = _as_blocks(fmt, x)
    assert_same_bits(fmt(-xt), -fmt(xt), zero_sign=False, what=f"{fmt.name} q(-x) == -q(x)")


def _element_step(el, v: torch.Tensor) -> torch.Tensor:
    """The grid spacing of an unscaled element grid at |v| (FloatFormat or IntElement / IntFormat units)."""
    if hasattr(el, "exp_bits"):
        a = v.abs().double().clamp(min=2.0**-200)
        e = torch.floor(torch.log2(a)).clamp(min=el.emin)
        return torch.pow(2.0, e - el.man_bits)
    return torch.full_like(v, 1.0 / getattr(el, "per_unit", 1.0), dtype=torch.float64)


def _scale_and_grid(fmt, x: torch.Tensor) -> tuple[torch.Tensor, object, float]:
    """(the decoded scale of each element, the unscaled grid, that grid's max)."""
    if _is_block(fmt):
        s = fmt.scales(x).repeat_interleave(fmt.block_size, dim=-1).double()
        return s, fmt.element, fmt.element.max
    sc = fmt.scaling
    if sc is None:
        return torch.ones_like(x, dtype=torch.float64), fmt, fmt.max
    top = fmt._scale_max()
    if sc.amax is not None:
        a = torch.full_like(x, sc.amax, dtype=torch.float64).float()
    elif sc.granularity == "block":
        a = x.abs().amax(dim=-1, keepdim=True).expand_as(x)
    else:
        a = x.abs().amax().expand_as(x)
    s = torch.clamp(a / top, min=2.0**-126).double()
    grid = fmt if hasattr(fmt, "exp_bits") else None
    if grid is not None and top != fmt.max:  # the internally shifted grid of a format whose max < 1
        grid = FloatFormat(fmt.exp_bits, fmt.man_bits, bias=fmt.bias - round(math.log2(top / fmt.max)),
                           specials=fmt.specials)
    return s, (grid if grid is not None else fmt), top


@EDGE_SETTINGS
@given(fmt=any_format(["nearest_even", "nearest_away"]), x=edge_arrays())
def test_every_family_half_step_bound(fmt, x: np.ndarray) -> None:
    xt = _as_blocks(fmt, x)
    y = fmt(xt)
    s, grid, top = _scale_and_grid(fmt, xt)
    v = xt.double() / s
    low = fmt.qmin if hasattr(fmt, "qmin") else -top  # unsigned and full-range integers are asymmetric
    inside = (v >= low) & (v <= top)
    if hasattr(grid, "subnormals") and not grid.subnormals:  # flush-to-zero is not a rounding to nearest
        inside &= v.abs() >= grid.min_normal
    step = _element_step(grid, v) * s
    err = (y.double() - xt.double()).abs()
    # slack: the scale and its reciprocal are float32 roundings (a few ulps of x), float32 subnormals
    bound = step / 2 * (1 + 2.0**-18) + xt.double().abs() * 2.0**-21 + 2.0**-148
    bad = inside & (err > bound)
    assert not bad.any(), (f"{fmt.name}: x={xt[bad][:4].tolist()} y={y[bad][:4].tolist()} "
                           f"step={step[bad][:4].tolist()}")
