"""The fused block-quantization kernel behind :class:`~qsim_hooks.formats.block.BlockFormat`.

One function does a whole block format on a ``(groups, group_size)`` float32
tensor: the per-block amax, the block scale (E8M0 from the amax's fp32 bit
pattern, or a scale rounded onto a float grid, with an optional per-tensor
level), the element rounding and the in-range mask. It is plain torch, so
:func:`kernels.run` fuses it with torch.compile into one pass over large
tensors and runs it eagerly on small ones (same operations, same bits).
A format's constants travel as small tensors (:class:`BlockKernel`); only the
structural choices (element kind, rounding mode, scale kind, scale rounding,
mask) select the function. The arithmetic is written up in docs/formats/block.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from . import kernels
from .base import Rounding
from .floating import FloatFormat, f32_bits
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


def _grid_round(v: Tensor, sp: Tensor, srnd: str) -> Tensor:
    """Round a non-negative tensor onto a float grid (params ``sp``), saturating."""
    if srnd == "nearest":
        return kernels._float_round_impl(v, sp, kernels.NEAREST_EVEN, None)
    r = kernels._float_round_impl(v, sp, kernels.TOWARD_ZERO, None)
    if srnd == "floor":
        return r
    # ceil: the next grid point above r where r < v
    e = (r.view(torch.int32) >> 23) - 127
    step = pow2(torch.clamp(torch.maximum(e, sp[kernels.P_EMIN]) - sp[kernels.P_M], min=-149))
    up = torch.minimum(r + step, sp[kernels.P_MAX].view(torch.float32))
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


def _make(kind: str, mode: int, scale_kind: str, srnd: str, two: bool, compat: bool,
          want_mask: bool) -> Callable:
    def fn(x: Tensor, ip: Tensor, fp: Tensor, ep: Tensor, sp: Tensor, tsc: Tensor,
           *noise: Tensor) -> tuple[Tensor, Tensor] | Tensor:
        nz = noise[0] if noise else None
        amax = torch.amax(x.abs(), dim=-1, keepdim=True)  # NaN propagates
        s = _scale(amax, ip, fp, sp, tsc, scale_kind, srnd, two)
        safe = torch.where(s == 0, 1.0, s)  # a zero scale decodes every element to 0
        t = x / safe
        if kind == "f":
            y = kernels._float_round_impl(t, ep, mode, nz) * s
        else:
            u = t * fp[FP_PER_UNIT]
            k = kernels._round_mode(torch.clamp(u, fp[FP_QMIN], fp[FP_QMAX]), mode, nz)
            y = (k * s) / fp[FP_PER_UNIT]
            if compat:
                # qtorch block_quantize_nearest: fl32(x + 6*2^emax), add half an ulp at wl
                # kept bits, truncate, subtract, clip to the largest code
                base = s * 6.0
                r = ((x + base).view(torch.int32) + ip[IP_QT_HALF]) & ~ip[IP_QT_MASK]
                lim = fp[FP_QMAX] * s / fp[FP_PER_UNIT]
                yq = torch.minimum(torch.maximum(r.view(torch.float32) - base, -lim), lim)
                y = torch.where(s <= 2.0**125, yq, y)
        if not want_mask:
            return y
        # clipped = beyond the block's largest value, compared in the tensor's units with a few
        # ulps of slack (a two-level scale is a rounded product: the element defining the
        # amax must not count as clipped by that rounding); a zero scale is underflow, not clipping
        mask = (x.abs() <= (fp[FP_ELEM_MAX] * s) * _SLACK) | (s == 0)
        return y, mask

    return fn


_FNS: dict[str, Callable] = {}


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
    ip: Tensor
    fp: Tensor
    ep: Tensor  # the element grid's ExMy params (float elements)
    sp: Tensor  # the scale grid's ExMy params (float scale grids)
    _on: dict[torch.device, tuple[Tensor, Tensor, Tensor, Tensor]] = field(default_factory=dict)

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
        return cls(kind="f" if isinstance(element, FloatFormat) else "i",
                   mode=Rounding.parse(element.rounding).mode_id, scale_kind="e8m0" if scale is None else "grid",
                   scale_rounding=scale_rounding, qtorch_compat=qtorch_compat,
                   ip=torch.tensor(ip, dtype=torch.int32), fp=torch.tensor(fp, dtype=torch.float32),
                   ep=element._params if isinstance(element, FloatFormat) else none,
                   sp=none if scale is None else scale._params)

    def on(self, dev: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(ip, fp, ep, sp) on ``dev``, copied there once."""
        got = self._on.get(dev)
        if got is None:
            got = self._on[dev] = (self.ip.to(dev), self.fp.to(dev), self.ep.to(dev), self.sp.to(dev))
        return got

    def scales(self, x: Tensor, tsc: Tensor | None) -> Tensor:
        """The decoded scale of each group of ``x`` (groups, group_size): shape (groups, 1)."""
        dev = x.device
        ip, fp, _, sp = self.on(dev)
        amax = torch.amax(x.abs(), dim=-1, keepdim=True)
        return _scale(amax, ip, fp, sp, tsc if tsc is not None else torch.ones((), device=dev),
                      self.scale_kind, self.scale_rounding, tsc is not None)

    def quantize(self, x: Tensor, tsc: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        """Quantize ``x`` of shape (groups, group_size): returns (y, in-range mask or None)."""
        two = tsc is not None
        name = (f"block_{self.kind}{self.mode}_{self.scale_kind}_{self.scale_rounding}_{int(two)}_"
                f"{int(self.qtorch_compat)}_{int(want_mask)}")
        fn = _FNS.get(name)
        if fn is None:
            fn = _make(self.kind, self.mode, self.scale_kind, self.scale_rounding, two, self.qtorch_compat,
                       want_mask)
            if not torch.compiler.is_compiling():  # inside a user's torch.compile: traced inline
                fn = _FNS[name] = kernels.named_copy(fn, name)
        dev = x.device
        args = [*self.on(dev), tsc if tsc is not None else torch.ones((), device=dev)]
        if self.mode == kernels.STOCHASTIC:
            if self.kind == "f":
                args.append(torch.randint(0, 1 << 23, x.shape, generator=generator, device=dev,
                                          dtype=torch.int32))
            else:
                args.append(torch.rand(x.shape, generator=generator, device=dev, dtype=torch.float32))
        out = kernels.run(name, fn, x, *args)
        if want_mask:
            return out[0], out[1]
        return out, None
