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


def test_unsafe_math_in_a_users_compile_keeps_the_step_kernel(monkeypatch) -> None:
    """Traced into a user's torch.compile that allows unsafe math, ``(a + c) - c`` could become ``a``: the step
    kernel is traced instead. The kernels compiled by qsim-hooks pin the settings (kernels.EXACT_OPTIONS)."""
    import torch._inductor.config as config

    assert kernels._kind(E4M3._params, NEAREST_EVEN, True) == "magic_round"
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert kernels._kind(E4M3._params, NEAREST_EVEN, True) == "magic_round"
    with config.patch({"cpp.enable_unsafe_math_opt_flag": True}):
        assert kernels._kind(E4M3._params, NEAREST_EVEN, True) == "fast_round"
        monkeypatch.undo()
        assert kernels._kind(E4M3._params, NEAREST_EVEN, True) == "magic_round"  # not traced: pinned
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert kernels._kind(E4M3._params, NEAREST_EVEN, True, scaled=True) == "fast_round"  # x * inv + c: an FMA?
    monkeypatch.undo()
    assert kernels._kind(E4M3._params, NEAREST_EVEN, True, scaled=True) == "magic_round"
    assert kernels.EXACT_OPTIONS["cpp.enable_unsafe_math_opt_flag"] is False


_UNSAFE = """
import sys, torch, torch._inductor.config as config
sys.path.insert(0, {root!r})
from qsim_hooks.formats import E4M3, kernels
from qsim_hooks.formats._exmy import NEAREST_EVEN, magic_round_impl
from tests.formats.test_split import _boundaries, _regions
config.cpp.enable_unsafe_math_opt_flag = True            # the user's settings, before any kernel compiles
config.cpp.enable_floating_point_contract_flag = "fast"
x = torch.cat([_boundaries(E4M3), _regions(E4M3, seed=5)[::97]])
want = kernels.float_round(x, E4M3._params, NEAREST_EVEN, fast=False)   # eager bit kernel
kernels.set_backend("compiled")
got = E4M3(x)
assert not kernels._compile_failed and "magic_round_0" in kernels._compiled
ok = torch.isnan(want) | (got.view(torch.int32) == want.view(torch.int32))
(p,) = E4M3._params.on(x.device)   # the same kernel compiled with the user's settings: not exact
loose = torch.compile(lambda x, p: magic_round_impl(x, p, NEAREST_EVEN, None), dynamic=True)(x, p)
print(int((~ok).sum()), int((loose.view(torch.int32) != want.view(torch.int32))[~torch.isnan(want)].sum()))
"""


def test_compiled_kernels_stay_exact_when_the_user_allows_unsafe_math() -> None:
    """A new process whose inductor settings allow reassociation and FMA contraction: the magic kernel compiled
    by qsim-hooks still gives the bit kernel's bits, where the same kernel compiled with those settings does not
    (so this test can fail)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", _UNSAFE.format(root=root)], capture_output=True, text=True,
                         cwd=root, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    pinned, loose = map(int, out.stdout.split()[-2:])
    assert pinned == 0, f"{pinned} results differ from the bit kernel with the user's unsafe-math settings"
    assert loose > 0, "the unpinned compile agreed too: the settings were not in effect"
