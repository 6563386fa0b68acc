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

from qsim_hooks.formats import FloatFormat, IntFormat, Scaling, _fused_call, kernels

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


def test_one_compiled_graph_per_kernel_across_views_and_modes() -> None:
    """A view's base and the torch-function modes on the stack (a session's) are guarded by torch.compile:
    kernels.run calls compiled kernels without them, so one graph serves all calls, and the modes are back
    after each call (also when the kernel raises)."""
    from torch._dynamo.utils import counters
    from torch.overrides import TorchFunctionMode

    class Seen(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Seen.calls += 1
            return func(*args, **(kwargs or {}))

    kernels.set_backend("compiled")
    fn = kernels.named_copy(lambda x, s: x * s + 1.0, "_graphs_probe")
    s = torch.tensor(3.0)
    before = counters["stats"]["unique_graphs"]
    base = torch.arange(24, dtype=torch.float32)
    got = [kernels.run("_graphs_probe", fn, base, s)]
    got.append(kernels.run("_graphs_probe", fn, base.reshape(4, 6).reshape(-1), s))  # a view: has _base
    views = base.reshape(2, 12).reshape(-1), base[None].reshape(-1), base.reshape(3, 8)
    with Seen() as mode:
        n = torch._C._len_torch_function_stack()
        got.append(kernels.run("_graphs_probe", fn, views[0], s))
        with torch._C.DisableTorchFunction():
            got.append(kernels.run("_graphs_probe", fn, views[1], s))
        assert torch._C._len_torch_function_stack() == n and Seen.calls == 0  # the kernel ran without it

        def fails(*args):
            raise ValueError("kernel failed")
        with pytest.raises(ValueError, match="kernel failed"):
            _fused_call.call(fails, (views[2],))
        assert torch._C._len_torch_function_stack() == n
        torch.add(base, 1)
    assert Seen.calls == 1 and mode is not None
    assert not kernels._compile_failed
    assert counters["stats"]["unique_graphs"] - before == 1
    for g in got:
        assert torch.equal(g, base * 3.0 + 1.0)


@pytest.mark.parametrize("mode,fast", [(0, True), (0, False), (2, True)])
def test_into_writes_the_out_of_place_bits_into_x_when_fused(mode, fast) -> None:
    x = torch.cat([random_f32(30_000, seed=31), torch.tensor([0.0, -0.0, float("inf"), float("nan"), 1e30])])
    fmt = FloatFormat(4, 3, specials="fn")
    kernels.set_backend("compiled")
    want = kernels.float_round(x, fmt._params, mode, fast=fast)
    given = x.clone()
    version = given._version
    got = kernels.float_round(given.reshape(5, -1), fmt._params, mode, fast=fast, into=True)
    assert got.data_ptr() == given.data_ptr() and got.shape == (5, x.numel() // 5)
    assert given._version > version  # a write every version-keyed cache (reuse) sees
    assert_same_bits(given, want, inputs=x, what=f"mode {mode} into")
    assert not kernels._compile_failed
    # eager kernels, and stochastic rounding (its noise drawn outside the kernel), return a new tensor
    kernels.set_backend("eager")
    given = x.clone()
    got = kernels.float_round(given, fmt._params, mode, fast=fast, into=True)
    assert got.data_ptr() != given.data_ptr() and torch.equal(given.view(torch.int32), x.view(torch.int32))
    assert_same_bits(got, want, inputs=x, what=f"mode {mode} into, eager")
    kernels.set_backend("compiled")
    given = x.clone()
    got = kernels.float_round(given, fmt._params, 3, torch.Generator().manual_seed(1), into=True)
    assert got.data_ptr() != given.data_ptr() and torch.equal(given.view(torch.int32), x.view(torch.int32))


@pytest.mark.parametrize("n", [4096, 4099], ids=["n%8=0", "n%8=3"])
def test_clipped_ste_fused_mask_and_backward_equal_the_reference(n: int) -> None:
    """The fused cast + packed mask (and the backward's g * mask) against x.abs() <= max worked out here."""
    x = torch.randn(n) * 300
    x[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), 448.0, -448.5, 1e9])
    g = torch.randn(n)
    g[6:9] = torch.tensor([float("nan"), float("inf"), -0.0])
    cases = [(FloatFormat(4, 3, specials="fn", name="e4m3"), None),  # native-cast eager path
             (FloatFormat(4, 3, specials="fn", overflow="special"), None),  # bit kernels on both paths
             (FloatFormat(5, 2, rounding="stochastic"), 5)]
    for fmt, seed in cases:
        want_grad = g * (x.abs() <= fmt.max).to(g.dtype)
        assert bool((~(x.abs() <= fmt.max)).any()) and bool((x.abs() <= fmt.max).any())
        outs = []
        for backend in ("eager", "compiled"):
            kernels.set_backend(backend)
            xr = x.clone().requires_grad_()
            gen = None if seed is None else torch.Generator().manual_seed(seed)
            y = fmt(xr, generator=gen)
            y.backward(g)
            assert_same_bits(xr.grad, want_grad, inputs=x, what=f"{fmt.name} {backend} grad")
            outs.append(y.detach())
        assert_same_bits(outs[1], outs[0], inputs=x, what=f"{fmt.name} forward compiled vs eager")
        if n % 8 == 0:  # the fused kernel ran (not only the eager mask beside a fused cast)
            assert any(k.endswith("_mask") for k in kernels._compiled)
    assert ("masked_grad_bits" if n % 8 == 0 else "masked_grad_bytes") in kernels._compiled
    assert not kernels._compile_failed


def test_in_range_bits_are_bit_i_of_byte_i_over_8() -> None:
    fmt = FloatFormat(4, 3, specials="fn")
    x = torch.randn(64) * 400
    x[:3] = torch.tensor([float("nan"), 448.0, -float("inf")])
    kernels.set_backend("compiled")
    _, bits = kernels.float_round(x, fmt._params, 0, mask=True)
    got = [(int(bits[i // 8]) >> (i % 8)) & 1 for i in range(64)]
    assert got == [int(abs(v) <= 448.0) for v in x.tolist()]  # NaN: 0
