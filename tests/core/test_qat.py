"""Quantization-aware training inside a session: gradients, optimizers built before attach,
modes, and kept full-precision values."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks.formats import get

from .model_check import snapshot, verify_unchanged


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    return x, y


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def test_gradients_reach_original_parameters_through_clipped_ste():
    m = nn.Linear(4, 3, bias=False)
    x = torch.randn(5, 4)
    w = m.weight.detach().clone()
    with qh.quantized(m, qh.QuantConfig(weight="int4", input="int8")):
        m(x).sum().backward()
    xq = get("int8")(x)
    # d/dW sum(xq @ Wq^T) = ones^T xq, passed straight through (no weight clips at its own amax)
    assert torch.allclose(m.weight.grad, torch.ones(5, 3).t() @ xq)
    assert torch.equal(m.weight, w) and not torch.equal(w, get("int4")(w))  # the original, not its quantized values


def test_clipped_estimator_zeroes_gradient_where_clipped():
    m = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 1.0]]))
    x = torch.tensor([[1000.0, 1.0]], requires_grad=True)  # 1000 saturates e4m3 (max 448)
    with qh.quantized(m, qh.QuantConfig(input="e4m3")):
        m(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0]]
    x.grad = None
    ste = qh.FloatFormat(4, 3, specials="fn", grad=qh.GradSpec("ste"))
    with qh.quantized(m, qh.QuantConfig(input=ste)):
        m(x).sum().backward()
    assert x.grad.tolist() == [[1.0, 1.0]]


def test_training_loop_with_optimizer_built_before_attach_lowers_loss_and_keeps_values():
    net = _net()
    x, y = _data()
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    ids = [id(p) for p in net.parameters()]
    net.train()
    with qh.quantized(net, qh.QuantConfig(input="int8", weight="int4", output="e4m3")):
        losses = []
        for _ in range(30):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        trained = {id(p): p.detach().clone() for p in net.parameters()}
    assert losses[-1] < 0.7 * losses[0]
    assert [id(p) for p in net.parameters()] == ids
    # the full-precision (trained) values are kept, not the quantized ones
    for p in net.parameters():
        assert torch.equal(p, trained[id(p)])
    assert not torch.equal(net[0].weight, get("int4")(net[0].weight))
    # the optimizer still drives the same parameters after exit
    before = net[0].weight.detach().clone()
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    opt.step()
    assert not torch.equal(before, net[0].weight)


def test_modes_no_grad_inference_mode_train_eval():
    net = _net()
    x, _ = _data(8)
    snap = snapshot(net)
    with qh.quantized(net, qh.QuantConfig(input="int8", weight="int4")):
        net.eval()
        with torch.no_grad():
            a = net(x)
        with torch.inference_mode():
            b = net(x)
        c = net(x)
        net.train()
        d = net(x)
        assert torch.equal(a, b) and torch.equal(a, c.detach()) and torch.equal(a, d.detach())
        assert c.requires_grad
    net.train()
    verify_unchanged(net, snap)


def test_gradient_format_applied_in_backward():
    m = nn.Linear(4, 4, bias=False)
    x = torch.randn(3, 4, requires_grad=True)
    fmt = qh.FloatFormat(3, 4, grad=qh.GradSpec("ste", format="e5m2"))  # INT-FP-QSim: E3M4 fwd, E5M2 bwd
    with qh.quantized(m, qh.QuantConfig(input=fmt)):
        out = m(x)
        g = torch.randn_like(out) * 1e-3
        out.backward(g)
    assert torch.equal(x.grad, get("e5m2")(g @ m.weight))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_qat_in_half_precision(dtype):
    net = _net().to(dtype)
    x, y = _data()
    x = x.to(dtype)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    with qh.quantized(net, qh.QuantConfig(input="e4m3", weight="e4m3")):
        first = None
        for _ in range(15):
            opt.zero_grad()
            loss = F.cross_entropy(net(x).float(), y)
            loss.backward()
            opt.step()
            first = first if first is not None else loss.item()
    assert loss.item() < first
    assert all(p.dtype == dtype for p in net.parameters())
