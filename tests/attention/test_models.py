"""Attention internals on real model code: transformers 5.x (OPT, BERT, CodeGen, DETR, MaskFormer with its
Swin backbone; "eager" and "sdpa"; BLOOM, eager only, for its keyword-operand baddbmm) and a diffusers
UNet2DConditionModel (self- and cross-attention), each built from a tiny random config
(tests/attention/zoo.py; no downloads).

For every model and implementation:
  (a) the plan finds exactly the expected attention classes, leaves only;
  (b) the six points at the identity format fp32 give the un-instrumented output: bit for bit where the
      model's own (eager) matmuls are intercepted; within ``SDPA_RTOL`` where a fused SDPA call is decomposed;
  (c) each of the six points of every attention module fired (stats ``calls`` > 0);
  (d) a real format changes the result, and "eager" and "sdpa" quantized agree (see the test's comment);
  (e) after exit the model is unchanged and no torch function mode is left on the stack.
Plus OPT ``generate`` with a KV cache inside the context, and the fully-masked-row case of the SDPA
decomposition (left padding).
"""

from __future__ import annotations

import functools
import math
import warnings

import pytest
import torch

import qsim_hooks as qh

from ..core.model_check import snapshot, verify_unchanged
from .zoo import CASES, outputs

pytest.importorskip("transformers")
pytest.importorskip("diffusers")

POINTS = ("q", "k", "scores", "probs", "v", "context")
IDENTITY = qh.QuantConfig(rules=[qh.Rule(**{p: "fp32" for p in POINTS})])
FULL = qh.QuantConfig(input="e4m3", output="fp16")  # every Linear/Conv and the six points (default mapping)
KV = qh.QuantConfig(rules=[qh.Rule(k="e4m3", v="e4m3")])  # a low-precision KV cache only

#: decomposed SDPA vs the fused CPU kernel, as max|diff| / max|reference| over each output tensor.
#: Measured (torch 2.14 CPU, these configs): 1.0e-7 (BERT) ... 8.5e-7 (UNet); pinned at 1e-5.
SDPA_RTOL = 1e-5

IMPL_CASES = [(n, impl) for n, c in CASES.items() for impl in c.impls]


def _mode_stack_len() -> int:
    return torch._C._len_torch_function_stack()


@functools.cache
def _model(name: str, impl: str) -> torch.nn.Module:
    return CASES[name].build(impl)


@functools.cache
def _reference(name: str, impl: str) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(outputs(_model(name, impl)(**CASES[name].inputs())))


@functools.cache
def _quantized(name: str, impl: str, setting: str) -> tuple[torch.Tensor, ...]:
    cfg = {"full": FULL, "kv": KV}[setting]
    m = _model(name, impl)
    snap = snapshot(m)
    with torch.no_grad(), qh.quantized(m, cfg):
        out = tuple(outputs(m(**CASES[name].inputs())))
    verify_unchanged(m, snap)
    assert _mode_stack_len() == 0
    return out


def _rel(a, b) -> float:
    """max over tensors of max|a - b| / max|b|."""
    assert len(a) == len(b) and len(a) > 0
    return max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip(a, b))


def _attention_names(m: torch.nn.Module, classes) -> set[str]:
    return {n for n, x in m.named_modules() if type(x).__name__ in classes}


@pytest.mark.parametrize("name,impl", IMPL_CASES)
def test_plan_finds_the_attention_leaves(name, impl):
    case, m = CASES[name], _model(name, impl)
    plan = qh.plan(m, IDENTITY)
    attn = {e.module: e.module_type for e in plan if e.point in POINTS}
    assert set(attn.values()) == case.attention
    assert set(attn) == _attention_names(m, case.attention)
    # the containers whose class name also matches the pattern are in the model but not instrumented
    assert _attention_names(m, case.not_leaves) or not case.not_leaves
    assert not {e for e in plan if e.module_type in case.not_leaves}
    for module in attn:
        assert sorted(e.point for e in plan.for_module(module)) == sorted(POINTS)
    if name == "unet":  # diffusers' Attention serves both: attn1 self-attention, attn2 cross-attention
        assert {n.rsplit(".", 1)[-1] for n in attn} == {"attn1", "attn2"}


