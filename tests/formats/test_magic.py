"""The magic kernel (formats/_exmy.magic_round_impl) rounds to nearest even exactly as the bit kernel does.

``(clamp(x) + c) - c`` with ``c = 1.5 * 2^(e + 23 - M)`` is the fused kernels' round to nearest even
for the grids it accepts: checked bit for bit against the bit kernel on every region of float32 and the
boundaries that test_split lists (ties, max and the overflow midpoint, subnormal edges, fp32 subnormals,
±0, ±Inf, NaN), against the numpy reference, and compiled (inductor) against eager.
"""

from __future__ import annotations

import pytest
import torch

from qsim_hooks.formats import BF16, E4M3, E5M2, TF32, FloatFormat, Scaling, kernels
from qsim_hooks.formats._exmy import NEAREST_EVEN, magic_overflow_impl, magic_round_impl

from ._reference import assert_same_bits, ref_round
from .test_split import NAMED, VARIANTS, _bit, _boundaries, _regions

MAGIC = [f for f in NAMED + VARIANTS if f._params.magic is not None]


def _magic(f: FloatFormat, x: torch.Tensor) -> torch.Tensor:
    (p,) = f._params.on(x.device)
    impl = magic_round_impl if f._params.magic == "magic_round" else magic_overflow_impl
    return impl(x, p, NEAREST_EVEN, None)


def _id(f: FloatFormat) -> str:
    return f.name + ("_" + f.overflow if f.overflow != "saturate" else "")


def test_magic_applies_where_exact_and_not_elsewhere() -> None:
    assert {f.name for f in MAGIC} >= {f.name for f in NAMED}, "every named ExMy grid takes the magic kernel"
    assert {_id(f) for f in MAGIC} >= {"e4m3fn_special", "e5m2_special"}, "and the non-saturating variants"
    # no subnormals, M > 20, or a constant 1.5 * 2^(e + 23 - M) past float32's range at the max: not exact
    for f in [FloatFormat(4, 3, subnormals=False), FloatFormat(5, 22), BF16, TF32]:
        assert f._params.magic is None, f.name


@pytest.mark.parametrize("f", MAGIC, ids=_id)
def test_magic_equals_bit_kernel_on_every_region(f: FloatFormat) -> None:
    x = _regions(f, seed=f.exp_bits * 17 + f.man_bits, every=1 if f in NAMED else 5)
    assert_same_bits(_magic(f, x), _bit(f, x), inputs=x, what=f"{f.name} regions")


@pytest.mark.parametrize("f", MAGIC, ids=_id)
def test_magic_boundaries_against_bit_kernel_and_reference(f: FloatFormat) -> None:
    x = _boundaries(f)
    got = _magic(f, x)
    assert_same_bits(got, _bit(f, x), inputs=x, what=f"{f.name} boundaries vs bit kernel")
    ref = torch.from_numpy(ref_round(x, f.exp_bits, f.man_bits, f.bias, f.specials, f.subnormals,
                                     "saturate" if f.overflow == "saturate" else "special"))
    nan = torch.isnan(x)
    assert_same_bits(got[~nan], ref[~nan], inputs=x[~nan], what=f"{f.name} boundaries vs numpy reference")
    assert torch.isnan(got[nan]).all()


@pytest.mark.usefixtures("eager_kernels")
def test_compiled_magic_equals_eager_bit_kernel() -> None:
    """The fused kernels (what the compiled backend runs: plain, non-saturating, scaled) against the bit kernel:
    inductor keeps ``(a + c) - c`` as written."""
    cases = [E4M3, FloatFormat(5, 2, overflow="special"),
             FloatFormat(4, 3, specials="fn", scaling=Scaling("channel", axis=1))]
    x = torch.cat([_boundaries(E4M3), _boundaries(E5M2), _regions(E4M3, seed=3)[::41]])
    x2 = (torch.randn(64, 96) * torch.logspace(-3, 3, 96)).reshape(64, 96)
    kernels.set_backend("compiled")
    compiled = [cases[0](x), cases[1](x), cases[2](x2)]
    assert not kernels._compile_failed, "torch.compile fell back to eager: nothing was compared"
    assert {"magic_round_0", "magic_overflow_0", "scaled_magic_round_0_sat"} <= set(kernels._compiled), \
        sorted(kernels._compiled)
    for f, inp, got in zip(cases, [x, x, x2], compiled):
        want = kernels.float_round(inp, f._params, NEAREST_EVEN, fast=False) if f.scaling is None else None
        if want is None:  # scaled: the same format with the bit kernel, eagerly
            kernels.set_backend("eager")
            want = f(inp)
        assert_same_bits(got, want, inputs=inp, what=f"{f.name} compiled magic vs bits")


def test_unsafe_math_keeps_the_step_kernel() -> None:
    """If inductor is told it may reassociate float arithmetic, ``(a + c) - c`` could become ``a``."""
    import torch._inductor.config as config

    assert kernels._kind(E4M3._params, NEAREST_EVEN, True) == "magic_round"
    with config.patch({"cpp.enable_unsafe_math_opt_flag": True}):
        assert kernels._kind(E4M3._params, NEAREST_EVEN, True) == "fast_round"
    assert kernels._kind(E4M3._params, NEAREST_EVEN, True) == "magic_round"
