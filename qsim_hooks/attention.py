"""Attention internals: Q, K, scores, probs, V and context, reached by scoped interception.

An attention layer computes two matmuls no Linear hook sees: ``scores = Q·Kᵀ``
and ``context = P·V``. While (and only while) an attention module runs, a
:class:`AttentionScope` (a ``TorchFunctionMode`` entered by the module's
forward pre-hook and left by its forward hook, ``always_call=True`` so an
exception cannot leave it on the stack) intercepts the calls the module makes:

* ``torch.matmul``, the ``@`` operator, ``torch.bmm``, ``torch.baddbmm`` and
  two-operand ``torch.einsum`` (and their Tensor methods): calls are taken in
  pairs, the first of a pair is ``Q·Kᵀ`` (its operands are the ``q`` and ``k``
  points, its result ``scores``), the second ``P·V`` (operands ``probs`` and
  ``v``, result ``context``). This is how eager attention is written in
  transformers, diffusers and torchvision; a module whose matmuls do not come
  in such pairs needs its own rule.
* ``F.scaled_dot_product_attention`` is decomposed into explicit math (scale,
  boolean and additive masks, causal masking, grouped-query heads, dropout)
  so its scores and probabilities can be quantized.
* ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) is
  decomposed the same way, including packed or separate in-projections,
  ``bias_k``/``bias_v``, ``add_zero_attn``, key padding masks,
  ``need_weights`` and averaged weights; the out-projection gets the
  ``out_proj`` Linear's input and output points, as if it had been called.

``scores`` is the result of the first call of a pair: the raw product ``Q·Kᵀ``
for matmul/bmm/einsum and in the decompositions (before the softmax scale and
masks, as ``torch.matmul(q, k.T) * scaling`` is in eager code), and for
``baddbmm`` whatever the model folded into that call (``beta·bias + alpha·Q·Kᵀ``:
diffusers' eager processor folds the scale, BLOOM its ALiBi bias); splitting it
would make those models' identity runs differ from the originals. ``probs`` is
the softmax output after dropout. Block formats run along each operand's reduction axis:
the last axis of ``q``, ``k`` (as ``(…, S, E)``), ``probs`` and ``context``, the
sequence axis of ``v``; a ``kᵀ`` operand is quantized along its axis -2.

Nested attention modules: only the outermost scope on a thread intercepts
(modules found by the class-name pattern are leaves, so this happens only
with user rules). The mode stack is thread-local: a thread running the model
outside the context is unaffected.
"""

from __future__ import annotations

import inspect
import math
import threading
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .points import QuantPoint

__all__ = ["ATTENTION_POINTS", "AttentionScope", "attach_attention", "sdpa_decomposed", "mha_decomposed"]

ATTENTION_POINTS = ("q", "k", "scores", "probs", "v", "context")

_MATMULS = {torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm}
_RMATMULS = {Tensor.__rmatmul__}
_BADDBMM = {torch.baddbmm, Tensor.baddbmm}
_EINSUM = {torch.einsum}
_SDPA = {F.scaled_dot_product_attention}
_MHA = {F.multi_head_attention_forward}

_local = threading.local()


def _stack() -> list:
    s = getattr(_local, "stack", None)
    if s is None:
        s = _local.stack = []
    return s


def _is_float(t: Any) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


class _Points:
    """The six points of one attention module (``None`` where the point is off)."""

    def __init__(self, points: dict[str, QuantPoint | None], out_in: QuantPoint | None = None,
                 out_out: QuantPoint | None = None) -> None:
        self.p = {n: points.get(n) for n in ATTENTION_POINTS}
        self.out_in = out_in
        self.out_out = out_out

    def apply(self, name: str, x: Tensor, axis: int = -1) -> Tensor:
        p = self.p[name]
        if p is None or not _is_float(x):
            return x
        return p(x, axis=axis)


