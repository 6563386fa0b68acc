"""Integer accumulators on operands whose scales are not one per tensor: per-token activations and per-channel
weights (they factor out of the sum), group-wise weights with blocks along K (summed per group on codes,
rescaled per group, the groups added in fp32), against int64 / float32 loops written here; and the scale
layouts that cannot be summed on codes refused, naming the module, the role and the granularity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks.accumulate import Accumulator
from qsim_hooks.formats import IntFormat, Scaling

INT8_TOKEN = IntFormat(8, scaling=Scaling("channel", axis=0))  # one scale per row of a (tokens, K) input
INT8_CHANNEL = IntFormat(8, scaling=Scaling("channel"))  # a weight's output channels


def _run(lin, x, cfg):
    """The layer's output under ``cfg`` with stats, and the operands as its GEMM saw them."""
    seen = {}
    hook = lin.register_forward_hook(lambda m, inp, out: seen.update(x=inp[0].detach(), w=m.weight.detach()))
    try:
        with qh.quantized(lin, cfg, stats=True) as qs, torch.no_grad():
            y = lin(x)
            row = qs.accumulator_rows()[0]
    finally:
        hook.remove()
    return y, row, seen["x"].numpy(), seen["w"].numpy()


def _codes(v, qmax, axis, block=None):
    """Codes and scales of fake-quantized ``v`` (float32): scale = amax / qmax of the values themselves, per
    index of ``axis`` (``block=None``) or per ``block`` consecutive elements along ``axis``."""
    v = v.astype(np.float32)
    a = np.abs(v)
    if block is None:
        amax = a.max(axis=tuple(d for d in range(v.ndim) if d != axis), keepdims=True)
        amax = np.broadcast_to(amax, v.shape)
    else:
        amax = np.zeros_like(a)
        for k0 in range(0, v.shape[axis], block):
            sl = [slice(None)] * v.ndim
            sl[axis] = slice(k0, k0 + block)
            amax[tuple(sl)] = a[tuple(sl)].max(axis=axis, keepdims=True)
    scale = (amax / np.float32(qmax)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1))
    codes = np.round(v / scale).astype(np.int64)
    np.testing.assert_allclose(codes * scale, v, rtol=1e-6, atol=0)  # codes times these scales, to an fp32 ulp
    return codes, scale


