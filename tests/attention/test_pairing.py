"""Attention by meaning, on hand-built modules whose every product is known.

Each module here is written the way some real model writes its attention (the model is named), so the
test says what the scope must make of it: which product is Q·Kᵀ (the one the softmax consumes), which is
P·V (the one fed by the softmax, through casts, dropout, masks), which are left alone (a child's own
matmul, a layer's weight, an extra relative-position product), what the q/k points see (the key itself,
not ``kᵀ / scale``), along which axis block formats run for einsum, and which warnings come out. The
references are hand-written with the formats themselves (``qsim_hooks.formats.get``).
"""

from __future__ import annotations

import math
import threading
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import qsim_hooks as qh
from qsim_hooks import attention as qh_attention
from qsim_hooks.formats import get
from qsim_hooks.lineage import einsum_reduction_axes

from ..core.model_check import snapshot, verify_unchanged

POINTS = ("q", "k", "scores", "probs", "v", "context")
E4M3 = {p: "e4m3" for p in POINTS}
e4m3 = get("e4m3")


def _attn_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if str(w.message).startswith("qsim_hooks: attention module")]


def _run(m, cfg, *args, observe=False):
    """Forward inside a session; returns (output, attention warnings, {point: [observed tensors]})."""
    seen: dict[str, list[torch.Tensor]] = {p: [] for p in POINTS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad(), qh.quantized(m, cfg) as qs:
            if observe:
                obs = {k: (lambda x, p=k[1]: seen[p].append(x.clone())) for k in qs.points if k[1] in POINTS}
                qs.observe(obs)
            out = m(*args)
    assert torch._C._len_torch_function_stack() == 0
    return out, _attn_warnings(caught), seen


def _heads(x, h):  # (B, L, D) -> (B, h, L, D/h)
    b, t, d = x.shape
    return x.view(b, t, h, d // h).transpose(1, 2)


# -- a child's own matmul (FalconLinear) ------------------------------------------------------------
class MatmulLinear(nn.Linear):
    """transformers' FalconLinear: ``input @ self.weight.T`` instead of F.linear."""

    def forward(self, x):
        return x @ self.weight.T + self.bias


class FalconLikeAttention(nn.Module):
    def __init__(self, d=16, h=2):
        super().__init__()
        self.h = h
        self.query_key_value = MatmulLinear(d, 3 * d)
        self.dense = MatmulLinear(d, d)

    def forward(self, x):
        q, k, v = (_heads(t, self.h) for t in self.query_key_value(x).chunk(3, -1))
        s = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
        p = F.softmax(s, dim=-1)
        return self.dense((p @ v).transpose(1, 2).flatten(2))


def test_a_childs_matmul_is_the_childs_not_attention():
    torch.manual_seed(0)
    m = FalconLikeAttention().eval()
    x = torch.randn(2, 5, 16)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=FalconLikeAttention, **E4M3)])
    got, warned, seen = _run(m, cfg, x, observe=True)
    assert not warned
    # the points saw per-head tensors, not the hidden states and the weights
    assert [t.shape for t in seen["q"]] == [torch.Size([2, 2, 5, 8])]
    assert [t.shape for t in seen["k"]] == [torch.Size([2, 2, 5, 8])]  # k itself, (…, S, E)
    assert seen["probs"][0].min() >= 0 and torch.allclose(seen["probs"][0].sum(-1), torch.ones(2, 2, 5))
    with torch.no_grad():
        q, k, v = (_heads(t, 2) for t in m.query_key_value(x).chunk(3, -1))
        s = e4m3(e4m3(q) @ e4m3(k).transpose(-1, -2)) / math.sqrt(8)
        ref = m.dense(e4m3(e4m3(F.softmax(s, -1)) @ e4m3(v)).transpose(1, 2).flatten(2))
    assert torch.equal(got, ref)


