"""Every kind of GEMM call through the interception against float64 loops over products (reference.py):
transposed and 3-D convolutions, attention's Q·Kᵀ and P·V, a layer's weight used functionally, einsum and
addmm; and the exact GEMM runs only when statistics or autograd need it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks import gemms
from qsim_hooks.accumulate import Accumulator

from . import reference as ref

FP16 = ref.rounder((5, 10))
ORDERS = [("sequential", None), ("pairwise", 5), ("sequential", 4)]


def _reduce(order, chunk):
    return lambda ps: ref.reduce_products(ps, FP16, order, chunk, ref.f32)


def _run(model, acc, *xs, stats=False):
    with qh.quantized(model, qh.QuantConfig(accumulator=acc), stats=stats) as qs:
        with torch.no_grad():
            out = model(*xs)
        return out, qs.accumulator_rows()


def _conv_transpose_reference(x, w, b, stride, padding, out_pad, groups, reduce):
    """The direct convolution a transposed one equals: output (oy, ox) takes, per input channel of its group
    and per tap (i, j) of the flipped kernel, x at ((oy + i - pad) / stride, ...) when that is a whole index
    inside the input, else a stuffed zero (its product 0 * w is a term too)."""
    xn, wn = x.numpy().astype(np.float32), w.numpy().astype(np.float32)
    n, c, h, wd = xn.shape
    _, og, kh, kw = wn.shape
    cg = c // groups
    oh = (h - 1) * stride - 2 * padding + kh + out_pad
    ow = (wd - 1) * stride - 2 * padding + kw + out_pad
    lo = (kh - 1 - padding, kw - 1 - padding)
    out = np.zeros((n, og * groups, oh, ow))
    for bi in range(n):
        for o in range(og * groups):
            g, oo = divmod(o, og)
            for yy in range(oh):
                for xx in range(ow):
                    ps = []
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                qy, qx = yy + i - lo[0], xx + j - lo[1]
                                inside = qy % stride == 0 and qx % stride == 0 and 0 <= qy // stride < h \
                                    and 0 <= qx // stride < wd
                                v = xn[bi, g * cg + ci, qy // stride, qx // stride] if inside else np.float32(0)
                                ps.append(float(v * wn[g * cg + ci, oo, kh - 1 - i, kw - 1 - j]))
                    out[bi, o, yy, xx] = ref.f32(reduce(ps) + float(b[o]))
    return out


@pytest.mark.parametrize("order,chunk", ORDERS)
@pytest.mark.parametrize("stride,padding,out_pad", [(2, 1, 1), (1, 0, 0), (3, 2, 1)])
def test_conv_transpose2d_against_the_loop(order, chunk, stride, padding, out_pad):
    torch.manual_seed(stride)
    m = nn.ConvTranspose2d(4, 6, 3, stride=stride, padding=padding, output_padding=out_pad, groups=2)
    x = torch.randn(1, 4, 4, 3) * 4
    got, _ = _run(m, Accumulator("fp16", chunk=chunk, order=order), x)
    want = _conv_transpose_reference(x, m.weight.detach(), m.bias.detach(), stride, padding, out_pad, 2,
                                     _reduce(order, chunk))
    assert got.shape == m(x).shape
    np.testing.assert_array_equal(got.double().numpy(), want)


@pytest.mark.parametrize("order,chunk", ORDERS)
def test_conv3d_against_the_loop(order, chunk):
    torch.manual_seed(4)
    m = nn.Conv3d(2, 3, (2, 3, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(1, 1, 2))
    x = torch.randn(1, 2, 3, 5, 4) * 4
    got, _ = _run(m, Accumulator("fp16", chunk=chunk, order=order), x)
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (0, 0), (1, 1)))
    wn, b = m.weight.detach().numpy(), m.bias.detach().numpy()
    want = np.zeros(tuple(m(x).shape))
    red = _reduce(order, chunk)
    for o in range(3):
        for z in range(want.shape[2]):
            for y in range(want.shape[3]):
                for xx in range(want.shape[4]):
                    ps = [float(xp[0, c, z + i, 2 * y + j, xx + 2 * k] * wn[o, c, i, j, k])
                          for c in range(2) for i in range(2) for j in range(3) for k in range(2)]
                    want[0, o, z, y, xx] = ref.f32(red(ps) + float(b[o]))
    np.testing.assert_array_equal(got.double().numpy(), want)


class TinyAttention(nn.Module):
    """Q·Kᵀ, softmax, P·V written out (a module the default attention pattern finds)."""

    def forward(self, q, k, v):
        return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1), v)


class SdpaAttention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("order,chunk", ORDERS)
def test_attention_products_against_the_loop(order, chunk):
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 6, 9, generator=g) * 3 for _ in range(3))
    got, rows = _run(TinyAttention(), Accumulator("fp16", chunk=chunk, order=order), q, k, v, stats=True)
    red = _reduce(order, chunk)
    want = []
    for h in range(2):
        s = torch.tensor(ref.matmul(q[h], k[h].t(), red), dtype=torch.float32)
        p = torch.softmax(s, dim=-1)  # the model's own softmax on the simulated scores
        want.append(ref.matmul(p, v[h], red))
    np.testing.assert_array_equal(got.double().numpy(), np.stack(want))
    assert rows[0]["module"] == "" and rows[0]["calls"] == 2  # Q·Kᵀ and P·V, both through the engine


def test_sdpa_is_decomposed_so_its_products_are_simulated():
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 2, 40, 16, generator=g) for _ in range(3))
    m = SdpaAttention()
    got, rows = _run(m, Accumulator("bf16"), q, k, v, stats=True)
    exact = m(q, k, v)
    assert rows[0]["calls"] == 2 and rows[0]["sqnr_db"] < 60
    assert not torch.equal(got, exact)
    torch.testing.assert_close(got, exact, rtol=0.1, atol=0.1)
    with qh.quantized(m, qh.QuantConfig(accumulator="fp32")):  # an fp32 accumulator: the decomposition's math
        torch.testing.assert_close(m(q, k, v), exact, rtol=1e-5, atol=1e-5)


class Functional(nn.Module):
    """A layer's weight used outside its own forward, an einsum with a bare parameter, GPT-2's addmm."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(10, 4)
        self.table = nn.Parameter(torch.randn(3, 10))
        self.w = nn.Parameter(torch.randn(10, 5))
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return (F.linear(x, self.lin.weight, self.lin.bias), torch.einsum("bk,jk->bj", x, self.table),
                torch.addmm(self.b, x, self.w))


