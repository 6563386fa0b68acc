"""Floating-point formats: any ExMy with explicit bias, specials, subnormal and overflow policies.

``FloatFormat(e, m)`` is a plain cast by default (what hardware does);
attaching a :class:`~qsim_hooks.formats.scaling.Scaling` maps an amax to the
format's largest finite value first (INT-FP-QSim's scaled small floats).

Rounding works on the float32 bit pattern (see :mod:`._exmy`): exact for
every finite float32 input, including ties and subnormals. Inputs in fp16 or
bf16 are widened to fp32 exactly and the result is cast back to the input
dtype (round to nearest even, saturating at its max for a saturating format),
so a format wider than the input dtype is rounded twice; a format is never
wider than fp32. The named formats are module constants (:data:`E4M3` ...
:data:`FP32`). What each rounding mode and overflow policy guarantees:
docs/formats/rounding.md.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from . import kernels, saved
from ._checks import check_bool, check_choice, check_int, check_name
from ._exmy import exmy_params
from ._split import split_consts
from .base import Format, FormatInfo, GradSpec, Rounding
from .scaling import Scaling, scaled_forward, with_scaling_axis

__all__ = ["FloatFormat", "E4M3", "E5M2", "E3M4", "E3M2", "E2M3", "E2M1", "FP16", "BF16", "TF32", "FP32"]

Specials = Literal["ieee", "fn", "none"]


class _Grid(NamedTuple):
    """An ExMy grid's extremes, worked out once (FloatFormat's info and its kernel params read these)."""

    emin: int  # exponent of the smallest normal (unbiased)
    has_normals: bool
    max: float
    min_normal: float  # = max when the grid has no normals
    min_subnormal: float  # smallest non-zero value with subnormals (2^(emin - M))


def _top_field(E: int, M: int, specials: str) -> int:
    """The largest exponent field holding normal numbers (< 1: the grid has only subnormals)."""
    return 2**E - 1 - (1 if specials == "ieee" or (specials == "fn" and M == 0) else 0)


def _bias_range(E: int, M: int, specials: str) -> tuple[int, int]:
    """The biases whose grid fits in float32: max <= float32 max, smallest subnormal >= 2^-149."""
    top = _top_field(E, M, specials)
    return (top - 127 if top >= 1 else -127), 150 - M


def _grid(E: int, M: int, bias: int, specials: str) -> _Grid | None:
    """The grid of ExMy with ``bias`` and ``specials``; ``None`` when it has no nonzero finite value."""
    emin = 1 - bias
    top = _top_field(E, M, specials)
    if top < 1:  # only subnormals
        if M == 0:
            return None
        mx = (1 - 2.0**-M) * 2.0**emin
        return _Grid(emin, False, mx, mx, math.ldexp(1.0, emin - M))
    frac = 2 - 2.0 ** (1 - M) if (specials == "fn" and M > 0) else 2 - 2.0**-M
    return _Grid(emin, True, math.ldexp(frac, top - bias), math.ldexp(1.0, emin), math.ldexp(1.0, emin - M))


@dataclass(frozen=True)
class FloatFormat(Format):
    """An ExMy floating-point format.

    Args:
        exp_bits: exponent bits E, 1..8.
        man_bits: mantissa (fraction) bits M, 0..23.
        bias: exponent bias; ``None`` means IEEE, ``2**(E-1) - 1``.
        specials: ``"ieee"`` (top exponent reserved for Inf/NaN), ``"fn"``
            (finite; only the all-ones code is NaN, OCP E4M3) or ``"none"``
            (every code is a finite number: OCP FP6/FP4, the qtorch convention).
        subnormals: keep subnormals (``True``) or flush results below the
            smallest normal to zero (sign kept).
        overflow: ``"saturate"`` to the largest finite value (default; Inf in
            becomes ±max too) or ``"special"``: what the format's convention
            does (Inf for ``ieee``, NaN for ``fn``; not allowed for ``none``).
        rounding: a :class:`Rounding` or its name.
        scaling: ``None`` (a plain cast) or a :class:`Scaling` mapping amax to max.
        grad: the straight-through estimator and optional gradient format.
        name: display name (filled in from E and M when omitted).

    NaN in is NaN out under every policy.
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    specials: Specials = "ieee"
    subnormals: bool = True
    overflow: Literal["saturate", "special"] = "saturate"
    rounding: Rounding | str = Rounding.NEAREST_EVEN
    scaling: Scaling | None = None
    grad: GradSpec = field(default_factory=GradSpec)
    name: str = ""
    # worked out from the fields, once (not part of the value: never compared, printed or passed)
    _grid: _Grid = field(init=False, repr=False, compare=False)
    _info: FormatInfo = field(init=False, repr=False, compare=False)
    _mode: int = field(init=False, repr=False, compare=False)
    _params: kernels.Consts = field(init=False, repr=False, compare=False)
    # the grid a scaled format rounds on: the format's own, or (max < 1) it times 2^j, so that
    # amax / max cannot overflow float32; _scale_max is that grid's max
    _scaled_params: kernels.Consts = field(init=False, repr=False, compare=False)
    _scaled_max: float = field(init=False, repr=False, compare=False)
    _eager: functools.partial | None = field(init=False, repr=False, compare=False)  # PyTorch's own cast, if any

    def __post_init__(self) -> None:
        check_int("FloatFormat", "exp_bits", self.exp_bits, 1, 8)
        check_int("FloatFormat", "man_bits", self.man_bits, 0, 23)
        check_choice("FloatFormat", "specials", self.specials, ("ieee", "fn", "none"))
        lo, hi = _bias_range(self.exp_bits, self.man_bits, self.specials)
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        elif isinstance(self.bias, bool) or not isinstance(self.bias, int):
            raise TypeError(f"FloatFormat.bias must be an int or None, got {self.bias!r} ({type(self.bias).__name__})")
        elif not lo <= self.bias <= hi:
            raise ValueError(f"FloatFormat.bias={self.bias} is out of range for E={self.exp_bits}, "
                             f"M={self.man_bits}, specials={self.specials!r}: allowed {lo}..{hi} (the grid "
                             "must lie within float32's range)")
        check_bool("FloatFormat", "subnormals", self.subnormals)
        check_choice("FloatFormat", "overflow", self.overflow, ("saturate", "special"))
        check_name("FloatFormat", self.name)
        if self.overflow == "special" and self.specials == "none":
            raise ValueError("FloatFormat.overflow='special' needs specials 'ieee' or 'fn': "
                             "a format without Inf/NaN codes can only saturate")
        rounding = Rounding.parse(self.rounding, field="FloatFormat.rounding")
        object.__setattr__(self, "rounding", rounding)
        object.__setattr__(self, "_mode", rounding.mode_id)
        if self.scaling is not None and not isinstance(self.scaling, Scaling):
            raise TypeError(f"FloatFormat.scaling must be a Scaling or None, got {type(self.scaling).__name__}")
        if not isinstance(self.grad, GradSpec):
            raise TypeError(f"FloatFormat.grad must be a GradSpec, got {type(self.grad).__name__}")
        grid = _grid(self.exp_bits, self.man_bits, self.bias, self.specials)
        what = f"FloatFormat(E={self.exp_bits}, M={self.man_bits}, specials={self.specials!r})"
        if grid is None:
            raise ValueError(f"{what} has no nonzero finite value")
        if not self.subnormals and not grid.has_normals:
            raise ValueError(f"{what} has only subnormal values, so subnormals=False leaves no nonzero "
                             "finite value; keep subnormals=True")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())
        bits = 1 + self.exp_bits + self.man_bits
        object.__setattr__(self, "_grid", grid)
        object.__setattr__(self, "_info", FormatInfo(
            bits=bits, bits_per_value=float(bits), max=grid.max, min_normal=grid.min_normal,
            min_subnormal=grid.min_subnormal if self.subnormals else grid.min_normal,
            spacing_at_one=math.ldexp(1.0, max(0, grid.emin) - self.man_bits),
            is_scaled=self.scaling is not None,
            granularity=self.scaling.describe() if self.scaling is not None else "cast"))
        object.__setattr__(self, "_params", self._make_params(0))
        shift = 1 - math.frexp(grid.max)[1] if self.scaling is not None and grid.max < 1 else 0
        object.__setattr__(self, "_scaled_params", self._make_params(shift) if shift else self._params)
        object.__setattr__(self, "_scaled_max", math.ldexp(grid.max, shift))
        native = self._native_dtype()
        object.__setattr__(self, "_eager", None if native is None else functools.partial(
            _native_cast, native=native, top=grid.max if self.overflow == "saturate" else None))

    # -- the grid ---------------------------------------------------------
    @property
    def info(self) -> FormatInfo:
        return self._info

    @property
    def emin(self) -> int:
        """The exponent of the smallest normal value (unbiased)."""
        return self._grid.emin

    @property
    def has_normals(self) -> bool:
        return self._grid.has_normals

    def with_axis(self, axis: int) -> FloatFormat:
        return with_scaling_axis(self, self.scaling, axis)

    def _default_name(self) -> str:
        n = f"e{self.exp_bits}m{self.man_bits}"
        if self.specials != "ieee":
            n += self.specials
        if self.bias != 2 ** (self.exp_bits - 1) - 1:
            n += f"b{self.bias}"
        return n

    @property
    def saturates(self) -> bool:
        return self.overflow == "saturate"

    def _make_params(self, shift: int) -> kernels.Consts:
        """The kernels' description of this grid, times ``2**shift``."""
        g = self._grid
        ovf = "saturate" if self.overflow == "saturate" else ("inf" if self.specials == "ieee" else "nan")
        params, fast = exmy_params(self.man_bits, g.emin + shift, math.ldexp(g.max, shift),
                                   math.ldexp(g.min_normal, shift), math.ldexp(g.min_subnormal, shift),
                                   self.subnormals, ovf)
        split = split_consts(self.man_bits, g.emin + shift, math.ldexp(g.max, shift), self.subnormals, ovf)
        return kernels.Consts(params, fast=fast, split=split, saturating=ovf == "saturate")

    # -- fast path through PyTorch's own casts ------------------------------
    def _native_dtype(self) -> torch.dtype | None:
        if self.rounding != Rounding.NEAREST_EVEN or not self.subnormals:
            return None
        key = (self.exp_bits, self.man_bits, self.bias, self.specials)
        if self.specials == "fn" and self.overflow != "saturate":
            return None  # PyTorch's e4m3fn cast saturates (Inf included); ours must give NaN
        return {(4, 3, 7, "fn"): torch.float8_e4m3fn, (5, 2, 15, "ieee"): torch.float8_e5m2,
                (5, 10, 15, "ieee"): torch.float16, (8, 7, 127, "ieee"): torch.bfloat16}.get(key)

    def _is_fp32(self) -> bool:
        return self.exp_bits == 8 and self.man_bits == 23 and self.specials == "ieee" \
            and self.subnormals and self.bias == 127

    def cast(self, x: Tensor, generator: torch.Generator | None = None, *, into: bool = False,
             mask: bool = False) -> Any:
        """Round a float32 tensor onto the grid (no scaling). ``into``: ``x`` is given up, and a fused kernel may
        write the result into it (:func:`kernels.float_round`); ``mask``: (result, the packed clipped-STE mask)."""
        if self._is_fp32():
            y = x.clamp(-self.max, self.max) if self.overflow == "saturate" else x.clone()
            return (y, saved.pack_mask(x.abs() <= self.max)) if mask else y
        # PyTorch's own cast when the kernel runs eagerly (kernels.run never uses it inside a
        # torch.compile, where inductor would drop the x.to(native).float() round trip)
        out = kernels.float_round(x, self._params, self._mode, generator, eager=self._eager, into=into, mask=mask)
        if not mask or out[1] is not None:
            return out
        return out[0], saved.pack_mask(x.abs() <= self.max)  # not fused: the mask made here

    # -- the Format protocol -----------------------------------------------
    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        if self.scaling is None:
            y = self.cast(x, generator)
            mask = (x.abs() <= self.max) if want_mask else None
            return y, mask
        return scaled_forward(self, self.scaling, x, amax, generator, want_mask)

    def _forward_packed(self, x: Tensor, amax: Tensor | None,
                        generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        if self.scaling is None:
            return self.cast(x, generator, mask=True)
        return super()._forward_packed(x, amax, generator)

    def _scale_max(self) -> float:
        return self._scaled_max

    def _cast_scaled(self, xb: Tensor, inv: Tensor, scale: Tensor,
                     generator: torch.Generator | None) -> Tensor:
        if self.exp_bits == 8 and self.man_bits == 23 and self.specials == "ieee" and \
                self._mode < kernels.TOWARD_ZERO:  # rounding to nearest onto every float32: a product
            y = self.cast(xb * inv, generator) * scale
            return y.clamp(-self.max, self.max) if self.saturates else y
        return kernels.scaled_float_round(xb, self._scaled_params, inv, scale, self._mode, generator,
                                          saturate=self.saturates)

    def _in_range(self, x: Tensor, amax: Tensor) -> Tensor:
        return x.abs() <= amax


def _native_cast(x: Tensor, native: torch.dtype, top: float | None) -> Tensor:
    """Round onto ``native``'s grid with PyTorch's cast (saturating at ``top`` first when given)."""
    xs = x if top is None else x.clamp(-top, top)
    return xs.to(native).to(torch.float32)


#: The named float formats (the registry and the block formats use these values).
E4M3 = FloatFormat(4, 3, specials="fn", name="e4m3")  # OCP FP8 E4M3 (no Inf; NaN = S.1111.111)
E5M2 = FloatFormat(5, 2, specials="ieee", name="e5m2")  # OCP FP8 E5M2
E3M4 = FloatFormat(3, 4, specials="ieee", name="e3m4")
E3M2 = FloatFormat(3, 2, specials="none", name="e3m2")  # OCP FP6
E2M3 = FloatFormat(2, 3, specials="none", name="e2m3")  # OCP FP6
E2M1 = FloatFormat(2, 1, specials="none", name="e2m1")  # OCP FP4
FP16 = FloatFormat(5, 10, name="fp16")
BF16 = FloatFormat(8, 7, name="bf16")
TF32 = FloatFormat(8, 10, name="tf32")
FP32 = FloatFormat(8, 23, overflow="special", name="fp32")