# -- extra products between Q·Kᵀ and the softmax (DeBERTa-v2 c2p / p2c) ----------------------------
class DisentangledLikeAttention(nn.Module):
    """DeBERTa-v2's shape of computation: Q·Kᵀ with the scale folded into kᵀ, a content->position product
    added to the scores, softmax, P·V."""

    def __init__(self, d=16, h=2, span=4):
        super().__init__()
        self.h = h
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.rel = nn.Parameter(torch.randn(span, d))

    def forward(self, x):
        q, k, v = _heads(self.query(x), self.h), _heads(self.key(x), self.h), _heads(self.value(x), self.h)
        scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * 2)
        s = torch.matmul(q, k.transpose(-1, -2) / scale.to(q.dtype))
        pos_k = _heads(self.key(self.rel.unsqueeze(0)), self.h)  # (1, h, span, E)
        c2p = torch.matmul(q, pos_k.transpose(-1, -2))  # (B, h, L, span): an extra product
        s = s + c2p.mean(-1, keepdim=True) / scale
        p = F.softmax(s, dim=-1)
        return (p @ v).transpose(1, 2).flatten(2)


def test_extra_products_are_left_alone_with_one_warning_and_k_is_the_key():
    torch.manual_seed(0)
    m = DisentangledLikeAttention().eval()
    x = torch.randn(2, 5, 16)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=DisentangledLikeAttention, **E4M3)])
    got, warned, seen = _run(m, cfg, x, observe=True)
    assert len(warned) == 1
    assert "'' (DisentangledLikeAttention) does not fit" in warned[0]
    assert "quantized Q·Kᵀ [torch.matmul] through q, k, scores; P·V [Tensor.matmul]" in warned[0]
    assert "left 1 other product(s) [torch.matmul] at full precision" in warned[0]
    with torch.no_grad():
        q, k, v = _heads(m.query(x), 2), _heads(m.key(x), 2), _heads(m.value(x), 2)
        assert torch.equal(seen["k"][0], k)  # the key, not kᵀ / scale
        scale = torch.sqrt(torch.tensor(8.0) * 2)
        s = e4m3(torch.matmul(e4m3(q), e4m3(k).transpose(-1, -2) / scale))
        c2p = torch.matmul(q, _heads(m.key(m.rel.unsqueeze(0)), 2).transpose(-1, -2))  # full precision
        p = e4m3(F.softmax(s + c2p.mean(-1, keepdim=True) / scale, -1))
        ref = e4m3(p @ e4m3(v)).transpose(1, 2).flatten(2)
    assert torch.equal(got, ref)
    # warned once per module, not once per forward
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), qh.quantized(m, cfg):
        warnings.simplefilter("always")
        m(x)
        m(x)
    assert len(_attn_warnings(caught)) == 1


# -- softmax through casts, dropout, masks; nn.Softmax; swapped P·V operands --------------------------
class CastingAttention(nn.Module):
    def __init__(self, softmax_module=False, swapped=False):
        super().__init__()
        self.softmax = nn.Softmax(dim=-1) if softmax_module else None
        self.drop = nn.Dropout(0.1)
        self.swapped = swapped

    def forward(self, q, k, v, head_mask):
        s = torch.matmul(q.half(), k.half().transpose(-2, -1)).float()  # the cast is on the scores' side
        p = self.softmax(s) if self.softmax is not None else F.softmax(s, dim=-1, dtype=torch.float64)
        p = self.drop(p.to(torch.float32))  # dropout as a child module (identity in eval)
        p = p.masked_fill(head_mask == 0, 0.0) * head_mask  # what head masks do
        p = p.contiguous().view(p.shape)
        if self.swapped:  # (Vᵀ·Pᵀ)ᵀ: the probabilities are the second operand
            return torch.matmul(v.transpose(-2, -1), p.transpose(-2, -1)).transpose(-2, -1)
        return torch.matmul(p, v)


