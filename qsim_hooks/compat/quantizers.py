"""INT-FP-QSim's named quantizers, on the qsim-hooks format engine.

INT-FP-QSim (github.com/lightmatter-ai/INT-FP-QSim, ``int_fp_qsim/formats.py``
and ``quantizer.py``, read for this module; nothing copied) names seven
quantizers. Each is reproduced here with the call signature its users' scripts
use, mapped onto :class:`~qsim_hooks.formats.IntFormat` /
:class:`~qsim_hooks.formats.FloatFormat`:

* ``INT8`` / ``INT4``: ``quantize_to_int(x, num_bits)``, TensorRT's ``fake_tensor_quant``
  with narrow range and a dynamic amax -> ``IntFormat(8)`` / ``IntFormat(4)``: ±127 / ±7,
  amax = max|x| unless a static scale is given.
* ``E4M3`` / ``FP16``: qtorch ``quantizer(FloatingPoint(4, 3) / (5, 10), "nearest")`` ->
  ``FloatFormat(4, 3 / 5, 10, specials="none", rounding="nearest_away")``: ties away,
  saturating at 480 / 131008, plain straight-through gradient.
* ``BF16``: ``x.to(torch.bfloat16).float()`` -> ``FloatFormat(8, 7, overflow="special")``.
* ``E1M2`` / ``E2M1``: ``quantize_to_fp(x, mantissa_bits, exponent_bits)`` (AIMET-style)
  -> ``FloatFormat(1, 2 / 2, 1, specials="none")`` scaled so that amax is the largest
  value (3.5 / 6).

Call signatures (keyword arguments as in INT-FP-QSim; ``x`` is the only positional one)::

    INT8(x, calibration="max", percentile=99.0, static_scale=None, per_channel_axis=None, unsigned=False)
    E2M1(x, calibration="max", per_channel_axis=0, percentile=99.0, static_scale=None)
    E4M3(x); FP16(x); BF16(x)

``static_scale`` is a fixed amax (what INT-FP-QSim's calibration attaches as
``amax_input`` / ``amax_weight``): a number, a tensor or a numpy array. One
value scales the whole tensor; an array that varies along one axis of ``x``
(``[C, 1, 1, 1]`` for a conv weight) scales per channel. ``calibration`` is
``"max"`` or ``"percentile"`` (INT-FP-QSim's rule: the element at index
``p/100 * (n - 1)`` of the sorted ``|x|``, the mean of the two neighbours when
that index is fractional). Every quantizer is also a
:class:`~qsim_hooks.formats.Format`, so it can be used wherever qsim-hooks
takes a format (``amax=`` is accepted as our name for ``static_scale``).

Semantics kept: narrow-range symmetric integers; TensorRT's rule that an amax
<= 2^-24 quantizes to zero; the clipped straight-through gradient of the
integer quantizers; qtorch's ties-away rounding, saturation at 480 / 131008
and plain straight-through gradient; BF16's round-to-nearest-even cast with
overflow to Inf and its gradient (the autograd of ``.to(bfloat16)`` rounds the
gradient to bf16 too); the ``+ 1e-10`` that ``quantize_to_fp`` adds to its
amax; ``quantize_to_fp`` computing a dynamic amax per tensor even when
``per_channel_axis`` is given (INT-FP-QSim uses that axis only to lay out a
static scale).

Differences, on purpose:

* Output dtype is the input dtype (qsim-hooks convention; INT-FP-QSim's BF16
  always returned float32). NaN stays NaN (qtorch turned it into ±480 or 0).
  qtorch's double rounding of subnormals and its +0.0 for -0.0 are not
  reproduced (see ``tests/formats/test_interop.py``).
* The integer arithmetic is ``round(x * (1 / s)) * s`` with ``s = amax / qmax``
  (PyTorch's fake-quantize), TensorRT's is ``round(x * (qmax / amax)) /
  (qmax / amax)``: the results agree to within a float32 ulp, and an exact tie
  can round the other way when the two scales differ in their last bit.
* A dynamic amax ignores NaN and Inf elements (TensorRT's would be NaN/Inf).
* ``per_channel_axis`` for a dynamic integer amax gives one amax per index of
  that axis. INT-FP-QSim's ``_tensor_max`` reduced *along* the axis instead,
  which its layers never exercised (they pass a static per-channel scale).
* ``unsigned=True`` with negative input raises ``ValueError`` (TensorRT: ``TypeError``).
* ``quantize_to_fp``'s gradient is the clipped straight-through estimator;
  INT-FP-QSim's ``FPQuantFunction`` passed the gradient only where ``|x|``
  was below the element's own quantization step, which blocks almost all of it.
* ``E4M3``, ``FP16`` and ``BF16`` are unscaled casts and reject
  ``static_scale`` with a ``TypeError`` (INT-FP-QSim's raised one too); use a
  scaled :class:`~qsim_hooks.formats.FloatFormat` for a scaled E4M3.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..formats.base import Format, GradSpec, check_tensor
from ..formats.floating import FloatFormat
from ..formats.integer import IntFormat
from ..formats.scaling import Scaling, reduce_amax

__all__ = ["INT8", "INT4", "E4M3", "FP16", "BF16", "E1M2", "E2M1", "IntQuantizer", "FloatQuantizer",
           "CastQuantizer", "quantize_to_int", "quantize_to_fp"]

_TRT_ZERO_AMAX = 1.0 / (1 << 24)  # TensorRT: an amax at or below this quantizes to zero
_FP_AMAX_EPS = 1e-10  # quantize_to_fp adds this to its amax


def _percentile_midpoint(x: Tensor, p: float) -> Tensor:
    """INT-FP-QSim's percentile of |x|: index p/100*(n-1) of the sorted values, midpoint if fractional."""
    a = x.detach().abs().flatten().float()
    n = a.numel()
    index = (p / 100) * (n - 1)
    lo, hi = math.floor(index), math.ceil(index)
    v_lo = torch.kthvalue(a, lo + 1).values
    if lo == hi:
        return v_lo
    return (v_lo + torch.kthvalue(a, hi + 1).values) / 2


