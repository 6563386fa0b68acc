"""FloatFormat against independent references.

* PyTorch's own casts (float8_e4m3fn, float8_e5m2, float16, bfloat16), bit for
  bit, on all 65,536 bf16 patterns, 10^6 random float32 bit patterns (every
  exponent equally likely), and every exact tie / subnormal of each target;
  through both the native-cast fast path and the bit kernel.
* A float64 numpy reference (``_reference.ref_round``) for every policy:
  bias, specials, subnormals, overflow and the three deterministic roundings.
* Hand-computed values: grids, ties, maxima, smallest subnormals, flushing,
  overflow policies, NaN, custom bias, E=1 and M=0 formats, E8M23.
* Named formats and ``eXmY`` parsing, dtypes and memory layouts, stochastic
  rounding (seeded and unbiased), scaled floats.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qsim_hooks.formats import FloatFormat, Scaling, get, kernels, names
from qsim_hooks.formats.base import Rounding

from ._reference import all_bf16, assert_same_bits, grid_of, random_f32, ref_round, ties_and_neighbours

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

INF = float("inf")
NAN = float("nan")


pytestmark = pytest.mark.usefixtures("eager_kernels")


@pytest.fixture(scope="module")
def random_million() -> torch.Tensor:
    x = random_f32(1_000_000, seed=1)
    assert x.numel() == 1_000_000
    return x


def _specials() -> torch.Tensor:
    fp32_sub = torch.tensor([1, 2, 3, 0x7FFFFF, 0x400000, 0x800000], dtype=torch.int32).view(torch.float32)
    x = torch.cat([torch.tensor([0.0, INF, NAN, 1.0, 3.4028234663852886e38]), fp32_sub])
    return torch.cat([x, -x])


# ---------------------------------------------------------------------------
# PyTorch casts, bit for bit
# ---------------------------------------------------------------------------
# name -> (format matching the cast's own overflow convention, torch dtype, dtype max, spacing past max)
CASTS = {
    # torch's e4m3fn cast saturates finite overflow and Inf to +-448 (NaN stays NaN): our named e4m3
    "e4m3": (FloatFormat(4, 3, specials="fn", name="e4m3"), torch.float8_e4m3fn, 448.0, 32.0),
    "e5m2": (FloatFormat(5, 2, overflow="special"), torch.float8_e5m2, 57344.0, 8192.0),
    "fp16": (FloatFormat(5, 10, overflow="special"), torch.float16, 65504.0, 32.0),
    "bf16": (FloatFormat(8, 7, overflow="special"), torch.bfloat16, 3.3895313892515355e38, 2.0**120),
}


def _inputs(kind: str, dtype: torch.dtype, random_million: torch.Tensor, top: float, step: float) -> torch.Tensor:
    if kind == "all_bf16":
        return all_bf16()
    if kind == "random_1e6":
        return random_million
    # every exact tie between neighbours (subnormals included), one ulp either side,
    # the tie just above the max, values below the smallest subnormal, specials
    grid = grid_of(dtype)
    qmin = grid[1].item()
    below = torch.tensor([qmin / 2, qmin / 4, qmin * 0.75, qmin * 0.5000001, qmin * 0.4999999, 1e-45])
    return torch.cat([ties_and_neighbours(grid, beyond=top + step), below, -below, _specials()])


def _run_path(fmt: FloatFormat, x: torch.Tensor, path: str) -> torch.Tensor:
    if path == "cast":
        return fmt(x)
    if path == "bits":
        return kernels.float_round(x, fmt._params, 0, fast=False)
    assert fmt._params.fast, "the step kernel must apply to this format"
    return kernels.float_round(x, fmt._params, 0, fast=True)


PATHS = [("cast", n) for n in CASTS] + [("bits", n) for n in CASTS] + \
    [("step", n) for n in CASTS if n != "bf16"]  # bf16's subnormal steps are not normal fp32 numbers


@pytest.mark.parametrize("kind", ["all_bf16", "random_1e6", "ties_subnormals"])
@pytest.mark.parametrize(("path", "name"), PATHS, ids=[f"{n}-{p}" for p, n in PATHS])
def test_matches_torch_cast(name: str, path: str, kind: str, random_million: torch.Tensor) -> None:
    """``cast``: the native-cast fast path; ``bits``: the bit-pattern kernel; ``step``: the step kernel."""
    fmt, dtype, top, step = CASTS[name]
    x = _inputs(kind, dtype, random_million, top, step)
    if path == "cast":
        assert fmt._native_dtype() is dtype, "the fast path must be the native cast"
    assert_same_bits(_run_path(fmt, x, path), x.to(dtype).float(), inputs=x, what=f"{name} {path} {kind}")


SATURATING = {
    "e4m3": (torch.float8_e4m3fn, 448.0, 32.0),
    "e5m2": (torch.float8_e5m2, 57344.0, 8192.0),
    "fp16": (torch.float16, 65504.0, 32.0),
    "bf16": (torch.bfloat16, 3.3895313892515355e38, 2.0**120),
}


@pytest.mark.parametrize("kind", ["all_bf16", "random_1e6", "ties_subnormals"])
@pytest.mark.parametrize(("path", "name"), PATHS, ids=[f"{n}-{p}" for p, n in PATHS])
def test_saturating_named_equals_clamp_then_cast(name: str, kind: str, path: str,
                                                 random_million: torch.Tensor) -> None:
    dtype, top, step = SATURATING[name]
    fmt = get(name)
    assert fmt.overflow == "saturate" and fmt.max == top
    x = _inputs(kind, dtype, random_million, top, step)
    expected = x.clamp(-top, top).to(dtype).float()
    assert_same_bits(_run_path(fmt, x, path), expected, inputs=x, what=f"{name} saturating {path} {kind}")


def test_e4m3_overflow_special_gives_nan_past_the_last_tie() -> None:
    # OCP E4M3FN has no Inf: overflow='special' means NaN. 464 is the tie between 448
    # (mantissa 110, even) and 480 (not a number): nearest-even keeps 448.
    fmt = FloatFormat(4, 3, specials="fn", overflow="special")
    assert fmt._native_dtype() is None  # the saturating cast cannot give NaN
    x = torch.cat([all_bf16(), random_f32(200_000, seed=3),
                   torch.tensor([448.0, 463.99997, 464.0, 464.00003, 480.0, INF, -INF])])
    expected = torch.where((x.abs() > 464) | torch.isinf(x), torch.full_like(x, NAN),
                           x.to(torch.float8_e4m3fn).float())
    assert_same_bits(fmt(x), expected, inputs=x, what="e4m3 overflow=special")
    assert fmt(torch.tensor([464.0])).item() == 448.0
    assert math.isnan(fmt(torch.tensor([464.00003])).item())


def test_m0_ties_follow_torch_e8m0() -> None:
    # With no mantissa bits the kept LSB is the implicit 1, so a tie rounds up in
    # magnitude: PyTorch's float8_e8m0fnu cast does the same.
    fmt = FloatFormat(8, 0, specials="fn")
    x = torch.cat([random_f32(300_000, seed=4).abs(),
                   torch.tensor([1.5 * 2.0**e for e in range(-120, 120)])])
    x = x[torch.isfinite(x) & (x >= 2.0**-126) & (x <= 2.0**127)]
    assert_same_bits(fmt(x), x.to(torch.float8_e8m0fnu).float(), inputs=x, what="e8m0 ties")


# ---------------------------------------------------------------------------
# Every policy against the float64 reference
# ---------------------------------------------------------------------------
POLICIES = [
    # (E, M, bias, specials, subnormals, overflow)
    (1, 0, None, "none", True, "saturate"),
    (1, 1, None, "fn", True, "saturate"),
    (1, 2, None, "ieee", True, "special"),
    (1, 2, None, "none", True, "saturate"),
    (1, 3, 2, "none", False, "saturate"),
    (2, 0, None, "ieee", True, "special"),
    (2, 1, None, "none", True, "saturate"),
    (2, 1, None, "none", False, "saturate"),
    (2, 3, None, "none", True, "saturate"),
    (3, 0, None, "none", True, "saturate"),
    (3, 2, None, "none", True, "saturate"),
    (3, 4, None, "ieee", True, "saturate"),
    (3, 4, None, "ieee", False, "special"),
    (4, 0, None, "fn", True, "special"),
    (4, 3, None, "fn", True, "saturate"),
    (4, 3, None, "fn", False, "special"),
    (4, 3, 11, "fn", True, "saturate"),
    (4, 3, None, "none", True, "saturate"),
    (4, 3, -2, "ieee", True, "special"),
    (5, 2, None, "ieee", True, "special"),
    (5, 2, None, "ieee", False, "saturate"),
    (5, 2, 16, "fn", True, "saturate"),
    (5, 10, None, "ieee", True, "saturate"),
    (6, 5, None, "none", True, "saturate"),
    (7, 16, None, "ieee", True, "special"),
    (7, 16, 90, "none", False, "saturate"),
    (8, 0, None, "ieee", True, "special"),
    (8, 7, None, "ieee", True, "saturate"),
    (8, 10, None, "ieee", False, "special"),
    (7, 22, None, "fn", True, "saturate"),
    (8, 22, None, "ieee", True, "saturate"),
    (8, 23, None, "ieee", True, "saturate"),
    (8, 23, None, "ieee", False, "special"),
]


def _pid(p: tuple) -> str:
    E, M, bias, sp, sub, ov = p
    return f"e{E}m{M}" + (f"b{bias}" if bias is not None else "") + f"-{sp}-{'sub' if sub else 'ftz'}-{ov}"


def _structured_ties() -> torch.Tensor:
    """2^j * (1 + 2^-i) for every float32 exponent j and i = 1..23, one ulp either side, both signs.

    Whatever a format's M and exponent range, its ties (between normals, between
    subnormals, at half the smallest subnormal, past the maximum) are among these.
    """
    j = torch.arange(-149, 128, dtype=torch.float64).reshape(-1, 1)
    i = torch.arange(1, 24, dtype=torch.float64).reshape(1, -1)
    v = (2.0**j * (1 + 2.0**-i)).reshape(-1)
    v = torch.cat([v, 2.0 ** j.reshape(-1)])
    v = v[(v < 3.4e38) & (v >= 2.0**-149)].float()
    x = torch.cat([v, torch.nextafter(v, torch.tensor(0.0)), torch.nextafter(v, torch.tensor(float("inf")))])
    return torch.cat([x, -x])


@pytest.fixture(scope="module")
def policy_inputs() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.cat([random_f32(150_000, seed=6), torch.randn(50_000, generator=g) * 4,
                      torch.randn(20_000, generator=g) * 1e-3, _structured_ties(), _specials()])


@pytest.mark.parametrize("kernel", ["format", "bit-kernel"])
@pytest.mark.parametrize("mode", ["nearest_even", "nearest_away", "toward_zero"])
@pytest.mark.parametrize("policy", POLICIES, ids=[_pid(p) for p in POLICIES])
def test_matches_reference(policy: tuple, mode: str, kernel: str, policy_inputs: torch.Tensor) -> None:
    """``format``: whatever path the format picks (native cast, step kernel, bit kernel)."""
    E, M, bias, sp, sub, ov = policy
    fmt = FloatFormat(E, M, bias=bias, specials=sp, subnormals=sub, overflow=ov, rounding=mode)
    x = policy_inputs
    expected = ref_round(x, E, M, fmt.bias, sp, sub, ov, mode)
    mode_id = ["nearest_even", "nearest_away", "toward_zero"].index(mode)
    got = fmt(x) if kernel == "format" else kernels.float_round(x, fmt._params, mode_id, fast=False)
    assert_same_bits(got, expected, inputs=x, what=f"{fmt.name} {mode} {kernel}")
    # the grid extremes the format reports are the reference's
    assert fmt.max == ref_round(np.array([np.inf], np.float32), E, M, fmt.bias, sp, sub, "saturate")[0]


# ---------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------
E2M1_GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _values(fmt: FloatFormat, xs: list[float]) -> list[float]:
    return fmt(torch.tensor(xs, dtype=torch.float32)).tolist()


def test_e2m1_grid() -> None:
    fmt = get("e2m1")
    y = fmt(torch.linspace(-10, 10, 100_001))
    assert sorted(set(y.abs().tolist())) == E2M1_GRID
    assert sorted(set(y.tolist())) == sorted({-v for v in E2M1_GRID} | set(E2M1_GRID))


TIES = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
ROUNDED = {
    "nearest_even": [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0],
    "nearest_away": [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0],
    "toward_zero": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0],
}


@pytest.mark.parametrize("mode", list(ROUNDED))
def test_e2m1_ties(mode: str) -> None:
    fmt = FloatFormat(2, 1, specials="none", rounding=mode)
    assert _values(fmt, TIES) == ROUNDED[mode]
    assert _values(fmt, [-t for t in TIES]) == [-v for v in ROUNDED[mode]]


def test_toward_zero_and_off_tie_values() -> None:
    tz = FloatFormat(2, 1, specials="none", rounding="toward_zero")
    assert _values(tz, [0.4, 0.9, 1.9, 5.9, 100.0, -0.9, -5.9]) == [0.0, 0.5, 1.5, 4.0, 6.0, -0.5, -4.0]
    ne = get("e2m1")
    assert _values(ne, [0.26, 0.74, 2.51, 4.99, 5.01, 7.0]) == [0.5, 0.5, 3.0, 4.0, 6.0, 6.0]


@pytest.mark.parametrize(("name", "top", "qmin", "spacing", "bits"), [
    ("e4m3", 448.0, 2.0**-9, 2.0**-3, 8),
    ("e5m2", 57344.0, 2.0**-16, 2.0**-2, 8),
    ("e3m4", 15.5, 2.0**-6, 2.0**-4, 8),
    ("e3m2", 28.0, 2.0**-4, 2.0**-2, 6),
    ("e2m3", 7.5, 2.0**-3, 2.0**-3, 6),
    ("e2m1", 6.0, 0.5, 0.5, 4),
    ("fp16", 65504.0, 2.0**-24, 2.0**-10, 16),
    ("bf16", 3.3895313892515355e38, 2.0**-133, 2.0**-7, 16),
    ("tf32", (2 - 2.0**-10) * 2.0**127, 2.0**-136, 2.0**-10, 19),
], ids=lambda v: v if isinstance(v, str) else None)
def test_named_extremes(name: str, top: float, qmin: float, spacing: float, bits: int) -> None:
    fmt = get(name)
    assert (fmt.max, fmt.min_subnormal, fmt.spacing_at_one, fmt.bits) == (top, qmin, spacing, bits)
    half = torch.tensor(qmin / 2)
    above, below = torch.nextafter(half, torch.tensor(INF)), torch.nextafter(half, torch.tensor(0.0))
    x = torch.tensor([top, 3.4028234663852886e38, INF, -INF, qmin, qmin / 2, above, below,
                      1.0 + spacing, 1.0 + spacing / 2, -qmin], dtype=torch.float32)
    y = fmt(x).tolist()
    assert y[:4] == [top, top, top, -top]  # saturating by default, Inf included
    assert y[4:8] == [qmin, 0.0, qmin, 0.0]  # the tie at qmin/2 goes to the even code, 0
    assert y[8] == 1.0 + spacing and y[9] == 1.0 and y[10] == -qmin


def test_flush_subnormals_keeps_sign_and_min_normal() -> None:
    fmt = FloatFormat(4, 3, specials="fn", subnormals=False)
    mn = 2.0**-6
    assert fmt.min_subnormal == mn and fmt.min_normal == mn
    x = torch.tensor([2.0**-7, -(2.0**-7), 2.0**-9, mn, mn * (1 - 2.0**-5), mn * 0.9, 1.0])
    y = fmt(x)
    assert y.tolist() == [0.0, 0.0, 0.0, mn, mn, 0.0, 1.0]
    assert torch.signbit(y[1]).item(), "a flushed negative stays -0.0"
    keep = FloatFormat(4, 3, specials="fn")
    assert keep(x).tolist()[:3] == [2.0**-7, -(2.0**-7), 2.0**-9]


@pytest.mark.parametrize(("fmt", "xs", "expected"), [
    (FloatFormat(5, 2), [1e6, INF, -INF, 61440.0], [57344.0, 57344.0, -57344.0, 57344.0]),
    (FloatFormat(5, 2, overflow="special"), [1e6, INF, -INF, 61440.0, 61439.996],
     [INF, INF, -INF, INF, 57344.0]),
    (FloatFormat(4, 3, specials="fn"), [1e6, INF, 464.0, 470.0], [448.0, 448.0, 448.0, 448.0]),
    (FloatFormat(4, 3, specials="fn", overflow="special"), [1e6, INF, 464.0, 470.0], [NAN, NAN, 448.0, NAN]),
    (FloatFormat(2, 1, specials="none"), [1e6, INF, -INF, 7.0], [6.0, 6.0, -6.0, 6.0]),
], ids=["ieee-saturate", "ieee-special-inf", "fn-saturate", "fn-special-nan", "none-saturate"])
def test_overflow_policies(fmt: FloatFormat, xs: list[float], expected: list[float]) -> None:
    y = fmt(torch.tensor(xs))
    assert_same_bits(y, torch.tensor(expected), inputs=torch.tensor(xs), what=fmt.name)


def test_overflow_special_needs_special_codes() -> None:
    with pytest.raises(ValueError, match="overflow"):
        FloatFormat(2, 1, specials="none", overflow="special")


@pytest.mark.parametrize("mode", [r.value for r in Rounding])
@pytest.mark.parametrize("spec", [("ieee", "saturate"), ("ieee", "special"), ("fn", "saturate"),
                                  ("fn", "special"), ("none", "saturate")], ids="-".join)
def test_nan_in_nan_out(spec: tuple[str, str], mode: str) -> None:
    sp, ov = spec
    for E, M in ((4, 3), (2, 1), (8, 7), (5, 10), (8, 23)):
        if sp != "ieee" and E == 8:  # 8-bit exponents fit float32 only with IEEE specials
            continue
        fmt = FloatFormat(E, M, specials=sp, overflow=ov, rounding=mode)
        nans = torch.tensor([NAN, -NAN, 1.0]).view(torch.int32)
        nans[1] = 0x7F800001  # a signalling-NaN pattern
        x = nans.view(torch.float32)
        y = fmt(x, generator=torch.Generator().manual_seed(0))
        assert torch.isnan(y[:2]).all(), f"{fmt.name} {mode}"
        assert y[2].item() == 1.0


def test_custom_bias() -> None:
    fmt = FloatFormat(4, 3, bias=4, specials="fn")  # e4m3 moved up by 2^3
    assert fmt.max == 448.0 * 8 and fmt.min_subnormal == 2.0**-6 and fmt.emin == -3
    assert fmt.name == "e4m3fnb4"
    assert _values(fmt, [3584.0, 5000.0, 2.0**-6, 2.0**-7, 1.0625 * 8, 1.1875 * 8]) == \
        [3584.0, 3584.0, 2.0**-6, 0.0, 8.0, 10.0]
    low = FloatFormat(3, 2, bias=0, specials="none")  # 1.0 is subnormal here
    assert low.emin == 1 and low.max == 1.75 * 2**7 and low.spacing_at_one == 0.5
    assert _values(low, [1.0, 1.25, 1.26, 224.0, 0.2]) == [1.0, 1.0, 1.5, 224.0, 0.0]


@pytest.mark.parametrize(("fmt", "grid"), [
    (FloatFormat(1, 2, specials="none"), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
    (FloatFormat(1, 2, specials="ieee"), [0.0, 0.5, 1.0, 1.5]),
    (FloatFormat(1, 1, specials="fn"), [0.0, 1.0, 2.0]),
    (FloatFormat(1, 0, specials="none"), [0.0, 2.0]),  # bias 0: the one normal is 2^1
    (FloatFormat(3, 0, specials="none"), [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]),
    (FloatFormat(2, 0, specials="ieee"), [0.0, 1.0, 2.0]),
    (FloatFormat(3, 0, specials="fn"), [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]),
], ids=["e1m2none", "e1m2ieee", "e1m1fn", "e1m0none", "e3m0none", "e2m0ieee", "e3m0fn"])
def test_edge_format_grids(fmt: FloatFormat, grid: list[float]) -> None:
    y = fmt(torch.linspace(-40, 40, 400_001))
    assert sorted(set(y.abs().tolist())) == grid
    assert fmt.max == grid[-1]


def test_degenerate_formats_rejected() -> None:
    with pytest.raises(ValueError, match="no nonzero finite value"):
        FloatFormat(1, 0, specials="ieee")
    with pytest.raises(ValueError, match="no nonzero finite value"):
        FloatFormat(1, 0, specials="fn")
    with pytest.raises(ValueError, match="subnormals"):
        FloatFormat(1, 2, specials="ieee", subnormals=False)


def test_e8m23_is_identity() -> None:
    x = torch.cat([all_bf16(), random_f32(200_000, seed=8), _specials()])
    assert_same_bits(get("fp32")(x), x, what="fp32")
    assert_same_bits(FloatFormat(8, 23, overflow="special", rounding="toward_zero")(x), x, what="e8m23 rtz")
    sat = FloatFormat(8, 23)
    assert_same_bits(sat(x), x.clamp(-sat.max, sat.max), what="e8m23 saturating")


# ---------------------------------------------------------------------------
# Names and parsing
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "E", "M", "specials"), [
    ("e4m3", 4, 3, "fn"), ("e5m2", 5, 2, "ieee"), ("e3m4", 3, 4, "ieee"), ("e3m2", 3, 2, "none"),
    ("e2m3", 2, 3, "none"), ("e2m1", 2, 1, "none"), ("fp16", 5, 10, "ieee"), ("bf16", 8, 7, "ieee"),
    ("tf32", 8, 10, "ieee"), ("fp32", 8, 23, "ieee"),
])
def test_named_float_formats(name: str, E: int, M: int, specials: str) -> None:
    assert name in names()
    fmt = get(name)
    assert isinstance(fmt, FloatFormat)
    assert (fmt.exp_bits, fmt.man_bits, fmt.specials, fmt.bias) == (E, M, specials, 2 ** (E - 1) - 1)
    assert fmt.scaling is None and fmt.rounding == Rounding.NEAREST_EVEN
    assert fmt.name == name


@pytest.mark.parametrize(("alias", "name"), [("E4M3", "e4m3"), ("e4m3fn", "e4m3"), ("float16", "fp16"),
                                             ("bfloat16", "bf16"), ("fp4", "e2m1"), (" half ", "fp16")])
def test_aliases(alias: str, name: str) -> None:
    assert get(alias) == get(name)


@pytest.mark.parametrize(("text", "E", "M", "specials"), [
    ("e3m3", 3, 3, "ieee"), ("e6m9", 6, 9, "ieee"), ("e3m3fn", 3, 3, "fn"), ("e4m2none", 4, 2, "none"),
    ("e1m0none", 1, 0, "none"), ("e8m0", 8, 0, "ieee"),
])
def test_exmy_strings_parse(text: str, E: int, M: int, specials: str) -> None:
    fmt = get(text)
    assert (fmt.exp_bits, fmt.man_bits, fmt.specials, fmt.overflow) == (E, M, specials, "saturate")
    assert fmt == FloatFormat(E, M, specials=specials, name=text)


def test_formats_are_frozen_values() -> None:
    fmt = get("e4m3")
    with pytest.raises(AttributeError):
        fmt.man_bits = 2  # type: ignore[misc]
    # get() serves one shared value: equality and hashing must hold for an independently built one
    again = FloatFormat(4, 3, specials="fn", name="e4m3")
    assert again is not fmt and fmt == again and hash(fmt) == hash(again)
    assert fmt != FloatFormat(4, 3, specials="fn", name="e4m3", rounding="nearest_away")
    assert fmt.man_bits == 3


# ---------------------------------------------------------------------------
# Dtypes and layouts
# ---------------------------------------------------------------------------
LAYOUT_FORMATS = ["e4m3", "e5m2", "e2m1", "e3m4", "fp16", "bf16"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", LAYOUT_FORMATS)
def test_dtypes(name: str, dtype: torch.dtype) -> None:
    fmt = get(name)
    x = (torch.randn(37, 5) * 20).to(dtype)
    y = fmt(x)
    assert y.dtype == dtype and y.shape == x.shape and y.device == x.device
    # widening fp16/bf16 to fp32 is exact; the result is cast back (round to nearest even)
    assert_same_bits(y.float(), fmt(x.float()).to(dtype).float(), what=f"{name} {dtype}")


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded", "zero-dim", "empty"])
@pytest.mark.parametrize("name", ["e4m3", "e3m4", "e2m1"])
def test_layouts(name: str, layout: str) -> None:
    fmt = get(name)
    base = torch.randn(24, 16) * 10
    x = {"transposed": base.t(), "sliced": base[3:, ::3], "expanded": base[:1].expand(5, 16),
         "zero-dim": base[2, 3], "empty": base[:0]}[layout]
    y = fmt(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert_same_bits(y, fmt(x.contiguous()), what=f"{name} {layout}")
    if layout != "empty":
        ref = ref_round(x.contiguous().reshape(-1), fmt.exp_bits, fmt.man_bits, fmt.bias, fmt.specials)
        assert_same_bits(y.reshape(-1), torch.from_numpy(ref), what=f"{name} {layout} reference")


def test_input_not_modified() -> None:
    x = torch.randn(100) * 30
    before = x.clone()
    for name in ("e4m3", "e3m4", "fp32"):
        y = get(name)(x)
        assert y.data_ptr() != x.data_ptr()
    assert torch.equal(x, before)


@requires_cuda
@pytest.mark.parametrize("mode", [r.value for r in Rounding if r != Rounding.STOCHASTIC])
@pytest.mark.parametrize("name", ["e4m3", "e5m2", "e3m4", "e2m1", "fp16", "bf16"])
def test_cuda_matches_cpu(name: str, mode: str) -> None:
    import dataclasses

    fmt = dataclasses.replace(get(name), rounding=mode)
    x = torch.cat([all_bf16(), random_f32(100_000, seed=9)])
    y = fmt(x.cuda())
    assert y.is_cuda and y.dtype == torch.float32
    assert_same_bits(y.cpu(), fmt(x), what=f"{name} {mode} cuda")
    for dtype in (torch.float16, torch.bfloat16):
        xd = (torch.randn(64, 33) * 10).to(dtype)
        assert_same_bits(fmt(xd.cuda().t()).cpu().float(), fmt(xd.t()).float(), what=f"{name} {dtype} cuda")


# ---------------------------------------------------------------------------
# Stochastic rounding
# ---------------------------------------------------------------------------
SR_POINTS = [1.03, 1.1, -1.2, 300.0, 0.0013, -0.0007, 0.0005, 2.0**-11, 447.0]  # e4m3: normal, subnormal, tiny


def test_stochastic_float_repeats_with_generator() -> None:
    fmt = FloatFormat(4, 3, specials="fn", rounding="stochastic")
    x = torch.randn(10_000) * 10
    a = fmt(x, generator=torch.Generator().manual_seed(123))
    b = fmt(x, generator=torch.Generator().manual_seed(123))
    c = fmt(x, generator=torch.Generator().manual_seed(124))
    assert_same_bits(a, b, what="same seed")
    assert not torch.equal(a, c)


def test_stochastic_float_unbiased_and_on_neighbours() -> None:
    fmt = FloatFormat(4, 3, specials="fn", rounding="stochastic")
    n = 40_000
    x = torch.tensor(SR_POINTS, dtype=torch.float32)
    y = fmt(x.expand(n, -1), generator=torch.Generator().manual_seed(7))
    lo = torch.from_numpy(ref_round(x, 4, 3, None, "fn", mode="toward_zero"))
    hi = lo + torch.where(x >= 0, 1.0, -1.0) * torch.tensor(
        [2.0 ** (max(math.frexp(abs(v))[1] - 1, -6) - 3) for v in SR_POINTS])
    assert bool(((y == lo) | (y == hi)).all()), "stochastic results are the two neighbours"
    p = ((x - lo) / (hi - lo)).double()
    sigma = (hi - lo).abs().double() * torch.sqrt(p * (1 - p) / n)
    err = (y.double().mean(0) - x.double()).abs()
    assert bool((err <= 5 * sigma + 1e-12).all()), f"bias {err.tolist()} vs 5 sigma {(5 * sigma).tolist()}"


# ---------------------------------------------------------------------------
# Scaled floats
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["e4m3", "e2m1", "e3m2"])
def test_scaled_float_per_tensor(name: str) -> None:
    import dataclasses

    fmt = dataclasses.replace(get(name), scaling=Scaling())
    x = torch.randn(64, 48) * 0.01
    amax = x.abs().max()
    scale = amax / fmt.max
    inv = 1.0 / scale
    ref = torch.from_numpy(ref_round((x * inv).numpy(), fmt.exp_bits, fmt.man_bits, fmt.bias,
                                     fmt.specials)) * scale
    assert_same_bits(fmt(x), ref, what=f"scaled {name}")
    # static amax: values beyond it saturate to +-amax's grid point
    y = fmt(x, amax=amax / 4)
    assert y.abs().max().item() == pytest.approx(amax.item() / 4, rel=1e-6)


def test_scaled_float_per_channel() -> None:
    fmt = FloatFormat(4, 3, specials="fn", scaling=Scaling("channel", axis=1))
    x = torch.randn(8, 6, 5) * torch.logspace(-3, 3, 6).reshape(1, 6, 1)
    y = fmt(x)
    for c in range(6):
        xc = x[:, c]
        scale = xc.abs().max() / 448.0
        ref = torch.from_numpy(ref_round((xc * (1.0 / scale)).numpy(), 4, 3, None, "fn")) * scale
        assert_same_bits(y[:, c], ref, what=f"channel {c}")


def test_scaled_wide_format_with_small_amax() -> None:
    # bf16's max is 3.4e38: amax / max falls below float32's normal range for any amax < ~4e3
    fmt = FloatFormat(8, 7, scaling=Scaling())
    x = torch.tensor([0.0, 0.01, -1e-3, 1.0 / 3.0]) * 1e-2
    y = fmt(x)
    assert torch.isfinite(y).all() and y[0].item() == 0.0
    assert_same_bits(y, x.to(torch.bfloat16).float(), what="scaled bf16 == bf16 cast")
