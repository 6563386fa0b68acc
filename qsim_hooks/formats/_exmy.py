"""The rounding arithmetic every kernel is built from: ExMy grids on the float32 bit pattern, integers.

Plain, stateless torch functions (no backend choice, no caches: :mod:`.kernels`
owns those). An ExMy grid is described by a small int32 *params* tensor
(:func:`exmy_params`; fields ``P_*``), so one compiled kernel serves every
ExMy format. Rounding modes are ids (``NEAREST_EVEN`` ... ``STOCHASTIC``).
Round to nearest even has three kernels, all bit for bit the same: the bit kernel
(every grid, every mode), the step kernel (fewer operations) and the magic kernel
(fewest: two additions; what the fused kernels run where it applies). :func:`to_dtype`
casts a float32 result back to a half-precision input dtype.

Directed rounding of a *scaled* value (toward zero, stochastic) must be decided
on the output grid, not on ``x * (1/scale)``: that product is rounded, and
truncating it can step over a grid value (|y| > |x|) or, for a value already
on the grid, step under it (q(q(x)) != q(x)). :func:`directed` takes a first
guess from the product and corrects it against the decoded values themselves,
so toward-zero is the largest output value <= |x| and stochastic rounding
picks one of the two output values around |x| with the right probability.

Also here, because the fused cast computes it in the same pass: the clipped
straight-through estimator's mask ``|x| <= max``, packed as bits
(:func:`in_range_bits`, :func:`pack_bytes`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["exmy_params", "f32_bits", "float_round_impl", "fast_round_impl", "magic_round_impl", "magic_overflow_impl",
           "has_magic", "grid_up", "grid_down", "directed", "in_range_bits", "pack_bytes", "round_int", "saturate",
           "clamp_f32", "cap", "NEAREST_EVEN", "NEAREST_AWAY", "TOWARD_ZERO", "STOCHASTIC", "F32_MAX", "to_dtype"]

#: Rounding-mode ids (what :class:`~qsim_hooks.formats.base.Rounding` maps to).
NEAREST_EVEN, NEAREST_AWAY, TOWARD_ZERO, STOCHASTIC = 0, 1, 2, 3
F32_MAX = 3.4028234663852886e38  #: the largest finite float32: saturated results never pass it

# params (int32 tensor):
#   0 man_bits M        1 emin (unbiased)     2 max finite (fp32 bits)
#   3 overflow result (fp32 bits: max, inf or NaN)
#   4 smallest normal (fp32 bits; results below are flushed when flush=1)
#   5 smallest subnormal q_min (fp32 bits)   6 q_min / 2 (fp32 bits, 0 if not representable)
#   7 flush subnormals (0/1)
#   8 lowest fp32 exponent field of a quantum step (emin + 127)   9 highest (above max; 0: no step kernel)
#  10 the magic kernel's clamp bound (fp32 bits: max when saturating, else the power of two above it)
#  11 its constant's offset ((23 - M) << 23 | 1.5's mantissa bit; 0: no magic kernel)
#  12 its lowest exponent field, in place ((emin + 127) << 23)
P_M, P_EMIN, P_MAX, P_OVF, P_MINNORM, P_QMIN, P_HALF, P_FLUSH, P_ELO, P_EHI = range(10)
P_BOUND, P_MAGIC, P_EFLOOR = 10, 11, 12
_SIGN = -2147483648  # 0x80000000 as int32
_ABS = 0x7FFFFFFF
_INF = 0x7F800000
_NAN = 0x7FC00000


def f32_bits(v: float) -> int:
    """The float32 bit pattern of ``v`` as a signed int32 value."""
    return struct.unpack("<i", struct.pack("<f", v))[0]


def exmy_params(man_bits: int, emin: int, max_value: float, min_normal: float, min_subnormal: float,
                subnormals: bool, overflow: str) -> tuple[Tensor, bool]:
    """(params of an ExMy grid, whether the step kernel may round onto it).

    ``overflow``: ``"saturate"`` (to ±max), ``"inf"`` or ``"nan"``.
    """
    ovf = {"saturate": f32_bits(max_value), "inf": _INF, "nan": _NAN}[overflow]
    half = f32_bits(min_subnormal / 2) if emin - man_bits - 1 >= -149 else 0
    # the step-based kernel needs every step 2^(e - M) and its reciprocal to be normal
    # fp32 powers of two, and |x / step| < 2^21 (exact additions of 0.5 or noise)
    elo = emin + 127
    ehi = math.frexp(max_value)[1] + 127  # the exponent field just above max: larger values all overflow
    fast = elo - man_bits >= 1 and 254 - (ehi - man_bits) >= 1 and man_bits <= 20 and subnormals
    # the magic kernel (round to nearest even; see magic_round_impl): the steps as for the step kernel,
    # and its constant 1.5 * 2^(e + 23 - M) finite at the clamp bound's exponent e
    bound = max_value if overflow == "saturate" else math.ldexp(1.0, ehi - 127)
    magic = fast and (math.frexp(bound)[1] - 1) + 23 - man_bits <= 127
    extra = [f32_bits(bound), ((23 - man_bits) << 23) | 0x400000, elo << 23] if magic else [0, 0, 0]
    params = torch.tensor([man_bits, emin, f32_bits(max_value), ovf, f32_bits(min_normal), f32_bits(min_subnormal),
                           half, 0 if subnormals else 1, elo, ehi if fast else 0] + extra + [0] * 4,
                          dtype=torch.int32)  # padded to 17: a size no tensor shape is "duck-sized" to
    return params, fast


def has_magic(params: Tensor) -> bool:
    """Whether :func:`magic_round_impl` may round onto the grid ``params`` (read once, from the CPU tensor)."""
    return bool(params[P_MAGIC].item() != 0)


def _shift(a: Tensor, p: Tensor) -> Tensor:
    """Mantissa bits dropped at |x| (bits ``a``): 23 - M, more below the smallest normal."""
    return (23 - p[P_M]) + torch.clamp((p[P_EMIN] + 127) - torch.clamp(a >> 23, min=1), min=0)


def float_round_impl(x: Tensor, p: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    """Round float32 ``x`` onto the grid ``p`` (every mode; exact on the bit pattern)."""
    bits = x.view(torch.int32)
    a = bits & _ABS
    sign = bits & _SIGN
    exp = a >> 23
    shift = _shift(a, p)
    tiny = shift > 23  # |x| below the smallest subnormal of the target
    s = torch.clamp(shift, max=23)
    low = (1 << s) - 1
    if mode == NEAREST_EVEN:
        # the kept LSB; at s == 23 only the implicit bit is kept (1 for normal inputs)
        lsb = torch.where(s == 23, (exp > 0).to(torch.int32), (a >> s) & 1)
        inc = ((low >> 1) + lsb) & low
        t_up = a > p[P_HALF]
    elif mode == NEAREST_AWAY:
        inc = (low + 1) >> 1
        t_up = (a >= p[P_HALF]) & (a > 0)
    elif mode == TOWARD_ZERO:
        inc = torch.zeros_like(a)
        t_up = torch.zeros_like(a, dtype=torch.bool)
    else:  # stochastic: noise is uniform in [0, 2^23)
        assert noise is not None
        inc = noise & low
        qmin = p[P_QMIN].view(torch.float32)
        t_up = (x.abs() / qmin) * 8388608.0 > noise.to(torch.float32)
    r = (a + inc) & ~low
    r = torch.where(tiny, torch.where(t_up, p[P_QMIN], 0), r)
    r = torch.where(r > p[P_MAX], p[P_OVF], r)
    r = torch.where((p[P_FLUSH] != 0) & (r < p[P_MINNORM]), 0, r)
    r = torch.where(a > _INF, a, r)  # NaN stays NaN
    return (r | sign).view(torch.float32)


def fast_round_impl(x: Tensor, p: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    """The same rounding with fewer operations, for formats whose steps are normal fp32 numbers.

    Deterministic modes only (0, 1, 2): stochastic rounding always uses the bit kernel,
    whose noise-to-decision mapping is the reference.

    The step (quantum) at |x| is ``2^(max(e, emin) - M)``; it and its reciprocal are
    built from exponent bits, so ``x / step`` is exact and any rounding of it to an
    integer is the rounding of x onto the grid (subnormals and ties included).
    Valid when every step and reciprocal is a normal fp32 power of two,
    ``|x / step| < 2^21`` and the format keeps subnormals (:func:`exmy_params` says
    when; otherwise the bit kernel is used).
    """
    bits = x.view(torch.int32)
    a = bits & _ABS
    e = torch.clamp(a >> 23, min=p[P_ELO], max=p[P_EHI]) - p[P_M]
    step = (e << 23).view(torch.float32)
    inv = ((254 - e) << 23).view(torch.float32)
    v = x * inv
    if mode == NEAREST_EVEN:
        r = torch.round(v)
    elif mode == NEAREST_AWAY:
        # not floor(|v| + 0.5): for v = 0.5 - 2^-25 (x just below half the smallest
        # subnormal) that float addition itself rounds up to 1.0
        t = torch.trunc(v)
        r = torch.where((v - t).abs() >= 0.5, t + torch.sign(v), t)
    else:
        r = torch.trunc(v)
    y = r * step
    # no flush-to-zero here: formats without subnormals take the bit kernel (a per-element
    # flag test costs about a third of this kernel's time)
    if torch.compiler.is_compiling():  # the sign put on with bit operations: inductor's C++ calls Sleef's
        ovf = (p[P_OVF] | (bits & _SIGN)).view(torch.float32)  # copysign out of line, once per vector
    else:
        ovf = torch.copysign(p[P_OVF].view(torch.float32), x)  # eager: one pass instead of two
    return torch.where(y.abs() > p[P_MAX].view(torch.float32), ovf, y)


def _magic_abs(x: Tensor, p: Tensor) -> Tensor:
    """``|x|`` rounded to nearest even by the magic addition (see :func:`magic_round_impl`)."""
    a = torch.clamp(x.abs(), max=p[P_BOUND].view(torch.float32))  # NaN stays NaN
    c = (torch.maximum(a.view(torch.int32) & _INF, p[P_EFLOOR]) + p[P_MAGIC]).view(torch.float32)
    return (a + c) - c


def magic_round_impl(x: Tensor, p: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    """Round to nearest even in the fewest operations, for grids :func:`has_magic` accepts.

    With ``c = 1.5 * 2^(e + 23 - M)``, ``e`` the exponent of ``|x|`` (at least emin), the ulp of
    ``|x| + c`` is the grid's step at ``|x|``, so that addition rounds ``|x|`` onto the grid, ties
    to even (``c`` is an even multiple of the step), and ``(|x| + c) - c`` is exact. ``|x|`` is
    clamped first (at the max when saturating, else at the power of two above it, which rounds
    to itself and overflows); the sign goes back as a bit (inductor's C++ calls ``copysign`` out
    of line). Additions only: no multiply a compiler could contract into an FMA. Bit for bit the
    bit kernel's result (tests/formats/test_magic.py), in about half the step kernel's operations; a NaN
    stays a NaN (its sign and payload not kept: the compiled clamp gives all ones).
    """
    assert mode == NEAREST_EVEN
    return (_magic_abs(x, p).view(torch.int32) | (x.view(torch.int32) & _SIGN)).view(torch.float32)


def magic_overflow_impl(x: Tensor, p: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    """:func:`magic_round_impl` for grids that do not saturate: results past the max become Inf or NaN."""
    assert mode == NEAREST_EVEN
    r = _magic_abs(x, p)  # compared as floats: a NaN's bits may read as any integer
    r = torch.where(r > p[P_MAX].view(torch.float32), p[P_OVF].view(torch.float32), r).view(torch.int32)
    return (r | (x.view(torch.int32) & _SIGN)).view(torch.float32)


def grid_up(g: Tensor, p: Tensor) -> Tensor:
    """The grid value just above the non-negative grid value ``g`` (it may pass the max)."""
    a = g.view(torch.int32)
    nxt = a + (1 << torch.clamp(_shift(a, p), max=23))  # one quantum up; a carry moves to the next binade
    first = torch.where(p[P_FLUSH] != 0, p[P_MINNORM], p[P_QMIN])
    return torch.where(a == 0, first, nxt).view(torch.float32)


def grid_down(g: Tensor, p: Tensor, impl: Callable = float_round_impl) -> Tensor:
    """The grid value just below the positive grid value ``g`` (NaN garbage for ``g == 0``)."""
    return impl((g.view(torch.int32) - 1).view(torch.float32), p, TOWARD_ZERO, None)


def directed(a: Tensor, g: Tensor, mode: int, u: Tensor | None, decode: Callable[[Tensor], Tensor],
             up: Callable[[Tensor], Tensor], down: Callable[[Tensor], Tensor], top: Tensor) -> Tensor:
    """Toward-zero or stochastic rounding of magnitudes ``a`` onto decoded grid values.

    ``g``: a first guess (the grid value truncated from an approximate quotient, within
    two steps); ``decode(g)``: the output magnitude of grid value ``g``; ``up`` / ``down``:
    the neighbouring grid values; ``top``: the largest grid value; ``u``: uniform noise
    in [0, 1) (stochastic). Returns the grid value: for toward zero the largest one whose
    decoded value is <= ``a``; for stochastic that one or the next, the next with
    probability ``(a - lo) / (hi - lo)`` in decoded values (so on-grid values never move).
    Non-finite guesses (NaN, an overflow code) are returned as they are.
    """
    fin = torch.isfinite(g)
    for _ in range(2):
        gu = up(g)
        g = torch.where(fin & (gu <= top) & (decode(gu) <= a), gu, g)
    for _ in range(2):
        g = torch.where(fin & (g > 0) & (decode(g) > a), down(g), g)
    if mode == TOWARD_ZERO:
        return g
    assert u is not None
    hi = up(g)
    hi = torch.where(hi <= top, hi, g)
    lo_v, hi_v = decode(g), decode(hi)
    den = hi_v - lo_v
    prob = torch.where(den > 0, (a - lo_v) / den, 0.0)
    return torch.where(fin & (u < prob), hi, g)


def saturate(y: Tensor, q: Tensor) -> Tensor:
    """``y`` (a decoded ``q * scale``) with products that overflowed though ``q`` is finite set to ±float32 max.

    Written with ``where`` rather than ``clamp``: inductor's clamp does not keep a NaN's
    bits, and eager and fused kernels must agree bit for bit.
    """
    over = torch.isinf(y) & torch.isfinite(q)
    return torch.where(over, torch.where(y > 0, F32_MAX, -F32_MAX), y)


def clamp_f32(y: Tensor) -> Tensor:
    """``y`` saturated at ±float32 max (an overflowed product comes back as max), NaN kept bit for bit.

    Two ``where`` rather than ``clamp``: inductor's clamp rewrites a NaN's bits, and eager
    and fused kernels must agree bit for bit; it is also cheaper than a per-block test.
    """
    return torch.where(y > F32_MAX, F32_MAX, torch.where(y < -F32_MAX, -F32_MAX, y))


def cap(v: Tensor) -> Tensor:
    """A non-negative magnitude capped at float32 max (NaN kept)."""
    return torch.where(v > F32_MAX, F32_MAX, v)


def round_int(q: Tensor, mode: int, noise: Tensor | None) -> Tensor:
    """Round ``q`` to an integer; stochastic with ``noise`` uniform in [0, 1).

    Stochastic: ``floor(q)`` plus one with probability ``q - floor(q)`` (exact in fp32),
    not ``floor(q + noise)``, whose addition rounds up near integers (moving on-grid
    values, and values at the top of the range past it).
    """
    if mode == NEAREST_EVEN:
        return torch.round(q)
    if mode == NEAREST_AWAY:
        # trunc + exact fraction: floor(|q| + 0.5) is wrong for |q| = 0.5 - 2^-25,
        # where the float addition itself rounds up to 1.0
        t = torch.trunc(q)
        return torch.where((q - t).abs() >= 0.5, t + torch.sign(q), t)
    if mode == TOWARD_ZERO:
        return torch.trunc(q)
    assert noise is not None
    f = torch.floor(q)
    return f + (noise < q - f).to(q.dtype)


def in_range_bits(x: Tensor, p: Tensor) -> Tensor:
    """``|x| <= max`` of the grid ``p`` (NaN: False) packed 8 to a byte, element i as bit i % 8 of byte i // 8.

    ``x``: 1-D float32 of a multiple of 8 elements. Written as eight strided slices for inductor, which
    fuses them into one loop writing n / 8 bytes (it stores bool / uint8 results per element slowly).
    """
    top = p[P_MAX].view(torch.float32)
    if not torch.compiler.is_compiling():  # eager: the bool mask, packed word-wise (8 slices cost 5x more)
        return pack_bytes((x.abs() <= top).view(torch.uint8))
    x8 = x.view(-1, 8)
    acc = (x8[:, 0].abs() <= top).to(torch.uint8)
    for j in range(1, 8):
        acc = acc | ((x8[:, j].abs() <= top).to(torch.uint8) << j)
    return acc


_PACK = 0x0102040810204080  # (w * _PACK) >> 56: byte j's bit 0 to bit 56 + j (partial products i + j = 7, no carries)


def pack_bytes(m: Tensor) -> Tensor:
    """Bytes 0 / 1 (uint8, 1-D, a multiple of 8, little-endian) packed 8 to a byte as eight-byte words."""
    if m.storage_offset() % 8:
        m = m.clone()
    return ((m.view(torch.int64) * _PACK >> 56) & 0xFF).to(torch.uint8)


def _dtype_grid(man: int, emin: int, top: float, saturate: bool) -> Tensor:
    return exmy_params(man, emin, top, 2.0**emin, 2.0 ** (emin - man), True, "saturate" if saturate else "inf")[0]


_HALF = {torch.float16: (65504.0, {s: _dtype_grid(10, -14, 65504.0, s) for s in (True, False)}),
         torch.bfloat16: (3.3895313892515355e38,
                          {s: _dtype_grid(7, -126, 3.3895313892515355e38, s) for s in (True, False)})}


def to_dtype(y: Tensor, dtype: torch.dtype, saturate: bool) -> Tensor:
    """Cast a float32 result back to the input's ``dtype``, saturating at its max when ``saturate``.

    Under torch.compile the rounding to fp16/bf16 is done by the bit kernel first, so the
    cast that follows is exact and inductor's dropping of it changes nothing.
    """
    if dtype == torch.float32:
        return y
    half = _HALF.get(dtype)
    if half is not None:
        top, params = half
        if torch.compiler.is_compiling():
            y = float_round_impl(y, params[saturate].to(y.device), NEAREST_EVEN, None)
        elif saturate:
            y = torch.clamp(y, -top, top)
    return y.to(dtype)
