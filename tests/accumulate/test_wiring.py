"""Layers compute their GEMM through the engine inside a session (the interception's run_gemm): against the
float64 loop reference on Linear and Conv2d (groups, stride, padding, dilation), rules, warnings, errors,
exact removal, gradients, and when the exact GEMM runs at all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import qsim_hooks as qh
from qsim_hooks.accumulate import Accumulator
from qsim_hooks.formats import FloatFormat

from . import reference as ref

FP16 = ref.rounder((5, 10))


def _reduce(order, chunk):
    return lambda ps: ref.reduce_products(ps, FP16, order, chunk, ref.f32)


@pytest.mark.parametrize("order,chunk", [("sequential", None), ("pairwise", 4), ("sequential", 3)])
def test_linear_against_the_loop(order, chunk):
    torch.manual_seed(0)
    lin = nn.Linear(11, 4)
    x = torch.randn(2, 3, 11) * 8
    with qh.quantized(lin, qh.QuantConfig(accumulator=Accumulator("fp16", chunk=chunk, order=order))):
        got = lin(x).detach()
    w, b = lin.weight.detach(), lin.bias.detach().numpy()
    want = ref.matmul(x.reshape(6, 11), w.t(), _reduce(order, chunk))
    want = np.vectorize(ref.f32)(want + b)  # bias added once, in fp32 (the promote format)
    np.testing.assert_array_equal(got.reshape(6, 4).double().numpy(), want)


def _conv_reference(x, w, b, stride, padding, dilation, groups, reduce):
    xp = np.pad(x.numpy().astype(np.float32), ((0, 0), (0, 0), (padding,) * 2, (padding,) * 2))
    wn = w.numpy().astype(np.float32)
    n, _, hp, wp = xp.shape
    o, cg, kh, kw = wn.shape
    oh = (hp - dilation * (kh - 1) - 1) // stride + 1
    ow = (wp - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for bi in range(n):
        for oc in range(o):
            g = oc // (o // groups)
            for yy in range(oh):
                for xx in range(ow):
                    y0, x0 = yy * stride, xx * stride
                    ps = [float(xp[bi, g * cg + c, y0 + i * dilation, x0 + j * dilation] * wn[oc, c, i, j])
                          for c in range(cg) for i in range(kh) for j in range(kw)]  # im2col order
                    out[bi, oc, yy, xx] = ref.f32(reduce(ps) + float(b[oc]))
    return out


@pytest.mark.parametrize("order", ["sequential", "pairwise"])
def test_conv2d_groups_stride_padding_dilation_against_the_loop(order):
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
    x = torch.randn(2, 4, 7, 7) * 4
    with qh.quantized(conv, qh.QuantConfig(accumulator=Accumulator("fp16", chunk=5, order=order))):
        got = conv(x).detach()
    want = _conv_reference(x, conv.weight.detach(), conv.bias.detach(), 2, 2, 2, 2, _reduce(order, 5))
    np.testing.assert_array_equal(got.double().numpy(), want)


def test_operands_are_the_quantized_ones_and_detach_restores():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(5, 16)
    before = m(x).detach()
    acc = Accumulator("bf16", chunk=4)
    with qh.quantized(m, qh.QuantConfig(input="e4m3", weight="e4m3")):
        operands_only = m(x).detach()
        h0 = m[0](qh.formats.E4M3.cast(x))  # the input point's value, by hand
    with qh.quantized(m, qh.QuantConfig(input="e4m3", weight="e4m3", accumulator=acc)):
        got = m(x).detach()
        w0 = m[0].weight.detach()
    y0 = qh.accumulate_matmul(qh.formats.E4M3.cast(x), w0.t(), acc, m[0].bias.detach())
    torch.testing.assert_close(y0, h0.detach(), rtol=0.05, atol=0.05)  # close to the exact sums, not equal
    assert not torch.equal(got, operands_only)
    assert torch.equal(m(x).detach(), before)
    assert all(not mod._forward_hooks for mod in m.modules())


def test_rules_set_and_clear_the_accumulator_per_layer():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    cfg = qh.QuantConfig(accumulator="fp16", rules=[qh.Rule(match="1", accumulator="bf16"),
                                                   qh.Rule(match="2", accumulator=None)])
    with qh.quantized(m, cfg, stats=True) as qs:
        m(torch.randn(3, 4))
        rows = {r["module"]: r for r in qs.accumulator_rows()}
    assert {k: r["accumulator"] for k, r in rows.items()} == {"0": "fp16", "1": "bf16"}
    assert rows["0"]["calls"] == 1 and rows["0"]["sqnr_db"] > 20
    off = qh.QuantConfig(accumulator="fp16", rules=[qh.Rule(match="0", enabled=False)])
    with qh.quantized(m, off, stats=True) as qs:
        m(torch.randn(3, 4))
        assert set(qs.accumulator_stats) == {"1", "2"}


def test_a_gemm_that_cannot_be_rebuilt_warns_naming_the_module_and_stays_exact():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 3))

        def forward(self, x):
            return torch.addmm(torch.zeros(3), x, self.w, alpha=2.0)

    m = nn.Sequential(Scaled())
    x = torch.randn(2, 4)
    with pytest.warns(UserWarning, match=r"not simulated.*module '0': addmm with alpha=2.0"):
        with qh.quantized(m, qh.QuantConfig(accumulator="fp16")):
            got = m(x)
    assert torch.equal(got, m(x))


def test_coarser_accumulator_than_an_operand_warns():
    with pytest.warns(UserWarning, match=r"'e5m2' keeps 2 mantissa bits, fewer than its input format 'fp16'"):
        with qh.quantized(nn.Linear(3, 2), qh.QuantConfig(input="fp16", accumulator=FloatFormat(5, 2, name="e5m2"))):
            pass


def test_gradient_is_the_exact_gemms():
    torch.manual_seed(3)
    lin = nn.Linear(6, 3)
    x = torch.randn(4, 6)
    lin(x).square().sum().backward()
    exact = lin.weight.grad.clone()
    lin.weight.grad = None
    with qh.quantized(lin, qh.QuantConfig(accumulator="fp32")):  # fp32 sequential: output ~ exact, same grad
        lin(x).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, exact)


def test_config_fields():
    assert qh.QuantConfig(accumulator="hopper_fp8").accumulator == qh.hopper_fp8()
    assert qh.QuantConfig.from_dict({"accumulator": "fp16", "rules": [{"match": "x", "accumulator": "none"}]}) \
        .rules[0].accumulator is None
    with pytest.raises(ValueError, match="QuantConfig.accumulator"):
        qh.QuantConfig(accumulator="fp17")
    with pytest.raises(ValueError, match="Rule.accumulator"):
        qh.Rule(accumulator=Accumulator.__name__)


def test_accumulator_round_trips_through_a_config_file(tmp_path):
    import pytest as _pytest

    import qsim_hooks as qh
    rules = [qh.Rule(match="fc*", accumulator="hopper_fp8"), qh.Rule(match="head", accumulator=None)]
    cfg = qh.QuantConfig(weight="e4m3", accumulator="fp16", rules=rules)
    for suffix in (".toml", ".json"):
        back = qh.QuantConfig.load(cfg.save(tmp_path / f"c{suffix}"))
        assert back == cfg and back.rules[1].accumulator is None
        assert back.rules[0].accumulator == qh.hopper_fp8() and back.accumulator == qh.Accumulator(format="fp16")
    custom = qh.QuantConfig(accumulator=qh.Accumulator(format="fp16", chunk=7, name="mine"))
    with _pytest.raises(ValueError, match="cannot be written to a config file"):
        custom.to_dict()


def test_the_accumulated_gemm_reads_the_weight_the_layer_used_once_per_forward():
    import qsim_hooks as qh

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(16, 8))
    x = torch.randn(4, 16, requires_grad=True)
    cfg = qh.QuantConfig(weight="e4m3", accumulator="fp16")
    with qh.quantized(m, cfg, stats=True) as qs:
        with torch.no_grad():
            m(x)
        m(x).sum().backward()  # with autograd too
        calls = {r["point"]: r["calls"] for r in qs.stats()}
    assert calls["weight"] == 2  # one quantization per forward, not one more for the accumulator's GEMM
    assert torch.nn.utils.parametrize._cache_enabled == 0  # the forward's weight cache is closed again


def _on_grid(shape, scale, seed):
    """Whole codes in [-127, 127] times ``scale`` (a power of two), the largest code 127 in every row, so the
    int8 point's dynamic scale is ``scale`` exactly and the fake-quantized values are the inputs."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-127, 128, shape, generator=g)
    q[..., 0] = 127
    return q, q.float() * scale


