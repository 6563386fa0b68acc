"""The fused block-quantization kernel behind :class:`~qsim_hooks.formats.block.BlockFormat`.

One function does a whole block format on a ``(groups, group_size)`` float32
tensor: the per-block amax, the block scale (E8M0 from the amax's fp32 bit
pattern, or a scale rounded onto a float grid, with an optional per-tensor
level, computed in the kernel from the tensor's finite amax when not given), the
element rounding and the in-range mask. It is plain torch, so :func:`kernels.run`
fuses it with torch.compile into one kernel for large tensors (on the CPU: the
per-block amax, the scales vectorized across blocks, then one read and one write
per element) and runs it eagerly on small ones (same operations, same bits).
A format's constants travel as small tensors (:class:`BlockKernel`); only the
structural choices (element kind, rounding mode, scale kind, scale rounding,
mask) select the function. The arithmetic is written up in docs/formats/block.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from . import kernels
from ._exmy import (
    _SIGN,
    NEAREST_EVEN,
    P_EMIN,
    P_M,
    P_MAX,
    STOCHASTIC,
    TOWARD_ZERO,
    cap,
    clamp_f32,
    directed,
    f32_bits,
    fast_round_impl,
    float_round_impl,
    grid_down,
    grid_up,
    round_int,
    saturate,
)
from ._split import SplitConsts, split_round
from .base import Rounding
from .floating import FloatFormat
from .integer import IntElement

__all__ = ["BlockKernel", "pow2", "Element"]

Element = FloatFormat | IntElement

_ABS = 0x7FFFFFFF
_MAN = 0x7FFFFF
_SQRT2 = 1.4142135623730951
_SQRT1_2 = 0.7071067811865476
_TWO64 = 18446744073709551616.0
_SLACK = 1.0 + 2.0**-20

# Fields of the int32 constants ``ip``
IP_EMAX = 0  #: exponent of the element's largest power of two (emax_elem)
IP_MAX_MANT = 1  #: mantissa field of the element max's fp32 pattern (E8M0 "ceil")
IP_QT_HALF = 2  #: qtorch compat: half an ulp at wl kept mantissa bits
IP_QT_MASK = 3  #: qtorch compat: the mask of the dropped mantissa bits
# Fields of the float32 constants ``fp``
FP_ELEM_MAX = 0  #: the element's largest magnitude
FP_MAX_SIG = 1  #: elem_max / 2**emax_elem, in [1, 2) (E8M0 "nearest")
FP_PER_UNIT = 2  #: integer elements: grid points per unit (1 for float elements)
FP_QMIN = 3  #: integer elements: the smallest code
FP_QMAX = 4  #: integer elements: the largest code
FP_TENSOR_DIV = 5  #: elem_max * scale_max: amax_tensor / this is the tensor level (6 * 448 for NVFP4)
_N_IP, _N_FP = 4, 6


def pow2(e: Tensor) -> Tensor:
    """``2.0**e`` for an int32 tensor with values in [-149, 127], exactly (bit pattern)."""
    e = e.to(torch.int32)
    normal = (torch.clamp(e, min=-126) + 127) << 23
    sub = 1 << torch.clamp(e + 149, min=0, max=22)
    return torch.where(e >= -126, normal, sub).view(torch.float32)


def _e8m0(amax: Tensor, ip: Tensor, fp: Tensor, srnd: str) -> Tensor:
    """The E8M0 block scale 2**e from a non-negative amax (NaN for non-finite blocks)."""
    bits = amax.view(torch.int32) & _ABS
    nonfinite = (bits >> 23) == 255
    sub = (bits >> 23) == 0
    a2 = torch.where(sub, amax * _TWO64, amax)  # normalize fp32 subnormals (exact)
    b2 = a2.view(torch.int32) & _ABS
    e = (b2 >> 23) - (sub.to(torch.int32) * 64 + 127) - ip[IP_EMAX]  # floor(log2 amax) - emax_elem
    if srnd == "ceil":
        e = e + ((b2 & _MAN) > ip[IP_MAX_MANT]).to(torch.int32)
    elif srnd == "nearest":
        ratio = ((b2 & _MAN) | (127 << 23)).view(torch.float32) / fp[FP_MAX_SIG]  # in (0.5, 2)
        e = e + (ratio >= _SQRT2).to(torch.int32) - (ratio < _SQRT1_2).to(torch.int32)
    e = torch.clamp(e, -127, 127)
    return torch.where(nonfinite, float("nan"), pow2(e))


def _sat_f32(y: Tensor) -> Tensor:
    """:func:`._exmy.clamp_f32` of a product of finite factors: only ±inf passes float32 max.

    Compiled, the test is on the bit pattern (one compare instead of two, and no float
    ``where`` chain, a tenth of a block kernel's time); eager keeps the two ``where``.
    """
    if not torch.compiler.is_compiling():
        return clamp_f32(y)
    b = y.view(torch.int32)
    inf = (b & _ABS) == 0x7F800000
    return torch.where(inf, (0x7F7FFFFF | (b & _SIGN)).view(torch.float32), y)


def _grid_round(v: Tensor, sp: Tensor, srnd: str) -> Tensor:
    """Round a non-negative tensor onto a float grid (params ``sp``), saturating."""
    if srnd == "nearest":
        return float_round_impl(v, sp, NEAREST_EVEN, None)
    r = float_round_impl(v, sp, TOWARD_ZERO, None)
    if srnd == "floor":
        return r
    # ceil: the next grid point above r where r < v
    e = (r.view(torch.int32) >> 23) - 127
    step = pow2(torch.clamp(torch.maximum(e, sp[P_EMIN]) - sp[P_M], min=-149))
    up = torch.minimum(r + step, sp[P_MAX].view(torch.float32))
    return torch.where(r < v, up, r)


def _scale(amax: Tensor, ip: Tensor, fp: Tensor, sp: Tensor, tsc: Tensor, scale_kind: str, srnd: str,
           two: bool) -> Tensor:
    """The decoded block scale S (NaN for a block holding Inf/NaN)."""
    if scale_kind == "e8m0":
        return _e8m0(amax, ip, fp, srnd)
    v = amax / fp[FP_ELEM_MAX]
    if two:
        v = v / tsc
    s = _grid_round(v, sp, srnd)
    if two:
        s = s * tsc
    return torch.where(torch.isfinite(amax), s, float("nan"))


def _decode_int(k: Tensor, s: Tensor, pu: Tensor, pow2: bool) -> Tensor:
    """``k * S / per_unit``, correctly rounded, saturating at ±float32 max.

    ``pow2`` (an E8M0 scale and a power-of-two per_unit): ``k * (S / per_unit)``, exact.
    Otherwise ``(k * S) / per_unit`` (the reference ABFP and the tests use); in blocks whose
    scale is so large that ``k * S`` could overflow, both are taken down by 2^64 first.
    """
    if pow2:
        return k * (s / pu)
    big = s > 2.0**64  # per block: cheap; NaN blocks are not big and keep their NaN
    y = (k * torch.where(big, s * 2.0**-64, s)) / pu
    return torch.where(big, clamp_f32(y * 2.0**64), y)


def _float_elements(x: Tensor, t: Tensor, s: Tensor, ep: Tensor, fp: Tensor, mode: int, nz: Tensor | None,
                    exact: bool, sat: bool, fast: bool, split: SplitConsts | None) -> Tensor:
    """Float elements: ``round(t) * S`` (``t = x / S``); ``sat``: saturating at ±float32 max.

    ``exact``: ``t`` is exact (a power-of-two scale), so every mode rounds ``t`` itself;
    otherwise the directed modes decide on the decoded values (:func:`._exmy.directed`).
    ``fast``: the element grid allows the step kernel (bit for bit the same rounding, fewer operations);
    ``split``: round to nearest even with the split kernel instead (eager only, see :mod:`._split`).
    """
    if split is not None and mode == NEAREST_EVEN:
        q = split_round(t, split)
        y = q * s
        return _sat_f32(y) if sat else y
    if exact or mode < TOWARD_ZERO:
        q = (fast_round_impl if fast and mode != STOCHASTIC else float_round_impl)(t, ep, mode, nz)
        y = q * s
        return _sat_f32(y) if sat else y
    u = None if nz is None else nz.to(torch.float32) * 2.0**-23

    def decode(g: Tensor) -> Tensor:
        return cap(g * s)

    g = directed(x.abs(), float_round_impl(t.abs(), ep, TOWARD_ZERO, None), mode, u, decode,
                 lambda v: grid_up(v, ep), lambda v: grid_down(v, ep), ep[P_MAX].view(torch.float32))
    return torch.copysign(saturate(g * s, g), x)


def _int_elements(x: Tensor, t: Tensor, s: Tensor, fp: Tensor, mode: int, nz: Tensor | None,
                  exact: bool, pow2: bool) -> Tensor:
    """Integer elements: ``k = round(clamp(t * per_unit, qmin, qmax))``, value ``k * S / per_unit``."""
    pu = fp[FP_PER_UNIT]
    q = torch.clamp(t * pu, fp[FP_QMIN], fp[FP_QMAX])
    if exact or mode < TOWARD_ZERO:
        return _decode_int(round_int(q, mode, nz), s, pu, pow2)

    def decode(k: Tensor) -> Tensor:
        return _decode_int(k, s, pu, pow2)

    top = torch.where(x < 0, -fp[FP_QMIN], fp[FP_QMAX])
    k = directed(x.abs(), torch.trunc(q.abs()), mode, nz, decode, lambda k: k + 1, lambda k: k - 1, top)
    return torch.copysign(decode(k), x)


def _level(x: Tensor, fp: Tensor) -> Tensor:
    """The per-tensor level of a two-level scale from the finite amax of ``x`` (1 for an all-zero tensor).

    The same operations as ``BlockFormat._tensor_level`` with ``kernels.finite_absmax``,
    here inside the block kernel: no kernel call of its own, and no padding or moved axis
    changes a maximum of magnitudes.
    """
    m = kernels._finite_absmax(x)  # plain torch: traced into this kernel
    t = m / fp[FP_TENSOR_DIV]
    return torch.where(m > 0, t, torch.ones_like(t))


def _make(kind: str, mode: int, scale_kind: str, srnd: str, two: int, compat: bool, want_mask: bool,
          sat: bool, pow2_unit: bool, fast: bool, split: SplitConsts | None = None) -> Callable:
    exact = scale_kind == "e8m0"  # power-of-two scales: x / S and g * S are exact
    # E8M0 floor scales cannot overflow: every element is < 2^(floor(log2 amax) + 1) <= 2^128
    sat = sat and not (exact and srnd == "floor")
    pow2 = exact and pow2_unit

    def fn(x: Tensor, ip: Tensor, fp: Tensor, ep: Tensor, sp: Tensor, tsc: Tensor,
           *noise: Tensor) -> tuple[Tensor, ...]:
        nz = noise[0] if noise else None
        if two == 2:  # the per-tensor level is computed here, from x (tsc is a placeholder)
            tsc = _level(x, fp)
        amax = torch.amax(x.abs(), dim=-1, keepdim=True)  # NaN propagates
        s = _scale(amax, ip, fp, sp, tsc, scale_kind, srnd, two)
        safe = torch.where(s == 0, 1.0, s)  # a zero scale decodes every element to 0
        # a power-of-two scale 2^e (|e| <= 127) has an exact reciprocal: x * (1 / S) == x / S bit for bit,
        # with one division per block instead of one per element
        div = 1.0 / safe if exact else safe
        t = x * div if exact else x / div
        if kind == "f":
            y = _float_elements(x, t, s, ep, fp, mode, nz, exact, sat, fast, split)
        else:
            y = _int_elements(x, t, s, fp, mode, nz, exact, pow2)
            if compat:
                # qtorch block_quantize_nearest: fl32(x + 6*2^emax), add half an ulp at wl
                # kept bits, truncate, subtract, clip to the largest code
                base = s * 6.0
                r = ((x + base).view(torch.int32) + ip[IP_QT_HALF]) & ~ip[IP_QT_MASK]
                lim = fp[FP_QMAX] * s / fp[FP_PER_UNIT]
                yq = torch.minimum(torch.maximum(r.view(torch.float32) - base, -lim), lim)
                y = torch.where(s <= 2.0**125, yq, y)
        # On the CPU the per-block values are also returned (and dropped by the caller): an output is
        # stored, so inductor computes the scale once per block, vectorized across blocks, in a loop of
        # its own; otherwise it inlines the whole scale computation (some fifty scalar operations) into
        # the element loop, once per vector of elements: twice the time of the element rounding itself.
        extra = (s, div) if x.device.type == "cpu" else ()
        if not want_mask:
            return (y, *extra)
        # clipped = beyond the block's largest value, compared in the tensor's units with a few
        # ulps of slack (a two-level scale is a rounded product: the element defining the
        # amax must not count as clipped by that rounding); a zero scale is underflow, not clipping
        mask = (x.abs() <= (fp[FP_ELEM_MAX] * s) * _SLACK) | (s == 0)
        return (y, mask, *extra)

    return fn


_FNS: dict[str, Callable] = {}


def _call(x: Tensor, fn: Callable, args: list[Tensor]) -> tuple[Tensor, ...]:
    return fn(x, *args)


@dataclass(frozen=True, eq=False)
class BlockKernel:
    """One block format's kernel: its structural choices and constant tensors.

    Made once per :class:`~qsim_hooks.formats.block.BlockFormat` (by :meth:`of`);
    the constants are copied to a device on first use there.
    """

    kind: Literal["f", "i"]  # float or integer elements
    mode: int  # the element rounding's kernel id
    scale_kind: Literal["e8m0", "grid"]
    scale_rounding: str
    qtorch_compat: bool
    sat: bool  # float elements saturate (not overflow="special")
    pow2_unit: bool  # integer elements: per_unit is a power of two
    fast: bool  # float elements on a grid the step kernel rounds onto
    split: SplitConsts | None  # float elements rounded to nearest even: the eager split kernel's constants
    consts: kernels.Consts  # ip, fp, ep (the element grid's ExMy params), sp (the scale grid's)
    _eager: dict[str, Callable] = field(default_factory=dict, repr=False)  # eager split variants, by name

    @classmethod
    def of(cls, element: Element, scale: FloatFormat | None, scale_rounding: str,
           qtorch_compat: bool) -> BlockKernel:
        """The kernel of elements ``element`` under an E8M0 (``scale=None``) or float ``scale`` grid."""
        el_max = element.max
        em = math.frexp(el_max)[1] - 1  # exponent of the largest power of two <= max
        ip = [0] * _N_IP
        fp = [0.0] * _N_FP
        ip[IP_EMAX], ip[IP_MAX_MANT] = em, f32_bits(el_max) & _MAN
        fp[FP_ELEM_MAX], fp[FP_MAX_SIG], fp[FP_PER_UNIT] = el_max, el_max / 2.0**em, 1.0
        if isinstance(element, IntElement):
            fp[FP_PER_UNIT], fp[FP_QMIN], fp[FP_QMAX] = element.per_unit, element.qmin, element.qmax
            if qtorch_compat:
                ip[IP_QT_HALF] = 1 << (22 - element.bits)
                ip[IP_QT_MASK] = (1 << (23 - element.bits)) - 1
        fp[FP_TENSOR_DIV] = el_max * (1.0 if scale is None else scale.max)
        none = torch.zeros(8, dtype=torch.int32)
        ep = element._params.cpu[0] if isinstance(element, FloatFormat) else none
        sp = none if scale is None else scale._params.cpu[0]
        return cls(kind="f" if isinstance(element, FloatFormat) else "i",
                   mode=Rounding.parse(element.rounding).mode_id, scale_kind="e8m0" if scale is None else "grid",
                   scale_rounding=scale_rounding, qtorch_compat=qtorch_compat,
                   sat=not isinstance(element, FloatFormat) or element.saturates,
                   pow2_unit=isinstance(element, IntElement) and math.frexp(element.per_unit)[0] == 0.5,
                   fast=isinstance(element, FloatFormat) and element._params.fast,
                   split=element._params.split if isinstance(element, FloatFormat) else None,
                   consts=kernels.Consts(torch.tensor(ip, dtype=torch.int32), torch.tensor(fp, dtype=torch.float32),
                                         ep, sp))

    def on(self, dev: torch.device) -> tuple[Tensor, ...]:
        """(ip, fp, ep, sp) on ``dev``, copied there once."""
        return self.consts.on(dev)

    def scales(self, x: Tensor, tsc: Tensor | None) -> Tensor:
        """The decoded scale of each group of ``x`` (groups, group_size): shape (groups, 1)."""
        dev = x.device
        ip, fp, _, sp = self.on(dev)
        amax = torch.amax(x.abs(), dim=-1, keepdim=True)
        return _scale(amax, ip, fp, sp, tsc if tsc is not None else torch.ones((), device=dev),
                      self.scale_kind, self.scale_rounding, tsc is not None)

    def quantize(self, x: Tensor, tsc: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool, tensor_level: bool = False) -> tuple[Tensor, Tensor | None]:
        """Quantize ``x`` of shape (groups, group_size): returns (y, in-range mask or None).

        ``tsc``: a two-level scale's per-tensor level; ``tensor_level``: compute it from ``x``
        inside the kernel instead (``tsc`` is then None).
        """
        two = 2 if tensor_level else int(tsc is not None)
        name = (f"block_{self.kind}{self.mode}_{self.scale_kind}_{self.scale_rounding}_{two}_"
                f"{int(self.qtorch_compat)}_{int(want_mask)}_{int(self.sat)}{int(self.pow2_unit)}{int(self.fast)}")
        fn = _FNS.get(name)
        if fn is None:
            fn = _make(self.kind, self.mode, self.scale_kind, self.scale_rounding, two, self.qtorch_compat,
                       want_mask, self.sat, self.pow2_unit, self.fast)
            if not torch.compiler.is_compiling():  # inside a user's torch.compile: traced inline
                fn = _FNS[name] = kernels.named_copy(fn, name)
        dev = x.device
        args = [*self.on(dev), tsc if tsc is not None else torch.ones((), device=dev)]
        if self.mode == STOCHASTIC:
            if self.kind == "f":
                args.append(torch.randint(0, 1 << 23, x.shape, generator=generator, device=dev,
                                          dtype=torch.int32))
            else:
                args.append(torch.rand(x.shape, generator=generator, device=dev, dtype=torch.float32))
        eager = None
        if self.split is not None and self.mode == NEAREST_EVEN and not torch.compiler.is_compiling():
            efn = self._eager.get(name)  # per kernel: the split's constants are Python floats in its closure
            if efn is None:
                efn = self._eager[name] = _make(self.kind, self.mode, self.scale_kind, self.scale_rounding, two,
                                                    self.qtorch_compat, want_mask, self.sat, self.pow2_unit,
                                                    self.fast, self.split)
            eager = functools.partial(_call, fn=efn, args=args)
        out = kernels.run(name, fn, x, *args, eager=eager)  # (y[, mask], per-block values on the CPU)
        return out[0], (out[1] if want_mask else None)
