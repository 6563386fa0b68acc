"""The attention scope: decompositions against PyTorch's fused calls, hand references with
formats on, nothing left patched, other threads outside attention modules, warnings
(tests/attention/test_pairing.py: which product is which, on modules written like real ones)."""

import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qsim_hooks as qh
from qsim_hooks.formats import get

from .model_check import snapshot, verify_unchanged

POINTS = ("q", "k", "scores", "probs", "v", "context")
IDENTITY = {p: "fp32" for p in POINTS}


def _mode_stack_len() -> int:
    return torch._C._len_torch_function_stack()


class ToyAttention(nn.Module):
    """Eager attention as model code writes it: matmul, scale, mask, softmax, matmul."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.h = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        s = torch.matmul(q, k.transpose(-2, -1)) * (d // self.h) ** -0.5
        p = s.softmax(-1)
        return self.out((p @ v).transpose(1, 2).reshape(b, t, d))


class SdpaAttention(ToyAttention):
    def forward(self, x, mask=None, causal=False):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(o.transpose(1, 2).reshape(b, t, d))


def test_eager_attention_matches_hand_reference_with_formats_on():
    torch.manual_seed(0)
    m = ToyAttention().eval()
    x = torch.randn(2, 5, 16)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=ToyAttention, q="e4m3", k="int8", scores="fp16", probs="e5m2",
                                        v="int4", context="bf16")])
    with torch.no_grad(), qh.quantized(m, cfg):
        got = m(x)
    b, t, d = x.shape
    q, k, v = m.qkv(x).view(b, t, 3, 2, 8).permute(2, 0, 3, 1, 4)
    s = get("fp16")(torch.matmul(get("e4m3")(q), get("int8")(k.transpose(-2, -1)))) * 8 ** -0.5
    p = get("e5m2")(s.softmax(-1))
    ref = m.out(get("bf16")(p @ get("int4")(v)).transpose(1, 2).reshape(b, t, d))
    assert torch.equal(got, ref)


def test_default_points_follow_layer_input_and_output_formats():
    m = ToyAttention()
    plan = qh.plan(m, qh.QuantConfig(input="int8", output="fp16"))
    got = {e.point: e.format.name for e in plan if e.module == ""}
    assert got == {"q": "int8", "k": "int8", "scores": "fp16", "probs": "int8", "v": "int8", "context": "fp16"}
    # only K and V: a low-precision KV cache
    plan = qh.plan(m, qh.QuantConfig(rules=[qh.Rule(k="e4m3", v="e4m3")]))
    got = {e.point: e.format.name if e.format else None for e in plan if e.module == ""}
    assert got == {"q": None, "k": "e4m3", "scores": None, "probs": None, "v": "e4m3", "context": None}


def test_only_leaf_attention_modules_and_pattern_off():
    class OuterAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = ToyAttention()

        def forward(self, x):
            return self.inner(x)

    m = OuterAttention()
    names = {e.module for e in qh.plan(m, qh.QuantConfig(input="int8")) if e.point == "q"}
    assert names == {"inner"}
    assert not [e for e in qh.plan(m, qh.QuantConfig(input="int8", attention=None)) if e.point == "q"]


@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal"])
def test_sdpa_decomposition_matches_fused_call(mask):
    torch.manual_seed(0)
    m = SdpaAttention().eval()
    x = torch.randn(2, 6, 16)
    kwargs = {}
    if mask == "bool":
        kwargs["mask"] = torch.rand(2, 1, 6, 6) > 0.3
        kwargs["mask"][..., 0] = True  # no fully masked row
    elif mask == "float":
        kwargs["mask"] = torch.randn(2, 1, 6, 6)
    elif mask == "causal":
        kwargs["causal"] = True
    with torch.no_grad():
        ref = m(x, **kwargs)
        with qh.quantized(m, qh.QuantConfig(rules=[qh.Rule(types=SdpaAttention, **IDENTITY)]), stats=True) as qs:
            got = m(x, **kwargs)
    assert (got - ref).abs().max().item() <= 1e-6  # pinned: decomposed vs fused CPU kernel
    assert all(r["calls"] == 1 for r in qs.stats())


def test_sdpa_grouped_query_heads_and_scale():
    torch.manual_seed(0)
    q = torch.randn(1, 4, 5, 8)
    k = torch.randn(1, 2, 5, 8)
    v = torch.randn(1, 2, 5, 8)

    class Gqa(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, scale=0.3, enable_gqa=True)

    m = Gqa()
    ref = m(q, k, v)
    with qh.quantized(m, qh.QuantConfig(rules=[qh.Rule(types=Gqa, attention=True, **IDENTITY)])):
        got = m(q, k, v)
    assert (got - ref).abs().max().item() <= 1e-6


def _mha_cases():
    return {
        "packed": dict(kw={}, call={}),
        "batch_first": dict(kw={"batch_first": True}, call={}),
        "kdim_vdim": dict(kw={"kdim": 6, "vdim": 5}, call={}),
        "bias_kv_zero_attn": dict(kw={"add_bias_kv": True, "add_zero_attn": True}, call={}),
        "key_padding_mask": dict(kw={}, call={"kpm": True}),
        "attn_mask_avg_off": dict(kw={}, call={"attn_mask": True, "average_attn_weights": False}),
    }


@pytest.mark.parametrize("case", list(_mha_cases()))
@pytest.mark.parametrize("need_weights", [True, False], ids=["weights", "no_weights"])
def test_multihead_attention_decomposition(case, need_weights):
    torch.manual_seed(0)
    spec = _mha_cases()[case]
    mha = nn.MultiheadAttention(16, 4, **spec["kw"]).train()  # dropout 0: PyTorch takes its Python path
    bf = spec["kw"].get("batch_first", False)
    L, S, B = 5, 7, 2
    q = torch.randn(B, L, 16) if bf else torch.randn(L, B, 16)
    kdim, vdim = spec["kw"].get("kdim", 16), spec["kw"].get("vdim", 16)
    k = torch.randn(B, S, kdim) if bf else torch.randn(S, B, kdim)
    v = torch.randn(B, S, vdim) if bf else torch.randn(S, B, vdim)
    if case in ("packed", "batch_first"):
        k = v = q  # self-attention
    call = {"need_weights": need_weights}
    src = k.shape[1] if bf else k.shape[0]
    if spec["call"].get("kpm"):
        kpm = torch.zeros(B, src, dtype=torch.bool)
        kpm[0, -2:] = True
        call["key_padding_mask"] = kpm
    if spec["call"].get("attn_mask"):
        call["attn_mask"] = torch.randn(L, src)
        call["average_attn_weights"] = False
    ref_out, ref_w = mha(q, k, v, **call)
    snap = snapshot(mha)
    with qh.quantized(mha, qh.QuantConfig(rules=[qh.Rule(types=nn.MultiheadAttention, **IDENTITY)]),
                      stats=True) as qs:
        out, w = mha(q, k, v, **call)
    verify_unchanged(mha, snap)
    assert all(r["calls"] == 1 for r in qs.stats() if r["point"] in POINTS)
    if need_weights:  # PyTorch's own path is the same math: bit for bit
        assert torch.equal(out, ref_out) and torch.equal(w, ref_w)
    else:  # PyTorch fuses with SDPA here
        assert w is None and (out - ref_out).abs().max().item() <= 1e-6


def test_multihead_attention_eval_fast_path_and_unbatched():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=nn.MultiheadAttention, **IDENTITY)])
    with torch.no_grad():
        ref = mha(x, x, x, need_weights=False)[0]  # the native fused fast path
        with qh.quantized(mha, cfg):
            got = mha(x, x, x, need_weights=False)[0]  # the mode disables the fast path: decomposed
        assert (got - ref).abs().max().item() <= 1e-6
        xu = torch.randn(5, 16)
        ref_u = mha(xu, xu, xu)
        with qh.quantized(mha, cfg):
            got_u = mha(xu, xu, xu)
    assert (got_u[0] - ref_u[0]).abs().max().item() <= 1e-6 and torch.allclose(got_u[1], ref_u[1], atol=1e-6)


def test_multihead_attention_in_proj_weight_and_out_proj_points():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4).train()
    x = torch.randn(5, 2, 16)
    cfg = qh.QuantConfig(input="int8", weight="int4", output="fp16", rules=[qh.Rule(types=nn.MultiheadAttention,
                         q=None, k=None, scores=None, probs=None, v=None, context=None)])
    with torch.no_grad(), qh.quantized(mha, cfg, stats=True) as qs:
        out, _ = mha(x, x, x)
    rows = {(r["module"], r["point"], r["tensor"]): r["calls"] for r in qs.stats()}
    # no weight cache (a stale one is worse): quantized at each of the three reads in MHA.forward
    # (two fast-path checks and the call)
    assert rows[("", "weight", "in_proj_weight")] == 3
    assert rows[("out_proj", "input", "input")] == 1 and rows[("out_proj", "output", "output")] == 1
    i8, i4, f16 = get("int8"), get("int4"), get("fp16")
    xq = i8(x)
    # the hand-written context is PyTorch's own (its out-projection the identity here)
    ctx = _context(mha, xq, i4)
    ref_ctx, _ = F.multi_head_attention_forward(
        xq, xq, xq, 16, 4, i4(mha.in_proj_weight), mha.in_proj_bias, None, None, False, 0.0,
        torch.eye(16), None, training=True, need_weights=True)
    assert torch.equal(ref_ctx.reshape(10, 16), ctx)
    # out_proj as a Linear: its input (the context) int8, its weight int4, its output fp16; then the MHA output
    manual = f16(F.linear(i8(ctx), i4(mha.out_proj.weight), mha.out_proj.bias)).view(5, 2, 16)
    assert torch.equal(out, f16(manual))


def _context(mha, xq, i4):
    w = i4(mha.in_proj_weight)
    q, k, v = F.linear(xq, w, mha.in_proj_bias).unflatten(-1, (3, 16)).unsqueeze(0).transpose(0, -2) \
        .squeeze(-2).contiguous()
    q = q.view(5, 8, 4).transpose(0, 1)
    k = k.view(5, 8, 4).transpose(0, 1)
    v = v.view(5, 8, 4).transpose(0, 1)
    p = torch.softmax(torch.bmm(q * 0.5, k.transpose(-2, -1)), dim=-1)
    return torch.bmm(p, v).transpose(0, 1).reshape(10, 16)


def test_block_format_runs_along_each_operands_reduction_axis():
    torch.manual_seed(0)
    m = ToyAttention(d=64, heads=2).eval()
    x = torch.randn(1, 40, 64)
    with torch.no_grad(), qh.quantized(m, qh.QuantConfig(rules=[qh.Rule(types=ToyAttention, k="mxfp4",
                                                                        v="mxfp4")])):
        got = m(x)
    q, k, v = m.qkv(x).view(1, 40, 3, 2, 32).permute(2, 0, 3, 1, 4)
    mx = get("mxfp4")
    kq = mx.with_axis(-1)(k)  # blocks along head_dim for K (the kᵀ operand's axis -2)
    vq = mx.with_axis(-2)(v)  # blocks along the sequence for V (P·V's reduction axis)
    p = (q @ kq.transpose(-2, -1) * 32 ** -0.5).softmax(-1)
    ref = m.out((p @ vq).transpose(1, 2).reshape(1, 40, 64))
    assert torch.equal(got, ref)


@pytest.mark.filterwarnings("ignore:qsim_hooks. attention module:RuntimeWarning")
def test_nothing_left_patched_after_exit_or_exception():
    m = ToyAttention()
    x = torch.randn(1, 3, 16)
    fns = (torch.matmul, torch.bmm, torch.baddbmm, torch.einsum, F.scaled_dot_product_attention,
           F.multi_head_attention_forward, torch.Tensor.__matmul__)
    snap = snapshot(m)
    with qh.quantized(m, qh.QuantConfig(input="e4m3")):
        m(x)
    assert _mode_stack_len() == 0
    real_forward = ToyAttention.forward

    def boom(self, x):
        torch.matmul(x, x.transpose(-2, -1))
        raise RuntimeError("inside attention")

    ToyAttention.forward = boom
    try:
        with pytest.raises(RuntimeError, match="inside attention"):
            with qh.quantized(m, qh.QuantConfig(input="e4m3")):
                m(x)
    finally:
        ToyAttention.forward = real_forward
    assert _mode_stack_len() == 0
    assert fns == (torch.matmul, torch.bmm, torch.baddbmm, torch.einsum, F.scaled_dot_product_attention,
                   F.multi_head_attention_forward, torch.Tensor.__matmul__)
    verify_unchanged(m, snap)


def test_another_thread_outside_attention_modules_is_not_intercepted():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)

    def bare_attention(x):  # the same math, called outside any attention module
        return torch.matmul(x, x.transpose(-2, -1))

    with torch.no_grad():
        ref = bare_attention(x)
    inside = threading.Event()
    done = threading.Event()
    results = {}

    def worker():
        inside.wait(5)
        with torch.no_grad():
            results["out"] = bare_attention(x)
            results["stack"] = _mode_stack_len()
        done.set()

    class Waiting(ToyAttention):
        def forward(self, x):
            inside.set()
            done.wait(5)  # the other thread runs while this scope is active
            return super().forward(x)

    w = Waiting().eval()
    t = threading.Thread(target=worker)
    t.start()
    with torch.no_grad(), qh.quantized(w, qh.QuantConfig(rules=[qh.Rule(types=Waiting, q="e2m1", k="e2m1")])):
        w(x)
    t.join()
    assert results["stack"] == 0 and torch.equal(results["out"], ref)


def test_warning_when_a_configured_attention_module_intercepts_nothing():
    class SillyAttention(nn.Module):
        def forward(self, x):
            return x * 2

    m = SillyAttention()
    with pytest.warns(RuntimeWarning, match="SillyAttention.*quantized nothing"):
        with qh.quantized(m, qh.QuantConfig(input="int8")):
            m(torch.randn(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with qh.quantized(ToyAttention(), qh.QuantConfig(input="int8")) as qs:
            qs.model(torch.randn(1, 2, 16))


def test_attention_gradients_flow():
    torch.manual_seed(0)
    m = ToyAttention().train()
    x = torch.randn(2, 5, 16, requires_grad=True)
    with qh.quantized(m, qh.QuantConfig(input="e4m3", weight="e4m3", output="fp16")):
        m(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert m.qkv.weight.grad is not None


def test_multihead_attention_fully_masked_row_follows_pytorch():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2).train()
    x = torch.randn(3, 2, 8)
    kpm = torch.zeros(2, 3, dtype=torch.bool)
    kpm[1] = True  # every key of the second sequence masked
    cfg = qh.QuantConfig(rules=[qh.Rule(types=nn.MultiheadAttention, **IDENTITY)])
    for need_weights in (True, False):
        ref, _ = mha(x, x, x, key_padding_mask=kpm, need_weights=need_weights)
        with qh.quantized(mha, cfg):
            got, _ = mha(x, x, x, key_padding_mask=kpm, need_weights=need_weights)
        assert torch.equal(torch.isnan(got), torch.isnan(ref))  # NaN with weights, finite without
        fin = ~torch.isnan(ref)
        assert (got[fin] - ref[fin]).abs().max().item() <= 1e-6
