"""Attention as explicit math: SDPA and ``multi_head_attention_forward`` with the six points applied.

The attention scope (:mod:`.attention`) hands a fused call to these
functions so that its scores and probabilities exist as tensors a point can
quantize. Each follows PyTorch's own reference math step by step (masks,
causal masking, grouped-query heads, dropout; for MHA packed or separate
in-projections, ``bias_k``/``bias_v``, ``add_zero_attn``, padding masks,
averaged weights), so identity formats reproduce the fused call to float
rounding. :class:`AttentionPoints` is what they apply: the six points of one
module and the children it applies through ``F.linear`` (:class:`Borrowed`,
:data:`FUNCTIONAL_CHILDREN`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ATTENTION_POINTS
from .points import QuantPoint

__all__ = ["AttentionPoints", "Borrowed", "sdpa_decomposed", "mha_decomposed", "is_float", "FUNCTIONAL_CHILDREN",
           "borrowed_points", "borrowing_modules"]

Key = tuple[str, str, str]

#: module type -> its child layers that the module applies itself through ``F.linear`` (their weight passed
#: to a functional call), so the children's own hooks never fire: the decomposition applies their points.
FUNCTIONAL_CHILDREN: dict[type, tuple[str, ...]] = {nn.MultiheadAttention: ("out_proj",)}


def is_float(t: Any) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


@dataclass(frozen=True)
class Borrowed:
    """The input and output points of a child layer that its parent applies through ``F.linear``."""

    input: QuantPoint | None = None
    output: QuantPoint | None = None


class AttentionPoints:
    """The six points of one attention module (``None`` where the point is off), and its borrowed children."""

    def __init__(self, points: Mapping[str, QuantPoint | None],
                 borrowed: Mapping[str, Borrowed] | None = None) -> None:
        self.p = {n: points.get(n) for n in ATTENTION_POINTS}
        self.borrowed = dict(borrowed or {})

    def apply(self, name: str, x: Tensor, axis: int = -1, own: bool = False) -> Tensor:
        """``x`` through point ``name``; ``own``: ``x`` was made here and is read by nothing else (a product's or
        softmax's result), so the point may write into it (outside autograd: the point checks)."""
        p = self.p[name]
        if p is None or not is_float(x):
            return x
        return p(x, axis=axis, reuse_ok=True, own=own)  # the operands go to a product, which only reads them

    def linear(self, child: str, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``F.linear`` of the borrowed child ``child``, with that child's input and output points."""
        b = self.borrowed.get(child)
        if b is not None and b.input is not None:
            x = b.input(x, reuse_ok=True)
        y = F.linear(x, weight, bias)
        if b is not None and b.output is not None:
            y = b.output(y)
        return y


def _child(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def borrowed_points(module: nn.Module, name: str, points: Mapping[Key, QuantPoint]) -> dict[str, Borrowed]:
    """``module``'s functionally applied children (:data:`FUNCTIONAL_CHILDREN`) that have an input/output point."""
    out = {}
    for base in type(module).__mro__:
        for child in FUNCTIONAL_CHILDREN.get(base, ()):
            full = _child(name, child)
            b = Borrowed(points.get((full, "input", "input")), points.get((full, "output", "output")))
            if b.input is not None or b.output is not None:
                out[child] = b
    return out


def borrowing_modules(modules: Mapping[str, nn.Module], points: Mapping[Key, QuantPoint]) -> list[str]:
    """The names of ``modules`` that need a scope for their borrowed children's points alone."""
    return [n for n, m in modules.items() if borrowed_points(m, n, points)]


def _recording(t: Tensor) -> bool:
    return t.requires_grad and torch.is_grad_enabled()


def _safe_softmax(s: Tensor) -> Tensor:
    """Softmax over the last axis whose fully masked rows (all ``-inf``) are zeros, not NaN.

    That is what the fused SDPA kernels return (PyTorch >= 2.5); a NaN row would leak into every
    position through the next layer's P·V (left-padded batches give such rows). Outside autograd the
    same bits come cheaper than from ``torch._safe_softmax`` (which compares every score with ``-inf``,
    reduces that, and selects): a row is fully masked exactly when its max is ``-inf`` (a NaN makes the
    max NaN, as it makes "all -inf" false), and its zeros are written in place, only when there is one.
    """
    f = getattr(torch, "_safe_softmax", None)
    if f is not None and (_recording(s) or s.size(-1) == 0):
        return f(s, -1)
    p = torch.softmax(s, dim=-1)
    dead = s.amax(-1, keepdim=True) == float("-inf") if s.size(-1) else (s == float("-inf")).all(-1, keepdim=True)
    if p.device.type != "cpu" or bool(dead.any()):  # no host sync on an accelerator
        if _recording(p):
            return p.masked_fill(dead, 0.0)
        p.masked_fill_(dead, 0.0)
    return p


def _in_place_ok(s: Tensor, other: Tensor) -> bool:
    """``s += other`` gives what ``s + other`` gives: same shape and dtype, and no autograd to keep."""
    return not _recording(s) and not _recording(other) and torch.broadcast_shapes(s.shape, other.shape) == s.shape \
        and torch.result_type(s, other) == s.dtype


def sdpa_decomposed(pts: AttentionPoints, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` as explicit math with the six points applied."""
    L, S = query.size(-2), key.size(-2)
    scale_f = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    q = pts.apply("q", query, -1)
    k = pts.apply("k", key, -1)
    v = value
    if enable_gqa and q.dim() >= 3 and k.size(-3) != q.size(-3):
        rep = q.size(-3) // k.size(-3)
        k = k.repeat_interleave(rep, dim=-3)
        v = v.repeat_interleave(rep, dim=-3)
    # scores, probabilities and context are made here and read by nothing else: a point may write into them
    s = pts.apply("scores", torch.matmul(q, k.transpose(-2, -1)), -1, own=True)
    # outside autograd, scale and masks are written into the scores (a tensor made here, read by nothing
    # else): the same operations in the same order, without a new tensor for each
    own = not _recording(s)
    s = s.mul_(scale_f) if own else s * scale_f
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=s.device).tril(diagonal=0)
        s = s.masked_fill_(~keep, float("-inf")) if own else s.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            m = ~attn_mask
            s = s.masked_fill_(m, float("-inf")) if own and _in_place_ok(s, m) else s.masked_fill(m, float("-inf"))
        else:
            s = s.add_(attn_mask) if _in_place_ok(s, attn_mask) else s + attn_mask
    p = _safe_softmax(s)
    if dropout_p > 0.0:
        p = F.dropout(p, p=dropout_p, training=True)
    p = pts.apply("probs", p, -1, own=True)
    v = pts.apply("v", v, -2)
    return pts.apply("context", torch.matmul(p, v), -1, own=True)


_MHA_SIG = inspect.signature(F.multi_head_attention_forward)


def _canonical(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """MHA's convention: a boolean True (or a -inf) masks a position out; returns an additive float mask."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    if not torch.is_floating_point(mask):
        raise TypeError(f"attention masks must be bool or float, got {mask.dtype}")
    return mask.to(dtype)


def mha_decomposed(pts: AttentionPoints, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` as explicit math with the six points applied.

    Follows PyTorch's own function step by step (its need_weights path, which it
    also uses for the math); the result agrees with the fused call bit for bit
    where PyTorch takes that path, and within float rounding where it fuses.
    """
    b = _MHA_SIG.bind(*args, **kwargs)
    b.apply_defaults()
    a = b.arguments
    query, key, value = a["query"], a["key"], a["value"]
    num_heads, training = a["num_heads"], a["training"]
    key_padding_mask, need_weights, attn_mask = a["key_padding_mask"], a["need_weights"], a["attn_mask"]
    if a["static_k"] is not None or a["static_v"] is not None:
        raise NotImplementedError("qsim_hooks: nn.MultiheadAttention with static_k/static_v is not supported")
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    head_dim = embed_dim // num_heads
    if a["is_causal"] and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint (as nn.MultiheadAttention does)")
    kpm = _canonical(key_padding_mask, query.dtype)
    am = _canonical(attn_mask, query.dtype)
    if a["use_separate_proj_weight"]:
        bq = bk = bv = None
        if a["in_proj_bias"] is not None:
            bq, bk, bv = a["in_proj_bias"].chunk(3)
        q = F.linear(query, a["q_proj_weight"], bq)
        k = F.linear(key, a["k_proj_weight"], bk)
        v = F.linear(value, a["v_proj_weight"], bv)
    else:
        w, bias = a["in_proj_weight"], a["in_proj_bias"]
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = bias.chunk(3) if bias is not None else (None, None, None)
        # the same three cases as PyTorch's _in_projection_packed, for identical arithmetic
        if key is value and query is key:
            proj = F.linear(query, w, bias).unflatten(-1, (3, embed_dim)).unsqueeze(0).transpose(0, -2)
            q, k, v = proj.squeeze(-2).contiguous()
        elif key is value:
            w_q, w_kv = w.split([embed_dim, embed_dim * 2])
            b_q, b_kv = bias.split([embed_dim, embed_dim * 2]) if bias is not None else (None, None)
            q = F.linear(query, w_q, b_q)
            kv = F.linear(key, w_kv, b_kv).unflatten(-1, (2, embed_dim)).unsqueeze(0).transpose(0, -2)
            k, v = kv.squeeze(-2).contiguous()
        else:
            q = F.linear(query, wq, bq)
            k = F.linear(key, wk, bk)
            v = F.linear(value, wv, bv)
    if am is not None and am.dim() == 2:
        am = am.unsqueeze(0)
    if a["bias_k"] is not None and a["bias_v"] is not None:
        k = torch.cat([k, a["bias_k"].repeat(1, bsz, 1)])
        v = torch.cat([v, a["bias_v"].repeat(1, bsz, 1)])
        if am is not None:
            am = F.pad(am, (0, 1))
        if kpm is not None:
            kpm = F.pad(kpm, (0, 1))
    q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = k.view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = v.view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    if a["add_zero_attn"]:
        zeros = torch.zeros((bsz * num_heads, 1, head_dim), dtype=k.dtype, device=k.device)
        k = torch.cat([k, zeros], dim=1)
        v = torch.cat([v, zeros.to(v.dtype)], dim=1)
        if am is not None:
            am = F.pad(am, (0, 1))
        if kpm is not None:
            kpm = F.pad(kpm, (0, 1))
    src_len = k.size(1)
    if kpm is not None:
        kpm = kpm.view(bsz, 1, 1, src_len).expand(-1, num_heads, -1, -1).reshape(bsz * num_heads, 1, src_len)
        am = kpm if am is None else am + kpm
    dropout_p = a["dropout_p"] if training else 0.0
    q = pts.apply("q", q, -1)
    k = pts.apply("k", k, -1)
    q_scaled = q * math.sqrt(1.0 / float(head_dim))
    if pts.p["scores"] is None and am is not None:
        s = torch.baddbmm(am, q_scaled, k.transpose(-2, -1))
    else:
        s = pts.apply("scores", torch.bmm(q_scaled, k.transpose(-2, -1)), -1, own=True)
        if am is not None:
            s = s + am
    # PyTorch's need_weights path uses a plain softmax (NaN for a fully masked row); without
    # weights it calls the fused SDPA, which gives zeros there: follow whichever PyTorch takes
    p = torch.softmax(s, dim=-1) if need_weights else _safe_softmax(s)
    if dropout_p > 0.0:
        p = F.dropout(p, p=dropout_p)
    p = pts.apply("probs", p, -1, own=True)
    v = pts.apply("v", v, -2)
    out = pts.apply("context", torch.bmm(p, v), -1, own=True)
    out = out.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
    out = pts.linear("out_proj", out, a["out_proj_weight"], a["out_proj_bias"])
    out = out.view(tgt_len, bsz, out.size(1))
    weights = None
    if need_weights:
        weights = p.view(bsz, num_heads, tgt_len, src_len)
        if a["average_attn_weights"]:
            weights = weights.mean(dim=1)
        if not batched:
            weights = weights.squeeze(0)
    if not batched:
        out = out.squeeze(1)
    return out, weights
