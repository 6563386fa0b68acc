"""Issue 12, item 3: a weight written by any path is re-quantized at the next forward.

PyTorch bumps a tensor's version counter on in-place ops through the tensor itself (or ``detach()``
aliases), but not on writes through ``.data``, through numpy views or through ``torch.from_numpy``
aliases of them; and a tensor returned by a parametrization can itself be written to. Every path is
written here between two no-grad forwards of an instrumented Linear; the second forward must equal
the layer computed by hand from the weight as it now is, quantized by the format itself
(``F.linear(x, fmt(w), b)``, with no session involved).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks.formats import get

FMT = "e4m3"


def _ema(p: torch.Tensor, new: torch.Tensor) -> None:
    p.data.mul_(0.5).add_(new, alpha=0.5)  # the EMA update of timm's ModelEma / many optimizers


def _sgd(p: torch.Tensor, new: torch.Tensor) -> None:
    opt = torch.optim.SGD([p], lr=1.0)
    p.grad = (p.detach() - new) * 1.0
    with torch.enable_grad():
        opt.step()


def _adam_foreach(p: torch.Tensor, new: torch.Tensor) -> None:
    opt = torch.optim.Adam([p], lr=0.5, foreach=True)
    p.grad = torch.ones_like(p)
    with torch.enable_grad():
        opt.step()


def _numpy_view(p: torch.Tensor, new: torch.Tensor) -> None:
    a = p.detach().numpy()  # shares memory; numpy writes bump no version counter
    a[...] = new.numpy()


def _from_numpy_alias(p: torch.Tensor, new: torch.Tensor) -> None:
    torch.from_numpy(p.detach().numpy()).copy_(new)  # a torch tensor with its own version counter


def _no_grad_inplace(p: torch.Tensor, new: torch.Tensor) -> None:
    with torch.no_grad():
        p.mul_(-1.5)


def _no_grad_copy(p: torch.Tensor, new: torch.Tensor) -> None:
    with torch.no_grad():
        p.copy_(new)


def _data_setitem(p: torch.Tensor, new: torch.Tensor) -> None:
    p.data[0] = new[0]
    p.data[:, 3] = 7.0


def _data_view(p: torch.Tensor, new: torch.Tensor) -> None:
    p.data.view(-1)[5] = 3.0


def _data_assign(p: torch.Tensor, new: torch.Tensor) -> None:
    p.data = new.clone()  # new storage


WRITES = {
    "data.mul_": lambda p, new: p.data.mul_(2.0),
    "data.copy_": lambda p, new: p.data.copy_(new),
    "data EMA": _ema,
    "data[i] = ...": _data_setitem,
    "data.view(-1)[i] = ...": _data_view,
    "data = other": _data_assign,
    "numpy view": _numpy_view,
    "from_numpy alias": _from_numpy_alias,
    "no_grad p.mul_": _no_grad_inplace,
    "no_grad p.copy_": _no_grad_copy,
    "SGD step": _sgd,
    "Adam foreach step": _adam_foreach,
}


def _layer() -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    lin = nn.Linear(16, 8).eval()
    return lin, torch.randn(4, 16)


def _expected(lin: nn.Linear, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, get(FMT)(w.detach()), lin.bias.detach())


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
def test_a_write_to_the_weight_between_forwards_is_quantized_at_the_next(write):
    lin, x = _layer()
    p = lin.weight  # the user's Parameter (an optimizer holds this object)
    new = torch.randn_like(p) * 0.3
    with torch.no_grad(), qh.quantized(lin, weight=FMT):
        y0 = lin(x)
        assert torch.equal(y0, _expected(lin, p, x))
        before = p.detach().clone()
        write(p, new)
        w_now = lin.parametrizations.weight.original
        assert not torch.equal(w_now.detach(), before)  # the write did change the weight
        y1 = lin(x)
        assert torch.equal(y1, _expected(lin, w_now, x))
    assert torch.equal(lin(x), F.linear(x, w_now.detach(), lin.bias.detach()))  # and after exit, full precision


def test_load_state_dict_inside_the_block_is_quantized_at_the_next_forward():
    lin, x = _layer()
    new = torch.randn_like(lin.weight) * 0.3
    with torch.no_grad(), qh.quantized(lin, weight=FMT):
        lin(x)
        sd = lin.state_dict()
        sd["parametrizations.weight.original"] = new
        lin.load_state_dict(sd)
        assert torch.equal(lin(x), F.linear(x, get(FMT)(new), lin.bias))


@pytest.mark.parametrize("how", ["in-place", "data", "init"])
def test_a_write_to_the_computed_weight_does_not_leak_into_the_next_forward(how):
    """``layer.weight`` inside a session is the parametrization's output (torch: writes to it are lost);
    writing to it must not change what the next forward uses."""
    lin, x = _layer()
    with torch.no_grad(), qh.quantized(lin, weight=FMT):
        y0 = lin(x)
        w = lin.weight
        if how == "in-place":
            w.mul_(3.0)
        elif how == "data":
            w.data.fill_(1.0)
        else:
            nn.init.normal_(lin.weight)
        assert torch.equal(lin(x), y0)


def test_without_writes_forwards_agree_and_inference_mode_works():
    lin, x = _layer()
    with qh.quantized(lin, weight=FMT):
        with torch.no_grad():
            a, b = lin(x), lin(x)
        with torch.inference_mode():
            c = lin(x)
        d = lin(x)  # with autograd
    ref = _expected(lin, lin.weight, x)
    for y in (a, b, c, d):
        assert torch.equal(y, ref)