@pytest.mark.parametrize("name,impl", IMPL_CASES)
def test_identity_formats_reproduce_the_model_and_every_point_fires(name, impl):
    case, m = CASES[name], _model(name, impl)
    ref = _reference(name, impl)
    snap = snapshot(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "intercepted nothing" / odd matmul count
        with torch.no_grad(), qh.quantized(m, IDENTITY, stats=True) as qs:
            got = tuple(outputs(m(**case.inputs())))
    # (e) nothing left behind
    verify_unchanged(m, snap)
    assert _mode_stack_len() == 0
    # (b)
    assert all(torch.isfinite(t).all() for t in ref)
    if _fused(name, impl):
        assert _rel(got, ref) <= SDPA_RTOL
    else:
        assert all(torch.equal(a, b) for a, b in zip(got, ref)), f"max rel diff {_rel(got, ref):.3g}"
    # (c) every point of every attention module was reached
    calls = {(r["module"], r["point"]): r["calls"] for r in qs.stats() if r["point"] in POINTS}
    modules = _attention_names(m, case.attention)
    assert set(calls) == {(mod, p) for mod in modules for p in POINTS}
    silent = sorted(k for k, c in calls.items() if not c)
    assert not silent, f"attention points that never fired: {silent}"


def _fused(name: str, impl: str) -> bool:
    """Does this model call F.scaled_dot_product_attention (decomposed by the scope)?"""
    return impl == "sdpa"  # diffusers: "sdpa" is its default AttnProcessor2_0, "eager" its AttnProcessor


@pytest.mark.parametrize("name", list(CASES))
def test_real_formats_change_the_result_and_eager_agrees_with_sdpa(name):
    for impl in CASES[name].impls:
        ref = _reference(name, impl)
        full, kv = _quantized(name, impl, "full"), _quantized(name, impl, "kv")
        assert all(torch.isfinite(t).all() for t in full + kv)
        assert _rel(full, ref) > 1e-3  # measured 0.03 .. 0.15
        assert _rel(kv, ref) > 0  # measured 9e-5 (BERT) .. 0.05
    if len(CASES[name].impls) < 2:
        return  # BLOOM: eager only
    e_full, s_full = _quantized(name, "eager", "full"), _quantized(name, "sdpa", "full")
    e_kv, s_kv = _quantized(name, "eager", "kv"), _quantized(name, "sdpa", "kv")
    if name != "unet":
        # transformers: the SDPA decomposition performs eager_attention_forward's operations in its order
        # (matmul, * scaling, mask, softmax, matmul; a masked key gets probability exactly 0 either way),
        # so both implementations quantize bit-identical tensors at the same points: tolerance 0
        # (measured 0 for all five models, both settings). Any float difference would not stay small:
        # each e4m3 rounding downstream turns a 1e-7 perturbation into whole-ulp flips.
        assert all(torch.equal(a, b) for a, b in zip(e_full, s_full)), f"{_rel(e_full, s_full):.3g}"
        assert all(torch.equal(a, b) for a, b in zip(e_kv, s_kv)), f"{_rel(e_kv, s_kv):.3g}"
    else:
        # diffusers' eager AttnProcessor computes baddbmm(empty, q, kᵀ, beta=0, alpha=scale): the scale is
        # folded into the product (last-bit differences from matmul then * scale in 2/3 of the scores, and
        # its ``scores`` point sees the scaled product). With K and V alone quantized the two agree to float
        # rounding: measured 6.2e-7, pinned at SDPA_RTOL. With every layer in e4m3 (FULL) those last-bit
        # differences flip e4m3 roundings and grow to the size of the quantization error itself (measured
        # 0.097 vs 0.088 from full precision), so no tolerance tighter than that holds there.
        assert _rel(e_kv, s_kv) <= SDPA_RTOL


# -- generation with a KV cache -------------------------------------------------------------------
def _generate(m, **kw):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, 64, (2, 6), generator=g)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, :2] = 0  # left padding (as batched generation pads): fully masked rows for the padded queries
    with torch.no_grad():
        return m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, use_cache=True,
                          pad_token_id=1, **kw)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_opt_generate_with_kv_cache_inside_the_context(impl):
    m = CASES["opt"].build(impl)
    ref = _generate(m)
    assert ref.shape == (2, 9)
    snap = snapshot(m)
    with qh.quantized(m, IDENTITY, stats=True) as qs:
        got = _generate(m)
    verify_unchanged(m, snap)
    assert _mode_stack_len() == 0
    assert torch.equal(got, ref)
    # one prefill and two decoding steps (one query against the cache) reached every point of both layers
    rows = [r for r in qs.stats() if r["point"] in POINTS]
    assert len(rows) == 2 * 6 and all(r["calls"] == 3 for r in rows)
    # a quantized KV cache generates too, the same tokens from either implementation
    with qh.quantized(m, KV, stats=True) as qkv:
        kv = _generate(m)
    verify_unchanged(m, snap)
    assert kv.shape == ref.shape
    rows = qkv.stats()  # K and V of both layers, quantized (finite SQNR) in the prefill and both decoding steps
    assert sorted(r["point"] for r in rows) == ["k", "k", "v", "v"]
    assert all(r["calls"] == 3 and math.isfinite(r["sqnr_db"]) for r in rows)
    if impl == "sdpa":
        with qh.quantized(eager := CASES["opt"].build("eager"), KV):
            assert torch.equal(_generate(eager), kv)


def test_sdpa_decomposition_zeroes_fully_masked_rows_like_the_fused_kernel():
    """Left padding gives query rows with every key masked: the fused SDPA returns zeros there (PyTorch >= 2.5);
    a plain softmax gives NaN, which the next layer's P·V spreads to every position."""
    m = _model("opt", "sdpa")
    ids = torch.randint(3, 64, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :3] = 0
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask).logits
        with qh.quantized(m, IDENTITY):
            got = m(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(ref).all() and torch.isfinite(got).all()
    assert _rel((got,), (ref,)) <= SDPA_RTOL