def _as_amax(value: Any, who: str) -> Tensor:
    try:
        t = torch.as_tensor(value, dtype=torch.float32).detach()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{who}: static_scale must be a number, a tensor or an array, "
                        f"got {type(value).__name__}") from exc
    if t.numel() == 0:
        raise ValueError(f"{who}: static_scale is empty")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{who}: static_scale must be finite and >= 0, got {t.flatten()[:4].tolist()}")
    return t


def _channel_axis(amax: Tensor, x: Tensor, who: str) -> int | None:
    """The axis of ``x`` a broadcastable ``amax`` varies along (None: one value)."""
    if amax.numel() == 1:
        return None
    if amax.dim() > x.dim():
        raise ValueError(f"{who}: static_scale of shape {tuple(amax.shape)} has more dims than x "
                         f"{tuple(x.shape)}")
    shape = [1] * (x.dim() - amax.dim()) + list(amax.shape)  # numpy broadcasting, right-aligned
    dims = [d for d, n in enumerate(shape) if n != 1]
    if len(dims) != 1 or shape[dims[0]] != x.shape[dims[0]]:
        raise ValueError(f"{who}: static_scale of shape {tuple(amax.shape)} must vary along exactly one axis "
                         f"of x {tuple(x.shape)} (one amax per channel), or be a single value")
    return dims[0]


class _Compat(Format):
    """Shared machinery: a name, the qsim-hooks format it maps to, INT-FP-QSim's keywords."""

    format: Format

    def __init__(self, name: str, fmt: Format, description: str) -> None:
        self.name = name
        self.format = fmt
        self.grad = fmt.grad
        self._description = description

    # descriptive figures come from the format it maps to
    @property
    def bits(self) -> int | None:
        return self.format.bits

    @property
    def max(self) -> float:
        return self.format.max

    @property
    def min_subnormal(self) -> float:
        return self.format.min_subnormal

    @property
    def spacing_at_one(self) -> float:
        return self.format.spacing_at_one

    @property
    def is_scaled(self) -> bool:
        return self.format.is_scaled

    @property
    def granularity(self) -> str:
        return self.format.granularity

    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        return self.format._forward(x, amax, generator, want_mask)

    def _static(self, static_scale: Any, amax: Any) -> Any:
        if static_scale is not None and amax is not None:
            raise ValueError(f"{self.name}: pass static_scale or amax, not both")
        return static_scale if static_scale is not None else amax

    def __repr__(self) -> str:
        return f"{self.name} ({self._description})"


