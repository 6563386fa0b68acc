"""The inference fast paths (reused quantized results, the cheaper decomposed attention) on real model code:
every zoo model and implementation gives the same bits with them as without them."""

from __future__ import annotations

import math

import pytest
import torch

import qsim_hooks as qh
from qsim_hooks import reuse

from .zoo import CASES, outputs

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

POINTS = ("q", "k", "scores", "probs", "v", "context")
CFG = qh.QuantConfig(input="e4m3", weight="e4m3", output="e4m3")  # every layer and the six attention points


def _run(case, model, on: bool) -> list[torch.Tensor]:
    reuse.set_enabled(on)
    try:
        with torch.no_grad(), qh.quantized(model, CFG):
            return outputs(model(**case.inputs()))
    finally:
        reuse.set_enabled(True)


@pytest.mark.parametrize("name,impl", [(n, i) for n, c in CASES.items() for i in c.impls])
def test_zoo_outputs_bit_identical_with_and_without_reuse(name, impl):
    case = CASES[name]
    model = case.build(impl)
    slow, fast = _run(case, model, False), _run(case, model, True)
    assert len(slow) == len(fast) > 0
    for a, b in zip(slow, fast):
        assert torch.equal(a.view(torch.int32) if a.dtype == torch.float32 else a,
                           b.view(torch.int32) if b.dtype == torch.float32 else b)


# ---------------------------------------------------------------------------------------------------------
# the decomposed SDPA: scale and masks written into the scores, the cheaper safe softmax
# ---------------------------------------------------------------------------------------------------------
def _sdpa_before(pts, query, key, value, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """The decomposition as it was before the fast path (out of place, ``torch._safe_softmax``)."""
    L, S = query.size(-2), key.size(-2)
    scale_f = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    q, k, v = pts.apply("q", query, -1), pts.apply("k", key, -1), value
    if enable_gqa and k.size(-3) != q.size(-3):
        rep = q.size(-3) // k.size(-3)
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    s = pts.apply("scores", torch.matmul(q, k.transpose(-2, -1)), -1) * scale_f
    if is_causal:
        s = s.masked_fill(~torch.ones(L, S, dtype=torch.bool).tril(diagonal=0), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    p = pts.apply("probs", torch._safe_softmax(s, -1), -1)
    return pts.apply("context", torch.matmul(p, pts.apply("v", v, -2)), -1)


def _points(fmt):
    from qsim_hooks.decompose import AttentionPoints
    from qsim_hooks.planning import PlanEntry
    from qsim_hooks.points import QuantPoint

    f = None if fmt is None else qh.formats.get(fmt)
    return AttentionPoints({n: QuantPoint(PlanEntry("a", "A", n, n, f, None, "t")) for n in POINTS})


def _masks():
    g = torch.Generator().manual_seed(3)
    b = torch.rand(2, 1, 5, 7, generator=g) > 0.3
    b[0, 0, 1] = False  # a fully masked row: zeros, not NaN
    f = torch.randn(2, 2, 5, 7, generator=g)
    f[1, :, 2] = float("-inf")
    f[1, 0, 3, :3] = float("-inf")
    return {"none": None, "bool": b, "float": f, "float-bf16": f.to(torch.bfloat16), "float-bcast": f[:1, :1, :1]}


_SDPA_CASES = [(m, False, gqa) for m in _masks() for gqa in (False, True)] + [("none", True, False)]


@pytest.mark.filterwarnings("ignore:.*flushed:RuntimeWarning")  # probs in e4m3/int8: most round to zero
@pytest.mark.parametrize("fmt", [None, "e4m3", "int8"])
@pytest.mark.parametrize("mask,causal,gqa", _SDPA_CASES)
def test_decomposed_sdpa_gives_the_bits_it_gave_before(fmt, mask, causal, gqa):
    from qsim_hooks.decompose import sdpa_decomposed

    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 2, 5, 8, generator=g) * 3
    k = torch.randn(2, 1 if gqa else 2, 7, 8, generator=g) * 3
    v = torch.randn(2, 1 if gqa else 2, 7, 8, generator=g)
    m = _masks()[mask]
    kw = dict(attn_mask=m, is_causal=causal, enable_gqa=gqa)
    with torch.no_grad():
        want = _sdpa_before(_points(fmt), q, k, v, **kw)
        got = sdpa_decomposed(_points(fmt), q, k, v, **kw)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    # under autograd the out-of-place path: the same values, and a gradient
    qg = q.clone().requires_grad_()
    out = sdpa_decomposed(_points(fmt), qg, k, v, **kw)
    assert torch.equal(out.detach().view(torch.int32), want.view(torch.int32))
    out.sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()


# ---------------------------------------------------------------------------------------------------------
# scores, probabilities and context quantized into the tensors the decomposition made (fused kernels)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*flushed:RuntimeWarning")  # probs in e4m3: most round to zero
@pytest.mark.parametrize("mask,causal", [("none", False), ("bool", False), ("float", False), ("none", True)])
def test_decomposed_sdpa_written_into_its_own_tensors_gives_the_copies_bits(mask, causal, eager_kernels):
    from qsim_hooks.decompose import sdpa_decomposed

    qh.formats.set_backend("compiled")
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) * 3 for n in (5, 7, 7))
    given = [t.clone() for t in (q, k, v)]
    kw = dict(attn_mask=_masks()[mask], is_causal=causal)
    pts = _points("e4m3")
    with torch.no_grad():
        want = _sdpa_before(_points("e4m3"), q, k, v, **kw)
        for _ in range(2):  # the second call writes into its scores, probabilities and context
            got = sdpa_decomposed(pts, q, k, v, **kw)
            assert torch.equal(got.view(torch.int32), want.view(torch.int32))
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), given))  # the caller's tensors are untouched
    assert "magic_round_0_into" in qh.formats.kernels._compiled and not qh.formats.kernels._compile_failed


def test_mha_module_written_into_its_own_tensors_gives_the_copies_bits(monkeypatch, eager_kernels):
    from qsim_hooks import points

    qh.formats.set_backend("compiled")
    torch.manual_seed(6)
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True).eval()
    x = torch.randn(3, 6, 16)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True

    def run():
        with torch.no_grad(), qh.quantized(mha, CFG):
            mha(x, x, x, key_padding_mask=pad)  # the first call's checks: copies
            return mha(x, x, x, key_padding_mask=pad)

    got = run()
    monkeypatch.setattr(points, "_castable_into", lambda fmt, t: False)  # the copies, as before
    want = run()
    for a, b in zip(got, want):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))