@pytest.mark.parametrize("softmax_module", [False, True], ids=["F.softmax", "nn.Softmax"])
@pytest.mark.parametrize("swapped", [False, True], ids=["PV", "VtPt"])
def test_probabilities_are_followed_through_casts_dropout_and_masks(softmax_module, swapped):
    torch.manual_seed(0)
    m = CastingAttention(softmax_module, swapped).eval()
    q, k, v = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 4)
    head_mask = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=CastingAttention, probs="e4m3", v="int8", context="bf16")])
    got, warned, seen = _run(m, cfg, q, k, v, head_mask, observe=True)
    assert not warned
    p_seen = seen["probs"][0]
    assert p_seen.shape[-2:] == ((6, 5) if swapped else (5, 6)) and 0 <= p_seen.min() and p_seen.max() <= 1
    with torch.no_grad():
        s = torch.matmul(q.half(), k.half().transpose(-2, -1)).float()
        p = (F.softmax(s, dim=-1) if softmax_module else F.softmax(s, dim=-1, dtype=torch.float64).float()) * head_mask
        i8, bf = get("int8"), get("bf16")
        if swapped:
            ref = bf(torch.matmul(i8.with_axis(-1)(v.transpose(-2, -1)), e4m3(p.transpose(-2, -1))))
            ref = ref.transpose(-2, -1)
        else:
            ref = bf(torch.matmul(e4m3(p), i8.with_axis(-2)(v)))
    assert torch.equal(got, ref)


# -- einsum: each operand's reduction axis from the equation (torchvision MaxViT) ---------------------
class EinsumAttention(nn.Module):
    """torchvision's RelativePositionalMultiHeadAttention: k scaled, einsum, softmax, einsum."""

    def forward(self, q, k, v):
        k = k * 0.5
        s = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        p = F.softmax(s, dim=-1)
        return torch.einsum("BGHIJ,BGHJD->BGHID", p, v)


def test_einsum_blocks_run_along_each_operands_contracted_axis():
    torch.manual_seed(0)
    m = EinsumAttention()
    q, k, v = torch.randn(1, 2, 2, 40, 64), torch.randn(1, 2, 2, 40, 64), torch.randn(1, 2, 2, 40, 64)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=EinsumAttention, attention=True, q="mxfp4", k="mxfp4",
                                        probs="mxfp4", v="mxfp4")])
    got, warned, seen = _run(m, cfg, q, k, v, observe=True)
    assert not warned
    mx = get("mxfp4")
    assert torch.equal(seen["k"][0], k)  # before the scalar scale
    s = torch.einsum("bghid,bghjd->bghij", mx.with_axis(-1)(q), mx.with_axis(-1)(k) * 0.5)
    p = mx.with_axis(-1)(F.softmax(s, dim=-1))  # blocks along J (keys)
    ref = torch.einsum("bghij,bghjd->bghid", p, mx.with_axis(-2)(v))  # v's J is its axis -2
    assert torch.equal(got, ref)
    # the blocks really are along J: quantizing v along its last axis gives another result
    wrong = torch.einsum("bghij,bghjd->bghid", p, mx.with_axis(-1)(v))
    assert not torch.equal(wrong, ref)


@pytest.mark.parametrize("eq,ndims,axes", [
    ("BGHID,BGHJD->BGHIJ", (5, 5), (-1, -1)),
    ("B G H I J, B G H J D -> B G H I D", (5, 5), (-1, -2)),
    ("bhqd,bhdk->bhqk", (4, 4), (-1, -2)),
    ("...qd,...kd->...qk", (5, 3), (-1, -1)),
    ("b...jd,bj...->b...d", (4, 4), (-2, 1 - 4)),  # j before the ellipsis of the second operand
    ("ij,jk", (2, 2), (-1, -2)),  # implicit output "ik"
    ("bqc,bchw->bqhw", (3, 4), (-1, -3)),
    ("bi,bj->bij", (2, 2), (-1, -1)),  # an outer product: nothing contracted
])
def test_einsum_reduction_axes(eq, ndims, axes):
    assert einsum_reduction_axes(eq, ndims) == axes


def test_einsum_reduction_axes_refuses_what_is_not_two_operands():
    assert einsum_reduction_axes("ij,jk,kl->il", (2, 2)) is None
    assert einsum_reduction_axes("ii", (2, 2)) is None


# -- weights are not attention operands -----------------------------------------------------------
class BareWeightAttention(nn.Module):
    """Research-code attention: projections as ``x @ self.w`` on bare parameters."""

    def __init__(self, d=8):
        super().__init__()
        self.wq, self.wk, self.wv = (nn.Parameter(torch.randn(d, d) / d ** 0.5) for _ in range(3))

    def forward(self, x):
        q, k, v = x @ self.wq, torch.matmul(x, self.wk.T.T), x @ self.wv
        return F.softmax(q @ k.mT, dim=-1) @ v