class IntQuantizer(_Compat):
    """INT-FP-QSim's ``quantize_to_int`` for a fixed bit width (``INT8``, ``INT4``)."""

    def __init__(self, num_bits: int, name: str | None = None) -> None:
        name = name or f"INT{num_bits}"
        super().__init__(name, IntFormat(num_bits, narrow=True, name=name),
                         f"INT-FP-QSim quantize_to_int, num_bits={num_bits}, narrow range")
        self.num_bits = num_bits

    def __call__(self, x_float: Tensor, *, calibration: str = "max", percentile: float = 99.0,
                 static_scale: Any = None, per_channel_axis: int | None = None, unsigned: bool = False,
                 amax: Any = None, generator: torch.Generator | None = None) -> Tensor:
        who = f"compat {self.name}"
        check_tensor(x_float, who)
        if unsigned and x_float.numel() and bool((x_float < 0).any()):
            raise ValueError(f"{who}: unsigned=True but x has negative values")
        static = self._static(static_scale, amax)
        if static is not None:
            a = _as_amax(static, who).to(x_float.device)
            axis = _channel_axis(a, x_float, who)
            a = a.reshape(()) if axis is None else a.reshape(-1)
        elif calibration == "max":
            axis = per_channel_axis
            g = Scaling() if axis is None else Scaling("channel", axis=axis)
            a = reduce_amax(x_float.detach().float(), g).reshape(-1 if axis is not None else ())
        elif calibration == "percentile":
            if per_channel_axis is not None:
                raise ValueError(f"{who}: calibration='percentile' is per tensor only (INT-FP-QSim does not "
                                 "define it per channel); drop per_channel_axis")
            axis, a = None, _percentile_midpoint(x_float, percentile)
        else:
            raise ValueError(f"{who}: calibration={calibration!r} is not supported; use 'max' or "
                             "'percentile', or pass static_scale")
        fmt = IntFormat(self.num_bits, signed=not unsigned, narrow=True, name=self.name,
                        scaling=Scaling("tensor" if axis is None else "channel", axis=axis, mode="static"))
        zero = a <= _TRT_ZERO_AMAX  # TensorRT: such channels quantize to zero
        y = fmt(x_float, amax=torch.where(zero, torch.ones_like(a), a), generator=generator)
        if bool(zero.any()):
            keep = (~zero).to(y.dtype)
            if axis is not None:
                shape = [1] * x_float.dim()
                shape[axis] = -1
                keep = keep.reshape(shape)
            y = y * keep
        return y


class FloatQuantizer(_Compat):
    """INT-FP-QSim's ``quantize_to_fp`` (AIMET-style scaled ExMy: amax maps to the format's max)."""

    def __init__(self, exponent_bits: int, mantissa_bits: int, name: str | None = None) -> None:
        name = name or f"E{exponent_bits}M{mantissa_bits}"
        fmt = FloatFormat(exponent_bits, mantissa_bits, specials="none", scaling=Scaling(), name=name)
        super().__init__(name, fmt, f"INT-FP-QSim quantize_to_fp, E{exponent_bits}M{mantissa_bits}, "
                                    "every code finite, scaled so that amax is the largest value")
        self.exponent_bits = exponent_bits
        self.mantissa_bits = mantissa_bits

    def __call__(self, x_float: Tensor, *, calibration: str = "max", per_channel_axis: int = 0,
                 percentile: float = 99.0, static_scale: Any = None, amax: Any = None,
                 generator: torch.Generator | None = None) -> Tensor:
        who = f"compat {self.name}"
        check_tensor(x_float, who)
        static = self._static(static_scale, amax)
        axis: int | None = None
        if static is not None:
            a = _as_amax(static, who).to(x_float.device)
            if a.dim() >= 1 and a.shape[0] != 1 and a.dim() != x_float.dim():
                # INT-FP-QSim lays a per-channel scale out along per_channel_axis
                shape = [1] * x_float.dim()
                shape[per_channel_axis] = -1
                a = a.reshape(shape)
            axis = _channel_axis(a, x_float, who)
            a = a.reshape(()) if axis is None else a.reshape(-1)
        elif calibration == "max":
            a = reduce_amax(x_float.detach().float(), Scaling())
        elif calibration == "percentile":
            a = _percentile_midpoint(x_float, percentile)
        else:
            raise ValueError(f"{who}: calibration={calibration!r} is not supported; use 'max' or "
                             "'percentile', or pass static_scale")
        a = a + _FP_AMAX_EPS
        fmt = FloatFormat(self.exponent_bits, self.mantissa_bits, specials="none", name=self.name,
                          scaling=Scaling("tensor" if axis is None else "channel", axis=axis, mode="static"))
        return fmt(x_float, amax=a, generator=generator)