@pytest.mark.parametrize("order,chunk", ORDERS)
def test_functional_gemms_against_the_loop(order, chunk):
    torch.manual_seed(7)
    m = Functional()
    x = torch.randn(3, 10) * 4
    (lin, ein, mm), rows = _run(m, Accumulator("fp16", chunk=chunk, order=order), x, stats=True)
    red = _reduce(order, chunk)
    bias = lambda y, b: np.vectorize(ref.f32)(y + b.detach().numpy())  # noqa: E731  (added once, in fp32)
    np.testing.assert_array_equal(lin.double().numpy(), bias(ref.matmul(x, m.lin.weight.detach().t(), red),
                                                              m.lin.bias))
    np.testing.assert_array_equal(ein.double().numpy(), ref.matmul(x, m.table.detach().t(), red))
    np.testing.assert_array_equal(mm.double().numpy(), bias(ref.matmul(x, m.w.detach(), red), m.b))
    calls = {r["module"]: r["calls"] for r in rows}
    assert calls == {"lin": 1, "": 2}  # the layer's GEMM under the layer's name, wherever it ran


def test_a_rule_reaches_the_weight_owner_of_a_functional_gemm():
    torch.manual_seed(8)
    m = Functional()
    x = torch.randn(3, 10)
    cfg = qh.QuantConfig(rules=[qh.Rule(match="lin", accumulator="bf16")])
    with qh.quantized(m, cfg, stats=True) as qs:
        with torch.no_grad():
            lin, ein, _ = m(x)
        assert [r["module"] for r in qs.accumulator_rows()] == ["lin"]
    assert torch.equal(ein, torch.einsum("bk,jk->bj", x, m.table).detach())
    assert not torch.equal(lin, F.linear(x, m.lin.weight, m.lin.bias).detach())


def test_the_exact_gemm_runs_only_for_statistics_or_autograd(monkeypatch):
    calls = []
    real = gemms.Gemm.call
    monkeypatch.setattr(gemms.Gemm, "call", lambda self, a, b: calls.append(self.op) or real(self, a, b))
    m = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    x = torch.randn(4, 8)
    with qh.quantized(m, qh.QuantConfig(accumulator="fp16")):
        with torch.no_grad():
            m(x)
        assert calls == []  # inference without stats: the simulated GEMM only
        m(x).sum().backward()
        assert calls == ["linear", "linear"]  # autograd: the exact GEMM carries the gradient
    calls.clear()
    with qh.quantized(m, qh.QuantConfig(accumulator="fp16"), stats=True):
        with torch.no_grad():
            m(x)
    assert calls == ["linear", "linear"]  # the SQNR's reference


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.ConvTranspose2d(4, 6, 3, stride=3, padding=2, output_padding=1, groups=2, dilation=2), (2, 4, 5, 4)),
    (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2), (4, 7)),
    (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2), (1, 2, 2, 3, 2)),
    (lambda: nn.Conv3d(2, 4, (2, 3, 2), stride=(1, 2, 1), padding=1, groups=2), (1, 2, 3, 5, 4)),
    (lambda: nn.Conv2d(4, 4, 4, padding="same", padding_mode="reflect"), (1, 4, 6, 6)),
    (lambda: nn.Conv1d(4, 4, 3, padding="same", dilation=2), (4, 9)),
], ids=["convT2d", "convT1d-unbatched", "convT3d", "conv3d-groups", "conv2d-same-reflect", "conv1d-same"])
def test_an_fp32_accumulator_rebuilds_torchs_own_convolution(make, shape):
    torch.manual_seed(9)
    m, x = make(), torch.randn(*shape)
    got, _ = _run(m, Accumulator("fp32"), x)
    torch.testing.assert_close(got, m(x).detach(), rtol=1e-5, atol=1e-5)  # fp32 sums in index order vs torch's
