"""INT-FP-QSim's attention: its class names, and its point placement inside ``nn.MultiheadAttention``.

Old scripts extend the default mapping with INT-FP-QSim's replacement classes as values (ImageBind:
``{ib.MultiheadAttention: qattn.ImageBindMha, ...}``). Compat replaces nothing and uses only a mapping's
keys, so after changing ``import int_fp_qsim.attention as qattn`` to ``import qsim_hooks.compat.attention
as qattn`` these names only have to exist; they stand for the torch class they replaced.

The transformers / diffusers attention classes reach qsim-hooks' own attention scope (Q·Kᵀ, softmax,
P·V found by meaning; :func:`attention_rules` gives their points INT-FP-QSim's formats). Only
``nn.MultiheadAttention`` needs a placement of its own, because INT-FP-QSim quantized what PyTorch's
fused call hides: the in-projection's input and result, ``q`` after the ``1/sqrt(E)`` scaling, the
scores with the mask added by ``baddbmm``. :func:`attach_old_mha` enters a ``TorchFunctionMode`` for
the module's forward that computes ``F.multi_head_attention_forward`` as that arithmetic
(self-attention, ``query is key is value``, as INT-FP-QSim required; anything else is warned about
and runs at full precision inside).
"""

from __future__ import annotations

import inspect
import math
import re
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..config import Rule
from ..undo import UndoStack

__all__ = ["MultiheadAttention", "ImageBindMha", "attach_old_mha", "attention_rules", "NO_K"]

MultiheadAttention = nn.MultiheadAttention
ImageBindMha = nn.MultiheadAttention

#: old attention classes (qualified name) whose replacement left ``k`` unquantized (diffusers' processor)
NO_K = frozenset({"diffusers.models.attention_processor.Attention"})
_MHA_SIG = inspect.signature(F.multi_head_attention_forward)


def attention_rules(names: list[str], no_k: list[str], fin: Any, fout: Any) -> list[Rule]:
    """Rules making ``names`` attention modules with INT-FP-QSim's formats (``k`` off for ``no_k``)."""
    if not names:
        return []
    pat = "re:" + "|".join(re.escape(n) for n in names)
    rules = [Rule(match=pat, attention=True, enabled=True, q=fin, k=fin, probs=fin, v=fin, scores=fout,
                  context=fout, name="INT-FP-QSim attention")]
    if no_k:
        rules.append(Rule(match="re:" + "|".join(re.escape(n) for n in no_k), k=None,
                          name="INT-FP-QSim attention: k not quantized"))
    return rules


def _q(fmt: Any, x: Tensor) -> Tensor:
    return x if fmt is None else fmt(x)


def _float_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf")) if mask.dtype == torch.bool \
        else mask