@pytest.mark.parametrize("parametrized", [False, True], ids=["parameters", "parametrized"])
def test_products_with_a_weight_are_not_attention(parametrized):
    torch.manual_seed(0)
    m = BareWeightAttention()
    x = torch.randn(2, 5, 8)
    layers = {BareWeightAttention: qh.LayerSpec(("wq", "wk", "wv"), weight_reduction_axis=0)} if parametrized \
        else {}
    cfg = qh.QuantConfig(weight="int8" if parametrized else None, layers=layers,
                         rules=[qh.Rule(types=BareWeightAttention, attention=True, **E4M3)])
    snap = snapshot(m)
    got, warned, seen = _run(m, cfg, x, observe=True)
    verify_unchanged(m, snap)
    assert not warned
    with torch.no_grad():
        w = {n: getattr(m, n) for n in ("wq", "wk", "wv")}
        if parametrized:
            w = {n: get("int8").with_axis(0)(t) for n, t in w.items()}
        q, k, v = x @ w["wq"], x @ w["wk"], x @ w["wv"]
        assert torch.equal(seen["q"][0], q) and torch.equal(seen["k"][0], k)
        ref = e4m3(e4m3(F.softmax(e4m3(e4m3(q) @ e4m3(k).mT), -1)) @ e4m3(v))
    assert torch.equal(got, ref)


# -- what does not fit, and what is no attention at all ----------------------------------------------
class OneProduct(nn.Module):
    def forward(self, a, b):
        return a @ b


class SoftmaxFirst(nn.Module):
    def forward(self, s, v):
        return F.softmax(s, -1) @ v


class ForeignSoftmax(nn.Module):
    def forward(self, q, k, gate):
        s = q @ k.mT
        g = F.softmax(gate, -1)  # a gating softmax: not of the scores
        return s * g


@pytest.mark.parametrize("module,args,says", [
    (OneProduct(), (torch.randn(3, 4), torch.randn(4, 5)),
     "quantized Q·Kᵀ [Tensor.matmul] through q, k, scores; 1 product taken as Q·Kᵀ (Tensor.matmul) with no "
     "softmax after it"),
    (SoftmaxFirst(), (torch.randn(3, 4), torch.randn(4, 5)),
     "quantized P·V [Tensor.matmul] through probs, v, context; 1 softmax without a product before it"),
    (ForeignSoftmax(), (torch.randn(3, 4), torch.randn(5, 4), torch.randn(3, 5)),
     "1 softmax of a tensor not derived from the product taken as Q·Kᵀ (Tensor.matmul); 1 softmax output that "
     "reached no product"),
], ids=["no-softmax", "no-QK", "foreign-softmax"])
def test_forwards_that_do_not_fit_are_named_with_what_was_quantized(module, args, says):
    cfg = qh.QuantConfig(rules=[qh.Rule(types=type(module), attention=True, **E4M3)])
    _, warned, _ = _run(module, cfg, *args)
    assert len(warned) == 1 and f"({type(module).__name__}) does not fit" in warned[0] and says in warned[0], warned


def test_a_rule_marking_a_layer_without_products_warns_with_its_real_type():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    cfg = qh.QuantConfig(weight="int8", input="int8", rules=[qh.Rule(match=["0", "1"], attention=True)])
    _, warned, _ = _run(m, cfg, torch.randn(2, 4))
    assert len(warned) == 2
    assert "'0' (Linear) ran no product of two activations" in warned[0]  # not ParametrizedLinear
    assert "'1' (LayerNorm) ran no product" in warned[1] and "quantized nothing" in warned[1]


# -- which modules are attention modules ----------------------------------------------------------
class WindowAttention(nn.Module):
    def forward(self, x):
        return F.softmax(x @ x.mT, -1) @ x


class ShiftedWindows(WindowAttention):  # its own name does not match: its base class's does
    pass


class Mixer(nn.Module):  # no attention in the name: only a rule makes it one
    def forward(self, x):
        return F.softmax(x @ x.mT, -1) @ x


