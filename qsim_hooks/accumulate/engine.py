"""The accumulation engine: a GEMM whose sums are rounded as an :class:`~.spec.Accumulator` says.

Vectorised over the output: every step is one element-wise operation over all outputs of a column tile,
and the only Python loop runs along the reduction axis (sequential order), over tree levels (pairwise) or
over chunks. Column tiles bound the memory a pairwise tree or an aligned group needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..formats import FloatFormat
from .spec import Accumulator, IntAccumulation

__all__ = ["accumulate_matmul", "matmul_with_overflow", "rounder"]

Round = Callable[[Tensor], Tensor]
#: most elements a column tile's temporary products may hold (pairwise tree, aligned group)
TILE_ELEMENTS = 1 << 23


def rounder(fmt: FloatFormat | None) -> Round | None:
    """``fmt``'s cast on float32 tensors; ``None`` when rounding to it changes nothing (IEEE fp32)."""
    if fmt is None or (fmt.exp_bits == 8 and fmt.man_bits == 23 and fmt.subnormals and fmt.bias == 127
                       and fmt.overflow == "special" and fmt.rounding.mode_id == FloatFormat(8, 23).rounding.mode_id):
        return None
    native = fmt._native_dtype()
    if native is not None:  # fp16 / bf16: torch's own cast, as FloatFormat.cast does on small tensors (never
        # its fused kernel, whose compiled graph a loop of ever-new shapes would keep recompiling)
        mx = fmt.max
        if fmt.saturates:
            return lambda x: x.clamp(-mx, mx).to(native).to(torch.float32)
        return lambda x: x.to(native).to(torch.float32)
    return fmt.cast


def _apply(r: Round | None, x: Tensor) -> Tensor:
    return x if r is None else r(x)


def _products(a: Tensor, b: Tensor, k0: int, k1: int, prod: Round | None) -> Tensor:
    """(B, M, k1-k0, N): every product of the chunk, in fp32 (rounded to the product format)."""
    return _apply(prod, a[:, :, k0:k1, None] * b[:, None, k0:k1, :])


def _sequential(a: Tensor, b: Tensor, k0: int, k1: int, r: Round | None, prod: Round | None) -> Tensor:
    s = a.new_zeros(a.shape[0], a.shape[1], b.shape[2])
    p = torch.empty_like(s)
    for k in range(k0, k1):
        torch.mul(a[:, :, k:k + 1], b[:, k:k + 1, :], out=p)
        s = _apply(r, s.add_(_apply(prod, p)))
    return s


def _pairwise(a: Tensor, b: Tensor, k0: int, k1: int, r: Round | None, prod: Round | None) -> Tensor:
    p = _products(a, b, k0, k1, prod)
    while p.shape[2] > 1:
        n, h = p.shape[2], p.shape[2] // 2
        pairs = _apply(r, p[:, :, 0:2 * h:2] + p[:, :, 1:2 * h:2])
        p = torch.cat([pairs, p[:, :, 2 * h:]], dim=2) if n % 2 else pairs
    return _apply(r, p[:, :, 0])


def _chunked(a: Tensor, b: Tensor, k0: int, k1: int, r: Round | None, prod: Round | None) -> Tensor:
    s = torch.matmul(a[:, :, k0:k1], b[:, k0:k1, :]) if prod is None else _products(a, b, k0, k1, prod).sum(2)
    return _apply(r, s)


def _aligned(a: Tensor, b: Tensor, k0: int, k1: int, bits: int, group: int, prod: Round | None) -> Tensor:
    """The running sum and each next ``group`` products aligned to their largest exponent, truncated toward
    zero to ``bits`` significant bits, added exactly (float64 holds every such sum exactly)."""
    s = a.new_zeros(a.shape[0], a.shape[1], b.shape[2], dtype=torch.float64)
    for g0 in range(k0, k1, group):
        t = torch.cat([s[:, :, None, :], _products(a, b, g0, min(g0 + group, k1), prod).double()], dim=2)
        e = torch.frexp(t.abs().amax(dim=2, keepdim=True)).exponent  # max = m * 2**e, m in [0.5, 1)
        ulp = torch.ldexp(torch.ones_like(t[:, :, :1]), (e - bits).double())
        s = (torch.trunc(t / ulp) * ulp).sum(dim=2)
    return s.float()


