"""The accumulation engine: a GEMM whose sums are rounded as an :class:`~.spec.Accumulator` says.

Vectorised over the output *and over chunks*: the chunks of one GEMM are independent until they are
promoted, so they run side by side as a batch dimension. The only Python loops run along one chunk
(sequential order: ``min(chunk, K)`` steps, each a few element-wise kernels over every output of every
chunk), over tree levels (pairwise), over groups (aligned sums) and over the chunks' promotion (one add
each). The chunk-exact order is one batched matmul, one rounding and the promotion adds. A sequential step
is a product kernel into a buffer, an in-place add and, for fp16 / bf16, two in-place copies through that
dtype; tiles of :data:`SEQUENTIAL_TILE` outputs keep those buffers in cache. Never ``addcmul``: on CPU it
fuses the product into the add (one rounding, an FMA), which the spec does not allow. Column tiles bound
the other temporaries (:data:`TILE_ELEMENTS`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..formats import FloatFormat
from .spec import Accumulator, IntAccumulation

__all__ = ["accumulate_matmul", "matmul_with_overflow", "simulated_matmul", "rounder", "apply_round", "TILE_ELEMENTS",
           "SEQUENTIAL_TILE"]

Round = Callable[[Tensor], Tensor]
#: most elements a column tile's temporaries (products, partial sums of every chunk) may hold
TILE_ELEMENTS = 1 << 21
#: most outputs (of every chunk) one sequential tile sums: its buffers stay in a core's L2 cache
SEQUENTIAL_TILE = 1 << 16
_NATIVE_ADD = (torch.float16, torch.bfloat16)  # dtypes whose fp32 -> dtype copy rounds nearest-even


def _is_fp32(fmt: FloatFormat) -> bool:
    return (fmt.exp_bits == 8 and fmt.man_bits == 23 and fmt.subnormals and fmt.bias == 127
            and fmt.overflow == "special" and fmt.rounding.mode_id == FloatFormat(8, 23).rounding.mode_id)


def _wide_bits(fmt: FloatFormat) -> int:
    """Low mantissa bits of fp32 that ``fmt`` drops when it is fp32 with fewer mantissa bits (8 exponent bits,
    bias 127, IEEE specials, subnormals, nearest-even: fp22 = ``FloatFormat(8, 13)``, tf32); 0 otherwise."""
    if (fmt.exp_bits == 8 and fmt.bias == 127 and fmt.subnormals and fmt.specials == "ieee" and fmt.scaling is None
            and fmt.rounding.mode_id == FloatFormat(8, 23).rounding.mode_id and fmt.man_bits < 23):
        return 23 - fmt.man_bits
    return 0


def _bit_round_(x: Tensor, shift: int, tmp: Tensor) -> Tensor:
    """Nearest-even rounding of float32 ``x`` in place to ``23 - shift`` mantissa bits on its int32 bits:
    add half an ulp less one plus the kept last bit, clear the dropped bits (fp32's subnormals share the
    narrower grid's bit positions; a carry into the exponent is the next binade, or infinity past the
    largest value). ``tmp``: an int32 buffer of ``x``'s shape. NaN and saturation are the caller's."""
    xi = x.view(torch.int32)
    torch.bitwise_right_shift(xi, shift, out=tmp)
    tmp.bitwise_and_(1).add_((1 << (shift - 1)) - 1)
    xi.add_(tmp).bitwise_and_(-(1 << shift))
    return x


def _bit_rounder(fmt: FloatFormat, shift: int) -> Round:
    mx = fmt.max

    def r(x: Tensor) -> Tensor:
        y = _bit_round_(x.clone(), shift, torch.empty(x.shape, dtype=torch.int32, device=x.device))
        y = torch.where(torch.isnan(x), x, y)
        return y.clamp_(-mx, mx) if fmt.saturates else y
    return r


def rounder(fmt: FloatFormat | None) -> Round | None:
    """``fmt``'s cast on float32 tensors; ``None`` when rounding to it changes nothing (IEEE fp32)."""
    if fmt is None or _is_fp32(fmt):
        return None
    if shift := _wide_bits(fmt):  # fp22, tf32: integer ops on fp32's bits (what fmt.cast gives, bit for bit)
        return _bit_rounder(fmt, shift)
    native = fmt._native_dtype()
    if native is not None:  # fp16 / bf16: torch's own cast, as FloatFormat.cast does on small tensors (never
        # its fused kernel, whose compiled graph a loop of ever-new shapes would keep recompiling)
        mx = fmt.max
        if fmt.saturates:
            return lambda x: x.clamp(-mx, mx).to(native).to(torch.float32)
        return lambda x: x.to(native).to(torch.float32)
    return fmt.cast