@pytest.mark.parametrize("bits,overflow", [(16, "wrap"), (16, "saturate"), (32, "wrap")])
@pytest.mark.parametrize("weight", ["int8", qh.formats.IntFormat(8, scaling=qh.formats.Scaling("channel"))],
                         ids=["per-tensor", "per-channel"])
def test_integer_accumulator_sums_the_codes_then_rescales(bits, overflow, weight):
    lin = nn.Linear(64, 5)
    qx, x = _on_grid((3, 64), 0.5, 0)
    qw, w = _on_grid((5, 64), 0.25, 1)
    with torch.no_grad():
        lin.weight.copy_(w)
    cfg = qh.QuantConfig(input="int8", weight=weight, accumulator=Accumulator(f"int{bits}", overflow=overflow))
    with qh.quantized(lin, cfg, stats=True) as qs:
        with torch.no_grad():
            got = lin(x)
        row = qs.accumulator_rows()[0]
    an, bn = qx.numpy().astype(np.int64), qw.numpy().astype(np.int64).T
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    sums, over = np.zeros((3, 5), np.int64), np.zeros((3, 5), bool)
    for k in range(64):  # one addition at a time: out of range -> flagged, then wrapped or clamped
        t = sums + np.outer(an[:, k], bn[k])
        over |= (t < lo) | (t > hi)
        sums = (t - lo) % 2**bits + lo if overflow == "wrap" else np.clip(t, lo, hi)
    if overflow == "wrap":
        np.testing.assert_array_equal(sums, ((an @ bn - lo) % 2**bits + lo))  # modular: wrapping once is the same
    want = (sums.astype(np.float32) * np.float32(0.125)) + lin.bias.detach().numpy()  # rescaled, then the bias
    np.testing.assert_array_equal(got.numpy(), want)
    assert row["overflow_fraction"] == over.mean() and (over.any() if bits == 16 else not over.any())


@pytest.mark.parametrize("cfg,match", [
    ({"input": "e4m3", "weight": "int8"},
     r"module '<model>': accumulator 'int24-wrap' sums integer codes, but its input format is 'e4m3'"),
    ({"weight": "int8"}, r"its input format is 'none \(full precision\)'"),
])
def test_integer_accumulator_on_float_operands_is_refused_and_nothing_is_left(cfg, match):
    m = nn.Linear(4, 2)
    with pytest.raises(ValueError, match=match):
        qh.attach(m, qh.QuantConfig(accumulator="int24", **cfg))
    assert not m._forward_hooks and not m._forward_pre_hooks and not hasattr(m, "parametrizations")