def _q(pts: _Points, name: str, x: Tensor, axis: int = -1) -> Tensor:
    return pts.apply(name, x, axis)


# ---------------------------------------------------------------------------
# Decompositions
# ---------------------------------------------------------------------------
def _safe_softmax(s: Tensor) -> Tensor:
    """Softmax over the last axis whose fully masked rows (all ``-inf``) are zeros, not NaN.

    That is what the fused SDPA kernels return (PyTorch >= 2.5); a NaN row would leak into every
    position through the next layer's P·V (left-padded batches give such rows).
    """
    f = getattr(torch, "_safe_softmax", None)
    if f is not None:
        return f(s, -1)
    p = torch.softmax(s, dim=-1)
    return p.masked_fill((s == float("-inf")).all(-1, keepdim=True), 0.0)


def sdpa_decomposed(pts: _Points, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                    enable_gqa: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` as explicit math with the six points applied."""
    L, S = query.size(-2), key.size(-2)
    scale_f = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    q = _q(pts, "q", query, -1)
    k = _q(pts, "k", key, -1)
    v = value
    if enable_gqa and q.dim() >= 3 and k.size(-3) != q.size(-3):
        rep = q.size(-3) // k.size(-3)
        k = k.repeat_interleave(rep, dim=-3)
        v = v.repeat_interleave(rep, dim=-3)
    s = torch.matmul(q, k.transpose(-2, -1))
    s = _q(pts, "scores", s, -1) * scale_f
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=s.device).tril(diagonal=0)
        s = s.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            s = s.masked_fill(~attn_mask, float("-inf"))
        else:
            s = s + attn_mask
    p = _safe_softmax(s)
    if dropout_p > 0.0:
        p = F.dropout(p, p=dropout_p, training=True)
    p = _q(pts, "probs", p, -1)
    v = _q(pts, "v", v, -2)
    return _q(pts, "context", torch.matmul(p, v), -1)


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


def mha_decomposed(pts: _Points, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
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
    q = _q(pts, "q", q, -1)
    k = _q(pts, "k", k, -1)
    q_scaled = q * math.sqrt(1.0 / float(head_dim))
    if pts.p["scores"] is None and am is not None:
        s = torch.baddbmm(am, q_scaled, k.transpose(-2, -1))
    else:
        s = _q(pts, "scores", torch.bmm(q_scaled, k.transpose(-2, -1)), -1)
        if am is not None:
            s = s + am
    # PyTorch's need_weights path uses a plain softmax (NaN for a fully masked row); without
    # weights it calls the fused SDPA, which gives zeros there: follow whichever PyTorch takes
    p = torch.softmax(s, dim=-1) if need_weights else _safe_softmax(s)
    if dropout_p > 0.0:
        p = F.dropout(p, p=dropout_p)
    p = _q(pts, "probs", p, -1)
    v = _q(pts, "v", v, -2)
    out = _q(pts, "context", torch.bmm(p, v), -1)
    out = out.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
    if pts.out_in is not None:
        out = pts.out_in(out)
    out = F.linear(out, a["out_proj_weight"], a["out_proj_bias"])
    if pts.out_out is not None:
        out = pts.out_out(out)
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


# ---------------------------------------------------------------------------
# The scope
# ---------------------------------------------------------------------------
class AttentionScope(TorchFunctionMode):
    """Intercepts an attention module's matmul / SDPA / MHA calls while it runs."""

    def __init__(self, name: str, pts: _Points) -> None:
        super().__init__()
        self.name = name
        self.pts = pts
        self.matmuls = 0
        self.intercepted = 0

    def _pair(self, a: Tensor, b: Tensor, call) -> Tensor:
        first = self.matmuls % 2 == 0
        self.matmuls += 1
        self.intercepted += 1
        if first:
            a = _q(self.pts, "q", a, -1)
            b = _q(self.pts, "k", b, -2)
            return _q(self.pts, "scores", call(a, b), -1)
        a = _q(self.pts, "probs", a, -1)
        b = _q(self.pts, "v", b, -2)
        return _q(self.pts, "context", call(a, b), -1)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _MATMULS and len(args) == 2 and not kwargs and _is_float(args[0]) and _is_float(args[1]):
            return self._pair(args[0], args[1], lambda x, y: func(x, y))
        if func in _RMATMULS and len(args) == 2 and _is_float(args[0]) and _is_float(args[1]):
            return self._pair(args[1], args[0], lambda x, y: func(y, x))
        if func in _BADDBMM:
            # operands positional or by keyword (BLOOM: ``alibi.baddbmm(batch1=q, batch2=k, beta=..., alpha=...)``)
            ops = list(args[:3])
            kw = dict(kwargs)
            for n in ("input", "batch1", "batch2")[len(ops):]:
                if n in kw:
                    ops.append(kw.pop(n))
            if len(ops) == 3 and _is_float(ops[1]) and _is_float(ops[2]):
                rest = args[3:]
                return self._pair(ops[1], ops[2], lambda x, y: func(ops[0], x, y, *rest, **kw))
        if func in _EINSUM and args and isinstance(args[0], str):
            ops = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
            if len(ops) == 2 and _is_float(ops[0]) and _is_float(ops[1]):
                eq = args[0]
                # einsum operands: the reduction axis is not known in general; blocks run along -1
                first = self.matmuls % 2 == 0
                self.matmuls += 1
                self.intercepted += 1
                na, nb, out = ("q", "k", "scores") if first else ("probs", "v", "context")
                x = _q(self.pts, na, ops[0], -1)
                y = _q(self.pts, nb, ops[1], -1)
                return _q(self.pts, out, func(eq, x, y, **kwargs), -1)
        if func in _SDPA:
            self.intercepted += 1
            return sdpa_decomposed(self.pts, *args, **kwargs)
        if func in _MHA:
            self.intercepted += 1
            return mha_decomposed(self.pts, *args, **kwargs)
        return func(*args, **kwargs)


class _ScopeHandle:
    def __init__(self, pre, post) -> None:
        self.pre, self.post, self.removed = pre, post, False

    def remove(self) -> None:
        if not self.removed:
            self.pre.remove()
            self.post.remove()
            self.removed = True


def attach_attention(module: nn.Module, name: str, points: dict[str, QuantPoint | None],
                     out_in: QuantPoint | None = None, out_out: QuantPoint | None = None) -> _ScopeHandle:
    """Enter a scope for ``module``'s forward; warn once if nothing was intercepted."""
    pts = _Points(points, out_in, out_out)
    warned = [False]

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        stack = _stack()
        if stack:  # an outer attention scope on this thread already intercepts
            stack.append(None)
            return
        scope = AttentionScope(name, pts)
        scope.__enter__()
        stack.append(scope)

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        stack = _stack()
        if not stack:
            return
        scope = stack.pop()
        if scope is None:
            return
        scope.__exit__(None, None, None)
        if scope.intercepted == 0 and not warned[0]:
            warned[0] = True
            warnings.warn(
                f"qsim_hooks: attention module {name!r} ({type(mod).__name__}) ran without a matmul, "
                "SDPA or multi_head_attention_forward call to intercept, so its q/k/scores/probs/v/context "
                "points quantized nothing (a fused kernel called another way?)", RuntimeWarning, stacklevel=2)
        elif scope.matmuls % 2 == 1:
            warnings.warn(f"qsim_hooks: attention module {name!r} made an odd number ({scope.matmuls}) of "
                          "matmul calls; the q/k/scores vs probs/v/context pairing may be off",
                          RuntimeWarning, stacklevel=2)

    pre = module.register_forward_pre_hook(pre_hook)
    post = module.register_forward_hook(hook, always_call=True)
    return _ScopeHandle(pre, post)
