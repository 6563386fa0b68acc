"""INT-FP-QSim's named quantizers, computing what the old ones computed, bit for bit.

INT-FP-QSim (github.com/lightmatter-ai/INT-FP-QSim, ``int_fp_qsim/formats.py`` and ``quantizer.py``, read
for this module; nothing copied) names seven quantizers. Each is reproduced with its call signature and its
arithmetic, so an old script's numbers come out unchanged (tests/compat/test_golden.py compares them with
the old tool's own outputs):

* ``INT8`` / ``INT4``: ``quantize_to_int`` - TensorRT's narrow-range fake quantization
  (:mod:`._trt`): ``round(x * (qmax / amax)) / (qmax / amax)``, ties to even, ±127 / ±7, unsigned [0, 255],
  an amax <= 2^-24 gives zeros, the gradient passes where ``|x| <= amax``.
* ``E4M3`` / ``FP16``: qtorch's ``quantizer(FloatingPoint(4, 3) / (5, 10), "nearest")`` ->
  ``FloatFormat(.., specials="none", rounding="nearest_away")``: ties away, saturating at 480 / 131008,
  plain straight-through gradient.
* ``BF16``: ``x.to(torch.bfloat16).float()`` -> ``FloatFormat(8, 7, overflow="special")``; its gradient is
  rounded to bf16 as the cast's autograd does.
* ``E1M2`` / ``E2M1``: ``quantize_to_fp(x, mantissa_bits, exponent_bits)`` (AIMET's scaled float): a
  real-valued exponent bias from the amax (``+ 1e-10``), a per-element step ``2^(floor(log2|x| + bias) - M -
  bias)``, computed with the same float32 ``log2`` / ``pow`` operations on the same shapes as the old tool
  (their last bit depends on the vectorised code path, so a different formula would differ there).

Call signatures (keywords as in INT-FP-QSim; ``x`` is the only positional argument)::

    INT8(x, calibration="max", percentile=99.0, static_scale=None, per_channel_axis=None, unsigned=False)
    E2M1(x, calibration="max", per_channel_axis=0, percentile=99.0, static_scale=None)
    E4M3(x); FP16(x); BF16(x)

``static_scale`` is a fixed amax (what the calibration stores as ``amax_input`` / ``amax_weight``): a
number, a tensor, a list or a numpy array, broadcast against ``x`` (``[C, 1, 1, 1]`` scales a conv weight
per output channel). ``calibration`` is ``"max"`` or ``"percentile"`` (the element at index
``p/100 * (n - 1)`` of the sorted ``|x|``, the mean of its two neighbours when that index is fractional).
Every quantizer is also a :class:`~qsim_hooks.formats.Format` (``amax=`` is accepted as our name for
``static_scale``), so sessions, calibrations and reports take them; none builds a format per call.

Where the old tool had a defect, compat keeps the correct behaviour; the README's compatibility section
lists each difference (NaN and Inf handling, -0.0, qtorch's subnormal double rounding, the dynamic
per-channel axis, the E1M2/E2M1 gradient, output dtypes, error types).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..formats.base import Format, GradSpec, check_tensor
from ..formats.floating import FloatFormat
from ..formats.integer import IntFormat
from ..formats.scaling import Scaling
from . import _trt

__all__ = ["INT8", "INT4", "E4M3", "FP16", "BF16", "E1M2", "E2M1", "IntQuantizer", "FloatQuantizer",
           "CastQuantizer", "quantize_to_int", "quantize_to_fp"]

_FP_AMAX_EPS = 1e-10  # quantize_to_fp adds this to its amax


# ---------------------------------------------------------------------------
# amax: static, max, percentile
# ---------------------------------------------------------------------------
def _as_amax(value: Any, x: Tensor, who: str) -> Tensor:
    """A static amax as a float32 tensor that broadcasts against ``x`` (INT-FP-QSim: ``torch.Tensor(v)``)."""
    try:
        t = torch.as_tensor(value, dtype=torch.float32).detach()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{who}: static_scale must be a number, a tensor, a list or an array, "
                        f"got {type(value).__name__}") from exc
    if t.numel() == 0:
        raise ValueError(f"{who}: static_scale is empty")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"{who}: static_scale must be finite and >= 0, got {t.flatten()[:4].tolist()}")
    try:
        fits = torch.broadcast_shapes(t.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"{who}: static_scale of shape {tuple(t.shape)} does not broadcast against x of shape "
                         f"{tuple(x.shape)} (one value, or e.g. [C, 1, 1, 1] for a conv weight)")
    return t.to(x.device)


def _max_amax(x: Tensor, axis: int | None = None) -> Tensor:
    """max |x| over the finite elements, in x's dtype; with ``axis``, one per index of that axis (keepdim)."""
    a = x.detach().abs()
    a = torch.where(torch.isfinite(a), a, 0.0)
    if axis is None:
        return a.amax()
    axis = axis % x.dim()
    return a.amax(dim=[d for d in range(x.dim()) if d != axis], keepdim=True)