def _int_sum(a: Tensor, b: Tensor, fmt: IntAccumulation) -> tuple[Tensor, Tensor]:
    """Integer codes summed in int64, wrapped or clamped to ``fmt`` after every addition; the overflow mask."""
    ai, bi = a.to(torch.int64), b.to(torch.int64)
    s = torch.zeros(a.shape[0], a.shape[1], b.shape[2], dtype=torch.int64, device=a.device)
    over = torch.zeros(s.shape, dtype=torch.bool, device=a.device)
    span = 1 << fmt.bits
    for k in range(a.shape[2]):
        s += ai[:, :, k:k + 1] * bi[:, k:k + 1, :]
        out = (s < fmt.lo) | (s > fmt.hi)
        over |= out
        if fmt.overflow == "wrap":
            s = torch.where(out, torch.remainder(s - fmt.lo, span) + fmt.lo, s)
        else:
            s = s.clamp_(fmt.lo, fmt.hi)
    return s, over


def _float_sum(a: Tensor, b: Tensor, acc: Accumulator) -> Tensor:
    fmt = acc.format
    assert isinstance(fmt, FloatFormat)
    r, prod = rounder(fmt), rounder(acc.product)
    rp = r if acc.promote is None else rounder(acc.promote)
    K = a.shape[2]
    step = K if acc.chunk is None else acc.chunk
    total: Tensor | None = None
    for k0 in range(0, max(K, 1), step):
        k1 = min(k0 + step, K)
        if acc.align_bits is not None:
            s = _aligned(a, b, k0, k1, acc.align_bits, acc.group, prod)
        else:
            s = {"sequential": _sequential, "pairwise": _pairwise, "chunked": _chunked}[acc.order](
                a, b, k0, k1, r, prod)
        total = s if acc.chunk is None else (_apply(rp, s) if total is None else _apply(rp, total + s))
    assert total is not None
    return total


def _tile(a: Tensor, b: Tensor, acc: Accumulator) -> int:
    """Columns per tile, so that a tile's temporary products stay under :data:`TILE_ELEMENTS`."""
    depth = a.shape[2] if acc.chunk is None else min(acc.chunk, a.shape[2])
    if acc.align_bits is not None:
        depth = acc.group + 1
    elif acc.order == "sequential" or (acc.order == "chunked" and acc.product is None):
        return b.shape[2]
    per_col = max(1, a.shape[0] * a.shape[1] * max(depth, 1))
    return max(1, min(b.shape[2], TILE_ELEMENTS // per_col))


def matmul_with_overflow(a: Tensor, b: Tensor, acc: Accumulator,
                         bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`accumulate_matmul` and a boolean mask of the outputs that overflowed (integer accumulators: any
    partial sum left the range; float ones: the result is infinite or at the format's largest value)."""
    if not isinstance(acc, Accumulator):
        raise TypeError(f"acc must be a qsim_hooks.Accumulator, got {type(acc).__name__}")
    if a.dim() < 2 or b.dim() < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"accumulate_matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not multiply "
                         "(need (..., M, K) and (..., K, N))")
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    M, K, N = a.shape[-2], a.shape[-1], b.shape[-1]
    a3 = a.float().expand(*batch, M, K).reshape(-1, M, K)
    b3 = b.float().expand(*batch, K, N).reshape(-1, K, N)
    if acc.is_int:
        fmt = acc.format
        assert isinstance(fmt, IntAccumulation)
        for name, t in (("a", a3), ("b", b3)):
            if not torch.equal(t, torch.round(t)):
                raise ValueError(f"accumulate_matmul: an integer accumulator ({fmt.name}) sums integer codes, "
                                 f"but operand {name} holds non-integer values")
        out, over = _int_sum(a3, b3, fmt)
        if bias is not None:
            out = out + bias.to(torch.int64)
        return out.reshape(*batch, M, N), over.reshape(*batch, M, N)
    tn = _tile(a3, b3, acc)
    out = torch.cat([_float_sum(a3, b3[:, :, n0:n0 + tn], acc) for n0 in range(0, N, tn)], dim=2) if N else \
        a3.new_zeros(a3.shape[0], M, 0)
    last = acc.promote if acc.promote is not None else acc.format
    if bias is not None:
        out = _apply(rounder(last), out + bias.float())
    fmt = acc.format
    assert isinstance(fmt, FloatFormat)
    over = ~torch.isfinite(out) | (out.abs() >= min(fmt.max, last.max))
    return out.reshape(*batch, M, N), over.reshape(*batch, M, N)


def accumulate_matmul(a: Tensor, b: Tensor, acc: Accumulator, bias: Tensor | None = None) -> Tensor:
    """``a @ b (+ bias)`` with the sums formed as ``acc`` says (float32 out; int64 codes for an integer
    accumulator, whose operands must hold integer values). ``a``: (..., M, K), ``b``: (..., K, N), batch
    dimensions broadcast; ``bias`` broadcasts against the (..., M, N) result."""
    return matmul_with_overflow(a, b, acc, bias)[0]