def old_mha(fin: Any, fout: Any, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` with INT-FP-QSim's points (self-attention, packed in-projection).

    The in-projection and out_proj weights arrive already quantized (the weight points' parametrizations).
    """
    a = _MHA_SIG.bind(*args, **kwargs)
    a.apply_defaults()
    a = a.arguments
    x, heads = a["query"], a["num_heads"]
    batched = x.dim() == 3
    kpm, mask = a["key_padding_mask"], a["attn_mask"]
    if not batched:
        x = x.unsqueeze(1)
        kpm = kpm.unsqueeze(0) if kpm is not None else None
    tgt_len, bsz, embed_dim = x.shape
    head_dim = embed_dim // heads
    qkv = torch.matmul(_q(fin, x), a["in_proj_weight"].t())
    if a["in_proj_bias"] is not None:
        qkv = qkv + a["in_proj_bias"]
    q, k, v = _q(fout, qkv).chunk(3, dim=-1)
    if mask is not None and mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if a["bias_k"] is not None and a["bias_v"] is not None:
        k = torch.cat([k, a["bias_k"].repeat(1, bsz, 1)])
        v = torch.cat([v, a["bias_v"].repeat(1, bsz, 1)])
        mask = F.pad(mask, (0, 1)) if mask is not None else None
        kpm = F.pad(kpm, (0, 1)) if kpm is not None else None
    q, k, v = (t.contiguous().view(t.shape[0], bsz * heads, head_dim).transpose(0, 1) for t in (q, k, v))
    if a["add_zero_attn"]:
        zeros = torch.zeros((bsz * heads, 1, head_dim), dtype=k.dtype, device=k.device)
        k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros.to(v.dtype)], dim=1)
        mask = F.pad(mask, (0, 1)) if mask is not None else None
        kpm = F.pad(kpm, (0, 1)) if kpm is not None else None
    src_len = k.size(1)
    if kpm is not None:
        kpm = kpm.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(bsz * heads, 1, src_len)
        if mask is None:
            mask = kpm
        elif mask.dtype == torch.bool and kpm.dtype == torch.bool:
            mask = mask.logical_or(kpm)
        else:  # a float padding mask (nn.MultiheadAttention's canonical form) is 0 / -inf: adding is masking
            mask = mask.masked_fill(kpm, float("-inf")) if kpm.dtype == torch.bool else mask + kpm
    if mask is not None:
        mask = _float_mask(mask, q.dtype)
    qs, kq = _q(fin, q / math.sqrt(head_dim)), _q(fin, k)
    s = torch.bmm(qs, kq.transpose(-2, -1)) if mask is None else torch.baddbmm(mask, qs, kq.transpose(-2, -1))
    p = torch.softmax(_q(fout, s), dim=-1)
    if a["training"] and a["dropout_p"] > 0.0:
        p = F.dropout(p, p=a["dropout_p"])
    out = _q(fout, torch.bmm(_q(fin, p), _q(fin, v)))
    out = out.transpose(0, 1).contiguous().view(tgt_len * bsz, embed_dim)
    # INT-FP-QSim rebuilt out_proj as its quantized Linear (the weight arrives quantized, as in_proj's)
    out = _q(fout, F.linear(_q(fin, out), a["out_proj_weight"], a["out_proj_bias"])).view(tgt_len, bsz, -1)
    weights = None
    if a["need_weights"]:
        weights = p.view(bsz, heads, tgt_len, src_len)
        if a["average_attn_weights"]:
            weights = weights.sum(dim=1) / heads
        weights = weights if batched else weights.squeeze(0)
    return (out if batched else out.squeeze(1)), weights


class _OldMHAScope(TorchFunctionMode):
    """One forward of one ``nn.MultiheadAttention``: its ``F.multi_head_attention_forward`` call, old placement."""

    def __init__(self, name: str, fin: Any, fout: Any, warned: list[bool]) -> None:
        super().__init__()
        self.name, self.fin, self.fout, self.warned = name, fin, fout, warned

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.multi_head_attention_forward:
            return func(*args, **kwargs)
        b = _MHA_SIG.bind(*args, **kwargs).arguments
        fits = b["query"] is b["key"] and b["key"] is b["value"] and not b.get("use_separate_proj_weight") \
            and b.get("static_k") is None and b.get("static_v") is None
        if fits:
            return old_mha(self.fin, self.fout, *args, **kwargs)
        if not self.warned[0]:
            self.warned[0] = True
            warnings.warn(f"replace_layers: {self.name!r} (MultiheadAttention) is called with query, key and value "
                          "not one tensor (or separate projection weights); INT-FP-QSim supported self-attention "
                          "only, so its internals run at full precision (its in-projection weight is quantized)",
                          UserWarning, stacklevel=3)
        return func(*args, **kwargs)


def attach_old_mha(module: nn.Module, name: str, fin: Any, fout: Any) -> UndoStack:
    """Run ``module``'s forward in an :class:`_OldMHAScope` (entered by a pre-hook, left by an always-call hook)."""
    scopes: list[_OldMHAScope] = []
    warned = [False]

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        scope = _OldMHAScope(name, fin, fout, warned)
        scope.__enter__()
        scopes.append(scope)

    def hook(mod: nn.Module, args: tuple, out: Any) -> None:
        if scopes:
            scopes.pop().__exit__(None, None, None)

    handles = UndoStack()
    with handles.all_or_nothing():
        handles.push(module.register_forward_pre_hook(pre_hook))
        handles.push(module.register_forward_hook(hook, always_call=True))
    return handles