def _percentile_amax(x: Tensor, p: float) -> Tensor:
    """INT-FP-QSim's percentile of |x|: index p/100*(n-1) of the sorted values, midpoint if fractional."""
    a = x.detach().abs().flatten()
    index = (p / 100) * (a.numel() - 1)
    lo, hi = math.floor(index), math.ceil(index)
    v_lo = torch.kthvalue(a, lo + 1).values
    return v_lo if lo == hi else (v_lo + torch.kthvalue(a, hi + 1).values) / 2


class _Compat(Format):
    """Shared machinery: a name, the qsim-hooks format that describes the grid, INT-FP-QSim's keywords."""

    format: Format

    def __init__(self, name: str, fmt: Format, description: str) -> None:
        self.name = name
        self.format = fmt
        self.grad = fmt.grad
        self._description = description

    # descriptive figures (formats table, report, calibration targets) come from the format describing the grid
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

    def _static(self, static_scale: Any, amax: Any) -> Any:
        if static_scale is not None and amax is not None:
            raise ValueError(f"{self.name}: pass static_scale or amax, not both")
        return static_scale if static_scale is not None else amax

    def _dynamic(self, x: Tensor, calibration: str, percentile: float, axis: int | None, who: str) -> Tensor:
        if calibration == "max":
            return _max_amax(x, axis)
        if calibration == "percentile":
            if axis is not None:
                raise ValueError(f"{who}: calibration='percentile' is per tensor only (INT-FP-QSim does not "
                                 "define it per channel); drop per_channel_axis")
            return _percentile_amax(x, percentile)
        raise ValueError(f"{who}: calibration={calibration!r} is not supported; use 'max' or 'percentile', or "
                         "pass static_scale")

    def __repr__(self) -> str:
        return f"{self.name} ({self._description})"


# ---------------------------------------------------------------------------
# INT8 / INT4
# ---------------------------------------------------------------------------
class IntQuantizer(_Compat):
    """INT-FP-QSim's ``quantize_to_int`` for a fixed bit width (``INT8``, ``INT4``): TensorRT's arithmetic."""

    def __init__(self, num_bits: int, name: str | None = None) -> None:
        name = name or f"INT{num_bits}"
        super().__init__(name, IntFormat(num_bits, narrow=True, name=name),
                         f"INT-FP-QSim quantize_to_int, num_bits={num_bits}, TensorRT narrow range")
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
            a = _as_amax(static, x_float, who)
        else:
            a = self._dynamic(x_float, calibration, percentile, per_channel_axis, who)
        return _trt.quantize(x_float, a, self.num_bits, bool(unsigned))

    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        a = _max_amax(x) if amax is None else amax
        y = _trt.fake_quant(x, a, self.num_bits, False)
        return y, (x.abs() <= a) if want_mask else None


# ---------------------------------------------------------------------------
# E1M2 / E2M1
# ---------------------------------------------------------------------------
def _scaled_fp(x: Tensor, maxval: Tensor, exponent_bits: int, mantissa: Tensor) -> tuple[Tensor, Tensor]:
    """quantize_to_fp's arithmetic for a broadcast ``maxval`` (already + 1e-10); returns (y, clipped x).

    The operations, their order and their operand shapes are INT-FP-QSim's: the bias
    ``2^E - log2(maxval) + log2(2 - 2^-M) - 1`` on maxval's shape, the step from ``2.0 ** (...)`` on x's.
    """
    bias = 2**exponent_bits - torch.log2(maxval) + torch.log2(2 - 2 ** (-mantissa)) - 1
    xc = torch.min(torch.max(x, -maxval), maxval)
    exponent = torch.clamp(torch.floor(torch.log2(torch.abs(xc)) + bias), 1.0)  # never below the subnormal step
    step = 2.0 ** (exponent - mantissa - bias)
    return torch.round(xc / step) * step, xc


class _ScaledFpFn(torch.autograd.Function):
    """Forward: :func:`_scaled_fp`. Backward: the clipped straight-through estimator (``|x| <= maxval``)."""

    @staticmethod
    def forward(ctx, x, maxval, exponent_bits, mantissa):  # type: ignore[override]
        y, _ = _scaled_fp(x, maxval, exponent_bits, mantissa)
        ctx.save_for_backward(x, maxval)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, maxval = ctx.saved_tensors
        return g * (x.abs() <= maxval).to(g.dtype), None, None, None


