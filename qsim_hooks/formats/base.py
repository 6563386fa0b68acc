"""The format protocol: what every number format is and does.

A format is a small frozen value. Calling it on a tensor returns the
fake-quantized tensor (quantize, then dequantize) with the same shape, dtype
and device. Everything a format needs lives in its fields; a static scale can
be passed per call (``amax=``), which is how sessions and calibrations supply
scales without mutating the format.

This module owns the shared vocabulary (:class:`Rounding`, :class:`GradSpec`)
and the autograd wrapper that gives every format a straight-through gradient.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = ["Format", "Rounding", "GradSpec", "check_tensor"]


class Rounding(str, enum.Enum):
    """Element rounding modes shared by every format."""

    NEAREST_EVEN = "nearest_even"  #: IEEE default, what PyTorch casts do
    NEAREST_AWAY = "nearest_away"  #: ties away from zero (qtorch, microxcaling)
    TOWARD_ZERO = "toward_zero"  #: truncation
    STOCHASTIC = "stochastic"  #: unbiased; seeded through a torch.Generator

    @classmethod
    def parse(cls, value: Any, *, field: str = "rounding") -> Rounding:
        if isinstance(value, Rounding):
            return value
        aliases = {"nearest": cls.NEAREST_EVEN, "rne": cls.NEAREST_EVEN, "even": cls.NEAREST_EVEN,
                   "away": cls.NEAREST_AWAY, "rtz": cls.TOWARD_ZERO, "trunc": cls.TOWARD_ZERO,
                   "sr": cls.STOCHASTIC}
        if isinstance(value, str):
            key = value.lower()
            if key in aliases:
                return aliases[key]
            for member in cls:
                if member.value == key:
                    return member
        allowed = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{field}={value!r} is not a rounding mode; allowed: {allowed}")


@dataclass(frozen=True)
class GradSpec:
    """How gradients flow through a quantizer during quantization-aware training.

    ``estimator="clipped"`` (default) passes the gradient where the input was in
    the format's range and zeroes it where the forward pass clipped; ``"ste"``
    passes it everywhere. ``format`` (optional) fake-quantizes the gradient in
    the backward pass (INT-FP-QSim: E3M4 forward, E5M2 backward).
    """

    estimator: Literal["clipped", "ste"] = "clipped"
    format: Any = None

    def __post_init__(self) -> None:
        if self.estimator not in ("clipped", "ste"):
            raise ValueError(
                f"GradSpec.estimator={self.estimator!r} is not allowed; use 'clipped' or 'ste'")
        if self.format is not None:
            from .registry import as_format

            object.__setattr__(self, "format", as_format(self.format, field="GradSpec.format"))


_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(x: Any, who: str) -> None:
    """Raise a clear TypeError for inputs a format cannot take."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{who}: x has dtype {x.dtype}, which is not supported; "
            "allowed: torch.float32, torch.float16, torch.bfloat16 (float64 is computed in float32)")


class Format:
    """Base class of every number format.

    Subclasses implement :meth:`_forward`, which returns the fake-quantized
    float32 tensor and the boolean "in range" mask used by the clipped
    straight-through estimator (or ``None`` when not asked for).
    """

    name: str
    grad: GradSpec

    # -- to implement ---------------------------------------------------
    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    # -- descriptive figures (used by the formats table and the report) --
    @property
    def bits(self) -> int | None:
        return None

    @property
    def max(self) -> float:
        return float("inf")

    @property
    def min_subnormal(self) -> float:
        return 0.0

    @property
    def spacing_at_one(self) -> float:
        return 0.0

    @property
    def is_scaled(self) -> bool:
        return False

    @property
    def granularity(self) -> str:
        return "-"

    # -- calling ----------------------------------------------------------
    def __call__(self, x: Tensor, *, amax: Any = None,
                 generator: torch.Generator | None = None) -> Tensor:
        check_tensor(x, f"format {self.name}")
        amax_t = None if amax is None else _check_amax(amax, self.name, x.device)
        return self._quantize_checked(x, amax_t, generator)

    def _quantize_checked(self, x: Tensor, amax_t: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """``__call__`` after its checks: ``amax_t`` is already a valid float32 tensor on x's device.

        Quantization points check a static amax once, when it is set; checking it again
        on every call would cost a host sync per call.
        """
        if x.numel() == 0:
            return x.clone()
        if torch.is_grad_enabled() and x.requires_grad:
            return _QuantizeFn.apply(x, self, amax_t, generator)
        y, _ = self._forward(_to_f32(x), amax_t, generator, False)
        return y.to(x.dtype)

    def with_axis(self, axis: int) -> Format:
        """A copy whose scaling axis is ``axis`` when the format left it open (``None``).

        Quantization points call this with their natural axis (a weight's
        output channels, an activation's reduction axis); a format with an
        explicit axis, or without axis-dependent scaling, is returned as is.
        """
        sc = getattr(self, "scaling", None)
        if sc is None or sc.axis is not None or sc.granularity == "tensor":
            return self
        import dataclasses

        return dataclasses.replace(self, scaling=dataclasses.replace(sc, axis=axis))  # type: ignore[type-var]

    def quantize(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Alias of calling the format (reads better in user code)."""
        return self(x, **kwargs)

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.name


def _to_f32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _check_amax(amax: Any, who: str, device: torch.device) -> Tensor:
    try:
        t = torch.as_tensor(amax, dtype=torch.float32, device=device)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"format {who}: amax must be a number or a tensor of numbers, "
                        f"got {type(amax).__name__}") from exc
    if t.numel() == 0:
        raise ValueError(f"format {who}: amax is empty")
    bad = ~torch.isfinite(t) | (t <= 0)
    if bool(bad.any()):
        raise ValueError(
            f"format {who}: amax must be finite and > 0, got {t.flatten()[bad.flatten()][:4].tolist()}")
    return t


class _QuantizeFn(torch.autograd.Function):
    """Forward: the format. Backward: the format's straight-through estimator."""

    @staticmethod
    def forward(ctx, x, fmt, amax, generator):  # type: ignore[override]
        want_mask = fmt.grad.estimator == "clipped"
        y, mask = fmt._forward(_to_f32(x.detach()), amax, generator, want_mask)
        ctx.fmt = fmt
        if mask is not None:
            ctx.save_for_backward(mask)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        fmt = ctx.fmt
        if fmt.grad.estimator == "clipped":
            (mask,) = ctx.saved_tensors
            g = g * mask.to(g.dtype)
        if fmt.grad.format is not None:
            g = fmt.grad.format(g)
        return g, None, None, None
