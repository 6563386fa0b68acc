"""Every GEMM-like call the interception reads (:mod:`qsim_hooks.gemms`) as the GEMM the engine runs.

``simulate(g, a, b, acc)`` rebuilds the call ``g`` with operands ``a`` and ``b`` as one batched
``(…, M, K) @ (…, K, N)`` of :func:`~.engine.matmul_with_overflow`, the reduction running over K in index order:

* ``F.linear``: the input features; ``matmul`` / ``mm`` / ``bmm`` / ``mv``: the shared axis; ``addmm`` /
  ``baddbmm`` / ``addmv`` (``alpha=1``): ``beta * input`` is the bias; ``addbmm``: batch-major, then K;
* ``einsum`` with two operands: the contracted letters in the first operand's order;
* a convolution (1-, 2- or 3-D, groups, stride, dilation, zero or 'same' padding): its im2col GEMM, in
  (input channel, kernel position) order with zero-padding products included; a transposed convolution: the
  direct convolution it equals (zeros inserted between inputs, the kernel flipped), the same way;
* ``grouped_mm``: one GEMM per group (rows split by ``offs``).

Bias is added once after the reduction. A call this module cannot rebuild is answered by a reason (str),
which the caller reports: never a silent exact sum. The grids are the same ones torch uses, so the
un-simulated result (fp32 accumulator) equals the call's own up to fp32 reassociation.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .engine import apply_round, rounder, simulated_matmul
from .spec import Accumulator

__all__ = ["simulate", "conv", "conv_transpose"]

Result = tuple[Tensor, Tensor | None]


def _arg(g: Any, pos: int, name: str, default: Any = None) -> Any:
    if len(g.args) > pos:
        return g.args[pos]
    return g.kwargs.get(name, default)


def _mm(a: Tensor, b: Tensor, acc: Accumulator, bias: Tensor | None, over: bool) -> Result:
    """``torch.matmul`` semantics (1-D operands are vectors) through the engine."""
    va, vb = a.dim() == 1, b.dim() == 1
    y, ov = simulated_matmul(a.unsqueeze(0) if va else a, b.unsqueeze(-1) if vb else b, acc, None, over)
    if vb:
        y, ov = y.squeeze(-1), None if ov is None else ov.squeeze(-1)
    if va:
        y, ov = y.squeeze(-2), None if ov is None else ov.squeeze(-2)
    if bias is not None:
        y = _bias(y, bias, acc)
    return y, ov


def _bias(y: Tensor, bias: Tensor, acc: Accumulator) -> Tensor:
    """Bias added once, rounded in the promote format (the accumulator's own when it has none)."""
    last = acc.promote if acc.promote is not None else acc.format
    return apply_round(rounder(last), y + bias.float())


def _linear(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool) -> Result | str:
    return _mm(a, b.t() if b.dim() == 2 else b, acc, _arg(g, 2, "bias"), over)


def _addmm(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool) -> Result | str:
    if _arg(g, 4, "alpha", 1) != 1:
        return f"{g.op} with alpha={_arg(g, 4, 'alpha')!r} (only alpha=1 is rebuilt)"
    inp, beta = _arg(g, 0, "input"), _arg(g, 3, "beta", 1)
    bias = None if beta == 0 else (inp if beta == 1 else beta * inp)
    if g.op == "addbmm":  # input + sum over the batch of a[i] @ b[i]: one GEMM over (batch, K)
        B, n, m = a.shape
        a, b = a.permute(1, 0, 2).reshape(n, B * m), b.reshape(B * m, b.shape[-1])
    return _mm(a, b, acc, bias, over)


_EQ = re.compile(r"^([A-Za-z]+),([A-Za-z]+)->([A-Za-z]*)$")


def _einsum(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool) -> Result | str:
    eq = g.op.split(":", 1)[1]
    m = _EQ.match(eq)
    sa, sb, so = m.groups() if m else ("", "", "")
    if not m or len(set(sa)) < len(sa) or len(set(sb)) < len(sb) or set(so) - set(sa + sb) \
            or (set(sa) ^ set(sb)) - set(so):
        return f"einsum {eq!r} (a repeated letter, or a letter summed in one operand only)"
    batch = [c for c in sa if c in sb and c in so]
    red = [c for c in sa if c in sb and c not in so]
    fa, fb = [c for c in sa if c not in sb], [c for c in sb if c not in sa]
    size = {**dict(zip(sa, a.shape)), **dict(zip(sb, b.shape))}
    n = lambda cs: int(torch.Size([size[c] for c in cs]).numel())  # noqa: E731
    A = a.permute([sa.index(c) for c in batch + fa + red]).reshape(n(batch), n(fa), n(red))
    B = b.permute([sb.index(c) for c in batch + red + fb]).reshape(n(batch), n(red), n(fb))
    y, ov = simulated_matmul(A, B, acc, None, over)
    order = batch + fa + fb
    shape = [size[c] for c in order]
    perm = [order.index(c) for c in so]
    y = y.reshape(shape).permute(perm)
    return y, None if ov is None else ov.reshape(shape).permute(perm)


def _tuple(v: Any, d: int) -> tuple[int, ...]:
    return (int(v),) * d if isinstance(v, int) else tuple(int(x) for x in v)


def conv(x: Tensor, w: Tensor, bias: Tensor | None, acc: Accumulator, stride: Any = 1, padding: Any = 0,
         dilation: Any = 1, groups: int = 1, over: bool = True) -> Result:
    """``F.conv{1,2,3}d`` (zero padding, or 'same' / 'valid') as im2col GEMMs with simulated sums."""
    d = w.dim() - 2
    unbatched = x.dim() == d + 1
    if unbatched:
        x = x.unsqueeze(0)
    st, dil, ks = _tuple(stride, d), _tuple(dilation, d), tuple(w.shape[2:])
    if isinstance(padding, str):
        tot = [0] * d if padding == "valid" else [dl * (k - 1) for dl, k in zip(dil, ks)]
        pads = [(t // 2, t - t // 2) for t in tot]
    else:
        pads = [(p, p) for p in _tuple(padding, d)]
    if any(p != (0, 0) for p in pads):
        x = F.pad(x, [v for p in reversed(pads) for v in p])
    for i in range(d):  # the receptive fields: (N, C, out_1..out_d, k_1..k_d), kernel taps every dilation
        x = x.unfold(2 + i, dil[i] * (ks[i] - 1) + 1, st[i])
    x = x[(...,) + tuple(slice(None, None, dl) for dl in dil)]
    N, C, outs = x.shape[0], x.shape[1], x.shape[2:2 + d]
    L, taps, G = int(torch.Size(outs).numel()), int(torch.Size(ks).numel()), groups
    n_out, Cg = w.shape[0], C // G
    # (G, N*L, Cg*taps): each row one receptive field in (input channel, kernel position) order
    cols = x.permute(0, *range(2, 2 + d), 1, *range(2 + d, 2 + 2 * d)).reshape(N * L, G, Cg * taps).transpose(0, 1)
    wg = w.reshape(G, n_out // G, Cg * taps).transpose(1, 2)  # (G, Cg*taps, O/G)
    y, ov = simulated_matmul(cols, wg, acc, None, over)  # (G, N*L, O/G)

    def back(t: Tensor) -> Tensor:
        t = t.permute(1, 0, 2).reshape(N, *outs, n_out).movedim(-1, 1)
        return t.squeeze(0) if unbatched else t
    y = back(y)
    if bias is not None:
        y = _bias(y, bias.reshape(-1, *([1] * d)), acc)
    return y, None if ov is None else back(ov)


def conv_transpose(x: Tensor, w: Tensor, bias: Tensor | None, acc: Accumulator, stride: Any = 1, padding: Any = 0,
                   output_padding: Any = 0, groups: int = 1, dilation: Any = 1, over: bool = True) -> Result:
    """``F.conv_transpose{1,2,3}d`` as the direct convolution it equals: the input with ``stride - 1`` zeros
    between elements, padded by ``dilation * (k - 1) - padding`` (``+ output_padding`` at the end), convolved
    with the kernel flipped and its channel axes swapped per group."""
    d = w.dim() - 2
    unbatched = x.dim() == d + 1
    if unbatched:
        x = x.unsqueeze(0)
    st, pad, opad, dil = _tuple(stride, d), _tuple(padding, d), _tuple(output_padding, d), _tuple(dilation, d)
    ks = w.shape[2:]
    N, C = x.shape[:2]
    if any(s > 1 for s in st):
        big = x.new_zeros(N, C, *[(n - 1) * s + 1 for n, s in zip(x.shape[2:], st)])
        big[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in st)] = x
        x = big
    edges = [(dl * (k - 1) - p, dl * (k - 1) - p + op) for dl, k, p, op in zip(dil, ks, pad, opad)]
    x = F.pad(x, [v for e in reversed(edges) for v in e])  # negative: crops
    G = groups
    Cg, Og = w.shape[0] // G, w.shape[1]
    wd = w.reshape(G, Cg, Og, *ks).transpose(1, 2).flip(list(range(3, 3 + d))).reshape(G * Og, Cg, *ks)
    y, ov = conv(x, wd, bias, acc, 1, 0, dil, G, over)
    if unbatched:
        y, ov = y.squeeze(0), None if ov is None else ov.squeeze(0)
    return y, ov


def _conv(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool) -> Result | str:
    pad = _arg(g, 4, "padding", 0)
    if isinstance(pad, str) and pad not in ("same", "valid"):
        return f"padding={pad!r}"
    return conv(a, b, _arg(g, 2, "bias"), acc, _arg(g, 3, "stride", 1), pad, _arg(g, 5, "dilation", 1),
                _arg(g, 6, "groups", 1), over)


def _conv_t(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool) -> Result | str:
    return conv_transpose(a, b, _arg(g, 2, "bias"), acc, _arg(g, 3, "stride", 1), _arg(g, 4, "padding", 0),
                          _arg(g, 5, "output_padding", 0), _arg(g, 6, "groups", 1), _arg(g, 7, "dilation", 1), over)


def _grouped(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool) -> Result | str:
    offs, bias = _arg(g, 2, "offs"), _arg(g, 3, "bias")
    if bias is not None:
        return "grouped_mm with a bias"
    if a.dim() == 3 and b.dim() == 3 and offs is None:
        return _mm(a, b, acc, None, over)
    if a.dim() == 2 and b.dim() == 3 and offs is not None:
        ends = [int(e) for e in offs.tolist()]
        parts = [_mm(a[s:e], b[i], acc, None, over) for i, (s, e) in enumerate(zip([0] + ends[:-1], ends))]
        y = torch.cat([p[0] for p in parts])
        ov = None if not over else torch.cat([p[1] for p in parts])  # type: ignore[misc]
        if y.shape[0] < a.shape[0]:  # rows past the last offset are left as zeros by grouped_mm
            y = torch.cat([y, y.new_zeros(a.shape[0] - y.shape[0], y.shape[1])])
            ov = None if ov is None else torch.cat([ov, ov.new_zeros(a.shape[0] - ov.shape[0], ov.shape[1])])
        return y, ov
    return f"grouped_mm of a {a.dim()}-D and a {b.dim()}-D operand" + (" with offs" if offs is not None else "")


_BUILDERS = {"linear": _linear, "matmul": lambda g, a, b, acc, o: _mm(a, b, acc, None, o),
             "addmm": _addmm, "baddbmm": _addmm, "addmv": _addmm, "addbmm": _addmm,
             "conv": _conv, "conv_transpose": _conv_t, "grouped_mm": _grouped}
for _op in ("mm", "bmm", "mv"):
    _BUILDERS[_op] = _BUILDERS["matmul"]


def simulate(g: Any, a: Tensor, b: Tensor, acc: Accumulator, over: bool = False) -> Result | str:
    """The call ``g`` (a :class:`qsim_hooks.gemms.Gemm`) on operands ``a`` and ``b`` with simulated sums, in the
    dtype the call would return, and the overflow mask when ``over``; or why it cannot be rebuilt."""
    build = _BUILDERS.get(g.op) or (_einsum if g.op.startswith("einsum:") else None)
    if build is None:
        return f"{g.op} is not rebuilt"
    if g.kwargs.get("out") is not None:
        return f"{g.op} with out="
    res = build(g, a, b, acc, over)
    if isinstance(res, str):
        return res
    y, ov = res
    dtype = torch.result_type(a, b)
    return (y if y.dtype == dtype or acc.is_int else y.to(dtype)), ov
