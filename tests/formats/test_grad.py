"""Gradients for quantization-aware training.

Clipped straight-through estimator by default (the gradient passes where the
input was in range, zero where the forward pass clipped), plain STE as an
option, and an optional gradient format applied to the incoming gradient in
the backward pass (checked against that format applied by hand).
"""

from __future__ import annotations

import pytest
import torch

from qsim_hooks.formats import FloatFormat, GradSpec, IntFormat, Scaling, get

from ._reference import assert_same_bits

pytestmark = pytest.mark.usefixtures("eager_kernels")


def _grad(fmt, x: torch.Tensor, g: torch.Tensor, **kw) -> torch.Tensor:
    x = x.detach().clone().requires_grad_()
    y = fmt(x, **kw)
    assert y.requires_grad and y.dtype == x.dtype
    y.backward(g)
    return x.grad


def test_clipped_ste_float() -> None:
    fmt = get("e4m3")
    x = torch.tensor([1.3, -447.0, 448.0, 449.0, -500.0, 1e6, float("inf"), 0.001, -0.0])
    g = torch.arange(1.0, 10.0)
    expected = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 8.0, 9.0])
    assert torch.equal(_grad(fmt, x, g), expected)


def test_clipped_ste_int_static_and_dynamic() -> None:
    fmt = IntFormat(8, scaling=Scaling(amax=2.0))
    x = torch.tensor([0.5, -1.9, 2.5, -2.5, 10.0, 0.0])
    g = torch.full((6,), 3.0)
    assert _grad(fmt, x, g).tolist() == [3.0, 3.0, 0.0, 0.0, 0.0, 3.0]
    # dynamic amax: nothing is clipped, the gradient passes everywhere
    dyn = IntFormat(4)
    x = torch.randn(100) * 5
    assert torch.equal(_grad(dyn, x, torch.ones(100)), torch.ones(100))
    # a per-call static amax clips too
    assert _grad(dyn, torch.tensor([0.1, 0.9, 1.5]), torch.ones(3), amax=1.0).tolist() == [1.0, 1.0, 0.0]


def test_clipped_ste_unsigned_clips_negatives() -> None:
    fmt = IntFormat(8, signed=False, scaling=Scaling(amax=1.0))
    assert _grad(fmt, torch.tensor([-0.5, 0.5, 1.5]), torch.ones(3)).tolist() == [0.0, 1.0, 0.0]


def test_clipped_ste_per_channel() -> None:
    fmt = IntFormat(8, scaling=Scaling("channel", axis=0))
    x = torch.tensor([[0.5, 1.5], [3.0, 5.0]])
    amax = torch.tensor([1.0, 4.0])
    assert _grad(fmt, x, torch.ones(2, 2), amax=amax).tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_clipped_ste_scaled_float() -> None:
    fmt = FloatFormat(2, 1, specials="none", scaling=Scaling(amax=3.0))
    assert _grad(fmt, torch.tensor([2.9, 3.1, -2.0, -7.0]), torch.ones(4)).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_plain_ste() -> None:
    for fmt in (FloatFormat(4, 3, specials="fn", grad=GradSpec("ste")),
                IntFormat(8, scaling=Scaling(amax=1.0), grad=GradSpec("ste"))):
        x = torch.tensor([0.3, 2.0, -1e6, 1e3])
        g = torch.tensor([1.0, 2.0, 3.0, 4.0])
        assert torch.equal(_grad(fmt, x, g), g), fmt.name


@pytest.mark.parametrize("estimator", ["clipped", "ste"])
def test_gradient_format(estimator: str) -> None:
    # INT-FP-QSim's example: E3M4 forward, E5M2 backward
    fmt = FloatFormat(3, 4, grad=GradSpec(estimator, format="e5m2"))
    e5m2 = get("e5m2")
    assert fmt.grad.format == e5m2
    x = torch.tensor([0.3, -1.7, 15.0, 16.0, -100.0, 0.01])
    g = torch.tensor([1.1, -3.3, 1e-6, 1e5, 123.456, -0.07])
    mask = (x.abs() <= fmt.max).float() if estimator == "clipped" else torch.ones(6)
    expected = e5m2(g * mask)
    assert_same_bits(_grad(fmt, x, g), expected, what=estimator)
    assert _grad(fmt, x, g)[3].item() == (57344.0 if estimator == "ste" else 0.0)  # e5m2 saturates


def test_gradient_format_matches_torch_cast_on_many_values() -> None:
    fmt = IntFormat(8, grad=GradSpec("ste", format="e5m2"))
    x = torch.randn(5000)
    g = torch.randn(5000) * torch.logspace(-8, 6, 5000)
    assert_same_bits(_grad(fmt, x, g), g.clamp(-57344, 57344).to(torch.float8_e5m2).float(), what="grad e5m2")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    fmt = FloatFormat(4, 3, specials="fn", grad=GradSpec(format="e5m2"))
    x = torch.tensor([1.0, 500.0, -3.0], dtype=dtype)
    g = torch.tensor([0.3, 0.3, 0.3], dtype=dtype)
    grad = _grad(fmt, x, g)
    assert grad.dtype == dtype
    assert grad.tolist() == [get("e5m2")(torch.tensor(0.3, dtype=dtype)).item(), 0.0,
                             get("e5m2")(torch.tensor(0.3, dtype=dtype)).item()]


def test_no_graph_without_grad() -> None:
    fmt = get("e4m3")
    x = torch.randn(4, requires_grad=True)
    with torch.no_grad():
        y = fmt(x)
    assert not y.requires_grad
    assert not fmt(torch.randn(4)).requires_grad


def test_gradient_through_a_model_step() -> None:
    lin = torch.nn.Linear(8, 4)
    fmt = IntFormat(4, grad=GradSpec("ste"))
    x = torch.randn(16, 8)
    out = torch.nn.functional.linear(x, fmt(lin.weight), lin.bias)
    out.square().mean().backward()
    # plain STE: the weight gradient is the gradient with respect to the quantized weight
    wq = fmt(lin.weight.detach()).requires_grad_()
    torch.nn.functional.linear(x, wq, lin.bias.detach()).square().mean().backward()
    torch.testing.assert_close(lin.weight.grad, wq.grad)
