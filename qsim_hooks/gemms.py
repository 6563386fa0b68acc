"""The GEMM-like torch functions, read as two operands, their axes, and a way to call again.

:func:`read` turns one call the interception sees (``func, args, kwargs``) into a
:class:`Gemm`: its two matrix operands, for each the axis a dot product runs over
(``k``) and the axis that indexes output columns/rows (``n``, ``None`` for a vector
or when no single axis does), and :meth:`Gemm.call`, which runs the same call with
operands replaced. Everything here is about the semantics of the operation, never
about which model made the call: ``F.linear(x, W)`` says ``W`` is (out, in),
``x @ W`` says ``W`` is (in, out), ``torch._grouped_mm(x, W)`` says ``W`` is
(groups, in, out), an einsum says it in its equation.

``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward`` are not
read here (they are two and four GEMMs inside one call): :data:`ATTENTION_CALLS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Gemm", "read", "GEMM_FUNCS", "ATTENTION_CALLS", "reduction_axis"]

Where = int | str  # a positional index or a keyword name


@dataclass(frozen=True)
class Gemm:
    """One GEMM-like call: operands ``a`` and ``b`` and where they sit in the call."""

    op: str
    func: Callable[..., Any]
    args: tuple
    kwargs: dict
    where: tuple[Where, Where]
    a: Tensor
    b: Tensor
    k: tuple[int, int]  # reduction axis of a, of b (non-negative)
    n: tuple[int | None, int | None]  # the axis of a / b that indexes the result's rows / columns

    def call(self, a: Tensor, b: Tensor) -> Any:
        args, kwargs = list(self.args), dict(self.kwargs)
        for w, t in zip(self.where, (a, b)):
            if isinstance(w, int):
                args[w] = t
            else:
                kwargs[w] = t
        return self.func(*args, **kwargs)


def _get(args: tuple, kwargs: dict, pos: int, name: str) -> tuple[Any, Where]:
    if len(args) > pos:
        return args[pos], pos
    return kwargs.get(name), name


def _ax(t: Tensor, axis: int) -> int:
    return axis % t.dim()


def _mat_axes(a: Tensor, b: Tensor) -> tuple[tuple[int, int], tuple[int | None, int | None]]:
    """matmul semantics: a (..., N, K) @ b (..., K, M); a 1-D operand is a vector."""
    ka = a.dim() - 1
    na = a.dim() - 2 if a.dim() >= 2 else None
    kb = b.dim() - 2 if b.dim() >= 2 else 0
    nb = b.dim() - 1 if b.dim() >= 2 else None
    return (ka, kb), (na, nb)


def _matmul(func, args, kwargs, op, ia=0, ib=1, names=("input", "other")) -> Gemm | None:
    a, wa = _get(args, kwargs, ia, names[0])
    b, wb = _get(args, kwargs, ib, names[1])
    if not (_float(a) and _float(b)) or a.dim() == 0 or b.dim() == 0:
        return None
    k, n = _mat_axes(a, b)
    return Gemm(op, func, args, kwargs, (wa, wb), a, b, k, n)


def _rmatmul(func, args, kwargs) -> Gemm | None:
    # Tensor.__rmatmul__(self, other) computes other @ self
    g = _matmul(func, args, kwargs, "matmul", 1, 0)
    return g


def _linear(func, args, kwargs) -> Gemm | None:
    a, wa = _get(args, kwargs, 0, "input")
    b, wb = _get(args, kwargs, 1, "weight")
    if not (_float(a) and _float(b)) or b.dim() not in (1, 2) or a.dim() == 0:
        return None
    return Gemm("linear", func, args, kwargs, (wa, wb), a, b, (a.dim() - 1, b.dim() - 1), (None, 0 if b.dim() == 2
                                                                                            else None))


def _conv(transposed: bool):
    def read_conv(func, args, kwargs) -> Gemm | None:
        a, wa = _get(args, kwargs, 0, "input")
        b, wb = _get(args, kwargs, 1, "weight")
        if not (_float(a) and _float(b)) or b.dim() < 3:
            return None
        # weight (out, in/groups, *kernel); transposed: (in, out/groups, *kernel). input channels at 1 (or 0 unbatched)
        ka = 1 if a.dim() == b.dim() else 0
        kb, nb = (0, 1) if transposed else (1, 0)
        return Gemm("conv_transpose" if transposed else "conv", func, args, kwargs, (wa, wb), a, b, (ka, kb),
                    (None, nb))
    return read_conv


def _addmm(op: str):
    def read_addmm(func, args, kwargs) -> Gemm | None:
        names = ("mat1", "mat2") if op in ("addmm",) else ("batch1", "batch2") if op != "addmv" else ("mat", "vec")
        return _matmul(func, args, kwargs, op, 1, 2, names)
    return read_addmm


def _grouped(func, args, kwargs) -> Gemm | None:
    a, wa = _get(args, kwargs, 0, "mat_a")
    b, wb = _get(args, kwargs, 1, "mat_b")
    if not (_float(a) and _float(b)) or a.dim() < 2 or b.dim() < 2:
        return None
    # a (S, K) or (G, M, K); b (G, K, N), or (K, N) with K split into groups (a weight-gradient product)
    return Gemm("grouped_mm", func, args, kwargs, (wa, wb), a, b, (a.dim() - 1, b.dim() - 2), (a.dim() - 2,
                                                                                              b.dim() - 1))


_EINSUM_EQ = re.compile(r"^([A-Za-z]+),([A-Za-z]+)->([A-Za-z]*)$")


def _einsum(func, args, kwargs) -> Gemm | None:
    if not args or not isinstance(args[0], str):
        return None
    if len(args) == 2 and isinstance(args[1], (list, tuple)):
        ops, packed = list(args[1]), True
    else:
        ops, packed = list(args[1:]), False
    if len(ops) != 2 or not (_float(ops[0]) and _float(ops[1])):
        return None
    m = _EINSUM_EQ.match(args[0].replace(" ", ""))
    if m is None or len(m.group(1)) != ops[0].dim() or len(m.group(2)) != ops[1].dim():
        return None  # ellipsis or implicit output: counted by the caller as an unread einsum
    sa, sb, so = m.groups()
    red = (set(sa) & set(sb)) - set(so)
    if not red:
        return None  # an outer product: no reduction, not a GEMM
    last_red = [c for c in sa if c in red][-1]
    ka, kb = sa.index(last_red), sb.index(last_red)
    only_a = [i for i, c in enumerate(sa) if c in so and c not in sb]
    only_b = [i for i, c in enumerate(sb) if c in so and c not in sa]
    n = (only_a[-1] if only_a else None, only_b[-1] if only_b else None)
    if packed:
        return _EinsumPacked(f"einsum:{args[0].replace(' ', '')}", func, args, kwargs, (0, 1), ops[0], ops[1],
                             (ka, kb), n)
    return Gemm(f"einsum:{args[0].replace(' ', '')}", func, args, kwargs, (1, 2), ops[0], ops[1], (ka, kb), n)


class _EinsumPacked(Gemm):
    def call(self, a: Tensor, b: Tensor) -> Any:
        return self.func(self.args[0], [a, b], **self.kwargs)


def _float(t: Any) -> bool:
    return isinstance(t, Tensor) and t.is_floating_point()


def reduction_axis(g: Gemm, which: int) -> int:
    """The reduction axis of operand ``which`` (0: a, 1: b), non-negative."""
    return g.k[which]


_READERS: dict[Callable[..., Any], Callable[..., Gemm | None]] = {
    F.linear: _linear,
    torch.matmul: lambda f, a, k: _matmul(f, a, k, "matmul"),
    Tensor.matmul: lambda f, a, k: _matmul(f, a, k, "matmul"),
    Tensor.__matmul__: lambda f, a, k: _matmul(f, a, k, "matmul"),
    Tensor.__rmatmul__: _rmatmul,
    torch.mm: lambda f, a, k: _matmul(f, a, k, "mm", names=("input", "mat2")),
    Tensor.mm: lambda f, a, k: _matmul(f, a, k, "mm", names=("input", "mat2")),
    torch.bmm: lambda f, a, k: _matmul(f, a, k, "bmm", names=("input", "mat2")),
    Tensor.bmm: lambda f, a, k: _matmul(f, a, k, "bmm", names=("input", "mat2")),
    torch.mv: lambda f, a, k: _matmul(f, a, k, "mv", names=("input", "vec")),
    Tensor.mv: lambda f, a, k: _matmul(f, a, k, "mv", names=("input", "vec")),
    torch.addmm: _addmm("addmm"), Tensor.addmm: _addmm("addmm"),
    torch.baddbmm: _addmm("baddbmm"), Tensor.baddbmm: _addmm("baddbmm"),
    torch.addbmm: _addmm("addbmm"), Tensor.addbmm: _addmm("addbmm"),
    torch.addmv: _addmm("addmv"), Tensor.addmv: _addmm("addmv"),
    torch.einsum: _einsum,
    F.conv1d: _conv(False), F.conv2d: _conv(False), F.conv3d: _conv(False),
    F.conv_transpose1d: _conv(True), F.conv_transpose2d: _conv(True), F.conv_transpose3d: _conv(True),
}
for _f in (getattr(torch, "_grouped_mm", None), getattr(F, "grouped_mm", None)):
    if _f is not None:
        _READERS[_f] = _grouped

#: every torch function read as a GEMM
GEMM_FUNCS = frozenset(_READERS)
#: attention in one call: the function -> its label (SDPA is Q·Kᵀ and P·V; MHA adds its two projections)
ATTENTION_CALLS: dict[Callable[..., Any], str] = {F.scaled_dot_product_attention: "scaled_dot_product_attention",
                                                 F.multi_head_attention_forward: "multi_head_attention_forward"}


def read(func: Callable[..., Any], args: tuple, kwargs: dict | None) -> Gemm | None:
    """The call as a :class:`Gemm`, or ``None`` when it is not a GEMM on two floating operands."""
    reader = _READERS.get(func)
    if reader is None:
        return None
    g = reader(func, args, kwargs or {})
    if g is None:
        return None
    return g