class FloatQuantizer(_Compat):
    """INT-FP-QSim's ``quantize_to_fp`` (AIMET's scaled ExMy: the amax maps to the format's largest value)."""

    def __init__(self, exponent_bits: int, mantissa_bits: int, name: str | None = None) -> None:
        name = name or f"E{exponent_bits}M{mantissa_bits}"
        fmt = FloatFormat(exponent_bits, mantissa_bits, specials="none", scaling=Scaling(), name=name)
        super().__init__(name, fmt, f"INT-FP-QSim quantize_to_fp, E{exponent_bits}M{mantissa_bits}, "
                                    "every code finite, scaled so that amax is the largest value")
        self.exponent_bits = exponent_bits
        self.mantissa_bits = mantissa_bits
        self._mantissa: dict[torch.device, Tensor] = {}  # INT-FP-QSim's float32 [1] mantissa tensor, per device

    def _m(self, device: torch.device) -> Tensor:
        m = self._mantissa.get(device)
        if m is None:
            m = self._mantissa[device] = torch.tensor([float(self.mantissa_bits)], device=device)
        return m

    def _maxval(self, x: Tensor, a: Tensor, per_channel_axis: int) -> Tensor:
        maxval = a + _FP_AMAX_EPS
        if maxval.dim() and maxval.shape[0] != 1 and maxval.dim() != x.dim():
            # INT-FP-QSim lays a per-channel scale out along per_channel_axis
            shape = [1] * x.dim()
            shape[per_channel_axis] = -1
            maxval = maxval.reshape(shape)
        return maxval

    def __call__(self, x_float: Tensor, *, calibration: str = "max", per_channel_axis: int = 0,
                 percentile: float = 99.0, static_scale: Any = None, amax: Any = None,
                 generator: torch.Generator | None = None) -> Tensor:
        who = f"compat {self.name}"
        check_tensor(x_float, who)
        static = self._static(static_scale, amax)
        if static is not None:
            a = torch.as_tensor(static, dtype=torch.float32) if not isinstance(static, Tensor) else static
            if a.dim() and a.shape[0] != 1 and a.dim() != x_float.dim():
                shape = [1] * x_float.dim()
                shape[per_channel_axis] = -1
                a = a.reshape(shape)
            a = _as_amax(a, x_float, who)
        else:  # INT-FP-QSim computes a dynamic amax per tensor even when per_channel_axis is given
            a = self._dynamic(x_float, calibration, percentile, None, who)
        maxval = self._maxval(x_float, a, per_channel_axis)
        m = self._m(x_float.device)
        if torch.is_grad_enabled() and x_float.requires_grad:
            return _ScaledFpFn.apply(x_float, maxval, self.exponent_bits, m)
        y, _ = _scaled_fp(x_float, maxval, self.exponent_bits, m)
        return y.to(x_float.dtype)

    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        maxval = self._maxval(x, _max_amax(x) if amax is None else amax, 0)
        y, _ = _scaled_fp(x, maxval, self.exponent_bits, self._m(x.device))
        return y.to(x.dtype), (x.abs() <= maxval) if want_mask else None


# ---------------------------------------------------------------------------
# E4M3 / FP16 / BF16
# ---------------------------------------------------------------------------
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

    def _forward(self, x: Tensor, amax: Tensor | None, generator: torch.Generator | None,
                 want_mask: bool) -> tuple[Tensor, Tensor | None]:
        return self.format._forward(x, amax, generator, want_mask)


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
_BY_BITS = {8: INT8, 4: INT4}
_BY_EM = {(1, 2): E1M2, (2, 1): E2M1}


def quantize_to_int(x_float: Tensor, num_bits: int, calibration: str = "max", percentile: float = 99.0,
                    static_scale: Any = None, per_channel_axis: int | None = None,
                    unsigned: bool = False) -> Tensor:
    """INT-FP-QSim's ``quantize_to_int`` with its positional order (see :class:`IntQuantizer`)."""
    q = _BY_BITS.get(num_bits) or IntQuantizer(num_bits)
    return q(x_float, calibration=calibration, percentile=percentile, static_scale=static_scale,
             per_channel_axis=per_channel_axis, unsigned=unsigned)


def quantize_to_fp(x_float: Tensor, mantissa_bits: int, exponent_bits: int, calibration: str = "max",
                   per_channel_axis: int = 0, percentile: float = 99.0, static_scale: Any = None) -> Tensor:
    """INT-FP-QSim's ``quantize_to_fp`` with its positional order (see :class:`FloatQuantizer`)."""
    q = _BY_EM.get((exponent_bits, mantissa_bits)) or FloatQuantizer(exponent_bits, mantissa_bits)
    return q(x_float, calibration=calibration, per_channel_axis=per_channel_axis, percentile=percentile,
             static_scale=static_scale)
