"""The fused (torch.compile) kernels give bit-identical results to the eager ones.

One small test per kernel family, every rounding mode for the ExMy kernel;
stochastic rounding draws its noise outside the kernel, so the same
``torch.Generator`` seed gives the same bits on both paths. torch.compile on
CPU costs ~15-20 s the first time (cached afterwards), so the inputs are small
and the number of compiled graphs is kept low. The backend is restored after
each test (conftest's ``eager_kernels`` fixture).
"""

from __future__ import annotations

import pytest
import torch

from qsim_hooks.formats import FloatFormat, IntFormat, Scaling, kernels

from ._reference import assert_same_bits, random_f32, ref_round

MODES = ["nearest_even", "nearest_away", "toward_zero", "stochastic"]

pytestmark = pytest.mark.usefixtures("eager_kernels")  # restores the backend each test switches


def _both(fmt, x: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    kernels.set_backend("eager")
    eager = fmt(x, generator=torch.Generator().manual_seed(3), **kw)
    kernels.set_backend("compiled")
    fused = fmt(x, generator=torch.Generator().manual_seed(3), **kw)
    return eager, fused


def test_float_kernels_eager_equal_compiled() -> None:
    x = torch.cat([random_f32(20_000, seed=30), torch.randn(5_000) * 100,
                   torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 464.0, -464.0,
                                 2.0**-10 - 2.0**-34])])
    fmt = FloatFormat(4, 3, specials="fn", overflow="special")  # NaN overflow: no native-cast shortcut
    assert fmt._params.fast
    for mode_id, mode in enumerate(MODES):
        # the bit-pattern kernel for every mode, the step kernel for the deterministic ones
        for fast in ([False, True] if mode != "stochastic" else [False]):
            out = []
            for backend in ("eager", "compiled"):
                kernels.set_backend(backend)
                out.append(kernels.float_round(x, fmt._params, mode_id, torch.Generator().manual_seed(3),
                                               fast=fast))
            what = f"e4m3 {mode} {'step' if fast else 'bits'}"
            assert_same_bits(out[1], out[0], inputs=x, what=what)
            if mode != "stochastic":
                assert_same_bits(out[1], torch.from_numpy(ref_round(x, 4, 3, None, "fn", True, "special", mode)),
                                 inputs=x, what=f"{what} vs reference")
    assert not kernels._compile_failed, "torch.compile fell back to eager: nothing was compared"


def test_scaled_and_int_kernels_eager_equal_compiled() -> None:
    x = torch.randn(64, 96) * torch.logspace(-3, 3, 96)
    cases = [
        (FloatFormat(2, 1, specials="none", scaling=Scaling("channel", axis=1)), "nearest_even"),
        (IntFormat(4, scaling=Scaling("block", block_size=32, axis=1), rounding="stochastic"), "stochastic"),
        (IntFormat(8, rounding="nearest_away"), "nearest_away"),
    ]
    for fmt, mode in cases:
        eager, fused = _both(fmt, x)
        assert_same_bits(fused, eager, inputs=x, what=f"{fmt.name} {mode}")
    assert not kernels._compile_failed
