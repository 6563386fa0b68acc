"""The format protocol: what every number format is and does.

A format is a small frozen value. Calling it on a tensor returns the
fake-quantized tensor (quantize, then dequantize) with the same shape, dtype
and device. Everything a format needs lives in its fields; a static scale can
be passed per call (``amax=``), which is how sessions and calibrations supply
scales without mutating the format.

This module owns the shared vocabulary (:class:`Rounding`, :class:`GradSpec`,
:class:`FormatInfo`, :data:`FormatLike`) and the autograd wrapper that gives
every format a straight-through gradient.

``GradSpec(format="e5m2")`` takes a name, but names live in the registry, which
is built on this module. Rather than importing upwards, this module keeps a
resolver slot that :mod:`.registry` fills when it is imported (always, by the
package's ``__init__``): imports stay one way, and a name still becomes a
Format as soon as the GradSpec is made.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Union, cast

import torch
from torch import Tensor

from . import kernels, saved
from ._checks import AMAX_RANGE, check_choice

if TYPE_CHECKING:  # qtorch compiles a C++ extension on import: only its type is named here
    from qtorch.number import Number as QtorchNumber

__all__ = ["Format", "Figures", "FormatLike", "FormatInfo", "Rounding", "GradSpec", "check_tensor"]

#: What :func:`~qsim_hooks.formats.as_format` turns into a :class:`Format`: a
#: Format, a name (``"e4m3"``, ``"int8"``, any ``eXmY`` / ``intN``), a qtorch
#: number (``FloatingPoint``, ``FixedPoint``, ``BlockFloatingPoint``) or any
#: callable tensor -> tensor.
FormatLike = Union["Format", str, "QtorchNumber", Callable[[Tensor], Tensor]]


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

    @property
    def mode_id(self) -> int:
        """The id the kernels use: 0 nearest even, 1 nearest away, 2 toward zero, 3 stochastic."""
        return _MODE_IDS[self]


_MODE_IDS = {Rounding.NEAREST_EVEN: 0, Rounding.NEAREST_AWAY: 1, Rounding.TOWARD_ZERO: 2, Rounding.STOCHASTIC: 3}
_resolve_format: Callable[[Any, str], Format | None] | None = None


def set_format_resolver(fn: Callable[[Any, str], Format | None]) -> None:
    """Install the function that turns a format-like value into a Format (called by :mod:`.registry`)."""
    global _resolve_format
    _resolve_format = fn


@dataclass(frozen=True)
class GradSpec:
    """How gradients flow through a quantizer during quantization-aware training.

    ``estimator="clipped"`` (default) passes the gradient where the input was in
    the format's range and zeroes it where the forward pass clipped; ``"ste"``
    passes it everywhere. ``format`` (optional) fake-quantizes the gradient in
    the backward pass (INT-FP-QSim: E3M4 forward, E5M2 backward).
    """

    estimator: Literal["clipped", "ste"] = "clipped"
    format: FormatLike | None = None

    def __post_init__(self) -> None:
        check_choice("GradSpec", "estimator", self.estimator, ("clipped", "ste"))
        if self.format is not None and not isinstance(self.format, Format):
            if _resolve_format is None:
                raise TypeError("GradSpec.format: format names resolve once qsim_hooks.formats is imported")
            object.__setattr__(self, "format", _resolve_format(self.format, "GradSpec.format"))

    @property
    def grad_format(self) -> Format | None:
        """The gradient's format (``format``, resolved)."""
        return cast("Format | None", self.format)


@dataclass(frozen=True)
class FormatInfo:
    """A format's figures as plain numbers: the one place they are computed.

    The formats table, the report, plots and the kernels' constants all read
    these. For scaled formats (integers, scaled floats, block formats) the
    magnitudes are in units of the scale.

    Attributes:
        bits: bits per element (``None`` when unknown, e.g. a callable).
        bits_per_value: storage per element including its share of block
            scales (MXFP4: 4.25, NVFP4: 4.5); equals ``bits`` otherwise.
        max: the largest finite magnitude (``inf`` when unknown).
        min_normal: the smallest normal magnitude (``min_subnormal`` for integers).
        min_subnormal: the smallest non-zero magnitude (0 when unknown).
        spacing_at_one: the grid step just above 1.0 (0 when unknown).
        is_scaled: whether values are scaled from an amax.
        granularity: ``"cast"``, ``"tensor dyn-max"``, ``"block(32, axis=auto) e8m0-floor"``, ...
    """

    bits: int | None = None
    bits_per_value: float | None = None
    max: float = float("inf")
    min_normal: float = 0.0
    min_subnormal: float = 0.0
    spacing_at_one: float = 0.0
    is_scaled: bool = False
    granularity: str = "-"


