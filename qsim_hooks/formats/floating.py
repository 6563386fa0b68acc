"""Floating-point formats: any ExMy with explicit bias, specials, subnormal and overflow policies.

``FloatFormat(e, m)`` is a plain cast by default (what hardware does);
attaching a :class:`~qsim_hooks.formats.scaling.Scaling` maps an amax to the
format's largest finite value first (INT-FP-QSim's scaled small floats).

Rounding works on the float32 bit pattern (see :mod:`.kernels`): exact for
every finite float32 input, including ties and subnormals. Inputs in fp16 or
bf16 are widened to fp32 exactly and the result is cast back to the input
dtype (round to nearest even), so a format wider than the input dtype is
rounded twice; a format is never wider than fp32.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from . import kernels
from .base import Format, GradSpec, Rounding
from .scaling import Scaling, from_blocks, reduce_amax, static_amax_for, to_blocks

__all__ = ["FloatFormat", "scaled_forward"]

Specials = Literal["ieee", "fn", "none"]
_MODES = {Rounding.NEAREST_EVEN: 0, Rounding.NEAREST_AWAY: 1, Rounding.TOWARD_ZERO: 2,
          Rounding.STOCHASTIC: 3}


def _f32_bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


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

    def __post_init__(self) -> None:
        for f, lo, hi in (("exp_bits", 1, 8), ("man_bits", 0, 23)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"FloatFormat.{f} must be an int, got {type(v).__name__}")
            if not lo <= v <= hi:
                raise ValueError(f"FloatFormat.{f}={v} is out of range; allowed {lo}..{hi}")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1)
        elif isinstance(self.bias, bool) or not isinstance(self.bias, int):
            raise TypeError(f"FloatFormat.bias must be an int or None, got {type(self.bias).__name__}")
        if self.specials not in ("ieee", "fn", "none"):
            raise ValueError(f"FloatFormat.specials={self.specials!r} is not allowed; "
                             "use 'ieee', 'fn' or 'none'")
        if self.overflow not in ("saturate", "special"):
            raise ValueError(f"FloatFormat.overflow={self.overflow!r} is not allowed; "
                             "use 'saturate' or 'special'")
        if self.overflow == "special" and self.specials == "none":
            raise ValueError("FloatFormat.overflow='special' needs specials 'ieee' or 'fn': "
                             "a format without Inf/NaN codes can only saturate")
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding, field="FloatFormat.rounding"))
        if self.scaling is not None and not isinstance(self.scaling, Scaling):
            raise TypeError(f"FloatFormat.scaling must be a Scaling or None, got {type(self.scaling).__name__}")
        if not isinstance(self.grad, GradSpec):
            raise TypeError(f"FloatFormat.grad must be a GradSpec, got {type(self.grad).__name__}")
        emax = self._emax()
        if emax is None:
            raise ValueError(f"FloatFormat(E={self.exp_bits}, M={self.man_bits}, specials={self.specials!r}) "
                             "has no nonzero finite value")
        if not self.subnormals and not self.has_normals:
            raise ValueError(f"FloatFormat(E={self.exp_bits}, M={self.man_bits}, specials={self.specials!r}) "
                             "has only subnormal values, so subnormals=False leaves no nonzero "
                             "finite value; keep subnormals=True")
        if self.emin - self.man_bits < -149 or self.max > 3.4028234663852886e38:
            raise ValueError(f"FloatFormat(E={self.exp_bits}, M={self.man_bits}, bias={self.bias}, "
                             f"specials={self.specials!r}) does not fit in float32; choose a bias "
                             "whose range lies within float32's")
        if not self.name:
            object.__setattr__(self, "name", self._default_name())
        object.__setattr__(self, "_params", self._make_params())

    # -- the grid ---------------------------------------------------------
    @property
    def emin(self) -> int:
        return 1 - int(self.bias)  # type: ignore[arg-type]

    def _emax(self) -> int | None:
        top = 2**self.exp_bits - 1
        if self.specials == "ieee":
            top -= 1
        elif self.specials == "fn" and self.man_bits == 0:
            top -= 1
        if top < 1:
            return None if self.man_bits == 0 else 0  # only subnormals (handled in max)
        return top - int(self.bias)  # type: ignore[arg-type]

    @property
    def has_normals(self) -> bool:
        top = 2**self.exp_bits - 1 - (1 if self.specials == "ieee" or
                                       (self.specials == "fn" and self.man_bits == 0) else 0)
        return top >= 1

    @property
    def max(self) -> float:
        M = self.man_bits
        if not self.has_normals:
            return (1 - 2.0**-M) * 2.0**self.emin
        emax = self._emax()
        assert emax is not None
        frac = 2 - 2.0 ** (1 - M) if (self.specials == "fn" and M > 0) else 2 - 2.0**-M
        return math.ldexp(frac, emax)

    @property
    def min_normal(self) -> float:
        return math.ldexp(1.0, self.emin) if self.has_normals else self.max

    @property
    def min_subnormal(self) -> float:
        if not self.subnormals:
            return self.min_normal
        return math.ldexp(1.0, self.emin - self.man_bits)

    @property
    def spacing_at_one(self) -> float:
        e = max(0, self.emin)
        return math.ldexp(1.0, e - self.man_bits)

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def is_scaled(self) -> bool:
        return self.scaling is not None

    @property
    def granularity(self) -> str:
        return self.scaling.describe() if self.scaling is not None else "cast"

    def _default_name(self) -> str:
        n = f"e{self.exp_bits}m{self.man_bits}"
        if self.specials != "ieee":
            n += self.specials
        if self.bias != 2 ** (self.exp_bits - 1) - 1:
            n += f"b{self.bias}"
        return n

    def _make_params(self) -> Tensor:
        mx = self.max
        if self.overflow == "saturate":
            ovf = _f32_bits(mx)
        elif self.specials == "ieee":
            ovf = _f32_bits(math.inf)
        else:
            ovf = 0x7FC00000
        qmin = math.ldexp(1.0, self.emin - self.man_bits)
        half = _f32_bits(qmin / 2) if self.emin - self.man_bits - 1 >= -149 else 0
        # the step-based kernel needs every step 2^(e - M) and its reciprocal to be normal
        # fp32 powers of two, and |x / step| < 2^21 (exact additions of 0.5 or noise)
        elo = self.emin + 127
        ehi = math.frexp(mx)[1] + 127  # the exponent field just above max: larger values all overflow
        fast = (elo - self.man_bits >= 1 and 254 - (ehi - self.man_bits) >= 1 and self.man_bits <= 20
                and self.subnormals)
        return torch.tensor([self.man_bits, self.emin, _f32_bits(mx), ovf, _f32_bits(self.min_normal),
                             _f32_bits(qmin), half, 0 if self.subnormals else 1,
                             elo, ehi if fast else 0] + [0] * 7,
                            dtype=torch.int32)  # padded to 17: a size no tensor shape is "duck-sized" to

    # -- fast path through PyTorch's own casts ------------------------------
    def _native_dtype(self) -> torch.dtype | None:
        if self.rounding != Rounding.NEAREST_EVEN or not self.subnormals:
            return None
        key = (self.exp_bits, self.man_bits, self.bias, self.specials)
        if self.specials == "fn" and self.overflow != "saturate":
            return None  # PyTorch's e4m3fn cast saturates (Inf included); ours must give NaN
        return {(4, 3, 7, "fn"): torch.float8_e4m3fn, (5, 2, 15, "ieee"): torch.float8_e5m2,
                (5, 10, 15, "ieee"): torch.float16, (8, 7, 127, "ieee"): torch.bfloat16}.get(key)

    def cast(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Round a float32 tensor onto the grid (no scaling)."""
        if self.exp_bits == 8 and self.man_bits == 23 and self.specials == "ieee" \
                and self.subnormals and self.bias == 127:
            if self.overflow == "saturate":
                return x.clamp(-self.max, self.max)
            return x.clone()
        native = self._native_dtype()
        if native is not None and not kernels._use_compiled(x):
            xs = x.clamp(-self.max, self.max) if self.overflow == "saturate" else x
            return xs.to(native).to(torch.float32)
        return kernels.float_round(x, self._params, _MODES[self.rounding], generator)  # type: ignore[index]

    # -- the Format protocol -----------------------------------------------
    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        if self.scaling is None:
            y = self.cast(x, generator)
            mask = (x.abs() <= self.max) if want_mask else None
            return y, mask
        return scaled_forward(self, x, amax, generator, want_mask)

    def _scale_max(self) -> float:
        return self.max

    def _cast_scaled(self, xb: Tensor, inv: Tensor, scale: Tensor,
                     generator: torch.Generator | None) -> Tensor:
        if self.exp_bits == 8 and self.man_bits == 23 and self.specials == "ieee":
            return self.cast(xb * inv, generator) * scale
        return kernels.scaled_float_round(xb, self._params, inv, scale,  # type: ignore[attr-defined]
                                          _MODES[self.rounding], generator)  # type: ignore[index]

    def _in_range(self, x: Tensor, amax: Tensor) -> Tensor:
        return x.abs() <= amax


