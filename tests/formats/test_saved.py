"""What the backward keeps: clipped-STE masks as bits, quantized layer inputs re-made from their source.

Gradients are checked bit for bit against the formula the library used before (``g * mask``
with the mask worked out independently from ``x``) and against the same model trained with
recipes turned off; the recipe mechanism is checked to engage (it is not a test that passes by
doing nothing) and to refuse an in-place change of its source.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks.formats import IntFormat, Scaling, get, saved

from ._reference import assert_same_bits

pytestmark = pytest.mark.usefixtures("eager_kernels")


@pytest.mark.parametrize("n", [1, 7, 8, 9, 64, 1001], ids=lambda n: f"n{n}")
def test_pack_mask_round_trips(n: int) -> None:
    mask = torch.rand(n) < 0.5
    packed = saved.pack_mask(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == (n + 7) // 8
    assert torch.equal(saved.unpack_mask(packed, mask.shape), mask)
    # bit i % 8 of byte i // 8, as written by hand
    bits = [(int(packed[i // 8]) >> (i % 8)) & 1 for i in range(n)]
    assert bits == mask.int().tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_masked_grad_is_the_old_product_bit_for_bit(dtype: torch.dtype) -> None:
    g = torch.randn(3, 5, 7).to(dtype)
    g.view(-1)[:6] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, -2.0]).to(dtype)
    mask = torch.rand(3, 5, 7) < 0.5
    mask.view(-1)[:6] = torch.tensor([False, False, False, False, True, False])
    assert_same_bits(saved.masked_grad(g, saved.pack_mask(mask)), g * mask.to(dtype))


def _grad(fmt, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_()
    fmt(x).backward(g)
    return x.grad


@pytest.mark.parametrize("name, in_range", [
    ("e4m3", lambda x: x.abs() <= 448.0),
    ("int8_static", lambda x: x.abs() <= 2.0),
], ids=["e4m3", "int8-static"])
def test_clipped_gradient_equals_previous_formula(name: str, in_range) -> None:
    fmt = get("e4m3") if name == "e4m3" else IntFormat(8, scaling=Scaling(amax=2.0))
    x = torch.randn(2, 3, 41) * (300.0 if name == "e4m3" else 1.5)
    x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -1e9])
    assert bool((~in_range(x)).any()) and bool(in_range(x).any())  # both kinds of element are there
    g = torch.randn_like(x)
    assert_same_bits(_grad(fmt, x, g), g * in_range(x).to(g.dtype))


def test_clipped_gradient_block_format_equals_previous_formula() -> None:
    fmt = get("mxfp4")
    x = torch.randn(4, 64) * 3
    g = torch.randn_like(x)
    _, mask = fmt._forward(x, None, None, True)  # the kernel's own in-range mask, as the old backward used
    assert bool((~mask).any()) and bool(mask.any())
    assert_same_bits(_grad(fmt, x, g), g * mask.to(g.dtype))


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))


def _train_grads(model: nn.Module, x: torch.Tensor, recompute: bool, **cfg) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with saved.recompute(recompute), qh.quantized(model, **cfg):
        model(x).square().sum().backward()
    return [p.grad.clone() for p in model.parameters()]


class _Count:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        original = saved.Recipe.unpack

        def counted(recipe: saved.Recipe) -> torch.Tensor:
            self.n += 1
            return original(recipe)

        monkeypatch.setattr(saved.Recipe, "unpack", counted)


@pytest.mark.parametrize("fmt", ["e4m3", "int8", "mxfp8_e4m3"])
def test_recipes_give_the_same_gradients(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(), torch.randn(4, 16) * 50
    count = _Count(monkeypatch)
    plain = _train_grads(model, x, False, input=fmt, weight=fmt, output=fmt)
    assert count.n == 0
    again = _train_grads(model, x, True, input=fmt, weight=fmt, output=fmt)
    # re-made, not kept: the 2nd and 3rd Linear's quantized input and weight (the weight saved as a view); the
    # 1st Linear keeps only its input, which needs no grad (so no STE made it)
    assert count.n == 4
    for a, b in zip(plain, again):
        assert_same_bits(a, b)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_stochastic_rounding_keeps_its_result(monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _model(), torch.randn(4, 16)
    count = _Count(monkeypatch)
    cfg = {"input": qh.formats.FloatFormat(4, 3, specials="fn", rounding="stochastic"), "seed": 3}
    a = _train_grads(model, x, True, **cfg)
    b = _train_grads(model, x, False, **cfg)
    assert count.n == 0  # a re-draw would differ: never re-made
    for u, v in zip(a, b):
        assert_same_bits(u, v)


def test_inplace_change_of_the_source_raises() -> None:
    lin = nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    with qh.quantized(lin, input="e4m3"):
        h = x * 2.0
        out = lin(h)
        with torch.no_grad():
            h.add_(1.0)  # the quantized copy of h is re-made from h in the backward
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()


def test_checkpointing_owns_saving_in_its_scope() -> None:
    from torch.utils.checkpoint import checkpoint

    model, x = _model(), torch.randn(4, 16) * 50
    ref = _train_grads(model, x, False, input="e4m3", weight="e4m3")
    model.zero_grad(set_to_none=True)
    with qh.quantized(model, input="e4m3", weight="e4m3"):
        checkpoint(model, x, use_reentrant=False).square().sum().backward()
    for a, p in zip(ref, model.parameters()):
        assert_same_bits(a, p.grad)


def test_double_backward_through_a_recipe() -> None:
    model, x = _model(), torch.randn(4, 16)

    def second(recompute: bool) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with saved.recompute(recompute), qh.quantized(model, input="bf16", weight="bf16"):
            xx = x.clone().requires_grad_()
            (gx,) = torch.autograd.grad(model(xx).square().sum(), xx, create_graph=True)
            gx.square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(second(False), second(True)):
        assert_same_bits(a, b)


def test_recipes_in_a_conv_net(monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(64, 3))
    x = torch.randn(2, 3, 8, 8) * 30
    count = _Count(monkeypatch)
    cfg = {"input": "e4m3", "weight": "int8", "output": "e4m3"}  # int8 weights: per channel, a reshaped result
    plain = _train_grads(model, x, False, **cfg)
    again = _train_grads(model, x, True, **cfg)
    assert count.n == 5  # the inputs of the 2nd conv and the Linear, the 3 weights (a conv saves its weight always)
    for a, b in zip(plain, again):
        assert_same_bits(a, b)


@pytest.mark.parametrize("n", [8, 64, 1001], ids=lambda n: f"n{n}")
def test_word_and_row_forms_of_the_mask_agree(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The int64-word packing (eager) and the row-wise one (traced inside a user's torch.compile)."""
    mask = torch.rand(n) < 0.5
    g = torch.randn(n)
    words = saved.pack_mask(mask), saved.masked_grad(g, saved.pack_mask(mask))
    monkeypatch.setattr(saved, "_WORDS", False)
    rows = saved.pack_mask(mask), saved.masked_grad(g, saved.pack_mask(mask))
    assert torch.equal(words[0], rows[0])
    assert_same_bits(words[1], rows[1])
    assert_same_bits(rows[1], g * mask.to(g.dtype))