def _native(fmt: FloatFormat) -> torch.dtype | None:
    """The torch dtype (fp16 / bf16) whose fp32 -> dtype copy rounds like ``fmt`` (saturation: see callers)."""
    d = fmt._native_dtype()
    return d if d in _NATIVE_ADD else None


def apply_round(r: Round | None, x: Tensor) -> Tensor:
    return x if r is None else r(x)


# -- one batch of chunks: a (B, C, M, S), b (B, C, S, N) -> partial sums (B, C, M, N), float32 ----------------
def _products(a: Tensor, b: Tensor, k0: int, k1: int, prod: Round | None) -> Tensor:
    """(B, C, M, k1-k0, N): every product of steps k0..k1 of every chunk, in fp32 (rounded to ``product``)."""
    return apply_round(prod, a[..., k0:k1, None] * b[..., None, k0:k1, :])


def _sequential(a: Tensor, b: Tensor, fmt: FloatFormat, r: Round | None, prod: Round | None) -> Tensor:
    s = a.new_zeros(a.shape[0], a.shape[1], a.shape[2], b.shape[3])
    p = torch.empty_like(s)
    native = _native(fmt) if prod is None else None
    low = torch.empty_like(s, dtype=native) if native is not None else None
    shift = _wide_bits(fmt) if prod is None and native is None else 0
    tmp = torch.empty_like(s, dtype=torch.int32) if shift else None
    at, bc = a.transpose(2, 3).contiguous(), b.contiguous()  # a step's column and row: contiguous reads
    for k in range(a.shape[3]):
        torch.mul(at[:, :, k, :, None], bc[:, :, k:k + 1, :], out=p)  # this step's products of every chunk, fp32
        if low is not None:  # s + p in fp32, then the round trip through fp16 / bf16 in place (no allocation)
            s.copy_(low.copy_(s.add_(p)))
        elif tmp is not None:  # fp22 / tf32: s + p in fp32, rounded in place on its bits
            _bit_round_(s.add_(p), shift, tmp)
        else:
            s = apply_round(r, s.add_(apply_round(prod, p)))
    if (low is not None or tmp is not None) and not bool(torch.isfinite(s).all()):
        return _sequential(a, b, fmt, r, lambda x: x)  # an overflow or a NaN: the full rounding at every step
    return s


def _tree_products(a: Tensor, b: Tensor) -> Tensor:
    """(S, B, C, M, N) products from operands made contiguous with S leading (a broadcast product of
    transposed views iterates slowly)."""
    return a.movedim(3, 0).contiguous()[..., None] * b.movedim(2, 0).contiguous()[:, :, :, None, :]