def scaled_forward(fmt: Format, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                   want_mask: bool) -> tuple[Tensor, Tensor | None]:
    """Scale x so that amax maps to the format's max, round, scale back.

    Shared by every scaled format: it needs ``scaling``, ``_scale_max()``,
    ``_cast_scaled(xb, inv, scale, generator)`` and ``_in_range(x, amax)``.
    """
    sc: Scaling = fmt.scaling  # type: ignore[attr-defined]
    blocked = sc.granularity == "block"
    if blocked:
        xb, moved, n = to_blocks(x, sc.resolved_axis, sc.block_size)
    else:
        xb = x
    a = _resolve_amax(fmt, x, xb, amax, sc)
    scale = a / fmt._scale_max()  # type: ignore[attr-defined]
    # amax 0 (an all-zero tensor) gives scale 1; a scale below float32's smallest normal is
    # raised to it, so that 1/scale stays finite (0 * inf would turn zeros into NaN)
    scale = torch.where(a > 0, torch.clamp(scale, min=2.0**-126), torch.ones_like(scale))
    inv = 1.0 / scale
    y = fmt._cast_scaled(xb, inv, scale, generator)  # type: ignore[attr-defined]
    # in range = not clipped: compared in the tensor's own units against amax, so the
    # element that defines a dynamic amax is never counted as clipped by rounding of 1/scale
    mask = fmt._in_range(xb, a) if want_mask else None  # type: ignore[attr-defined]
    if blocked:
        y = from_blocks(y, moved, n, sc.resolved_axis, x.dim())
        if mask is not None:
            mask = from_blocks(mask, moved, n, sc.resolved_axis, x.dim())
    return y, mask


def _resolve_amax(fmt: Format, x: Tensor, xb: Tensor, amax: Tensor | None, sc: Scaling) -> Tensor:
    if amax is None and sc.amax is not None:
        amax = torch.tensor(sc.amax, dtype=torch.float32, device=x.device)
    if amax is not None:
        return static_amax_for(x, amax.to(x.device), sc)
    if sc.mode == "static":
        raise ValueError(f"format {fmt.name} has static scaling but no amax was given: pass amax= "
                         "or calibrate (qsim_hooks.calibrate)")
    return reduce_amax(x, sc)


