"""Round-to-nearest-even onto an ExMy grid in float arithmetic (Veltkamp's split), for eager torch.

The bit kernel (:func:`._exmy.float_round_impl`) spends some twenty integer passes
over a tensor when it runs eagerly; this one does the same rounding in about a
dozen float passes, most of them in place:

* normal range of the target (``|x| >= 2^emin``): Veltkamp's split. With
  ``c = x * (2^s + 1)``, ``s = 23 - M``, ``c - (c - x)`` is ``x`` rounded to
  ``M + 1`` significant bits, to nearest with ties to even, when every operation
  rounds to nearest even and nothing overflows;
* below it (the target's subnormals, fp32's too): ``(x + K) - K`` with
  ``K = 1.5 * 2^(emin - M + 23)``, whose ulp is the target's subnormal step: the
  addition itself rounds ``x`` onto the step, ties to even;
* the magnitude is clamped first (at the max when saturating, else at the power
  of two above it, which rounds to itself and then overflows), the sign put back
  with ``copysign`` (``-0.0`` kept), NaN inputs given back bit for bit.

Eager only: a compiler may contract ``x * (2^s + 1) - x`` into a fused
multiply-add (Triton does by default, inductor's C++ when asked), which
computes a different value; fused kernels round with the magic kernel
(:func:`._exmy.magic_round_impl`: additions only) or the bit and step kernels. Valid
where :func:`split_consts` says so (tested bit for bit against the bit kernel on
every exponent and every boundary of the named formats).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["SplitConsts", "split_consts", "split_round"]


class SplitConsts(NamedTuple):
    """A grid's constants for :func:`split_round` (Python floats: eager torch ops take them as scalars)."""

    sigma: float  # 2^(23 - M) + 1
    magic: float  # 1.5 * 2^(emin - M + 23)
    min_normal: float  # 2^emin: below it the magic addition rounds
    bound: float  # |x| is clamped here first: max (saturating) or the power of two above max
    max: float
    overflow: float | None  # what |r| > max becomes (inf or NaN); None when saturating
    flush: bool  # results below min_normal become (signed) zero


def split_consts(man_bits: int, emin: int, max_value: float, subnormals: bool, overflow: str) -> SplitConsts | None:
    """The constants of an ExMy grid, or ``None`` where the split is not exact.

    It needs ``1 <= M <= 22`` (the split keeps at least one bit and drops at least
    one; M = 0 and M = 23 take the other kernels), the magic constant's half step
    and the target's smallest normal to be normal fp32 numbers (so fp32 subnormal
    inputs, or a flush-denormals mode, change nothing: they all round to zero), and
    ``bound * (2^s + 1)`` to stay finite.
    """
    if not 1 <= man_bits <= 22 or emin - man_bits - 1 < -126:
        return None
    bound = max_value if overflow == "saturate" else math.ldexp(1.0, math.frexp(max_value)[1])
    s = 23 - man_bits
    if math.frexp(bound)[1] + s + 1 > 127:  # c = bound * (2^s + 1) must not overflow
        return None
    ovf = None if overflow == "saturate" else (math.inf if overflow == "inf" else math.nan)
    return SplitConsts(float(2**s + 1), 1.5 * math.ldexp(1.0, emin - man_bits + 23), math.ldexp(1.0, emin),
                       bound, max_value, ovf, not subnormals)


def split_round(x: Tensor, k: SplitConsts) -> Tensor:
    """``x`` (float32) rounded to nearest even onto the grid of ``k``: the bit kernel's result, bit for bit."""
    a = x.abs()  # the only temporaries: a, c, r (and two bool masks)
    a.clamp_(max=k.bound)
    c = torch.mul(a, k.sigma)
    r = torch.sub(c, a)
    torch.sub(c, r, out=r)  # Veltkamp: r = c - (c - a)
    torch.add(a, k.magic, out=c)
    c.sub_(k.magic)  # rounded on the subnormal step
    torch.where(a < k.min_normal, c, r, out=r)
    if k.overflow is not None:
        r.masked_fill_(r > k.max, k.overflow)
    if k.flush:
        r.masked_fill_(r < k.min_normal, 0.0)
    r.copysign_(x)
    torch.where(torch.isnan(x), x, r, out=r)
    return r
