"""Integer grids: :class:`IntFormat` (b-bit, always scaled from an amax) and :class:`IntElement`.

``IntFormat(8)`` is INT-FP-QSim's INT8: symmetric narrow range ±127 (the
TensorRT convention), a dynamic per-tensor amax taken from the tensor itself,
round to nearest even. ``narrow=False`` gives the full range [-128, 127].
The arithmetic is ``clamp(round(x * (1/scale)), qmin, qmax) * scale`` with
``scale = amax / qmax``, exactly what ``torch.fake_quantize_per_tensor_affine``
computes, so the two agree bit for bit.

:class:`IntElement` is the same two's complement grid as the element of a
block format (values ``k / per_unit``; the block supplies the scale). Both
take their range from :func:`int_limits`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import kernels
from ._checks import check_bool, check_float, check_int, check_name
from .base import Figures, Format, FormatInfo, GradSpec, Rounding
from .scaling import Scaling, scaled_forward, with_scaling_axis

__all__ = ["IntFormat", "IntElement", "int_limits"]


def int_limits(bits: int, signed: bool = True, narrow: bool = True) -> tuple[int, int]:
    """``(qmin, qmax)`` of a b-bit integer: ±(2^(b-1) - 1) narrow, down to -2^(b-1) full, [0, 2^b - 1] unsigned."""
    if not signed:
        return 0, 2**bits - 1
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if narrow else -qmax - 1), qmax


@dataclass(frozen=True)
class IntFormat(Format):
    """A b-bit integer grid with a scale.

    Args:
        bits: 2..16.
        signed: signed (default) or unsigned ([0, 2**b - 1]).
        narrow: symmetric narrow range ±(2**(b-1) - 1) (default) or full range
            down to -2**(b-1). Ignored for unsigned.
        rounding: a :class:`Rounding` or its name.
        scaling: where the amax comes from (default: dynamic, per tensor, max).
        grad: straight-through estimator and optional gradient format.
        name: display name (``int8``, ``uint8``, ... when omitted).
    """

    bits: int = 8  # type: ignore[assignment]  # a field here, a property (info.bits) on Format
    signed: bool = True
    narrow: bool = True
    rounding: Rounding | str = Rounding.NEAREST_EVEN
    scaling: Scaling = field(default_factory=Scaling)
    grad: GradSpec = field(default_factory=GradSpec)
    name: str = ""
    _info: FormatInfo = field(init=False, repr=False, compare=False)
    _mode: int = field(init=False, repr=False, compare=False)
    _lim: kernels.Consts = field(init=False, repr=False, compare=False)  # [qmin, qmax] for the kernel

    def __post_init__(self) -> None:
        check_int("IntFormat", "bits", self.bits, 2, 16)
        check_bool("IntFormat", "signed", self.signed)
        check_bool("IntFormat", "narrow", self.narrow)
        check_name("IntFormat", self.name)
        if not isinstance(self.scaling, Scaling):
            raise TypeError(f"IntFormat.scaling must be a Scaling, got {type(self.scaling).__name__} "
                            "(integers are always scaled)")
        if not isinstance(self.grad, GradSpec):
            raise TypeError(f"IntFormat.grad must be a GradSpec, got {type(self.grad).__name__}")
        rounding = Rounding.parse(self.rounding, field="IntFormat.rounding")
        object.__setattr__(self, "rounding", rounding)
        object.__setattr__(self, "_mode", rounding.mode_id)
        if not self.name:
            object.__setattr__(self, "name", f"{'' if self.signed else 'u'}int{self.bits}")
        object.__setattr__(self, "_info", FormatInfo(
            bits=self.bits, bits_per_value=float(self.bits), max=float(self.qmax), min_normal=1.0,
            min_subnormal=1.0, spacing_at_one=1.0, is_scaled=True, granularity=self.scaling.describe()))
        object.__setattr__(self, "_lim", kernels.Consts(torch.tensor([self.qmin, self.qmax], dtype=torch.float32)))

    @property
    def info(self) -> FormatInfo:
        return self._info

    @property
    def saturates(self) -> bool:
        return True

    @property
    def qmax(self) -> int:
        return int_limits(self.bits, self.signed, self.narrow)[1]

    @property
    def qmin(self) -> int:
        return int_limits(self.bits, self.signed, self.narrow)[0]

    def with_axis(self, axis: int) -> IntFormat:
        return with_scaling_axis(self, self.scaling, axis)

    def _scale_max(self) -> float:
        return float(self.qmax)

    def _cast_scaled(self, xb: Tensor, inv: Tensor, scale: Tensor,
                     generator: torch.Generator | None) -> Tensor:
        return kernels.int_fake_quant(xb, inv, scale, self._lim, self._mode, generator, unsigned=not self.signed)

    def _in_range(self, x: Tensor, amax: Tensor) -> Tensor:
        return (x >= amax * (self.qmin / self.qmax)) & (x <= amax)

    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        return scaled_forward(self, self.scaling, x, amax, generator, want_mask)


@dataclass(frozen=True)
class IntElement(Figures):
    """A b-bit two's complement element grid: values ``k / per_unit``.

    Args:
        bits: 2..24.
        per_unit: grid points per unit; ``None`` gives ``2**(bits-2)`` (one sign,
            one integer and bits-2 fraction bits: OCP MXINT8 for bits=8, and
            qtorch's block floating point).
        narrow: symmetric range +-(2**(bits-1) - 1) (default) or down to -2**(bits-1).
        rounding: a :class:`Rounding` or its name.
        name: display name.
    """

    bits: int = 8  # type: ignore[assignment]  # a field here, a property (info.bits) on Figures
    per_unit: float = None  # type: ignore[assignment]  # None -> 2**(bits-2), filled in below
    narrow: bool = True
    rounding: Rounding | str = Rounding.NEAREST_EVEN
    name: str = ""
    _info: FormatInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_int("IntElement", "bits", self.bits, 2, 24)
        check_bool("IntElement", "narrow", self.narrow)
        check_name("IntElement", self.name)
        pu = float(2 ** (self.bits - 2)) if self.per_unit is None else check_float("IntElement", "per_unit",
                                                                                   self.per_unit)
        if not (math.isfinite(pu) and pu > 0):
            raise ValueError(f"IntElement.per_unit={self.per_unit!r} must be finite and > 0")
        object.__setattr__(self, "per_unit", pu)
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding, field="IntElement.rounding"))
        if not self.name:
            object.__setattr__(self, "name", f"int{self.bits}")
        step = 1.0 / pu
        object.__setattr__(self, "_info", FormatInfo(
            bits=self.bits, bits_per_value=float(self.bits), max=self.qmax / pu, min_normal=step,
            min_subnormal=step, spacing_at_one=step, is_scaled=False, granularity="element"))

    @property
    def info(self) -> FormatInfo:
        return self._info

    @property
    def qmax(self) -> int:
        return int_limits(self.bits, True, self.narrow)[1]

    @property
    def qmin(self) -> int:
        return int_limits(self.bits, True, self.narrow)[0]