_UNKNOWN = FormatInfo()


_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(x: Any, who: str) -> None:
    """Raise a clear TypeError for inputs a format cannot take."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"{who}: x has dtype {x.dtype}, which is not supported; "
            "allowed: torch.float32, torch.float16, torch.bfloat16 (float64 is computed in float32)")


class Figures:
    """A grid's figures as attributes: views of :attr:`info` (formats and block element grids)."""

    @property
    def info(self) -> FormatInfo:
        """The figures (subclasses work them out once, when made)."""
        return _UNKNOWN

    @property
    def bits(self) -> int | None:
        return self.info.bits

    @property
    def bits_per_value(self) -> float | None:
        return self.info.bits_per_value

    @property
    def max(self) -> float:
        return self.info.max

    @property
    def min_normal(self) -> float:
        return self.info.min_normal

    @property
    def min_subnormal(self) -> float:
        return self.info.min_subnormal

    @property
    def spacing_at_one(self) -> float:
        return self.info.spacing_at_one

    @property
    def is_scaled(self) -> bool:
        return self.info.is_scaled

    @property
    def granularity(self) -> str:
        return self.info.granularity


class Format(Figures):
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

    def _forward_packed(self, x: Tensor, amax: Tensor | None,
                        generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``_forward`` with the mask, packed as bits (:func:`.saved.pack_mask`); formats may fuse the two."""
        y, mask = self._forward(x, amax, generator, True)
        return y, saved.pack_mask(mask)

    @property
    def saturates(self) -> bool:
        """Finite in, finite out: results are clamped to the input dtype's range when cast back."""
        return False

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
        return kernels.to_dtype(y, x.dtype, self.saturates)

    def with_axis(self, axis: int) -> Format:
        """A copy whose scaling axis is ``axis`` when the format left it open (``None``).

        Quantization points call this with their natural axis (a weight's
        output channels, an activation's reduction axis); a format with an
        explicit axis, or without axis-dependent scaling (this default), is
        returned as is.
        """
        return self

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
        given = torch.as_tensor(amax, dtype=torch.float64, device="cpu").detach().flatten()[bad.flatten().cpu()][:4]
        raise ValueError(f"format {who}: amax must be finite and > 0 in float32 ({AMAX_RANGE}), got "
                         f"{given.tolist()} (float32: {t.flatten()[bad.flatten()][:4].tolist()})")
    return t


class _QuantizeFn(torch.autograd.Function):
    """Forward: the format. Backward: the format's straight-through estimator.

    The clipped estimator's mask is kept as bits; a deterministic format's result is marked as
    re-makeable from ``x``, so a layer that saves it keeps a recipe instead (:mod:`.saved`).
    """

    @staticmethod
    def forward(ctx, x, fmt, amax, generator):  # type: ignore[override]
        ctx.fmt = fmt
        if fmt.grad.estimator == "clipped":
            y, packed = fmt._forward_packed(_to_f32(x.detach()), amax, generator)
            ctx.save_for_backward(packed)
        else:
            y, _ = fmt._forward(_to_f32(x.detach()), amax, generator, False)
        # a kernel's flat result reshaped is a view, and autograd forbids modifying a custom Function's
        # view output in place (a ReLU(inplace=True) after an output point): hand out a plain tensor
        y = kernels.to_dtype(y, x.dtype, fmt.saturates).detach()
        if _remakeable(fmt) and not torch.compiler.is_compiling():
            saved.mark(y, x, lambda src: _remake(src, fmt, amax))
        return y

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        fmt = ctx.fmt
        if fmt.grad.estimator == "clipped":
            (packed,) = ctx.saved_tensors
            g = saved.masked_grad(g, packed)
        gf = fmt.grad.grad_format
        if gf is not None:
            g = gf(g)
        return g, None, None, None


def _remakeable(fmt: Format) -> bool:
    """Whether calling ``fmt`` again on the same tensor gives the same bits (no stochastic rounding)."""
    r = getattr(fmt, "rounding", None)
    return isinstance(r, Rounding) and r is not Rounding.STOCHASTIC and type(fmt).__module__.startswith(__package__)


def _remake(x: Tensor, fmt: Format, amax: Tensor | None) -> Tensor:
    """The forward's result again, from its source ``x`` (with a graph when the backward builds one)."""
    if torch.is_grad_enabled() and x.requires_grad:  # create_graph=True: the STE stays in the graph
        return _QuantizeFn.apply(x, fmt, amax, None)
    y, _ = fmt._forward(_to_f32(x.detach()), amax, None, False)
    return kernels.to_dtype(y, x.dtype, fmt.saturates)
