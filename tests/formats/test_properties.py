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
from hypothesis import HealthCheck, assume, given, settings
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