def _pairwise(a: Tensor, b: Tensor, fmt: FloatFormat, r: Round | None, prod: Round | None) -> Tensor:
    # (S, B, C, M, N): the tree runs over the leading axis; level by level, adjacent pairs (strided reads of
    # whole (B, C, M, N) blocks) are added into a second buffer, half as long, so nothing is allocated per level
    p = apply_round(prod, _tree_products(a, b))
    native = _native(fmt)
    shift = _wide_bits(fmt) if native is None else 0
    if p.shape[0] == 1:
        return apply_round(r, p[0])
    shape = p.shape[1:]
    p = p.reshape(p.shape[0], -1)  # (S, outputs): a level's strided halves iterate as two dense dims
    cur, nxt = p, torch.empty_like(p[:(p.shape[0] + 1) // 2])
    low = torch.empty_like(nxt, dtype=native) if native is not None else None
    tmp = torch.empty_like(nxt, dtype=torch.int32) if shift else None
    while cur.shape[0] > 1:
        n, h = cur.shape[0], cur.shape[0] // 2
        if low is not None:  # fp32 sum, then the round trip through fp16 / bf16 (vectorised copies)
            torch.add(cur[0:2 * h:2], cur[1:2 * h:2], out=nxt[:h])
            nxt[:h].copy_(low[:h].copy_(nxt[:h]))
        elif tmp is not None:
            _bit_round_(torch.add(cur[0:2 * h:2], cur[1:2 * h:2], out=nxt[:h]), shift, tmp[:h])
        else:
            nxt[:h] = apply_round(r, cur[0:2 * h:2] + cur[1:2 * h:2])
        if n % 2:  # the odd last element, carried up unchanged
            nxt[h].copy_(cur[n - 1])
        m = h + n % 2
        cur, nxt = nxt[:m], cur[:(m + 1) // 2]
    out = apply_round(r, cur[0]).reshape(shape)
    if (low is not None or tmp is not None) and not bool(torch.isfinite(out).all()):
        return _pairwise_checked(a, b, r, prod)  # an overflow or a NaN: the full rounding at every level
    return out


def _pairwise_checked(a: Tensor, b: Tensor, r: Round | None, prod: Round | None) -> Tensor:
    """The pairwise tree with the format's full rounding (saturation, NaN) at every level."""
    p = apply_round(prod, a.movedim(3, 0)[..., None] * b.movedim(2, 0)[:, :, :, None, :])
    while p.shape[0] > 1:
        n, h = p.shape[0], p.shape[0] // 2
        pairs = apply_round(r, p[0:2 * h:2] + p[1:2 * h:2])
        p = torch.cat([pairs, p[2 * h:]]) if n % 2 else pairs
    return apply_round(r, p[0])


def _chunked(a: Tensor, b: Tensor, fmt: FloatFormat, r: Round | None, prod: Round | None) -> Tensor:
    s = torch.matmul(a, b) if prod is None else _products(a, b, 0, a.shape[3], prod).sum(3)
    return apply_round(r, s)


def _aligned(a: Tensor, b: Tensor, bits: int, group: int, prod: Round | None) -> Tensor:
    """The running sum and each next ``group`` products aligned to their largest exponent, truncated toward
    zero to ``bits`` significant bits, added exactly. Every truncated term is an integer times the group's
    ulp, below ``2**bits`` of them, so a group's sum (``group + 1`` terms) is exact in float32 when
    ``bits + log2(group + 1) <= 24`` and every exponent is far from float32's limits; otherwise (or when a
    group's exponent is not) the same arithmetic runs in float64, which holds every such sum exactly."""
    if bits + (group + 1).bit_length() <= 24:
        out = _aligned_in(a, b, bits, group, prod, torch.float32)
        if out is not None:
            return out
    out = _aligned_in(a, b, bits, group, prod, torch.float64)
    assert out is not None
    return out


def _aligned_in(a: Tensor, b: Tensor, bits: int, group: int, prod: Round | None,
                dtype: torch.dtype) -> Tensor | None:
    s = a.new_zeros(a.shape[0], a.shape[1], a.shape[2], b.shape[3], dtype=dtype)
    narrow = dtype == torch.float32
    far = torch.zeros(s.shape, dtype=torch.bool, device=s.device) if narrow else None
    # (S, B, C, M, 1), (S, B, C, 1, N), contiguous: a broadcast product of transposed views iterates slowly
    at, bt = a.movedim(3, 0).contiguous()[..., None], b.movedim(2, 0).contiguous()[:, :, :, None, :]
    for g0 in range(0, a.shape[3], group):
        p = apply_round(prod, at[g0:g0 + group] * bt[g0:g0 + group])  # (G, B, C, M, N), fp32 products
        p = p if narrow else p.double()
        top = torch.maximum(torch.maximum(p.amax(dim=0), p.amin(dim=0).neg_()), s.abs())  # no |p| temporary
        e = torch.frexp(top).exponent  # top = m * 2**e, m in [0.5, 1)
        if far is not None:  # 1 / ulp and every sum / ulp must stay normal float32 numbers
            far |= (e > 100) | ((e < bits - 120) & (top > 0))
            up = ((bits - e + 127) << 23).view(torch.float32)  # 2**(bits - e), built exactly
            # every term times 1/ulp is below 2**bits: the int32 cast truncates it toward zero, exactly
            total = p.mul_(up).to(torch.int32).sum(dim=0, dtype=torch.int32) + (s * up).to(torch.int32)
            s = total.float() / up
        else:
            up = torch.ldexp(torch.ones_like(s), (bits - e).double())
            s = (p.mul_(up).trunc_().sum(dim=0) + torch.trunc(s * up)) / up
    if far is not None and bool(far.any()):
        return None
    return s.float()


_ORDERS = {"sequential": _sequential, "pairwise": _pairwise, "chunked": _chunked}


def _chunks(a: Tensor, b: Tensor, k0: int, k1: int, step: int) -> tuple[Tensor, Tensor]:
    """Columns k0..k1 (a whole number of chunks of ``step``) as (B, C, M, step) and (B, C, step, N)."""
    B, M, _ = a.shape
    N, C = b.shape[2], (k1 - k0) // step
    return (a[:, :, k0:k1].reshape(B, M, C, step).transpose(1, 2),
            b[:, k0:k1].reshape(B, C, step, N))


def _float_sum(a: Tensor, b: Tensor, acc: Accumulator) -> Tensor:
    fmt = acc.format
    assert isinstance(fmt, FloatFormat)
    r, prod = rounder(fmt), rounder(acc.product)
    K = a.shape[2]
    step = max(K, 1) if acc.chunk is None else min(acc.chunk, max(K, 1))
    whole = (K // step) * step
    parts = []  # (B, C, M, N) partial sums, chunks in index order
    for k0, k1, st in ((0, whole, step), (whole, K, K - whole)):
        if k1 <= k0:
            continue
        ac, bc = _chunks(a, b, k0, k1, st)
        if acc.align_bits is not None:
            parts.append(_aligned(ac, bc, acc.align_bits, acc.group, prod))
        else:
            parts.append(_ORDERS[acc.order](ac, bc, fmt, r, prod))
    if not parts:
        return a.new_zeros(a.shape[0], a.shape[1], b.shape[2])
    if acc.chunk is None:
        return parts[0][:, 0]
    rp = r if acc.promote is None else rounder(acc.promote)
    total: Tensor | None = None
    for part in parts:
        for c in range(part.shape[1]):
            total = apply_round(rp, part[:, c].clone()) if total is None else apply_round(rp, total.add_(part[:, c]))
    assert total is not None
    return total


def _tile(a: Tensor, b: Tensor, acc: Accumulator) -> int:
    """Columns per tile, so that a tile's temporaries stay under :data:`TILE_ELEMENTS` (every chunk's: the
    chunks run side by side)."""
    chunks = 1 if acc.chunk is None else -(-a.shape[2] // acc.chunk)
    if acc.order == "sequential" and acc.align_bits is None:
        return max(1, min(b.shape[2], SEQUENTIAL_TILE // max(1, a.shape[0] * a.shape[1] * chunks)))
    if acc.align_bits is not None:  # one group's products of every chunk, in float64 (two fp32 elements each)
        depth = 2 * (min(acc.group, a.shape[2]) + 1) * chunks
    elif acc.order == "pairwise" or acc.product is not None:
        depth = a.shape[2]  # every product of every chunk
    else:
        depth = chunks
    per_col = max(1, a.shape[0] * a.shape[1] * max(depth, 1))
    return max(1, min(b.shape[2], TILE_ELEMENTS // per_col))


def _int_sum(a: Tensor, b: Tensor, fmt: IntAccumulation, want_over: bool) -> tuple[Tensor, Tensor | None]:
    """Integer codes summed in int64, wrapped or clamped to ``fmt`` after every addition; the overflow mask.

    An output overflowed iff one of its exact partial sums left the range (until the first such step the
    wrapped or clamped sum is the exact one). So: when ``K * max|a| * max|b|`` is within the range no partial
    sum can leave it, and the sum is one float64 matmul of the codes (every partial sum an integer below 2**53:
    exact in any order); wrapping is modular, so it is the exact sum wrapped once, and its mask is whether the
    exact partial sums' running maximum or minimum left the range (a loop of in-place adds); saturation
    clamps at every step."""
    span = 1 << fmt.bits
    K = a.shape[2]
    top = float(a.abs().amax()) * float(b.abs().amax()) * K if a.numel() and b.numel() else 0.0
    if top <= fmt.hi:
        s = torch.matmul(a.double(), b.double()).round_().to(torch.int64)
        return s, torch.zeros(s.shape, dtype=torch.bool, device=a.device) if want_over else None
    if fmt.overflow == "wrap" and not want_over:
        s = torch.matmul(a.to(torch.int64), b.to(torch.int64))
        return torch.remainder(s - fmt.lo, span) + fmt.lo, None
    tn = max(1, SEQUENTIAL_TILE // max(1, a.shape[0] * a.shape[1]))  # the loop's buffers stay in cache
    if b.shape[2] > tn:
        parts = [_int_loop(a, b[:, :, n0:n0 + tn], fmt, top) for n0 in range(0, b.shape[2], tn)]
        return torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2)
    return _int_loop(a, b, fmt, top)


def _int_loop(a: Tensor, b: Tensor, fmt: IntAccumulation, top: float) -> tuple[Tensor, Tensor]:
    """:func:`_int_sum`'s loop over K, in int32 when no value it holds can leave int32: the exact partial sums
    (``top``) when wrapping, a clamped sum plus one product when saturating."""
    span, K = 1 << fmt.bits, a.shape[2]
    bound = top if fmt.overflow == "wrap" else fmt.hi + top / max(K, 1)
    dt = torch.int32 if bound < 2**31 - 1 else torch.int64
    ai, bi = a.to(dt), b.to(dt)
    s = torch.zeros(a.shape[0], a.shape[1], b.shape[2], dtype=dt, device=a.device)
    p = torch.empty_like(s)
    at = ai.transpose(1, 2).contiguous()
    if fmt.overflow == "wrap":  # exact partial sums; their extremes say whether one left the range
        hi, lo = s.clone(), s.clone()
        for k in range(K):
            s.add_(torch.mul(at[:, k, :, None], bi[:, k:k + 1, :], out=p))
            torch.maximum(hi, s, out=hi)
            torch.minimum(lo, s, out=lo)
        s = s.to(torch.int64)
        return torch.remainder(s - fmt.lo, span) + fmt.lo, (hi > fmt.hi) | (lo < fmt.lo)
    over = torch.zeros(s.shape, dtype=torch.bool, device=a.device)
    for k in range(K):
        s.add_(torch.mul(at[:, k, :, None], bi[:, k:k + 1, :], out=p))
        over |= (s < fmt.lo) | (s > fmt.hi)
        s.clamp_(fmt.lo, fmt.hi)
    return s.to(torch.int64), over


def simulated_matmul(a: Tensor, b: Tensor, acc: Accumulator, bias: Tensor | None,
                     want_over: bool) -> tuple[Tensor, Tensor | None]:
    """:func:`accumulate_matmul` and, when ``want_over``, the overflow mask (else ``None``: no extra pass)."""
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
        out, over = _int_sum(a3, b3, fmt, want_over)
        if bias is not None:
            out = out + bias.to(torch.int64)
        return out.reshape(*batch, M, N), None if over is None else over.reshape(*batch, M, N)
    tn = _tile(a3, b3, acc)
    if N == 0:
        out = a3.new_zeros(a3.shape[0], M, 0)
    elif tn >= N:
        out = _float_sum(a3, b3, acc)
    else:
        out = torch.cat([_float_sum(a3, b3[:, :, n0:n0 + tn], acc) for n0 in range(0, N, tn)], dim=2)
    last = acc.promote if acc.promote is not None else acc.format
    if bias is not None:
        out = apply_round(rounder(last), out + bias.float())
    out = out.reshape(*batch, M, N)
    if not want_over:
        return out, None
    fmt = acc.format
    assert isinstance(fmt, FloatFormat)
    return out, ~torch.isfinite(out) | (out.abs() >= min(fmt.max, last.max))


def matmul_with_overflow(a: Tensor, b: Tensor, acc: Accumulator,
                         bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`accumulate_matmul` and a boolean mask of the outputs that overflowed (integer accumulators: any
    partial sum left the range; float ones: the result is infinite or at the format's largest value)."""
    out, over = simulated_matmul(a, b, acc, bias, True)
    assert over is not None
    return out, over


def accumulate_matmul(a: Tensor, b: Tensor, acc: Accumulator, bias: Tensor | None = None) -> Tensor:
    """``a @ b (+ bias)`` with the sums formed as ``acc`` says (float32 out; int64 codes for an integer
    accumulator, whose operands must hold integer values). ``a``: (..., M, K), ``b``: (..., K, N), batch
    dimensions broadcast; ``bias`` broadcasts against the (..., M, N) result."""
    return simulated_matmul(a, b, acc, bias, False)[0]