class CastQuantizer(_Compat):
    """An unscaled cast (INT-FP-QSim's qtorch-based ``E4M3`` / ``FP16`` and its ``BF16``)."""

    def __call__(self, x: Tensor, *, amax: Any = None, generator: torch.Generator | None = None,
                 **kwargs: Any) -> Tensor:
        if "static_scale" in kwargs or amax is not None:
            raise TypeError(f"compat {self.name} is an unscaled cast and takes no static_scale (INT-FP-QSim's "
                            f"{self.name} did not either); for a scaled format use FloatFormat(..., "
                            "scaling=Scaling(...))")
        if kwargs:
            raise TypeError(f"compat {self.name}: unexpected keyword arguments {sorted(kwargs)}")
        return self.format(x, generator=generator)


INT8 = IntQuantizer(8)
INT4 = IntQuantizer(4)
E4M3 = CastQuantizer("E4M3", FloatFormat(4, 3, specials="none", rounding="nearest_away", grad=GradSpec("ste"),
                                 name="E4M3"),
             "qtorch FloatingPoint(exp=4, man=3), nearest: ties away, saturating at 480")
FP16 = CastQuantizer("FP16", FloatFormat(5, 10, specials="none", rounding="nearest_away", grad=GradSpec("ste"),
                                 name="FP16"),
             "qtorch FloatingPoint(exp=5, man=10), nearest: ties away, saturating at 131008")
_BF16_CAST = FloatFormat(8, 7, overflow="special", name="bf16-cast")
BF16 = CastQuantizer("BF16", FloatFormat(8, 7, overflow="special", grad=GradSpec("ste", format=_BF16_CAST),
                                         name="BF16"),
             "x.to(torch.bfloat16): nearest even, overflow to Inf; the gradient is rounded to bf16 too")
E1M2 = FloatQuantizer(1, 2)
E2M1 = FloatQuantizer(2, 1)


def quantize_to_int(x_float: Tensor, num_bits: int, calibration: str = "max", percentile: float = 99.0,
                    static_scale: Any = None, per_channel_axis: int | None = None,
                    unsigned: bool = False) -> Tensor:
    """INT-FP-QSim's ``quantize_to_int`` with its positional order (see :class:`IntQuantizer`)."""
    return IntQuantizer(num_bits)(x_float, calibration=calibration, percentile=percentile,
                                  static_scale=static_scale, per_channel_axis=per_channel_axis, unsigned=unsigned)


def quantize_to_fp(x_float: Tensor, mantissa_bits: int, exponent_bits: int, calibration: str = "max",
                   per_channel_axis: int = 0, percentile: float = 99.0, static_scale: Any = None) -> Tensor:
    """INT-FP-QSim's ``quantize_to_fp`` with its positional order (see :class:`FloatQuantizer`)."""
    return FloatQuantizer(exponent_bits, mantissa_bits)(x_float, calibration=calibration,
                                                        per_channel_axis=per_channel_axis, percentile=percentile,
                                                        static_scale=static_scale)

