"""The fused block-quantization kernel behind :class:`~qsim_hooks.formats.block.BlockFormat`.

One function does a whole block format on a ``(groups, group_size)`` float32
tensor: the per-block amax, the block scale (E8M0 from the amax's fp32 bit
pattern, or a scale rounded onto a float grid, with an optional per-tensor
level), the element rounding and the in-range mask. It is plain torch, so
:func:`kernels.run` fuses it with torch.compile into one pass over large
tensors and runs it eagerly on small ones (same operations, same bits).
Format constants travel as small tensors; only the structural choices (element
kind, rounding mode, scale kind, scale rounding, mask) select the function.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
from torch import Tensor

from . import kernels
from .floating import _MODES, FloatFormat

__all__ = ["block_quantize", "block_scales", "pow2"]

_ABS = 0x7FFFFFFF
_MAN = 0x7FFFFF
_SQRT2 = 1.4142135623730951
_SQRT1_2 = 0.7071067811865476
_TWO64 = 18446744073709551616.0
_SLACK = 1.0 + 2.0**-20

# ip (int32): 0 emax_elem (exponent of the element's largest power of two)
#             1 mantissa field of the element max   2 qtorch half ulp   3 qtorch low mask
# fp (f32):   0 elem_max  1 elem_max / 2**emax_elem  2 per_unit  3 qmin  4 qmax  5 elem_max*scale_max


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
    e = (b2 >> 23) - (sub.to(torch.int32) * 64 + 127) - ip[0]  # floor(log2 amax) - emax_elem
    if srnd == "ceil":
        e = e + ((b2 & _MAN) > ip[1]).to(torch.int32)
    elif srnd == "nearest":
        ratio = ((b2 & _MAN) | (127 << 23)).view(torch.float32) / fp[1]  # in (0.5, 2)
        e = e + (ratio >= _SQRT2).to(torch.int32) - (ratio < _SQRT1_2).to(torch.int32)
    e = torch.clamp(e, -127, 127)
    return torch.where(nonfinite, float("nan"), pow2(e))


def _grid_round(v: Tensor, sp: Tensor, srnd: str) -> Tensor:
    """Round a non-negative tensor onto a float grid (params ``sp``), saturating."""
    if srnd == "nearest":
        return kernels._float_round_impl(v, sp, 0, None)
    r = kernels._float_round_impl(v, sp, 2, None)  # toward zero
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
    v = amax / fp[0]
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
            u = t * fp[2]
            k = kernels._round_mode(torch.clamp(u, fp[3], fp[4]), mode, nz)
            y = (k * s) / fp[2]
            if compat:
                # qtorch block_quantize_nearest: fl32(x + 6*2^emax), add half an ulp at wl
                # kept bits, truncate, subtract, clip to the largest code
                base = s * 6.0
                r = ((x + base).view(torch.int32) + ip[2]) & ~ip[3]
                lim = fp[4] * s / fp[2]
                yq = torch.minimum(torch.maximum(r.view(torch.float32) - base, -lim), lim)
                y = torch.where(s <= 2.0**125, yq, y)
        if not want_mask:
            return y
        # clipped = beyond the block's largest value, compared in the tensor's units with a few
        # ulps of slack (a two-level scale is a rounded product: the element defining the
        # amax must not count as clipped by that rounding); a zero scale is underflow, not clipping
        mask = (x.abs() <= (fp[0] * s) * _SLACK) | (s == 0)
        return y, mask

    return fn


def _named_copy(fn: Callable, name: str) -> Callable:
    """``fn`` with its own code object: dynamo caches compiled graphs per code
    object, so closures sharing one would pile their guards onto one cache."""
    code = fn.__code__.replace(co_name=name, co_qualname=name) if hasattr(fn.__code__, "co_qualname") \
        else fn.__code__.replace(co_name=name)
    new = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    return new


_FNS: dict[str, Callable] = {}


def _consts_on(fmt, dev: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The format's constant tensors (ip, fp, ep, sp) on ``dev``, copied there once."""
    c = fmt._consts
    key = ("on", dev)
    got = c.get(key)
    if got is None:
        got = tuple(c[k].to(dev) for k in ("ip", "fp", "ep", "sp"))
        c[key] = got
    return got


def block_scales(fmt, x: Tensor, tsc: Tensor | None) -> Tensor:
    """The decoded scale of each group of ``x`` (groups, group_size): shape (groups, 1)."""
    dev = x.device
    ip, fp, _, sp = _consts_on(fmt, dev)
    amax = torch.amax(x.abs(), dim=-1, keepdim=True)
    return _scale(amax, ip, fp, sp,
                  tsc if tsc is not None else torch.ones((), device=dev),
                  "e8m0" if fmt.scale == "e8m0" else "grid", fmt.scale_rounding, tsc is not None)


def block_quantize(fmt, x: Tensor, tsc: Tensor | None, generator: torch.Generator | None,
                   want_mask: bool) -> tuple[Tensor, Tensor | None]:
    """Quantize ``x`` of shape (groups, group_size): returns (y, in-range mask or None)."""
    el = fmt.element
    kind = "f" if isinstance(el, FloatFormat) else "i"
    mode = _MODES[el.rounding]
    scale_kind = "e8m0" if fmt.scale == "e8m0" else "grid"
    two = tsc is not None
    name = (f"block_{kind}{mode}_{scale_kind}_{fmt.scale_rounding}_{int(two)}_"
            f"{int(fmt.qtorch_compat)}_{int(want_mask)}")
    fn = _FNS.get(name)
    if fn is None:
        fn = _make(kind, mode, scale_kind, fmt.scale_rounding, two, fmt.qtorch_compat, want_mask)
        if not torch.compiler.is_compiling():  # inside a user's torch.compile: traced inline
            fn = _FNS[name] = _named_copy(fn, name)
    dev = x.device
    args = [*_consts_on(fmt, dev), tsc if tsc is not None else torch.ones((), device=dev)]
    if mode == 3:
        if kind == "f":
            args.append(torch.randint(0, 1 << 23, x.shape, generator=generator, device=dev,
                                      dtype=torch.int32))
        else:
            args.append(torch.rand(x.shape, generator=generator, device=dev, dtype=torch.float32))
    out = kernels.run(name, fn, x, *args)
    if want_mask:
        return out[0], out[1]
    return out, None