def test_subclasses_of_a_matching_class_are_attention_modules_and_rules_get_global_formats():
    m = nn.ModuleDict({"a": ShiftedWindows(), "b": Mixer()})
    cfg = qh.QuantConfig(input="int8", output="fp16", rules=[qh.Rule(types=Mixer, attention=True)])
    got = {(e.module, e.point): (e.format_name, e.decided_by) for e in qh.plan(m, cfg)}
    want = {"q": "int8", "k": "int8", "scores": "fp16", "probs": "int8", "v": "int8", "context": "fp16"}
    assert {p: got[("a", p)][0] for p in POINTS} == want  # found through its base class
    assert {p: got[("b", p)][0] for p in POINTS} == want  # the global formats, not None
    assert got[("b", "q")][1] == "cfg(input)"
    # a class matching by its own name only with the version suffix (no matching base)
    assert qh.QuantConfig().attention == r".*Attention(V?\d+)?"

    class FooAttention2(nn.Module):
        def forward(self, x):
            return x

    assert {e.point for e in qh.plan(FooAttention2(), qh.QuantConfig(input="int8"))} == set(POINTS)
    # attention=False takes a module out again
    off = qh.QuantConfig(input="int8", rules=[qh.Rule(types=WindowAttention, attention=False)])
    assert not [e for e in qh.plan(m, off) if e.module == "a"]


# -- nesting and threads ---------------------------------------------------------------------------
class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = WindowAttention()

    def forward(self, x):
        y = self.inner(x)
        return F.softmax(y @ x.mT, -1) @ x  # the outer module's own attention on the inner one's output


def test_nested_attention_modules_each_quantize_their_own_products():
    torch.manual_seed(0)
    m = Outer()
    x = torch.randn(2, 4, 8)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=Outer, attention=True, **E4M3),
                                qh.Rule(types=WindowAttention, q="int4", k="int4")])
    with torch.no_grad(), qh.quantized(m, cfg, stats=True) as qs:
        got = m(x)
    calls = {(r["module"], r["point"]): r["calls"] for r in qs.stats()}
    assert all(calls[("", p)] == 1 for p in POINTS) and calls[("inner", "q")] == 1
    i4 = get("int4")
    inner = F.softmax(i4(x) @ i4(x).mT, -1) @ x  # only its q and k are set
    ref = e4m3(e4m3(F.softmax(e4m3(e4m3(inner) @ e4m3(x).mT), -1)) @ e4m3(x))
    assert torch.equal(got, ref)


def test_another_thread_running_the_module_while_attached_is_quantized_too():
    torch.manual_seed(0)
    m = WindowAttention()
    x = torch.randn(2, 4, 8)
    cfg = qh.QuantConfig(rules=[qh.Rule(types=WindowAttention, q="e2m1", k="e2m1")])
    with torch.no_grad():
        plain = m(x)
        with qh.quantized(m, cfg):
            here = m(x)
            out = {}
            t = threading.Thread(target=lambda: out.setdefault("y", m(x)))
            t.start()
            t.join()
    assert not torch.equal(here, plain) and torch.equal(out["y"], here)


# -- what an interception below the scope learns (coverage accounting) ------------------------------
class _Below(TorchFunctionMode):
    """A mode entered before the model runs, so below every attention scope: logs each product's issuer."""

    def __init__(self):
        super().__init__()
        self.log = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (torch.matmul, torch.Tensor.matmul, torch.bmm):
            self.log.append(qh_attention.issuing())
        return func(*args, **(kwargs or {}))


def test_a_mode_below_the_scope_learns_which_points_each_product_got():
    torch.manual_seed(0)
    m = nn.ModuleDict({"f": FalconLikeAttention(), "d": DisentangledLikeAttention()}).eval()
    cfg = qh.QuantConfig(rules=[qh.Rule(types=(FalconLikeAttention, DisentangledLikeAttention), **E4M3)])
    x = torch.randn(2, 5, 16)
    below = _Below()
    with warnings.catch_warnings(), torch.no_grad(), qh.quantized(m, cfg):
        warnings.simplefilter("ignore")
        with below:
            m["f"](x)
            m["d"](x)
    qk, pv = ("q", "k", "scores"), ("probs", "v", "context")
    assert below.log == [None, ("f", qk), ("f", pv), None,  # the children's own matmuls: nobody's points
                         ("d", qk), ("d", ()), ("d", pv)]  # c2p: left alone
    assert qh_attention.issuing() is None
