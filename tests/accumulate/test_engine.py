"""The engine against float64 Python loops over products: bit for bit for every order that the spec defines
one product at a time, within one rounding of the format where a chunk is summed by torch in fp32."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qsim_hooks.accumulate import Accumulator, IntAccumulation, accumulate_matmul, hopper_fp8, matmul_with_overflow
from qsim_hooks.formats import FloatFormat

from . import reference as ref


def _data(m, k, n, seed, spread=True):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g)
    b = torch.randn(k, n, generator=g)
    if spread:  # magnitudes over several binades, so alignment and rounding both matter
        a = a * torch.exp2(torch.randint(-4, 5, (m, k), generator=g).float())
    return a, b


FORMATS = [(5, 10), (8, 7), (8, 13), (4, 6), (6, 4)]


@pytest.mark.parametrize("em", FORMATS, ids=lambda em: f"e{em[0]}m{em[1]}")
@pytest.mark.parametrize("order", ["sequential", "pairwise"])
@pytest.mark.parametrize("chunk,promote", [(None, "fp32"), (4, "fp32"), (7, None), (1, "fp32")])
def test_bit_exact_against_the_loop(em, order, chunk, promote):
    a, b = _data(3, 29, 4, seed=sum(em) + (chunk or 0))
    acc = Accumulator(FloatFormat(*em), chunk=chunk, promote=promote, order=order)
    r = ref.rounder(em)
    pr = ref.f32 if promote == "fp32" else r
    want = ref.matmul(a, b, lambda ps: ref.reduce_products(ps, r, order, chunk, pr))
    got = accumulate_matmul(a, b, acc).double().numpy()
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(want, (a.double() @ b.double()).numpy())  # the format did change the sums


def test_product_format_rounds_each_product():
    a, b = _data(2, 17, 3, seed=5)
    acc = Accumulator("fp16", product="bf16", chunk=5)
    want = ref.matmul(a, b, lambda ps: ref.reduce_products([ref.round_exmy(p, 8, 7) for p in ps],
                                                           ref.rounder((5, 10)), "sequential", 5, ref.f32))
    np.testing.assert_array_equal(accumulate_matmul(a, b, acc).double().numpy(), want)


def test_fp32_sequential_is_numpy_float32_in_index_order():
    a, b = _data(4, 50, 3, seed=1)
    an, bn = a.numpy(), b.numpy()
    want = np.zeros((4, 3), np.float32)
    for k in range(50):
        want = (want + np.outer(an[:, k], bn[k]).astype(np.float32)).astype(np.float32)
    np.testing.assert_array_equal(accumulate_matmul(a, b, Accumulator("fp32")).numpy(), want)


@pytest.mark.parametrize("chunk", [None, 8])
def test_chunked_is_the_chunk_sum_rounded_once(chunk):
    a, b = _data(3, 40, 5, seed=3)
    r = ref.rounder((5, 10))
    want = ref.matmul(a, b, lambda ps: ref.reduce_products(ps, r, "chunked", chunk, ref.f32))
    got = accumulate_matmul(a, b, Accumulator("fp16", order="chunked", chunk=chunk)).double().numpy()
    # torch sums each chunk in fp32 in its own order: at most one fp16 step (per chunk) away from the exact sum
    steps = 1 if chunk is None else 40 // chunk
    np.testing.assert_allclose(got, want, rtol=0, atol=steps * 2.0**-10 * np.abs(want).max())


@pytest.mark.parametrize("group,bits", [(1, 14), (4, 10), (32, 14)])
def test_hopper_alignment_against_the_loop(group, bits):
    a, b = _data(3, 70, 4, seed=group)
    acc = Accumulator("fp32", align_bits=bits, group=group, chunk=32, promote="fp32")
    def red(ps):
        total = None
        for k0 in range(0, len(ps), 32):
            s = ref.f32(ref.aligned_products(ps[k0:k0 + 32], bits, group))
            total = s if total is None else ref.f32(total + s)
        return total
    np.testing.assert_array_equal(accumulate_matmul(a, b, acc).double().numpy(), ref.matmul(a, b, red))


def test_hopper_reproduces_deepseek_v3():
    """DeepSeek-V3 report, section 3.3.2: ~14-bit accumulation gives percent-level errors ("nearly 2%") at
    K = 4096; promoting to fp32 every 128 products fixes it. Uniform positive data on an E4M3 grid: this
    model's truncation toward zero gives about 7% (the report gives no data or rounding details; the
    figures are in docs/accumulators.md), promotion brings it down by two orders of magnitude."""
    g = torch.Generator().manual_seed(0)
    e4m3 = FloatFormat(4, 3, specials="fn")
    a = e4m3.cast(torch.rand(8, 4096, generator=g) * 4)
    b = e4m3.cast(torch.rand(4096, 8, generator=g) * 4)
    exact = a.double() @ b.double()
    rel = lambda acc: ((accumulate_matmul(a, b, acc).double() - exact).abs() / exact.abs()).max().item()
    without, with_ = rel(hopper_fp8(promote_every=None)), rel(hopper_fp8())
    assert 0.01 < without < 0.1, without
    assert with_ < without / 50, (with_, without)


@pytest.mark.parametrize("bits,overflow", [(16, "wrap"), (24, "wrap"), (12, "saturate"), (16, "saturate")])
def test_int_accumulators_against_numpy(bits, overflow):
    g = torch.Generator().manual_seed(bits)
    a = torch.randint(-127, 128, (5, 40), generator=g)
    b = torch.randint(-127, 128, (40, 6), generator=g)
    got, over = matmul_with_overflow(a.float(), b.float(), Accumulator(f"int{bits}", overflow=overflow))
    an, bn = a.numpy().astype(np.int64), b.numpy().astype(np.int64)
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if overflow == "wrap":  # modular: numpy's int64 product sum, reduced mod 2**bits
        want = (an @ bn - lo) % (2**bits) + lo
        if bits == 16:
            np.testing.assert_array_equal(want, (an @ bn).astype(np.int16))
    else:
        want = np.zeros((5, 6), np.int64)
        for k in range(40):
            want = np.clip(want + np.outer(an[:, k], bn[k]), lo, hi)
    np.testing.assert_array_equal(got.numpy(), want)
    partial = np.cumsum(an[:, :, None] * bn[None], axis=1)
    if overflow == "wrap":
        np.testing.assert_array_equal(over.numpy(), ((partial < lo) | (partial > hi)).any(axis=1))
    assert over.any() if bits <= 16 else not over.any()


def test_batched_operands_broadcast():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 3, 4, 9, generator=g), torch.randn(9, 5, generator=g)
    acc = Accumulator("bf16", order="pairwise", chunk=4)
    got = accumulate_matmul(a, b, acc)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(got[i, j], accumulate_matmul(a[i, j], b, acc), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(e=st.integers(3, 8), m=st.integers(1, 12), k=st.integers(1, 24), chunk=st.one_of(st.none(), st.integers(1, 9)),
       order=st.sampled_from(["sequential", "pairwise"]), seed=st.integers(0, 2**16))
def test_property_any_exmy(e, m, k, chunk, order, seed):
    a, b = _data(2, k, 2, seed)
    r = ref.rounder((e, m))
    want = ref.matmul(a, b, lambda ps: ref.reduce_products(ps, r, order, chunk, ref.f32))
    got = accumulate_matmul(a, b, Accumulator(FloatFormat(e, m), chunk=chunk, order=order))
    np.testing.assert_array_equal(got.double().numpy(), want)


def test_tiles_do_not_change_the_result(monkeypatch):
    from qsim_hooks.accumulate import engine
    a, b = _data(3, 33, 10, seed=9)
    acc = Accumulator("fp16", order="pairwise")
    whole = accumulate_matmul(a, b, acc)
    monkeypatch.setattr(engine, "TILE_ELEMENTS", 3 * 33 * 3)
    assert torch.equal(accumulate_matmul(a, b, acc), whole)


@pytest.mark.parametrize("kw,field", [({"chunk": 0}, "chunk"), ({"order": "tree"}, "order"),
                                      ({"format": "int8_per_channel"}, "format"), ({"format": "mxfp8_e4m3"}, "format"),
                                      ({"format": "int16", "chunk": 4}, "int16"), ({"group": 0}, "group"),
                                      ({"format": "fp16", "align_bits": 14}, "align_bits"),
                                      ({"promote": "nvfp4"}, "promote")])
def test_bad_accumulators_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        Accumulator(**kw)


def test_int_accumulator_refuses_float_operands():
    with pytest.raises(ValueError, match="non-integer"):
        accumulate_matmul(torch.randn(2, 3), torch.randn(3, 2), Accumulator("int32"))
    assert IntAccumulation(24, "saturate").hi == 2**23 - 1
    assert math.isfinite(accumulate_matmul(torch.ones(1, 3), torch.ones(3, 1), Accumulator("int32")).item())


@pytest.mark.parametrize("fmt", [FloatFormat(8, 13), FloatFormat(8, 13, overflow="special"), FloatFormat(8, 10),
                                 FloatFormat(8, 1), FloatFormat(8, 22)], ids=lambda f: f"{f.name}-{f.overflow}")
def test_fp32_exponent_formats_round_on_the_bits_like_the_format(fmt):
    """fp22 / tf32-like accumulators round on fp32's bits (the engine's fast path): the format's own cast,
    bit for bit, on random bit patterns (every binade, subnormals, infinities, NaNs) and on ties."""
    from qsim_hooks.accumulate.engine import rounder
    g = torch.Generator().manual_seed(fmt.man_bits)
    bits = torch.randint(-2**31, 2**31 - 1, (1 << 16,), generator=g, dtype=torch.int64).to(torch.int32)
    ulp = 2.0 ** -fmt.man_bits
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 3.4028235e38, 1e-45, 1.1754942e-38,
                            1 + ulp / 2, 1 + 3 * ulp / 2, -(1 + ulp / 2), fmt.max * (1 + ulp / 4)])
    for x in (bits.view(torch.float32), special):
        got, want = rounder(fmt)(x), fmt.cast(x)
        same = (got.view(torch.int32) == want.view(torch.int32)) | (torch.isnan(got) & torch.isnan(want))
        assert bool(same.all()), (x[~same][:4], got[~same][:4], want[~same][:4])
    assert not torch.equal(rounder(fmt)(special[8:10]), special[8:10])  # the ties did round


def test_int_accumulator_without_possible_overflow_is_the_exact_sum():
    """K * max|a| * max|b| within the range: no partial sum can leave it (the float64-matmul path)."""
    g = torch.Generator().manual_seed(3)
    a = torch.randint(-127, 128, (4, 130), generator=g)
    b = torch.randint(-127, 128, (130, 3), generator=g)
    assert 130 * 127 * 127 <= 2**31 - 1
    got, over = matmul_with_overflow(a.float(), b.float(), Accumulator("int32", overflow="saturate"))
    np.testing.assert_array_equal(got.numpy(), a.numpy().astype(np.int64) @ b.numpy().astype(np.int64))
    assert got.dtype == torch.int64 and not over.any()


@pytest.mark.parametrize("em", [(5, 10), (8, 7), (8, 13)], ids=lambda em: f"e{em[0]}m{em[1]}")
@pytest.mark.parametrize("order", ["sequential", "pairwise"])
def test_saturation_and_nan_against_the_loop(em, order):
    """Sums that pass the format's largest value (saturating: clamped at every step, not only at the end) and
    a NaN product: the fast in-place paths hand these to the full rounding, which the loop agrees with."""
    a, b = _data(3, 23, 4, seed=7)
    b = b.abs() + 1
    if em == (5, 10):  # row 0 runs past fp16's largest value (fp32 sums and products stay finite)
        a[0] = a[0].abs() * 2.0**12
    a[1, 5] = math.nan
    r = ref.rounder(em)
    want = ref.matmul(a, b, lambda ps: ref.reduce_products(ps, r, order, None, ref.f32))
    got = accumulate_matmul(a, b, Accumulator(FloatFormat(*em), order=order)).double().numpy()
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[1]).all() and np.isfinite(got[0]).all()
    if em == (5, 10):
        assert (got[0] == 65504).all()  # saturated


@pytest.mark.parametrize("scale", [2.0**-70, 1.0, 2.0**60], ids=["tiny", "unit", "huge"])
def test_hopper_alignment_far_from_unit_against_the_loop(scale):
    """Products near float32's limits (the engine's float32 path hands those groups to float64) and
    ordinary ones, with rows of mixed magnitude: the loop reference, bit for bit."""
    a, b = _data(4, 64, 3, seed=11)
    a[0] *= scale
    a[1] *= scale * 2.0**-20
    acc = Accumulator("fp32", align_bits=14, group=32, chunk=None, promote="fp32")
    want = ref.matmul(a, b, lambda ps: ref.f32(ref.aligned_products(ps, 14, 32)))
    np.testing.assert_array_equal(accumulate_matmul(a, b, acc).double().numpy(), want)


def test_hopper_float32_path_is_the_float64_one_bit_for_bit():
    """The aligned sums run in float32 when every group's exponent allows it: the same bits as float64 (which
    holds every aligned sum exactly), on operands spread over 120 binades; far groups fall back."""
    from qsim_hooks.accumulate.engine import _aligned_in
    g = torch.Generator().manual_seed(0)
    narrow = 0
    for t in range(30):
        spread = lambda shape: torch.exp2(torch.randint(-30, 30, shape, generator=g).float())  # noqa: E731
        a = torch.randn(2, 3, 5, 70, generator=g) * spread((2, 3, 5, 70)) * (2.0**-60 if t % 3 == 0 else 1)
        b = torch.randn(2, 3, 70, 4, generator=g) * spread((2, 3, 70, 4))
        for bits, group in ((14, 32), (10, 4), (14, 1)):
            x = _aligned_in(a, b, bits, group, None, torch.float32)
            y = _aligned_in(a, b, bits, group, None, torch.float64)
            if x is not None:
                narrow += 1
                assert torch.equal(x.view(torch.int32), y.view(torch.int32)), (t, bits, group)
    assert 0 < narrow < 90  # both paths ran