def _loop(ca, sa, cb, sb, bits, overflow, groups, bias):
    """Reference: per output, per group of K, the codes summed one product at a time in int64 (wrapped or
    clamped to ``bits`` after each addition); fp32(sum) * fp32(sa * sb); groups added in float32."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    M, K = ca.shape
    N = cb.shape[0]
    out, over = np.zeros((M, N), np.float32), np.zeros((M, N), bool)
    for m in range(M):
        for n in range(N):
            total = None
            for k0, k1 in zip(groups, groups[1:]):
                s = 0
                for k in range(k0, k1):
                    s += int(ca[m, k]) * int(cb[n, k])
                    if s < lo or s > hi:
                        over[m, n] = True
                        s = (s - lo) % 2**bits + lo if overflow == "wrap" else min(max(s, lo), hi)
                v = np.float32(s) * np.float32(sa[m, k0] * sb[n, k0])
                total = v if total is None else np.float32(total + v)
            out[m, n] = np.float32(total + bias[n])
    return out, over


@pytest.mark.parametrize("bits,overflow", [(16, "wrap"), (16, "saturate"), (32, "wrap")])
def test_per_token_input_and_per_channel_weight_factor_out(bits, overflow):
    torch.manual_seed(0)
    lin = nn.Linear(48, 5)
    x = torch.randn(6, 48) * torch.linspace(0.1, 10, 6)[:, None]  # rows of very different ranges
    cfg = qh.QuantConfig(input=INT8_TOKEN, weight=INT8_CHANNEL, accumulator=Accumulator(f"int{bits}",
                                                                                         overflow=overflow))
    y, row, xq, wq = _run(lin, x, cfg)
    (ca, sa), (cb, sb) = _codes(xq, 127, 0), _codes(wq, 127, 0)
    assert len(np.unique(sa[:, 0])) == 6  # one scale per token
    want, over = _loop(ca, sa, cb, sb, bits, overflow, [0, 48], lin.bias.detach().numpy())
    np.testing.assert_array_equal(y.numpy(), want)
    assert row["overflow_fraction"] == over.mean() and (over.any() if bits == 16 else not over.any())


@pytest.mark.parametrize("bits,overflow,block", [(16, "wrap", 16), (10, "saturate", 16), (32, "wrap", 20)])
def test_group_wise_int4_weights_sum_per_group(bits, overflow, block):
    """int4 weights with a scale per ``block`` inputs (blocks along K, the last one ragged when K is not a
    multiple) and int8 per-tensor inputs: each group's codes summed by the integer accumulator, rescaled by
    its own scale, the groups added in fp32."""
    torch.manual_seed(1)
    lin = nn.Linear(64, 4)
    with torch.no_grad():
        lin.weight.mul_(torch.exp2(torch.randint(-3, 4, (4, 64)).float()))  # groups of different ranges
    x = torch.randn(5, 64) * 30
    w4 = IntFormat(4, scaling=Scaling("block", block_size=block))
    cfg = qh.QuantConfig(input="int8", weight=w4, accumulator=Accumulator(f"int{bits}", overflow=overflow))
    y, row, xq, wq = _run(lin, x, cfg)
    top = np.float32(np.abs(xq).max() / np.float32(127))  # the input's one scale
    ca, sa = np.round(xq / top).astype(np.int64), np.full(xq.shape, top, np.float32)
    cb, sb = _codes(wq, 7, 1, block=block)
    groups = sorted({0, 64, *range(block, 64, block)})
    assert len(np.unique(sb[0, ::block])) > 1  # the groups' scales differ
    want, over = _loop(ca, sa, cb, sb, bits, overflow, groups, lin.bias.detach().numpy())
    np.testing.assert_array_equal(y.numpy(), want)
    assert row["overflow_fraction"] == over.mean()
    assert 20 * 7 * 127 <= 2**15 - 1  # a group sums at most 20 products of codes up to 7 and 127
    assert over.any() == (bits == 10)  # so only the 10-bit accumulator can overflow (and does)
    # not the per-tensor answer: summing all codes across groups with one scale would be wrong
    assert not np.array_equal(want, _loop(ca, sa, cb, sb, 32, "wrap", [0, 64], lin.bias.detach().numpy())[0])


@pytest.mark.parametrize("cfg,match", [
    ({"input": IntFormat(8, scaling=Scaling("channel")), "weight": "int8"},
     r"module '<model>': integer accumulator 'int32-wrap' on linear: the input operand \(int8\) has a "
     r"channel\(axis=-1\) dyn-max scale: one per index of the reduction"),
    ({"input": "int8", "weight": IntFormat(8, scaling=Scaling("channel", axis=1))},
     r"the weight operand \(int8\) has a channel\(axis=1\) dyn-max scale: one per index of the reduction"),
    ({"input": "int8", "weight": IntFormat(4, scaling=Scaling("block", block_size=2, axis=0))},
     r"the weight operand \(int4\) has a block\(2, axis=0\) dyn-max scale: blocks across the reduction"),
])
def test_scales_that_change_with_each_product_are_refused(cfg, match):
    lin = nn.Linear(8, 4)
    x = torch.randn(3, 8)
    before = lin.weight.detach().clone()
    with pytest.raises(ValueError, match=match):
        with qh.quantized(lin, qh.QuantConfig(accumulator="int32", **cfg)), torch.no_grad():
            lin(x)
    assert torch.equal(lin.weight, before) and not hasattr(lin, "parametrizations") and not lin._forward_hooks
