"""Integer formats: b-bit signed or unsigned, always scaled from an amax.

``IntFormat(8)`` is INT-FP-QSim's INT8: symmetric narrow range ±127 (the
TensorRT convention), a dynamic per-tensor amax taken from the tensor itself,
round to nearest even. ``narrow=False`` gives the full range [-128, 127].
The arithmetic is ``clamp(round(x * (1/scale)), qmin, qmax) * scale`` with
``scale = amax / qmax``, exactly what ``torch.fake_quantize_per_tensor_affine``
computes, so the two agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import kernels
from .base import Format, GradSpec, Rounding
from .floating import _MODES, scaled_forward
from .scaling import Scaling

__all__ = ["IntFormat"]


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

    bits: int = 8  # type: ignore[assignment]
    signed: bool = True
    narrow: bool = True
    rounding: Rounding | str = Rounding.NEAREST_EVEN
    scaling: Scaling = field(default_factory=Scaling)
    grad: GradSpec = field(default_factory=GradSpec)
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise TypeError(f"IntFormat.bits must be an int, got {type(self.bits).__name__}")
        if not 2 <= self.bits <= 16:
            raise ValueError(f"IntFormat.bits={self.bits} is out of range; allowed 2..16")
        if not isinstance(self.scaling, Scaling):
            raise TypeError(f"IntFormat.scaling must be a Scaling, got {type(self.scaling).__name__} "
                            "(integers are always scaled)")
        if not isinstance(self.grad, GradSpec):
            raise TypeError(f"IntFormat.grad must be a GradSpec, got {type(self.grad).__name__}")
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding, field="IntFormat.rounding"))
        if not self.name:
            object.__setattr__(self, "name", f"{'' if self.signed else 'u'}int{self.bits}")

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -self.qmax if self.narrow else -(2 ** (self.bits - 1))

    @property
    def max(self) -> float:
        return float(self.qmax)

    @property
    def min_subnormal(self) -> float:
        return 1.0

    @property
    def spacing_at_one(self) -> float:
        return 1.0

    @property
    def is_scaled(self) -> bool:
        return True

    @property
    def granularity(self) -> str:
        return self.scaling.describe()

    def _scale_max(self) -> float:
        return float(self.qmax)

    def _cast_scaled(self, xb: Tensor, inv: Tensor, scale: Tensor,
                     generator: torch.Generator | None) -> Tensor:
        return kernels.int_fake_quant(xb, inv, scale, self.qmin, self.qmax,
                                      _MODES[self.rounding], generator)  # type: ignore[index]

    def _in_range(self, x: Tensor, amax: Tensor) -> Tensor:
        return (x >= amax * (self.qmin / self.qmax)) & (x <= amax)

    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        return scaled_forward(self, x, amax, generator, want_mask)
